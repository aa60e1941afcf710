/**
 * The Lambda lifecycle: a per-invocation `context.dsql` (query, connect, transaction, pool) whose
 * every call is bounded by the invocation's deadline, and which takes back what the handler forgot
 * when the invocation ends. {@link withDsql} wraps a plain handler and `dsql()`
 * (`dsql-lambda/middy`) is the middy middleware; both are thin layers over {@link lifecycle}.
 *
 * The pool is created on the first invocation (`createPool`, no I/O until a statement runs) and
 * kept in the wrapper's or middleware's closure: one pool per wrapped handler, for the life of the
 * process.
 */
import type pg from 'pg';
import type { DsqlConfig } from './config.js';
import { DSQL_DEFAULTS } from './defaults.js';
import { DsqlError } from './errors.js';
import { createPool } from './pool.js';
import {
  connectWithin,
  execWithRetry,
  type RetryOptions,
  type TransactionClient,
  withRetry,
} from './retry.js';

/**
 * Where warnings go: anything with `warn(message)`, such as `console`, a Powertools `Logger`, pino.
 * @example
 * withDsql(handler, { logger: { warn: (message) => metrics.leak(message) } });
 */
export interface DsqlLogger {
  warn(message: string, ...details: unknown[]): void;
}

/** The part of a Lambda context the lifecycle reads; any real `Context` satisfies it. */
export interface LambdaContextLike {
  /** Milliseconds left before Lambda stops the invocation. Absent in some tests: then no deadline. */
  getRemainingTimeInMillis?: () => number;
  /** Request ID, named in warnings. */
  awsRequestId?: string;
}

/**
 * The per-invocation database handle a handler receives as `context.dsql`. Every call settles by
 * the invocation's deadline (remaining time minus `deadlineMarginMs`), waiting for a connection
 * included: past it, a `DsqlConnectionError` if no connection was handed over yet, an
 * `OccRetryExhaustedError` if retries ran out of time, or a `CommitOutcomeUnknownError` if a
 * statement or COMMIT was in flight (it may have committed).
 *
 * Which calls retry: `query` and `transaction` retry OCC conflicts (an autocommit statement or a
 * transaction refused with 40001 has not committed) and connections lost before anything was
 * sent. None ever resends what may have committed. A client from `connect` never retries anything.
 * @example
 * ```ts
 * const { rows } = await context.dsql.query<{ id: string }>('SELECT id FROM orders WHERE owner = $1', [owner]);
 * await context.dsql.transaction(async (tx) => {
 *   await tx.query('UPDATE accounts SET balance = balance - $1 WHERE id = $2', [amount, from]);
 *   await tx.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [amount, to]);
 * });
 * ```
 */
export interface Dsql {
  /** The pool this handler uses (shared by its concurrent invocations). */
  readonly pool: pg.Pool;
  /**
   * Runs one statement in autocommit on a pool connection, as `execWithRetry` does: retried on an
   * OCC conflict within the deadline, never resent once it may have committed.
   */
  // biome-ignore lint/suspicious/noExplicitAny: same defaults as pg's own query(), so rows stay usable untyped
  query<R extends pg.QueryResultRow = any, I = any[]>(
    text: string | pg.QueryConfig<I>,
    values?: I,
  ): Promise<pg.QueryResult<R>>;
  /**
   * Checks out a client for several statements; release it in a `finally`. A second `release()`
   * is ignored with a warning, and the client refuses queries once released. A client still
   * checked out when the invocation ends is taken back with a warning and its connection closed.
   */
  connect(): Promise<pg.PoolClient>;
  /**
   * Runs `fn` in a transaction, as `withRetry` does: retried on OCC conflicts until it commits or
   * the deadline comes. `fn` may run more than once: keep other side effects out of it.
   */
  transaction<T>(fn: (tx: TransactionClient) => Promise<T>, options?: RetryOptions): Promise<T>;
}

/**
 * What the wrapper and the middleware add to the Lambda context.
 * @example
 * async function handler(event: unknown, context: Context & DsqlContext) {
 *   return (await context.dsql.query('SELECT 1 AS one')).rows[0];
 * }
 */
export interface DsqlContext {
  /** The per-invocation database handle. */
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
  /** Retry policy of `query` and `transaction` (per-call options win). Default: the pool's, then `DSQL_DEFAULTS.retry`. */
  retry?: RetryOptions | undefined;
  /** Where leak and double-release warnings go. Default `console`. */
  logger?: DsqlLogger | undefined;
}

/**
 * Options of {@link withDsql} and `dsql()`: a connection string, a `DsqlConfig` with lifecycle
 * options mixed in, or an existing pool (`{ pool }`). Default: the environment (`DSQL_ENDPOINT`, …).
 * @example
 * withDsql(handler);                                                   // environment
 * withDsql(handler, 'postgres://admin@abc…xyz.dsql.us-east-1.on.aws'); // connection string
 * withDsql(handler, { host: process.env.CLUSTER, deadlineMarginMs: 250 });
 * withDsql(handler, { pool: myPool });
 */
export type DsqlHandlerOptions =
  | string
  | (DsqlConfig & DsqlLifecycleOptions & { pool?: undefined })
  | (DsqlLifecycleOptions & { pool: pg.Pool });

/** One invocation's handle, and what ends it. @internal */
export interface Invocation {
  readonly dsql: Dsql;
  /**
   * Takes back every `connect()` client not released yet, with a warning naming where it was
   * checked out, and closes its connection (the leaker may still hold it: never pooled again).
   * Idempotent; returns how many were taken back.
   */
  end(): number;
}

