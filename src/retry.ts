/**
 * Optimistic-concurrency (OCC) retry for Aurora DSQL: one retry loop ({@link retry}) and two
 * short attempt bodies, a transaction ({@link withRetry}) and a single autocommit statement
 * ({@link execWithRetry}). Every attempt checks out its own pool connection, so a retry after a
 * lost connection runs on a healthy one.
 *
 * What is retried, decided from the classifiers in `errors.ts`:
 * - an OCC conflict (`OC000`, `OC001`, SQLSTATE `40001`) on any statement or on COMMIT: nothing
 *   was committed, so the attempt is rolled back and run again after a backoff sleep;
 * - the connection lost *before* COMMIT (or the statement) was sent: run again on another one;
 * - the connection lost, or the deadline reached, *while* COMMIT (or an autocommit statement)
 *   was in flight: it may have committed, so it is never retried: {@link CommitOutcomeUnknownError};
 * - anything else: rolled back and rethrown unchanged.
 */
import type pg from 'pg';
import { DSQL_DEFAULTS } from './defaults.js';
import {
  CommitOutcomeUnknownError,
  DsqlConfigError,
  DsqlConnectionError,
  DsqlError,
  isConnectionLostError,
  isOccError,
  OccRetryExhaustedError,
  occCode,
} from './errors.js';

/**
 * Why an attempt is retried: the OCC code (`OC000` data conflict, `OC001` schema changed),
 * SQLSTATE `40001` without a code (plain PostgreSQL), or a connection lost before COMMIT was sent.
 * @example
 * const conflicts: Record<RetryCode, number> = { OC000: 0, OC001: 0, '40001': 0, 'connection-lost': 0 };
 * await withRetry(pool, fn, { onRetry: ({ code }) => conflicts[code]++ });
 */
export type RetryCode = 'OC000' | 'OC001' | '40001' | 'connection-lost';

/**
 * What {@link RetryOptions.onRetry} is told before each backoff sleep.
 * @example
 * const onRetry = ({ attempt, delayMs, code }: RetryInfo) =>
 *   console.warn(`attempt ${attempt} failed (${code}), retrying in ${Math.round(delayMs)} ms`);
 */
export interface RetryInfo {
  /** Number of the attempt that just failed (1 for the first). */
  attempt: number;
  /** How long the retry sleeps before the next attempt, in milliseconds. */
  delayMs: number;
  /** The error that failed the attempt. */
  error: unknown;
  /** Classification of `error`. */
  code: RetryCode;
}

/**
 * Retry policy of {@link withRetry} and {@link execWithRetry}. Every field is optional: a field
 * not given comes from the pool's policy (`createPool({ retry })`), then from
 * `DSQL_DEFAULTS.retry`.
 * @example
 * const options: RetryOptions = {
 *   deadline: Date.now() + context.getRemainingTimeInMillis() - 500,
 *   signal: AbortSignal.timeout(10_000),
 *   onRetry: ({ attempt, code }) => metrics.count('occ_retry', { attempt, code }),
 * };
 */
export interface RetryOptions {
  /** Most attempts, the first included (1: never retry). Default `DSQL_DEFAULTS.retry.maxAttempts` (8). */
  maxAttempts?: number | undefined;
  /** Shortest backoff sleep, in ms. Default `DSQL_DEFAULTS.retry.baseDelayMs` (50). */
  baseDelayMs?: number | undefined;
  /** Longest backoff sleep, in ms; wins over `baseDelayMs`. Default `DSQL_DEFAULTS.retry.maxDelayMs` (1000). */
  maxDelayMs?: number | undefined;
  /**
   * Epoch milliseconds (`Date.now()`'s clock) by which the call settles, waiting for a pool
   * connection included. No attempt or sleep starts that is not expected to end before it (an
   * attempt is expected to last as long as the longest so far). An attempt still running when it
   * passes is abandoned and its connection closed (which rolls it back); if COMMIT or the
   * statement was in flight, {@link CommitOutcomeUnknownError}. Default: none.
   */
  deadline?: number | undefined;
  /**
   * Stops retrying when aborted: a backoff sleep or the wait for a connection at once, an attempt
   * by abandoning it and closing its connection. A COMMIT (or statement) in flight is left to
   * finish, so its outcome is known. Default: none.
   */
  signal?: AbortSignal | undefined;
  /** Called before each backoff sleep, holding no connection; if it throws, the call rejects with that. Default: none. */
  onRetry?: ((info: RetryInfo) => void) | undefined;
}

