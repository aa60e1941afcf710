/**
 * The Lambda lifecycle: a per-invocation `context.dsql` whose every call is bounded by the
 * invocation's deadline, and which takes back what the handler forgot when the invocation ends.
 * {@link withDsql} and `dsql()` (`dsql-lambda/middy`) are thin layers over {@link lifecycle}. The
 * pool is created (`createPool`, no I/O) on the first invocation and kept in their closure.
 */
import type pg from 'pg';
import type { DsqlConfig } from './config.js';
import { DSQL_DEFAULTS } from './defaults.js';
import { DsqlError } from './errors.js';
import { createPool } from './pool.js';
import {
  connectWithin,
  defined,
  execWithRetry,
  type RetryOptions,
  type TransactionClient,
  withRetry,
} from './retry.js';

/**
 * Where warnings go: `console`, a Powertools `Logger`, pino, anything with `warn(message)`.
 * @example
 * withDsql(handler, { logger: { warn: (message) => metrics.leak(message) } });
 */
export interface DsqlLogger {
  warn(message: string, ...details: unknown[]): void;
}

/** The part of a Lambda context the lifecycle reads; any real `Context` satisfies it. */
export interface LambdaContextLike {
  /** Milliseconds left in the invocation; without it, calls have no deadline. */
  getRemainingTimeInMillis?: () => number;
  /** Named in warnings. */
  awsRequestId?: string;
}

/**
 * The per-invocation handle a handler receives as `context.dsql`. Every call settles by the
 * deadline (remaining time minus `deadlineMarginMs`), the wait for a connection included: past it,
 * `DsqlConnectionError` if no connection was handed over, `OccRetryExhaustedError` if retries ran
 * out of time, `CommitOutcomeUnknownError` if a statement or COMMIT was in flight (it may have
 * committed). `query` and `transaction` retry OCC conflicts and connections lost before anything
 * was sent, never what may have committed; a client from `connect` retries nothing.
 * @example
 * ```ts
 * const { rows } = await context.dsql.query('SELECT id FROM orders WHERE owner = $1', [owner]);
 * await context.dsql.transaction(async (tx) => {
 *   await tx.query('UPDATE accounts SET balance = balance - $1 WHERE id = $2', [amount, from]);
 *   await tx.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [amount, to]);
 * });
 * ```
 */
export interface Dsql {
  /** The pool of this handler (shared by its concurrent invocations). */
  readonly pool: pg.Pool;
  /** One statement in autocommit, as `execWithRetry` runs it. */
  // biome-ignore lint/suspicious/noExplicitAny: pg's own defaults, so rows stay usable untyped
  query<R extends pg.QueryResultRow = any, I = any[]>(
    text: string | pg.QueryConfig<I>,
    values?: I,
  ): Promise<pg.QueryResult<R>>;
  /**
   * A client for several statements; release it in a `finally`. It refuses queries once released;
   * a second `release()` is ignored with a warning. Still held when the invocation ends: taken back
   * with a warning, its connection closed.
   */
  connect(): Promise<pg.PoolClient>;
  /**
   * `fn` in a transaction, as `withRetry` runs it: `fn` may run more than once. `options` win over
   * the handler's `retry` (a key set to `undefined` counts as not given), except `deadline`: the
   * earliest of it and the invocation's applies.
   */
  transaction<T>(fn: (tx: TransactionClient) => Promise<T>, options?: RetryOptions): Promise<T>;
}

/**
 * What the wrapper and the middleware add to the Lambda context.
 * @example
 * async function handler(event: unknown, context: Context & DsqlContext) {}
 */
export interface DsqlContext {
  /** The per-invocation handle. */
  dsql: Dsql;
}

/**
 * Lifecycle options of {@link withDsql} and `dsql()`.
 * @example
 * dsql({ deadlineMarginMs: 1_000, retry: { maxAttempts: 5 }, logger: powertoolsLogger });
 */
export interface DsqlLifecycleOptions {
  /** Milliseconds kept free at the end of each invocation. Default `DSQL_DEFAULTS.deadlineMarginMs` (500). */
  deadlineMarginMs?: number | undefined;
  /** Retry policy of `query` and `transaction`; per-call options win. Default: the pool's, then `DSQL_DEFAULTS.retry`. */
  retry?: RetryOptions | undefined;
  /** Where leak and double-release warnings go. Default `console`. */
  logger?: DsqlLogger | undefined;
}

/**
 * Options of {@link withDsql} and `dsql()`: a connection string, a `DsqlConfig` with lifecycle
 * options mixed in, or `{ pool }`. Default: the environment (`DSQL_ENDPOINT`, …).
 * @example
 * withDsql(handler, { host: process.env.CLUSTER, deadlineMarginMs: 250 });
 */
export type DsqlHandlerOptions =
  | string
  | (DsqlConfig & DsqlLifecycleOptions & { pool?: undefined })
  | (DsqlLifecycleOptions & { pool: pg.Pool });

/** One invocation: its handle, and `end()`, which takes back unreleased clients (idempotent). @internal */
export interface Invocation {
  readonly dsql: Dsql;
  end(): void;
}

/**
 * The one core of the wrapper and the middleware: options resolved once, the pool created on the
 * first invocation, an {@link Invocation} per call.
 * @internal
 */
