/**
 * The Lambda lifecycle: a per-invocation `context.dsql`, every call bounded by the invocation's
 * deadline, that takes back what the handler forgot when the invocation ends. {@link withDsql} and
 * `dsql()` (`dsql-lambda/middy`) are thin layers over {@link lifecycle}.
 */
import type pg from 'pg';
import { checkRetry, type DsqlConfig } from './config.js';
import { DSQL_DEFAULTS } from './defaults.js';
import { DsqlConfigError, DsqlError } from './errors.js';
import { createPool } from './pool.js';
import type { RetryOptions, TransactionClient } from './retry.js';
import { connectWithin, defined, execWithRetry, withRetry } from './retry.js';

/** Where warnings go: `console`, a Powertools `Logger`, pino, anything with `warn(message)`. */
export interface DsqlLogger {
  warn(message: string, ...details: unknown[]): void;
}

/** What the lifecycle reads of a Lambda context (the time left: without it, no deadline; the request id, for warnings). */
export interface LambdaContextLike {
  getRemainingTimeInMillis?: () => number;
  awsRequestId?: string;
}

/**
 * The per-invocation handle, `context.dsql`. Every call settles by the deadline (time left minus
 * `deadlineMarginMs`), connection wait included: past it, `DsqlConnectionError` (no connection),
 * `OccRetryExhaustedError` (retries ran out of time) or `CommitOutcomeUnknownError` (a statement or
 * COMMIT in flight). `query` and `transaction` retry like `withRetry`; a `connect` client, nothing.
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
   * A client for several statements; release it in a `finally`. Released, it refuses queries and
   * a second `release()` is ignored with a warning; still held when the invocation ends, it is
   * taken back with a warning and its connection closed.
   */
  connect(): Promise<pg.PoolClient>;
  /**
   * `fn` in a transaction, as `withRetry` runs it (`fn` may run more than once). `options` win over
   * the handler's `retry` (an `undefined` key counts as not given); the earliest deadline applies.
   */
  transaction<T>(fn: (tx: TransactionClient) => Promise<T>, options?: RetryOptions): Promise<T>;
}

/** What the wrapper and the middleware add to the Lambda context: the per-invocation handle. */
export interface DsqlContext {
  dsql: Dsql;
}

/** Lifecycle options of {@link withDsql} and `dsql()`. */
export interface DsqlLifecycleOptions {
  /** Milliseconds kept free at the end of each invocation. Default `DSQL_DEFAULTS.deadlineMarginMs` (500). */
  deadlineMarginMs?: number | undefined;
  /** Retry policy of `query` and `transaction`; per-call options win. Default: the pool's, then `DSQL_DEFAULTS.retry`. */
  retry?: RetryOptions | undefined;
  /** Where leak and double-release warnings go. Default `console`. */
  logger?: DsqlLogger | undefined;
}

/** Options of {@link withDsql} and `dsql()`: a connection string, a `DsqlConfig` and lifecycle options, or `{ pool }`. */
export type DsqlHandlerOptions = string | Options;
type Options =
  | (DsqlConfig & DsqlLifecycleOptions & { pool?: undefined })
  | (DsqlLifecycleOptions & { pool: pg.Pool });

/**
 * The core of the wrapper and the middleware: the pool created (no I/O) at the first invocation; per
 * invocation, its handle and its end (which takes back unreleased clients). @internal
 */