/**
 * The transaction handle given to the callback of {@link withRetry}: `query` only, so that the
 * callback cannot release or commit the connection. It stops working when its attempt ends, so a
 * query a failed attempt left running can never land in the next one.
 * @example
 * async function debit(tx: TransactionClient, id: string, amount: number): Promise<void> {
 *   await tx.query('UPDATE account SET balance = balance - $2 WHERE id = $1', [id, amount]);
 * }
 */
export interface TransactionClient {
  /** `pg.Client#query`, run inside this attempt's transaction. */
  query: pg.ClientBase['query'];
}

/**
 * Runs `fn` in a transaction (BEGIN, `fn(tx)`, COMMIT) on a pool connection, and runs it again in
 * a new transaction, on a new checkout, after an OCC conflict or a connection lost before COMMIT.
 *
 * **`fn` must be safe to run more than once.** What it does through `tx` is rolled back when an
 * attempt fails; nothing else is. Send emails, call APIs and publish messages after withRetry
 * returns, with the value `fn` returned.
 *
 * - OCC conflict on any statement or on COMMIT: rolled back, retried after a backoff sleep.
 * - Connection lost before COMMIT was sent: retried on another connection.
 * - Connection lost, or `deadline` reached, while COMMIT was in flight (pg's `query_timeout`
 *   included): {@link CommitOutcomeUnknownError}, never retried. Make the transaction verifiable
 *   (an idempotency key row) if you must know.
 * - `fn` caught a failed statement, so PostgreSQL turned COMMIT into ROLLBACK: retried when that
 *   error was an OCC conflict, otherwise a `DsqlError` whose `cause` is it (never a success).
 * - Any other error: rolled back and rethrown unchanged.
 * - Out of attempts, past `deadline`, or `signal` aborted: {@link OccRetryExhaustedError}
 *   (`cause` = the last error). No connection within the deadline: `DsqlConnectionError`.
 *
 * A connection is never pooled again in an unknown state: when ROLLBACK fails or the connection
 * was lost or abandoned, it is destroyed. Every checkout is released exactly once, a checkout
 * granted after the call gave up included.
 * @param pool Where each attempt checks out its connection.
 * @param fn The transaction body; its resolved value is returned after COMMIT succeeds.
 * @param options Retry policy; see {@link RetryOptions}.
 * @returns What `fn` returned, once COMMIT succeeded.
 * @example
 * ```ts
 * const transferId = randomUUID(); // decided once, outside the retried callback
 * await withRetry(pool, async (tx) => {
 *   await tx.query('UPDATE account SET balance = balance - $2 WHERE id = $1', [from, amount]);
 *   await tx.query('UPDATE account SET balance = balance + $2 WHERE id = $1', [to, amount]);
 *   await tx.query('INSERT INTO transfer (id, amount) VALUES ($1, $2)', [transferId, amount]);
 * }, { deadline: Date.now() + context.getRemainingTimeInMillis() - 1000 });
 * await sendReceiptEmail(transferId); // after the commit, never inside fn
 * ```
 */
export function withRetry<T>(
  pool: pg.Pool,
  fn: (tx: TransactionClient) => Promise<T>,
  options?: RetryOptions,
): Promise<T> {
  if (typeof fn !== 'function') return Promise.reject(new TypeError('withRetry: fn must be a function'));
  return retry(pool, options, (a) => transaction(a, fn));
}

/**
 * Runs one statement outside an explicit transaction (autocommit), retried like
 * {@link withRetry}: a statement refused with an OCC conflict cannot have committed, so it is
 * sent again. For single writes and DDL such as `CREATE INDEX ASYNC` (which can fail with
 * `OC001`). A connection lost, or the deadline reached, while it was in flight means its outcome
 * is unknown: {@link CommitOutcomeUnknownError}, never retried. Send one statement: a string of
 * several that commits part of its work before a conflict would run that part twice.
 * @param pool Where each attempt checks out its connection.
 * @param sql The statement, or a pg query config (`{ text, values, rowMode, … }`).
 * @param params Its parameters (`$1`, `$2`, …). Default: none.
 * @param options Retry policy; see {@link RetryOptions}.
 * @returns The statement's `pg.QueryResult`.
 * @example
 * ```ts
 * await execWithRetry(pool, 'CREATE INDEX ASYNC idx_orders_customer ON orders (customer_id)');
 * const { rowCount } = await execWithRetry(pool, 'UPDATE counter SET n = n + 1 WHERE id = $1', [id]);
 * ```
 */