export function lifecycle(options?: DsqlHandlerOptions): (context?: LambdaContextLike) => Invocation {
  const {
    pool: given,
    deadlineMarginMs,
    retry,
    logger = console,
    ...rest
  } = typeof options === 'object' ? options : {};
  // Lifecycle keys are not configuration: createPool refuses unknown keys.
  const config =
    typeof options === 'string'
      ? options
      : Object.values(rest).some((v) => v !== undefined)
        ? (rest as DsqlConfig)
        : undefined;
  const margin = deadlineMarginMs ?? DSQL_DEFAULTS.deadlineMarginMs;
  let shared = given;
  return (context) => {
    shared ??= createPool(config);
    const pool = shared;
    const held = new Set<() => void>(); // how to take back each connect() client not released yet
    let ended = false;
    const deadline = () => {
      const remaining = context?.getRemainingTimeInMillis?.();
      return typeof remaining === 'number' ? Date.now() + remaining - margin : undefined;
    };
    // A call's options win over the handler's (a key set to undefined is not given); its
    // deadline may shorten the invocation's, never remove or extend it.
    const policy = (call?: RetryOptions): RetryOptions => {
      const times = [deadline(), retry?.deadline, call?.deadline].filter((t) => t !== undefined);
      return { ...defined(retry), ...defined(call), deadline: times.length ? Math.min(...times) : undefined };
    };
    const request = context?.awsRequestId ? ` (request ${context.awsRequestId})` : '';
    const late = () => new DsqlError('dsql-lambda: connect() called after the invocation ended');

    /**
     * The handler gets a proxy, not pg-pool's client: pg-pool re-assigns `release` on the same object
     * at every checkout, so a second release of the real client would free the next invocation's
     * checkout, and two invocations would share one backend.
     */
    const track = (client: pg.PoolClient, origin: Error): pg.PoolClient => {
      let released = false;
      let takenBack = false;
      const giveBack = (err?: Error | boolean) => {
        released = true;
        held.delete(takeBack);
        client.release(err);
      };
      const takeBack = () => {
        takenBack = true;
        logger.warn(
          `dsql-lambda: a client from dsql.connect() was not released before the invocation ended${request}; ` +
            'closing its connection. Release clients in a finally block.',
          origin.stack,
        );
        // Destroyed, not pooled: whoever leaked it may still use it (a handler running on after middy's
        // timeoutEarly, an un-awaited promise) and would share it with the next invocation.
        giveBack(true);
      };
      const release = (err?: Error | boolean) => {
        if (!released) giveBack(err);
        else if (!takenBack)
          logger.warn(
            `dsql-lambda: release() called again on a client from dsql.connect()${request}; ignored`,
          );
      };
      const refused = () =>
        Promise.reject(new DsqlError('dsql-lambda: query() on a released dsql.connect() client'));
      held.add(takeBack);
      return new Proxy(client, {
        get(target, key) {
          if (key === 'release') return release;
          if (key === 'query' && released) return refused;
          const value = Reflect.get(target, key, target);
          // Bound to the real client: pg's methods (and any #private field) need it as `this`.
          return typeof value === 'function' ? value.bind(target) : value;
        },
      });
    };

    const dsql: Dsql = {
      pool,
      query: (text: string | pg.QueryConfig, values?: unknown) =>
        execWithRetry(pool, text, values as unknown[] | undefined, policy()),
      transaction: (fn, call) => withRetry(pool, fn, policy(call)),
      async connect() {
        const origin = new Error('checked out here'); // its stack is formatted only if the client leaks
        if (ended) throw late();
        const client = await connectWithin(pool, deadline());
        if (!ended) return track(client, origin);
        client.release(); // an un-awaited connect() that completed after the end
        throw late();
      },
    } as Dsql;

    return {
      dsql,
      end() {
        ended = true;
        for (const takeBack of [...held]) takeBack();
      },
    };
  };
}

/**
 * Wraps an async Lambda handler so it receives `context.dsql`, without middy. The pool is created
 * on the first invocation (importing the handler needs no DSQL settings) and reused; when each
 * invocation ends, clients it did not release are taken back (connection closed) with a warning.
 * @param handler An async handler; its context gains `dsql`.
 * @param options A connection string, a `DsqlConfig` (+ lifecycle options), or `{ pool }`.
 *   Default: the environment.
 * @returns The handler to export.
 * @example
 * ```ts
 * export const handler = withDsql(async (event: { id: string }, context) =>
 *   (await context.dsql.query('SELECT * FROM orders WHERE id = $1', [event.id])).rows[0]);
 * ```
 */
export function withDsql<TEvent, TResult, TContext extends LambdaContextLike = LambdaContextLike>(
  handler: (event: TEvent, context: TContext & DsqlContext) => Promise<TResult>,
  options?: DsqlHandlerOptions,
): (event: TEvent, context: TContext) => Promise<TResult> {
  const begin = lifecycle(options);
  return async function withDsqlHandler(event: TEvent, context: TContext): Promise<TResult> {
    const invocation = begin(context);
    const ctx = Object.assign(context, { dsql: invocation.dsql });
    try {
      return await handler(event, ctx);
    } finally {
      invocation.end();
    }
  };
}
