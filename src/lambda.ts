/**
 * The Lambda lifecycle: one lazily created, freeze-safe pool per configuration per process, and
 * a per-invocation `dsql` object (query, connect, transaction, pool) that cleans up after the
 * invocation. {@link withDsql} wraps a plain handler; `dsql-lambda/middy` offers the same object
 * as a middy middleware. Both are thin layers over {@link createDsqlContext}.
 *
 * Nothing here does I/O when a module is loaded or when a pool object is created: credentials,
 * tokens and the first connection wait for the first statement. A cold start that never touches
 * the database never opens a connection.
 */
import { createHash } from 'node:crypto';
import type pg from 'pg';
import type { DsqlConfig } from './config.js';
import { createPool } from './pool.js';
import { type RetryOptions, type TransactionClient, withRetry } from './retry.js';

/**
 * Where warnings go. Anything with a `warn(message)` method: `console`, a Powertools `Logger`, pino.
 * @example
 * ```ts
 * withDsql(handler, { logger: { warn: (message) => metrics.leak(message) } });
 * ```
 */
export interface DsqlLogger {
  warn(message: string, ...details: unknown[]): void;
}

/** The part of a Lambda context the lifecycle reads; any real `Context` satisfies it. */
export interface LambdaContextLike {
  /** Milliseconds left before Lambda stops the invocation. Absent in some tests and containers. */
  getRemainingTimeInMillis?: () => number;
  /** Request ID, used to name the invocation in warnings. */
  awsRequestId?: string;
}

/**
 * The per-invocation database handle a handler receives as `context.dsql`.
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
  /** The module-scoped pool this invocation uses (shared with concurrent invocations). */
  readonly pool: pg.Pool;
  /**
   * Runs one statement on a pooled connection (`pool.query`). No connection is opened until the
   * first call. A statement is never sent twice: if it fails, its error is thrown. Unless the
   * statement or the pool sets `query_timeout`, the wait for its result is bounded by the
   * invocation's deadline (remaining time minus `deadlineMarginMs`): a statement lost on a
   * silently dropped connection fails with `Query read timeout` before Lambda's timeout, and
   * that connection is destroyed.
   */
  // biome-ignore lint/suspicious/noExplicitAny: same defaults as pg's own query(), so rows stay usable untyped
  query<R extends pg.QueryResultRow = any, I = any[]>(
    text: string | pg.QueryConfig<I>,
    values?: I,
  ): Promise<pg.QueryResult<R>>;
  /**
   * Checks out a client for several statements. Release it (`client.release()`) in a `finally`;
   * a client still checked out when the invocation ends is taken back with a warning and its
   * connection closed (the code that leaked it may still use it, so it is never pooled again).
   */
  connect(): Promise<pg.PoolClient>;
  /**
   * Runs `fn` in a transaction, retrying it on OCC conflicts (SQLSTATE 40001, OC000/OC001) with
   * jittered backoff until it commits or the invocation's deadline comes: the deadline defaults
   * to the Lambda remaining time minus `deadlineMarginMs`. `fn` may run more than once: keep side
   * effects outside the database out of it.
   */
  transaction<T>(fn: (tx: TransactionClient) => Promise<T>, options?: RetryOptions): Promise<T>;
}

/**
 * What the wrapper and the middleware add to the Lambda context.
 * @example
 * ```ts
 * import type { Context } from 'aws-lambda';
 * async function handler(event: unknown, context: Context & DsqlContext) {
 *   return (await context.dsql.query('SELECT 1 AS one')).rows[0];
 * }
 * ```
 */
export interface DsqlContext {
  /** The per-invocation database handle. */
  dsql: Dsql;
}

/**
 * Options of the per-invocation handle, shared by {@link withDsql} and the middy middleware.
 * @example
 * ```ts
 * dsql({ deadlineMarginMs: 1_000, retry: { maxAttempts: 5 }, logger: powertoolsLogger });
 * ```
 */