export function execWithRetry<R extends pg.QueryResultRow = pg.QueryResultRow>(
  pool: pg.Pool,
  sql: string | pg.QueryConfig,
  params?: unknown[],
  options?: RetryOptions,
): Promise<pg.QueryResult<R>> {
  return retry(pool, options, (a) => statement<R>(a, sql, params));
}

/**
 * Test and benchmark seams, read from the options object of a call; not part of
 * {@link RetryOptions}, not exported from the package.
 * @internal
 */
export interface RetrySeams {
  /** Clock of `deadline`. Default `Date.now`. */
  now?: () => number;
  /** Backoff sleep; must reject when `signal` aborts. Default: a timer. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Uniform random numbers in [0, 1). Default `Math.random`. */
  random?: () => number;
  /** Another backoff scheme (benchmarks). Default {@link backoffDelay}. */
  backoff?: (failures: number, previousMs: number, policy: Policy, random: () => number) => number;
}

interface Policy {
  baseDelayMs: number;
  maxDelayMs: number;
}

/**
 * The backoff sleep after a failed attempt ("decorrelated jitter"): uniform in
 * `[base, 3 × previous]` (`3 × base` the first time), capped at `maxDelayMs`. Every retry waits
 * at least the base, and the window grows from the sleep actually taken, so transactions that
 * collided drift apart. (In `bench/occ.ts` it spent the fewest attempts per commit.)
 * @internal
 */
export function backoffDelay(
  _failures: number,
  previousMs: number,
  { baseDelayMs: base, maxDelayMs: cap }: Policy,
  random: () => number = Math.random,
): number {
  const upper = Math.max(base, 3 * (previousMs > 0 ? previousMs : base));
  return Math.min(cap, base + random() * (upper - base));
}

// ---------------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------------

type Resolved = Policy & { maxAttempts: number } & Pick<RetryOptions, 'deadline' | 'signal' | 'onRetry'> &
  Required<RetrySeams>;

/** Interrupts whatever a call awaits: the deadline passed, or the signal aborted. */
class Stop {
  constructor(
    readonly reason: 'deadline' | 'aborted',
    readonly cause?: unknown,
  ) {}
}

/** An attempt failed before anything was sent that could commit: worth another connection. */
class Unsent {
  constructor(readonly error: unknown) {}
}

/** One call's deadline and signal, as promises that reject with a {@link Stop}. */
interface Scope {
  readonly o: Resolved;
  /** Races `p` against the deadline and, unless `abortable` is false, the signal. */
  guard<T>(p: Promise<T>, abortable?: boolean): Promise<T>;
}

/** One checked-out connection and what happened to it during an attempt. */
interface Attempt {
  readonly client: pg.PoolClient;
  /** 1 for the first attempt of the call. */
  readonly number: number;
  readonly scope: Scope;
  /** Set when the connection emitted `'error'` or `'end'`. */
  lost?: Error | undefined;
  /** Set when the connection must be destroyed instead of pooled again. */
  broken?: boolean;
}

const noop = () => {};
// setTimeout fires at once for delays over 2^31 − 1 ms (24.8 days): such a deadline is none.
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The retry loop shared by both bodies: acquire, attempt, release, classify, back off. `attempt`
 * throws to fail; the loop retries OCC conflicts and {@link Unsent}, turns a {@link Stop} into
 * the caller's error, and rethrows anything else.
 */
