/**
 * Every default dsql-lambda applies, in one frozen object. Everything else refers to these
 * names; no other file repeats a number.
 */
export const DSQL_DEFAULTS = Object.freeze({
  /** Database user (`admin` signs `DbConnectAdmin` tokens). */
  user: 'admin',
  /** Database name: the only one DSQL has. */
  database: 'postgres',
  /** TCP port. */
  port: 5432,
  /** Token lifetime, seconds: the AWS SDK's default. */
  tokenDurationSecs: 900,
  /**
   * Pool size outside Lambda Managed Instances (there: `AWS_LAMBDA_MAX_CONCURRENCY`). Enough for
   * a few parallel queries without letting one sandbox spend the cluster's connection rate.
   */
  max: 4,
  /** Minimum idle connections pg-pool keeps. */
  min: 0,
  /** Connection lifetime, seconds: 55 minutes, so connections retire before DSQL closes them at 60. */
  maxLifetimeSeconds: 3300,
  /**
   * Up to this many seconds are taken off each connection's lifetime, at random, so connections
   * opened together do not all expire together (pgxpool's `MaxConnLifetimeJitter`).
   */
  maxLifetimeJitterSeconds: 300,
  /** pg-pool's idle timer, ms; only a backstop when the process is not frozen. */
  idleTimeoutMillis: 300_000,
  /** Budget for a checkout: waiting for a pooled client and opening a connection, retries included, ms. */
  connectionTimeoutMillis: 10_000,
  /** A pooled connection idle longer than this is discarded at checkout, ms (below a NAT gateway's 350 s). */
  maxIdleMillis: 300_000,
  /** A pause longer than this since a connection was last used counts as a freeze/thaw, ms. */
  thawThresholdMillis: 5_000,
  /** Timeout of the liveness round trip on a reused connection after a thaw, ms. */
  validationTimeoutMillis: 1_000,
  /** TLS negotiation: direct TLS (ALPN `postgresql`) saves the SSLRequest round trip. */
  sslNegotiation: 'direct' as 'direct' | 'postgres',
  /** Let a script that never calls `pool.end()` exit once its connections are idle (pg-pool's option). */
  allowExitOnIdle: true,
  /**
   * First backoff window after DSQL refuses a connection (53400 rate: cluster-wide 100/s, burst
   * 1000; 53300: too many open), ms; it doubles per attempt. A refusal means many sandboxes are
   * connecting at once: retries spread wide, so most get in at their next attempt.
   */
  admissionRetryWindowMillis: 4_000,
  /** First backoff window after a network error while connecting, ms; it doubles per attempt. */
  networkRetryWindowMillis: 100,
  /** Renew a token once less than this (or a fifth of its life, if shorter) remains, ms. */
  tokenRefreshMarginMillis: 60_000,
  /** Resolve credentials again when they expire within this (the AWS SDK's own window), ms. */
  credentialsRefreshMarginMillis: 300_000,
  /** A credentials provider call that has not settled after this fails the renewal, ms. */
  credentialsTimeoutMillis: 5_000,

  // ---- Retry and invocation lifecycle (src/retry.ts, src/lambda.ts) --------------------------
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