/**
 * The one core of the wrapper and the middleware: resolves the options once, creates the pool on
 * the first invocation, and starts an {@link Invocation} per call.
 * @internal
 */
export function lifecycle(
  options?: DsqlHandlerOptions,
): (context: LambdaContextLike | undefined) => Invocation {
  const {
    pool: given,
    deadlineMarginMs,
    retry,
    logger,
    ...config
  } = typeof options === 'object' ? options : {};
  const connection =
    typeof options === 'string'
      ? options
      : Object.values(config).some((v) => v !== undefined)
        ? (config as DsqlConfig)
        : undefined;
  let pool = given;
  const margin = deadlineMarginMs ?? DSQL_DEFAULTS.deadlineMarginMs;
  return (context) =>
    invocation((pool ??= createPool(connection)), context, margin, retry, logger ?? console);
}

function invocation(
  pool: pg.Pool,
  context: LambdaContextLike | undefined,
  margin: number,
  retry: RetryOptions | undefined,
  logger: DsqlLogger,
): Invocation {
  // Clients from connect() not released yet, and how to take each back.
  const held = new Map<object, () => void>();
  let ended = false;
  const deadline = () => {
    const remaining = context?.getRemainingTimeInMillis?.();
    return typeof remaining === 'number' ? Date.now() + remaining - margin : undefined;
  };
  const options = (call?: RetryOptions): RetryOptions => ({ deadline: deadline(), ...retry, ...call });
  const request = context?.awsRequestId ? ` (request ${context.awsRequestId})` : '';

  const dsql: Dsql = {
    pool,
    query: (text: string | pg.QueryConfig, values?: unknown) =>
      execWithRetry(pool, text, values as unknown[] | undefined, options()),
    transaction: (fn, call) => withRetry(pool, fn, options(call)),
    async connect() {
      // Captured now, formatted only if the client leaks (V8 formats stacks lazily).
      const origin = new Error('checked out here');
      if (ended) throw new DsqlError('dsql-lambda: connect() called after the invocation ended');
      const client = await connectWithin(pool, { deadline: deadline() });
      if (ended) {
        client.release(); // an un-awaited connect() that completed after the end
        throw new DsqlError('dsql-lambda: connect() called after the invocation ended');
      }
      return tracked(client, origin);
    },
  } as Dsql;

  /**
   * The handler gets a proxy, not pg-pool's client: pg-pool re-assigns `release` on the same
   * object at each checkout, so a second release() of the real client would free whichever
   * invocation checked it out next, and two invocations would share one backend.
   */
  function tracked(client: pg.PoolClient, origin: Error): pg.PoolClient {
    let released = false;
    let takenBack = false;
    const giveBack = (err?: Error | boolean) => {
      released = true;
      held.delete(proxy);
      client.release(err);
    };
    const release = (err?: Error | boolean) => {
      if (!released) return giveBack(err);
      if (!takenBack)
        logger.warn(
          `dsql-lambda: release() called again on a client from dsql.connect()${request}; ignored.`,
          new Error('released again here').stack,
        );
    };
    const refused = () =>
      Promise.reject(
        new DsqlError('dsql-lambda: query() on a client from dsql.connect() after its release()'),
      );
    const proxy: pg.PoolClient = new Proxy(client, {
      get(target, key) {
        if (key === 'release') return release;
        if (key === 'query' && released) return refused;
        const value = Reflect.get(target, key, target);
        // Bound to the real client: pg's methods (and any #private field) need it as `this`.
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    held.set(proxy, () => {
      takenBack = true;
      logger.warn(
        `dsql-lambda: a client from dsql.connect() was not released before the invocation ended${request}; ` +
          'closing its connection. Release clients in a finally block.',
        origin.stack,
      );
      // Destroyed, not pooled: whoever leaked it may still hold it (a handler still running after
      // middy's timeoutEarly, an un-awaited promise) and would share it with the next invocation.
      giveBack(true);
    });
    return proxy;
  }

  return {
    dsql,
    end() {
      if (ended) return 0;
      ended = true;
      const leaked = [...held.values()];
      for (const takeBack of leaked) takeBack();
      return leaked.length;
    },
  };
}

/**
 * Wraps an async Lambda handler so it receives `context.dsql` (query, connect, transaction,
 * pool), without middy. The pool is created on the first invocation (so importing the handler
 * needs no DSQL settings) and reused by every later one; when each invocation ends, clients it
 * did not release are taken back (connection closed) with a warning.
 * @param handler An async handler; its context gains `dsql`.
 * @param options A connection string, a `DsqlConfig` (+ `deadlineMarginMs`, `retry`, `logger`),
 *   or `{ pool }`. Default: the environment.
 * @returns The handler to export.
 * @example
 * ```ts
 * import { withDsql } from 'dsql-lambda';
 * export const handler = withDsql(async (event: { id: string }, context) => {
 *   const { rows } = await context.dsql.query('SELECT * FROM orders WHERE id = $1', [event.id]);
 *   return rows[0];
 * });
 * ```
 */
export function withDsql<TEvent, TResult, TContext extends LambdaContextLike = LambdaContextLike>(
  handler: (event: TEvent, context: TContext & DsqlContext) => Promise<TResult>,
  options?: DsqlHandlerOptions,
): (event: TEvent, context: TContext) => Promise<TResult> {
  const begin = lifecycle(options);
  return async function withDsqlHandler(event: TEvent, context: TContext): Promise<TResult> {
    const invocation = begin(context);
    const ctx = context as TContext & DsqlContext;
    ctx.dsql = invocation.dsql;
    try {
      return await handler(event, ctx);
    } finally {
      invocation.end();
    }
  };
}