async function retry<T>(
  pool: pg.Pool,
  options: RetryOptions | undefined,
  attempt: (a: Attempt) => Promise<T>,
): Promise<T> {
  const o = resolve(pool, options);
  const s = scope(o);
  const started = o.now();
  let attempts = 0;
  let lastError: unknown;
  let previousDelay = 0;
  let longest = 0;
  try {
    for (;;) {
      if (o.signal?.aborted) throw new Stop('aborted', o.signal.reason);
      if (o.deadline !== undefined && o.now() + longest >= o.deadline) throw new Stop('deadline');
      const attemptStarted = o.now();
      let client: pg.PoolClient;
      try {
        client = await acquire(pool, s);
      } catch (err) {
        if (err instanceof Stop && err.reason === 'deadline' && attempts === 0)
          throw noConnection(pool, o.now() - started);
        throw err;
      }
      attempts++;
      const a = lease(client, s, attempts);
      try {
        return await attempt(a);
      } catch (err) {
        if (err instanceof Stop || !(err instanceof Unsent || isOccError(err))) throw err;
        lastError = err;
      } finally {
        a.done();
        longest = Math.max(longest, o.now() - attemptStarted);
      }
      if (attempts >= o.maxAttempts) throw gaveUp('attempts', attempts, o.now() - started, lastError);
      const delayMs = o.backoff(attempts, previousDelay, o, o.random);
      previousDelay = delayMs;
      if (o.deadline !== undefined && o.now() + delayMs + longest >= o.deadline) throw new Stop('deadline');
      const error = lastError instanceof Unsent ? lastError.error : lastError;
      const code = lastError instanceof Unsent ? 'connection-lost' : (occCode(error) ?? '40001');
      o.onRetry?.({ attempt: attempts, delayMs, error, code });
      await s.guard(o.sleep(delayMs, o.signal));
    }
  } catch (err) {
    if (!(err instanceof Stop)) throw err;
    const last = lastError instanceof Unsent ? lastError.error : lastError;
    throw gaveUp(err.reason, attempts, o.now() - started, last ?? err.cause);
  } finally {
    s.dispose();
  }
}

function resolve(pool: pg.Pool, options: RetryOptions | undefined): Resolved {
  // The pool's policy (createPool({ retry })), read defensively: any pg.Pool can be passed.
  const poolPolicy = (pool as { retry?: RetryOptions } | null)?.retry;
  const o: Resolved = {
    ...DSQL_DEFAULTS.retry,
    now: Date.now,
    sleep,
    random: Math.random,
    backoff: backoffDelay,
    ...defined(poolPolicy),
    ...defined(options),
  };
  if (!Number.isInteger(o.maxAttempts) || o.maxAttempts < 1)
    throw new DsqlConfigError('maxAttempts', 'must be an integer ≥ 1');
  if (!(o.baseDelayMs >= 0 && Number.isFinite(o.baseDelayMs)))
    throw new DsqlConfigError('baseDelayMs', 'must be a finite number ≥ 0');
  if (!(o.maxDelayMs >= 0 && Number.isFinite(o.maxDelayMs)))
    throw new DsqlConfigError('maxDelayMs', 'must be a finite number ≥ 0');
  if (o.deadline !== undefined && !Number.isFinite(o.deadline))
    throw new DsqlConfigError('deadline', 'must be a finite epoch time in milliseconds');
  const t = pool as unknown as Partial<pg.PoolClient> | null;
  if (
    typeof t?.connect !== 'function' ||
    typeof t.release === 'function' ||
    typeof t.escapeIdentifier === 'function'
  )
    throw new TypeError(
      'withRetry: expected a pg.Pool (each attempt checks out its own connection), not a client',
    );
  return o;
}