export interface DsqlLifecycleOptions {
  /**
   * Milliseconds kept free at the end of the invocation: OCC retries stop starting new attempts
   * this long before Lambda's deadline, leaving time to respond. Default: `500`.
   */
  deadlineMarginMs?: number | undefined;
  /** Defaults for every `transaction()` call of the invocation (per-call options win). Default: `withRetry`'s. */
  retry?: RetryOptions | undefined;
  /** Where leak warnings go. Default: `console`. */
  logger?: DsqlLogger | undefined;
}

/**
 * Options of {@link withDsql} and `dsql()` (middy): a connection string, a {@link DsqlConfig}
 * (with lifecycle options mixed in), or an existing pool (`{ pool }`). Default: the
 * configuration from the environment (`DSQL_ENDPOINT`, `AWS_REGION`, …).
 * @example
 * ```ts
 * withDsql(handler);                                                  // environment
 * withDsql(handler, 'postgres://admin@abc…xyz.dsql.us-east-1.on.aws'); // connection string
 * withDsql(handler, { host: process.env.CLUSTER, deadlineMarginMs: 250 });
 * withDsql(handler, { pool: myPool });
 * ```
 */
export type DsqlHandlerOptions =
  | string
  | (DsqlConfig & DsqlLifecycleOptions & { pool?: undefined })
  | (DsqlLifecycleOptions & { pool: pg.Pool });

const lifecycleDefaults = {
  deadlineMarginMs: 500,
} as const;

// One pool per resolved configuration per process. A Map in module scope is the point: it is
// what survives between invocations of a warm Lambda. It holds pools only, no invocation state.
const pools = new Map<string, pg.Pool>();

/**
 * Returns the process-wide pool for `config`, creating it on the first call: later calls with
 * an equivalent configuration (same fields, same credential provider object) return the same
 * `pg.Pool`, so a handler can call this at module scope or in every invocation. Creating the
 * pool does no I/O: credentials, tokens and the first connection wait for the first statement.
 * The pool is freeze-safe (see `installFreezeGuard`). Invalid configuration throws
 * `DsqlConfigError` synchronously.
 *
 * @param config - as for `createPool`; default: the environment (`DSQL_ENDPOINT`, `AWS_REGION`,
 *   …). Pool size defaults to `AWS_LAMBDA_MAX_CONCURRENCY`, else 4.
 * @example
 * ```ts
 * import { lambdaPool } from 'dsql-lambda';
 * const pool = lambdaPool(); // module scope: no I/O here
 * export const handler = async () => (await pool.query('SELECT now()')).rows[0];
 * ```
 */
export function lambdaPool(config?: DsqlConfig | string): pg.Pool {
  const key = configKey(config);
  const existing = pools.get(key);
  if (existing) return existing;
  const pool = createPool(config);
  pools.set(key, pool);
  // A pool someone ended must not be handed out again.
  const end = pool.end.bind(pool);
  pool.end = ((cb?: () => void) => {
    if (pools.get(key) === pool) pools.delete(key);
    return cb ? end(cb) : end();
  }) as typeof pool.end;
  return pool;
}

/**
 * Ends every pool {@link lambdaPool} created and forgets them. For tests and graceful shutdown;
 * a Lambda handler never needs it.
 * @example
 * ```ts
 * afterAll(() => endLambdaPools());
 * ```
 */
export async function endLambdaPools(): Promise<void> {
  const all = [...pools.values()];
  pools.clear();
  await Promise.allSettled(all.map((pool) => pool.end()));
}

// Credential providers and other non-plain values are keyed by identity: two providers that
// happen to look alike may still return different identities.
const identities = new WeakMap<object, number>();
let nextIdentity = 0;

function identityOf(value: object): number {
  let id = identities.get(value);
  if (id === undefined) {
    id = ++nextIdentity;
    identities.set(value, id);
  }
  return id;
}

function canonical(value: unknown): unknown {
  if (value === null || typeof value !== 'object') {
    return typeof value === 'function' ? { fn: identityOf(value) } : value;
  }
  if (Buffer.isBuffer(value)) return { buf: value.toString('base64') };
  if (Array.isArray(value)) return value.map(canonical);
  if (Object.getPrototypeOf(value) !== Object.prototype && Object.getPrototypeOf(value) !== null) {
    return { obj: identityOf(value) };
  }
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(value).sort()) out[k] = canonical((value as Record<string, unknown>)[k]);
  return out;
}

