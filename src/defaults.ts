/**
 * Every default of dsql-lambda, in one place. Other modules read these values; none restates them.
 */

/**
 * The defaults, each documented once.
 * @example
 * import { DSQL_DEFAULTS } from 'dsql-lambda';
 * await withRetry(pool, fn, { maxAttempts: DSQL_DEFAULTS.retry.maxAttempts * 2 });
 */
export const DSQL_DEFAULTS = Object.freeze({
  /**
   * OCC retry policy of `withRetry`, `execWithRetry` and `context.dsql` (chosen with
   * `bench/occ.ts`, numbers in `bench/results/occ.json`). The delay before the next attempt is
   * drawn uniformly from `[baseDelayMs, min(maxDelayMs, 3 × previous delay)]` ("decorrelated
   * jitter", `3 × baseDelayMs` before the first): every retry waits at least the base, so it does
   * not land while the transactions it lost to are still committing, and colliding transactions
   * drift apart.
   */
  retry: Object.freeze({
    /**
     * Most attempts in total, the first included: `8`. With 4 (the official connectors' budget),
     * 6–32 % of transfers under heavy contention gave up; with 8, 0–2 %. In a Lambda the
     * invocation's deadline, not this count, is what finally stops a retrying handler.
     */
    maxAttempts: 8,
    /**
     * The smallest delay between attempts, and the first window: `50` ms. A small base hurts
     * most under contention (1 ms, the official node connector's, gave up on 40–65 % of hot
     * transfers; 10 ms on 3–12 %).
     */
    baseDelayMs: 50,
    /** The largest delay between two attempts: `1000` ms. 7 sleeps take 0.35–5.6 s in total. */
    maxDelayMs: 1000,
  }),
  /**
   * Milliseconds of a Lambda invocation kept free at its end: `500`. `context.dsql` calls are
   * bounded by the remaining time minus this, so the handler still has time to answer.
   */
  deadlineMarginMs: 500,
});