/** `{ ...defaults, ...options }` must not let an explicit `undefined` erase a default. */
function defined<T extends object>(o: T | undefined): Partial<T> {
  return Object.fromEntries(Object.entries(o ?? {}).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((done, fail) => {
    const onAbort = () => {
      clearTimeout(timer);
      fail(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      done();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function scope(o: Resolved): Scope & { dispose(): void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort = noop;
  const never = new Promise<never>(noop);
  let deadline = never;
  let aborted = never;
  const ms = o.deadline === undefined ? Number.POSITIVE_INFINITY : o.deadline - o.now();
  if (ms <= MAX_TIMER_MS)
    deadline = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Stop('deadline')), Math.max(0, ms));
    });
  const { signal } = o;
  if (signal)
    aborted = new Promise((_, reject) => {
      onAbort = () => reject(new Stop('aborted', signal.reason));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
  deadline.catch(noop);
  aborted.catch(noop);
  return {
    o,
    guard(p, abortable = true) {
      p.catch(noop); // when the deadline or the signal wins, p's later rejection is nobody's
      return Promise.race(abortable ? [p, deadline, aborted] : [p, deadline]);
    },
    dispose() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    },
  };
}

/**
 * `pool.connect()` within a deadline and a signal (`context.dsql.connect()`): past the deadline a
 * `DsqlConnectionError` saying what was waited for; a checkout granted later is released at once.
 * @internal
 */
export async function connectWithin(
  pool: pg.Pool,
  options: Pick<RetryOptions, 'deadline' | 'signal'>,
): Promise<pg.PoolClient> {
  const o = resolve(pool, options);
  const s = scope(o);
  const started = o.now();
  try {
    return await acquire(pool, s);
  } catch (err) {
    if (!(err instanceof Stop)) throw err;
    throw err.reason === 'deadline'
      ? noConnection(pool, o.now() - started)
      : gaveUp('aborted', 0, o.now() - started, err.cause);
  } finally {
    s.dispose();
  }
}

/** Checks out a client within the scope; a checkout granted after the scope gave up is released. */
async function acquire(pool: pg.Pool, s: Scope): Promise<pg.PoolClient> {
  const pending = pool.connect();
  try {
    return await s.guard(pending);
  } catch (err) {
    if (err instanceof Stop) pending.then((late) => late.release(), noop);
    throw err;
  }
}

/** The deadline passed before any connection was handed over: say what was being waited for. */
function noConnection(pool: pg.Pool, elapsedMs: number): DsqlConnectionError {
  const { host, port } = (pool as { options?: { host?: string; port?: number } }).options ?? {};
  const where = host ? ` to ${host}${port ? `:${port}` : ''}` : '';
  const max = (pool as { options?: { max?: number } }).options?.max;
  const busy = max !== undefined && pool.totalCount >= max && pool.idleCount === 0;
  const why = busy
    ? `all ${max} connections of the pool were in use`
    : 'opening a new connection did not finish (refused, unreachable or not admitted)';
  return new DsqlConnectionError(
    `Could not get a connection${where} within ${Math.round(elapsedMs)} ms (deadline reached): ${why}`,
    0,
  );
}

function gaveUp(
  reason: 'attempts' | 'deadline' | 'aborted',
  attempts: number,
  elapsedMs: number,
  cause: unknown,
): OccRetryExhaustedError {
  const why = { attempts: 'out of attempts', deadline: 'deadline reached', aborted: 'aborted' }[reason];
  const last = cause instanceof Error ? `: ${cause.message}` : '';
  return new OccRetryExhaustedError(
    `OCC retry gave up after ${attempts} attempt${attempts === 1 ? '' : 's'} (${why})${last}`,
    { attempts, elapsedMs, reason },
    { cause },
  );
}

function lease(client: pg.PoolClient, s: Scope, number: number): Attempt & { done(): void } {
  const a: Attempt & { done(): void } = {
    client,
    number,
    scope: s,
    done() {
      client.removeListener('error', onError);
      client.removeListener('end', onEnd);
      client.release(a.broken || a.lost !== undefined);
    },
  };
  // A checked-out plain pg client has no 'error' listener: without ours a socket error would
  // crash the process.
  const onError = (err: Error) => {
    a.lost ??= err;
  };
  const onEnd = () => {
    a.lost ??= new DsqlError('connection ended');
  };
  client.on('error', onError);
  client.on('end', onEnd);
  return a;
}

// ---------------------------------------------------------------------------------------------
// The two attempt bodies
// ---------------------------------------------------------------------------------------------

async function transaction<T>(a: Attempt, fn: (tx: TransactionClient) => Promise<T>): Promise<T> {
  const { client, scope: s } = a;
  const log = { fromDatabase: new WeakSet<object>(), first: undefined as unknown, occ: undefined as unknown };
  const tx = transactionClient(client, log);
  let value: T;
  let began = false;
  try {
    await s.guard(client.query('BEGIN'));
    began = true;
    value = await s.guard(Promise.resolve().then(() => fn(tx)));
  } catch (err) {
    tx.closed = true;
    if (err instanceof Stop) {
      // fn may still be running, with queries queued: closing the connection is the only
      // prompt rollback that cannot race with them.
      a.broken = true;
      throw err;
    }
    // Nothing can have committed. A lost connection is worth another when the error came from the
    // database (not, say, an HTTP call in fn that failed with ECONNRESET).
    const fromDatabase = !began || a.lost !== undefined || (isObject(err) && log.fromDatabase.has(err));
    if (fromDatabase && isConnectionLostError(err)) {
      a.broken = true;
      throw new Unsent(err);
    }
    await rollback(a);
    throw err;
  }
  tx.closed = true;
  if (s.o.deadline !== undefined && s.o.now() >= s.o.deadline) {
    // Past the deadline a COMMIT could only end as "outcome unknown", and there is no time left for
    // a ROLLBACK round trip: closing the connection rolls the transaction back.
    a.broken = true;
    throw new Stop('deadline');
  }
  if (s.o.signal?.aborted) {
    await rollback(a);
    throw new Stop('aborted', s.o.signal.reason);
  }
  // The socket died while fn ran and fn swallowed the error: COMMIT would never be answered.
  if (a.lost) throw new Unsent(a.lost);
  const result = await sent(a, client.query('COMMIT'), 'COMMIT');
  if (result.command === 'ROLLBACK') {
    // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK: fn caught a statement error.
    if (log.occ !== undefined) throw log.occ;
    throw new DsqlError(
      'withRetry: COMMIT rolled the transaction back: a statement in fn failed and fn caught the error',
      { cause: log.first },
    );
  }
  return value;
}

function statement<R extends pg.QueryResultRow>(
  a: Attempt,
  sql: string | pg.QueryConfig,
  params: unknown[] | undefined,
): Promise<pg.QueryResult<R>> {
  if (a.lost) return Promise.reject(new Unsent(a.lost));
  return sent(a, a.client.query<R>(sql as string, params), 'the statement');
}

// pg answers these at once, without sending anything, on a client it knows is dead.
const NOT_SENT = /is not queryable/;

/**
 * Awaits something that may commit (COMMIT, an autocommit statement). The signal does not cut it
 * short, so its outcome is known; the deadline or a lost connection leaves it unknown.
 */
async function sent<R>(a: Attempt, p: Promise<R>, what: string): Promise<R> {
  try {
    return await a.scope.guard(p, false);
  } catch (err) {
    const message = (err as { message?: unknown } | null)?.message;
    if (typeof message === 'string' && NOT_SENT.test(message)) {
      a.broken = true;
      throw new Unsent(err);
    }
    if (err instanceof Stop || a.lost || isConnectionLostError(err)) {
      a.broken = true;
      const cause = err instanceof Stop ? new DsqlError('deadline reached') : err;
      throw new CommitOutcomeUnknownError(
        `The connection was lost (or the deadline passed) while ${what} was in flight: it may or may not have committed`,
        a.number,
        { cause },
      );
    }
    await rollback(a); // e.g. execWithRetry('BEGIN') left a transaction open
    throw err;
  }
}

/** Rolls back unless the server says no transaction is open; destroys the connection if it fails. */
async function rollback(a: Attempt): Promise<void> {
  // pg ≥ 8.23: status of the last ReadyForQuery; 'I' = idle (a failed COMMIT ended the transaction).
  if (a.broken || a.lost || a.client.getTransactionStatus?.() === 'I') return;
  try {
    // Not abortable: an aborted caller still wants a clean connection back in the pool.
    await a.scope.guard(a.client.query('ROLLBACK'), false);
  } catch {
    a.broken = true;
  }
}

function isObject(e: unknown): e is object {
  return typeof e === 'object' && e !== null;
}

/** `tx`: pg's query, noting errors from the database, refused once its attempt is over. */
function transactionClient(
  client: pg.ClientBase,
  log: { fromDatabase: WeakSet<object>; first: unknown; occ: unknown },
): TransactionClient & { closed: boolean } {
  const note = (err: unknown) => {
    if (isObject(err)) log.fromDatabase.add(err);
    log.first ??= err;
    if (log.occ === undefined && isOccError(err)) log.occ = err;
  };
  const tx = {
    closed: false,
    query: ((...args: unknown[]) => {
      if (tx.closed)
        throw new DsqlError(
          'withRetry: tx.query() called after its attempt ended (was a query not awaited?)',
        );
      const callback = args.at(-1);
      if (typeof callback === 'function')
        args[args.length - 1] = (err: unknown, res: unknown) => {
          if (err) note(err);
          callback(err, res);
        };
      const result = (client.query as (...a: unknown[]) => unknown).apply(client, args);
      // A thenable, not `instanceof Promise`: pg can be configured with another Promise class.
      const then = (result as PromiseLike<unknown> | undefined)?.then;
      if (typeof then !== 'function') return result;
      return (result as PromiseLike<unknown>).then(undefined, (err: unknown) => {
        note(err);
        throw err;
      });
    }) as pg.ClientBase['query'],
  };
  return tx;
}