/**
 * Key of a configuration. The environment is part of the key when fields are missing from
 * `config`, so a test that changes `DSQL_ENDPOINT` gets a new pool. Hashed so the map holds no
 * secret in clear.
 */
function configKey(config: DsqlConfig | string | undefined): string {
  const env = process.env;
  const input = {
    config: canonical(config ?? null),
    env: [
      env.DSQL_ENDPOINT,
      env.PGHOST,
      env.DSQL_HOSTADDR,
      env.PGHOSTADDR,
      env.PGPORT,
      env.PGUSER,
      env.PGDATABASE,
      env.AWS_REGION,
      env.AWS_DEFAULT_REGION,
      env.AWS_ACCESS_KEY_ID,
      env.AWS_LAMBDA_MAX_CONCURRENCY,
    ],
  };
  return createHash('sha256').update(JSON.stringify(input)).digest('base64');
}

/**
 * A per-invocation handle and the function that ends it (see {@link createDsqlContext}).
 * @example
 * ```ts
 * const invocation: DsqlInvocation = createDsqlContext(pool, context);
 * ```
 */
export interface DsqlInvocation {
  /** The handle to put on the context. */
  readonly dsql: Dsql;
  /**
   * Takes back every client checked out through `dsql.connect()` and not released yet, with a
   * warning naming where each was checked out, and closes its connection (never pooled again:
   * the leaker may still hold it). Idempotent. Returns the number of leaked clients.
   */
  cleanup(): number;
}

interface TrackedClient {
  readonly origin: Error;
  readonly release: (err?: Error | boolean) => void;
}

/**
 * Builds the per-invocation `dsql` handle over `pool`. The building block of {@link withDsql} and
 * the middy middleware; use it directly to integrate another framework. Cheap: no I/O, no
 * checkout until a statement runs.
 *
 * @param pool - usually {@link lambdaPool}'s.
 * @param context - the Lambda context (its `getRemainingTimeInMillis` sets transaction deadlines).
 * @param options - `deadlineMarginMs` (default 500), `retry` defaults, `logger` (default `console`).
 * @example
 * ```ts
 * const { dsql, cleanup } = createDsqlContext(lambdaPool(), context);
 * try { return await work(dsql); } finally { cleanup(); }
 * ```
 */
export function createDsqlContext(
  pool: pg.Pool,
  context: LambdaContextLike | undefined,
  options: DsqlLifecycleOptions = {},
): DsqlInvocation {
  const margin = options.deadlineMarginMs ?? lifecycleDefaults.deadlineMarginMs;
  const logger = options.logger ?? console;
  // Created on the first connect(): most invocations only use query() and transaction().
  let tracked: Map<pg.PoolClient, TrackedClient> | undefined;
  let ended = false;

  // A statement sent on a connection that died silently (a half-open path noticed by nothing)
  // would wait forever; bound it by the invocation's deadline so the handler gets an error while
  // it can still answer, and the dead connection is destroyed instead of pooled again. Only when
  // neither the statement nor the pool sets a query_timeout of its own.
  const poolTimeout = (pool as unknown as { options?: { query_timeout?: number } }).options?.query_timeout;
  const boundedByDeadline = (text: string | pg.QueryConfig): string | pg.QueryConfig => {
    const remaining = context?.getRemainingTimeInMillis?.();
    if (remaining === undefined || poolTimeout || typeof (text as { submit?: unknown }).submit === 'function')
      return text;
    const config = typeof text === 'string' ? { text } : text;
    if ((config as { query_timeout?: number }).query_timeout) return text;
    return { ...config, query_timeout: Math.max(1, Math.floor(remaining - margin)) } as pg.QueryConfig;
  };

  const dsql: Dsql = {
    pool,
    query(text: string | pg.QueryConfig, values?: unknown) {
      return pool.query(boundedByDeadline(text) as string, values as unknown[]);
    },
    async connect() {
      // Captured now, formatted only if the client leaks (V8 formats stacks lazily).
      const origin = new Error('checked out here');
      const client = await pool.connect();
      const poolRelease = client.release;
      let released = false;
      // Idempotent: after cleanup released a leaked client, a late release from the handler
      // (e.g. after a middy timeoutEarly response) must not throw pg-pool's double-release error.
      client.release = function releaseTracked(err?: Error | boolean) {
        if (released) return;
        released = true;
        tracked?.delete(client);
        poolRelease(err);
      };
      if (ended) {
        // Checked out after the invocation ended (an un-awaited call): give it straight back.
        client.release();
        throw new Error('dsql-lambda: connect() called after the invocation ended');
      }
      tracked ??= new Map();
      tracked.set(client, { origin, release: client.release });
      return client;
    },
    transaction(fn, callOptions) {
      const remaining = context?.getRemainingTimeInMillis?.();
      const deadline = typeof remaining === 'number' ? Date.now() + remaining - margin : undefined;
      return withRetry(pool, fn, {
        ...(deadline !== undefined ? { deadline } : {}),
        ...options.retry,
        ...callOptions,
      });
    },
  } as Dsql;

  function cleanup(): number {
    if (ended) return 0;
    ended = true;
    if (tracked === undefined || tracked.size === 0) return 0;
    const leaked = [...tracked.values()];
    tracked.clear();
    const request = context?.awsRequestId ? ` (request ${context.awsRequestId})` : '';
    for (const { origin, release } of leaked) {
      logger.warn(
        `dsql-lambda: a client from dsql.connect() was not released before the invocation ended${request}; ` +
          'closing its connection. Release clients in a finally block.',
        origin.stack,
      );
      // Destroyed, not pooled: whoever leaked it may still hold it (a handler still running after
      // middy's timeoutEarly response, an un-awaited promise) and would then share a connection,
      // maybe mid-transaction, with the next invocation. A reconnect is the cheaper risk.
      release(true);
    }
    return leaked.length;
  }

  return { dsql, cleanup };
}