export function lifecycle(options?: DsqlHandlerOptions): (context?: LambdaContextLike) => [Dsql, () => void] {
  let { pool: shared, deadlineMarginMs: margin, retry, logger, ...config }: Options = Object(options);
  const log = logger ?? console; // (config: the rest, without the lifecycle keys createPool refuses)
  // A logger that throws must neither keep a connection nor replace the handler's result.
  const warn = (message: string, ...details: unknown[]) => {
    try {
      log.warn(message, ...details);
    } catch {}
  };
  return (context) => {
    // Checked with the configuration, at the first invocation: a NaN margin left connect() unbounded.
    if (margin !== undefined && !(typeof margin === 'number' && margin >= 0 && margin < Infinity))
      throw new DsqlConfigError('deadlineMarginMs', 'must be a number >= 0');
    if (typeof log?.warn !== 'function') throw new DsqlConfigError('logger', 'must have a warn method');
    checkRetry(retry);
    shared ??= createPool(typeof options === 'string' ? options : (config as DsqlConfig));
    const pool = shared;
    const held = new Set<() => void>(); // takes back each connect() client not released yet
    let ended = false;
    const remaining: unknown = (context?.getRemainingTimeInMillis ?? (() => Infinity)).call?.(context);
    if (typeof remaining !== 'number' || Number.isNaN(remaining))
      throw new DsqlConfigError('getRemainingTimeInMillis', 'must be a function returning a number (ms)');
    const deadline = Date.now() + remaining - (margin ?? DSQL_DEFAULTS.deadlineMarginMs);
    const request = context?.awsRequestId ? ` (request ${context.awsRequestId})` : '';
    // A call's options win over the handler's; its deadline may shorten the invocation's, never extend it.
    const policy = (call?: RetryOptions): RetryOptions => {
      if (ended) throw late(); // a promise the handler did not await must not write after it returned
      const until = Math.min(deadline, retry?.deadline ?? Infinity, call?.deadline ?? Infinity);
      return { ...retry, ...defined(call), deadline: until }; // retry's undefined keys: dropped by withRetry
    };
    const late = () => new DsqlError('dsql-lambda: context.dsql called after the invocation ended');
    // The handler gets a proxy, not pg-pool's client: pg-pool re-assigns `release` on the same object
    // at every checkout, so a second release of it would free the next checkout to a second user.
    const track = (client: pg.PoolClient, origin: Error): pg.PoolClient => {
      let state = 0; // 1: released, 2: taken back
      const release = (err?: Error | boolean, next = 1) => {
        if (state === 1) warn(`dsql-lambda: release() called again${request}; ignored`);
        if (state) return;
        state = next;
        held.delete(takeBack);
        client.release(err);
      };
      const takeBack = () => {
        const message = `dsql-lambda: dsql.connect() client not released by the end of the invocation${request}`;
        warn(`${message}; connection closed`, origin.stack);
        // Destroyed, not pooled: whoever leaked it may still use it (a handler running on after
        // middy's timeoutEarly, an un-awaited promise) and would share it with the next invocation.
        release(true, 2);
      };
      held.add(takeBack);
      return new Proxy(client, {
        get(target, key) {
          if (key === 'release') return release;
          if (key === 'query' && state)
            return (...args: unknown[]) => {
              const err = new DsqlError('dsql-lambda: query() after release');
              const callback = args.at(-1); // pg's callback style: the error goes there, not unhandled
              if (typeof callback !== 'function') return Promise.reject(err);
              queueMicrotask(() => callback(err));
            };
          const value = target[key as keyof pg.PoolClient]; // bound: pg's methods need the client as `this`
          return typeof value === 'function' ? value.bind(target) : value;
        },
      });
    };
    const dsql = {
      pool,
      query: async (text: string, values?: unknown[]) => execWithRetry(pool, text, values, policy()),
      transaction: async (fn, call) => withRetry(pool, fn, policy(call)),
      async connect() {
        const origin = new Error('checkout'); // its stack is formatted only if the client leaks
        if (ended) throw late();
        const client = await connectWithin(pool, deadline);
        if (!ended) return track(client, origin);
        client.release(); // an un-awaited connect() that completed after the end
        throw late();
      },
    } as Dsql;
    const end = () => {
      ended = true;
      for (const takeBack of held) takeBack();
    };
    return [dsql, end];
  };
}

/**
 * Wraps an async Lambda handler so its context gains `context.dsql`, without middy. The pool is
 * created on the first invocation and reused; clients an invocation did not release are taken back
 * when it ends (connection closed) with a warning.
 * @param options A connection string, a `DsqlConfig` (+ lifecycle options), or `{ pool }`. Default: the environment.
 * @returns The handler to export.
 * @example
 * export const handler = withDsql(async (event: { id: string }, context) =>
 *   (await context.dsql.query('SELECT * FROM orders WHERE id = $1', [event.id])).rows[0]);
 */
export function withDsql<TEvent, TResult, TContext extends LambdaContextLike = LambdaContextLike>(
  handler: (event: TEvent, context: TContext & DsqlContext) => Promise<TResult>,
  options?: DsqlHandlerOptions,
): (event: TEvent, context: TContext) => Promise<TResult> {
  const begin = lifecycle(options);
  return async (event, context) => {
    const [dsql, end] = begin(context);
    try {
      return await handler(event, Object.assign(context, { dsql }));
    } finally {
      end();
    }
  };
}