/**
 * Splits {@link DsqlHandlerOptions} into a pool source and the lifecycle options; the pool source
 * resolves nothing until called. Shared by {@link withDsql} and the middy middleware, and useful
 * to build another integration the same way.
 * @example
 * ```ts
 * const { getPool, lifecycle } = splitHandlerOptions({ host: 'abc…xyz', deadlineMarginMs: 250 });
 * const { dsql, cleanup } = createDsqlContext(getPool(), context, lifecycle);
 * ```
 */
export function splitHandlerOptions(options: DsqlHandlerOptions | undefined): {
  getPool: () => pg.Pool;
  lifecycle: DsqlLifecycleOptions;
} {
  if (options === undefined || typeof options === 'string') {
    return { getPool: () => lambdaPool(options), lifecycle: {} };
  }
  const { deadlineMarginMs, retry, logger, pool, ...config } = options;
  const lifecycle: DsqlLifecycleOptions = { deadlineMarginMs, retry, logger };
  if (pool) return { getPool: () => pool, lifecycle };
  const hasConfig = Object.values(config).some((v) => v !== undefined);
  const resolved = hasConfig ? (config as DsqlConfig) : undefined;
  return { getPool: () => lambdaPool(resolved), lifecycle };
}

/**
 * Wraps an async Lambda handler so it receives `context.dsql` (query, connect, transaction,
 * pool), without middy. The pool is resolved on the first invocation (not when the module loads,
 * so a test can import the handler without DSQL settings) and reused by every later invocation;
 * after each invocation, leaked clients are taken back (connection closed) with a warning.
 *
 * @param handler - an async handler; its context gains `dsql`.
 * @param options - config / connection string / `{ pool }`, plus `deadlineMarginMs` (default 500),
 *   `retry`, `logger` (default `console`). Default: configuration from the environment.
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
  const { getPool, lifecycle } = splitHandlerOptions(options);
  let pool: pg.Pool | undefined;
  return async function withDsqlHandler(event: TEvent, context: TContext): Promise<TResult> {
    pool ??= getPool();
    const invocation = createDsqlContext(pool, context, lifecycle);
    const ctx = context as TContext & DsqlContext;
    ctx.dsql = invocation.dsql;
    try {
      return await handler(event, ctx);
    } finally {
      invocation.cleanup();
    }
  };
}
