/**
 * Optimistic-concurrency (OCC) retry for Aurora DSQL: run a transaction, and when DSQL rejects it
 * with a conflict (`OC000` data, `OC001` schema, SQLSTATE `40001`), roll back, back off with
 * jitter and run it again, within an attempt budget, a deadline and an abort signal.
 *
 * What is retried and what is not is decided here from the classifiers in `errors.ts`:
 * - an OCC conflict, on any statement or on COMMIT: retried;
 * - the connection lost *before* COMMIT was sent: retried on a new connection (pool targets only);
 * - the connection lost (or the deadline reached) *while* COMMIT was in flight: the transaction may
 *   or may not have committed, so it is never retried: {@link CommitOutcomeUnknownError};
 * - anything else: rolled back and rethrown unchanged.
 */
import pg from 'pg';
import {
  CommitOutcomeUnknownError,
  DsqlConfigError,
  DsqlError,
  isConnectionLostError,
  isOccError,
  OccRetryExhaustedError,
  occCode,
} from './errors.js';

/**
 * How each backoff delay is randomised. `d` is the exponential delay for the attempt,
 * `min(maxDelayMs, baseDelayMs × 2^(failures − 1))`, `U` a uniform random number in [0, 1), and
 * `previous` the delay slept before the last attempt.
 * - `'decorrelated'` (default): `min(maxDelayMs, baseDelayMs + U × (3 × previous − baseDelayMs))`
 *   (`3 × baseDelayMs` before the first). Every retry waits at least the base, so it does not
 *   land while the transactions it lost to are still committing, and the window grows from the
 *   delay actually slept rather than from the attempt number, so colliding transactions drift
 *   apart faster than with a fixed schedule. In `bench/occ.ts` it spent the fewest attempts per
 *   commit of the three schemes in every run, gave up least or as little, and under heavy
 *   contention had the highest goodput in 5 of 7 runs.
 * - `'equal'`: `d/2 + U × d/2`. A close second; its sleeps follow the attempt number.
 * - `'full'`: `U × d`. The most spread, but a share of retries come back almost at once. In AWS's
 *   published simulations it needs the fewest calls; in `bench/occ.ts` (real conflicts on the
 *   local endpoint) it spent more attempts per commit than the two others with the same base, in
 *   every run.
 * - `'none'`: `d`. Deterministic; colliding transactions stay in lockstep. For tests.
 * - a number `f` in [0, 1]: `d × (1 + U × f)`, the scheme of the official DSQL connectors
 *   (`0.25`). Jitter proportional to the delay keeps retries nearly synchronised.
 * The deadline check uses the delay actually drawn, whatever the scheme.
 * @example
 * await withRetry(pool, fn, { jitter: 'equal' });
 * await withRetry(pool, fn, { maxAttempts: 4, baseDelayMs: 1, maxDelayMs: 100, jitter: 0.25 }); // official node connector
 */
export type Jitter = 'full' | 'equal' | 'decorrelated' | 'none' | number;

/**
 * Why an attempt is being retried: the OCC code in the message (`OC000` data conflict, `OC001`
 * schema changed), SQLSTATE `40001` without a code (plain PostgreSQL), or a connection lost
 * before COMMIT was sent.
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
  /** How long withRetry is about to sleep before the next attempt, in milliseconds. */
  delayMs: number;
  /** The error that failed the attempt. */
  error: unknown;
  /** Classification of `error`. */
  code: RetryCode;
}

/**
 * Options of {@link withRetry} and {@link execWithRetry}. Every field is optional; the policy
 * defaults are {@link RETRY_DEFAULTS}.
 * @example
 * const options: RetryOptions = {
 *   deadline: Date.now() + context.getRemainingTimeInMillis() - 500,
 *   signal: AbortSignal.timeout(10_000),
 *   onRetry: ({ attempt, code }) => metrics.count('occ_retry', { attempt, code }),
 * };
 */
export interface RetryOptions {
  /**
   * Most attempts in total, the first included (1 disables retrying). Default
   * {@link RETRY_DEFAULTS}`.maxAttempts`: 8.
   */
  maxAttempts?: number;
  /** Exponential backoff base: the delay window after the first failure, in ms. Default 50. */
  baseDelayMs?: number;
  /** Largest delay window, in ms; wins over `baseDelayMs` when smaller. Default 1000. */
  maxDelayMs?: number;
  /** How delays are randomised, see {@link Jitter}. Default `'decorrelated'`. */
  jitter?: Jitter;
  /**
   * Absolute time (epoch milliseconds, as `Date.now()`) by which withRetry must have settled,
   * e.g. `Date.now() + context.getRemainingTimeInMillis() - 500` in a Lambda handler. No attempt or
   * sleep starts that is not expected to finish before it (an attempt is expected to last as long
   * as the longest attempt so far); an attempt still running when it passes is abandoned and its
   * connection destroyed (which rolls the transaction back), or, if COMMIT was in flight,
   * {@link CommitOutcomeUnknownError} is thrown. Default: none.
   */
  deadline?: number;
  /**
   * Stops retrying when aborted: during a backoff sleep immediately, during an attempt by
   * abandoning it and destroying its connection (which rolls it back). A COMMIT already in flight
   * is allowed to finish, so its outcome is known. Default: none.
   */
  signal?: AbortSignal;
  /**
   * Called before each backoff sleep, e.g. to log or count conflicts. No connection is held
   * while it runs; if it throws, withRetry rejects with that error. Default: none.
   */
  onRetry?: (info: RetryInfo) => void;
  /** Random source in [0, 1) for jitter; for deterministic tests. Default `Math.random`. */
  random?: () => number;
  /**
   * Sleep used between attempts; must reject promptly when `signal` aborts. For tests.
   * Default: a timer that honours the signal.
   */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Clock in epoch milliseconds, the same clock as `deadline`; for tests. Default `Date.now`. */
  now?: () => number;
}

/**
 * Default retry policy, chosen with `bench/occ.ts`: workers moving money between accounts through
 * the local endpoint, real conflicts, two scenarios (hot: 16 workers on 4 accounts, most
 * transactions conflict; moderate: 12 workers on 64 accounts). Numbers of the last run are in
 * `bench/results/occ.json`; what follows held across all runs made to choose, on a shared
 * 2-core machine where goodput varied by ±50 % from run to run:
 * - `maxAttempts: 8`: with the official connectors' 4 attempts, 2–9 % of hot transfers gave up
 *   even with the Go connector's long delays, and our own backoffs with 4 attempts gave up on
 *   6–32 %; with 8, 0–2 %. A Lambda's `deadline`, not the attempt count, should be what finally
 *   stops a retrying handler, and it bounds the extra attempts.
 * - `baseDelayMs: 50`: a small base hurts most: the node connector's 1 ms base (100 ms cap)
 *   gave up on 40–65 % of hot transfers with 5–9 attempts per commit, and a 10 ms base on
 *   3–12 %; 20 ms still gave up more than 50 ms, and decorrelated jitter with a 25 ms base gave
 *   up several times as often as with 50 ms. The first retry comes after 50–150 ms, like the Go connector's
 *   100–125 ms.
 * - `jitter: 'decorrelated'`: see {@link Jitter}. In the moderate scenario every 8-attempt
 *   policy committed everything and goodput differences were within the noise.
 * - `maxDelayMs: 1000`: bounds any single sleep. The seven sleeps of a transaction that uses
 *   every attempt take 0.35–5.6 s, 2.6 s on average; the deadline check skips a sleep that would
 *   overrun.
 * @example
 * await withRetry(pool, fn, { ...RETRY_DEFAULTS, maxAttempts: RETRY_DEFAULTS.maxAttempts * 2 });
 */
export const RETRY_DEFAULTS: Readonly<{
  maxAttempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  jitter: Jitter;
}> = Object.freeze({
  maxAttempts: 8,
  baseDelayMs: 50,
  maxDelayMs: 1000,
  jitter: 'decorrelated' as Jitter,
});

/**
 * The transaction handle given to the callback of {@link withRetry}: only `query`, so that the
 * callback cannot release, end or commit the connection it runs on. It stops working when its
 * attempt is over (a query made later throws), so a query left running by a failed attempt can
 * never land in the next one.
 * @example
 * async function debit(tx: TransactionClient, id: string, amount: number): Promise<void> {
 *   await tx.query('UPDATE account SET balance = balance - $2 WHERE id = $1', [id, amount]);
 * }
 * await withRetry(pool, (tx) => debit(tx, 'alice', 10));
 */
export interface TransactionClient {
  /** `pg.Client#query`, run inside this attempt's transaction. */
  query: pg.ClientBase['query'];
}

/**
 * What withRetry can run on:
 * - a pool (`pg.Pool`, or anything whose `connect()` resolves to a client with `release()`): each
 *   attempt checks out a client and releases it, so a retry can use a new, healthy connection;
 * - a checked-out `pg.PoolClient` or a connected `pg.Client`: every attempt runs on it. If its
 *   connection is lost there is nothing to retry on, and the connection error is thrown. If it
 *   has to be destroyed (ROLLBACK failed, outcome unknown) it is ended: `release()` of an ended
 *   pool client discards it, and a `pg.Client` must be replaced.
 * @example
 * await withRetry(pool, fn);              // each attempt on a pool connection
 * const client = await pool.connect();
 * try { await withRetry(client, fn); }    // every attempt on this one connection
 * finally { client.release(); }
 */
export type RetryTarget = pg.Pool | pg.PoolClient | pg.Client | { connect(): Promise<pg.PoolClient> };

/**
 * Runs `fn` in a transaction (BEGIN, `fn(tx)`, COMMIT) and runs it again, in a new transaction,
 * after an OCC conflict, with exponential backoff and jitter.
 *
 * **`fn` must be safe to run more than once.** Everything it does through `tx` is rolled back
 * when an attempt fails, but nothing else is: do not send an email, call an external API,
 * publish a message or increment an in-memory counter inside `fn`; do it after withRetry returns,
 * with the value `fn` returned.
 *
 * - OCC conflict (`OC000`, `OC001`, `40001`) on any statement or on COMMIT: rolled back, retried
 *   after a backoff sleep.
 * - Connection lost before COMMIT was sent: the transaction cannot have committed; the
 *   connection is destroyed and, with a pool target, the attempt retried on another one.
 * - Connection lost, or `deadline` reached, while COMMIT was in flight (including pg's
 *   `query_timeout`, which a COMMIT on a silently dropped connection needs to ever return):
 *   {@link CommitOutcomeUnknownError}, never retried. Make the transaction verifiable (an
 *   idempotency key row) if you must know.
 * - Any other error: rolled back and rethrown unchanged, never retried.
 * - `fn` swallowed a failed statement (so PostgreSQL turned COMMIT into ROLLBACK): retried if the
 *   swallowed error was an OCC conflict, otherwise a `DsqlError` whose `cause` is that error.
 * - Out of attempts, past `deadline`, or `signal` aborted: {@link OccRetryExhaustedError}
 *   (`attempts`, `elapsedMs`, `reason`, `cause` = the last error).
 *
 * A connection is never returned to its pool in an unknown state: when ROLLBACK fails, or the
 * connection was lost, it is destroyed (`release(err)`). Every checked-out client is released
 * exactly once.
 *
 * @param target A pool, or a client to run every attempt on; see {@link RetryTarget}.
 * @param fn The transaction body; its resolved value is returned after COMMIT succeeds.
 * @param options Retry policy; defaults in {@link RETRY_DEFAULTS}.
 * @returns What `fn` returned, once COMMIT succeeded.
 * @example
 * ```ts
 * const transferId = randomUUID(); // decided once, outside the retried callback
 * await withRetry(pool, async (tx) => {
 *   await tx.query('UPDATE account SET balance = balance - $2 WHERE id = $1', [from, amount]);
 *   await tx.query('UPDATE account SET balance = balance + $2 WHERE id = $1', [to, amount]);
 *   await tx.query('INSERT INTO transfer (id, amount) VALUES ($1, $2)', [transferId, amount]);
 * }, { deadline: Date.now() + context.getRemainingTimeInMillis() - 1000 });
 * await sendReceiptEmail(transferId); // side effect: after the commit, never inside fn
 *
 * // NOT safe: a conflict at COMMIT runs fn again, so the customer may get two emails, or an
 * // email for a transfer that never committed (attempts exhausted).
 * await withRetry(pool, async (tx) => {
 *   await tx.query('UPDATE account SET balance = balance - $2 WHERE id = $1', [from, amount]);
 *   await sendReceiptEmail(transferId); // ✗ runs once per attempt
 * });
 * ```
 */
export async function withRetry<T>(
  target: RetryTarget,
  fn: (tx: TransactionClient) => Promise<T>,
  options: RetryOptions = {},
): Promise<T> {
  if (typeof fn !== 'function') throw new TypeError('withRetry: fn must be a function');
  return retryLoop(target, options, (lease, watch) => transactionAttempt(lease, watch, fn));
}

/**
 * Runs one statement outside an explicit transaction (autocommit), with the same retry policy as
 * {@link withRetry}: for DDL such as `CREATE INDEX ASYNC`, which can fail with `OC001`, or a
 * single write. The statement is its own transaction, so a connection lost while it was in
 * flight means its outcome is unknown: {@link CommitOutcomeUnknownError}, not retried.
 *
 * @param target A pool, or a client to run every attempt on; see {@link RetryTarget}.
 * @param sql The statement.
 * @param params Its parameters (`$1`, `$2`, …). Default: none.
 * @param options Retry policy; defaults in {@link RETRY_DEFAULTS}.
 * @returns The statement's `pg.QueryResult`.
 * @example
 * ```ts
 * await execWithRetry(pool, 'CREATE INDEX ASYNC idx_orders_customer ON orders (customer_id)');
 * const { rowCount } = await execWithRetry(pool, 'UPDATE counter SET n = n + 1 WHERE id = $1', [id]);
 * ```
 */
export async function execWithRetry<R extends pg.QueryResultRow = pg.QueryResultRow>(
  target: RetryTarget,
  sql: string,
  params?: unknown[],
  options: RetryOptions = {},
): Promise<pg.QueryResult<R>> {
  return retryLoop(target, options, (lease, watch) => statementAttempt<R>(lease, watch, sql, params));
}

/**
 * The backoff delay before the attempt after `failures` failed ones, per {@link Jitter}.
 * Exported for tests and for tools that want to show a policy's delays.
 * @param failures Attempts failed so far (≥ 1).
 * @param previousDelayMs The previous delay (used by `'decorrelated'`; 0 before the first).
 * @param policy Base, cap and jitter; defaults in {@link RETRY_DEFAULTS}.
 * @param random Uniform random number source in [0, 1). Default `Math.random`.
 * @returns Milliseconds to sleep, ≥ 0.
 * @example
 * backoffDelay(3, 0, { baseDelayMs: 10, maxDelayMs: 1000, jitter: 'none' }); // 40
 */
export function backoffDelay(
  failures: number,
  previousDelayMs: number,
  policy: Pick<RetryOptions, 'baseDelayMs' | 'maxDelayMs' | 'jitter'> = {},
  random: () => number = Math.random,
): number {
  const base = policy.baseDelayMs ?? RETRY_DEFAULTS.baseDelayMs;
  const cap = policy.maxDelayMs ?? RETRY_DEFAULTS.maxDelayMs;
  const jitter = policy.jitter ?? RETRY_DEFAULTS.jitter;
  // 2^30 × base overflows no double and is far beyond any cap; clamping avoids Infinity × 0.
  const exponential = Math.min(cap, base * 2 ** Math.min(Math.max(failures - 1, 0), 30));
  if (typeof jitter === 'number') return exponential * (1 + random() * jitter);
  switch (jitter) {
    case 'none':
      return exponential;
    case 'equal':
      return exponential / 2 + (random() * exponential) / 2;
    case 'decorrelated': {
      const upper = Math.max(base, 3 * (previousDelayMs > 0 ? previousDelayMs : base));
      return Math.min(cap, base + random() * (upper - base));
    }
    default:
      return random() * exponential;
  }
}

// ---------------------------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------------------------

type ResolvedOptions = Required<Omit<RetryOptions, 'deadline' | 'signal' | 'onRetry'>> &
  Pick<RetryOptions, 'deadline' | 'signal' | 'onRetry'>;

function resolveOptions(options: RetryOptions): ResolvedOptions {
  const o: ResolvedOptions = {
    ...RETRY_DEFAULTS,
    random: Math.random,
    sleep: abortableSleep,
    now: Date.now,
    ...stripUndefined(options),
  };
  if (!Number.isInteger(o.maxAttempts) || o.maxAttempts < 1)
    throw new DsqlConfigError('maxAttempts', 'must be an integer ≥ 1');
  if (!Number.isFinite(o.baseDelayMs) || o.baseDelayMs < 0)
    throw new DsqlConfigError('baseDelayMs', 'must be a finite number ≥ 0');
  // A cap below the base is allowed and wins: `{ maxDelayMs: 20 }` alone means "never sleep more
  // than 20 ms", whatever the default base.
  if (!Number.isFinite(o.maxDelayMs) || o.maxDelayMs < 0)
    throw new DsqlConfigError('maxDelayMs', 'must be a finite number ≥ 0');
  const j = o.jitter;
  if (typeof j === 'number' ? !(j >= 0 && j <= 1) : !['full', 'equal', 'decorrelated', 'none'].includes(j))
    throw new DsqlConfigError(
      'jitter',
      "must be 'full', 'equal', 'decorrelated', 'none' or a number in [0, 1]",
    );
  if (o.deadline !== undefined && !Number.isFinite(o.deadline))
    throw new DsqlConfigError('deadline', 'must be a finite epoch time in milliseconds');
  return o;
}

/** `{ ...defaults, ...options }` must not let an explicit `undefined` erase a default. */
function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The client an attempt runs on, and how to give it back. */
interface Lease {
  readonly client: pg.ClientBase;
  /** The error the client emitted, once its connection is gone (`'error'` or `'end'`). */
  readonly lost: Error | undefined;
  /** Gives the client back (or destroys it, when `destroy`); effective once, later calls ignored. */
  done(destroy?: Error): void;
}

/** Where attempts get their client, and whether a retry can get a different connection. */
interface Source {
  readonly reconnects: boolean;
  acquire(): Promise<Lease>;
}

function sourceOf(target: RetryTarget): Source {
  const t = target as Partial<pg.PoolClient> & { connect?: () => Promise<unknown> };
  if (t === null || typeof t !== 'object' || typeof t.connect !== 'function')
    throw new TypeError('withRetry: target must be a pg.Pool, a pg.PoolClient or a pg.Client');
  if (typeof t.release === 'function' || target instanceof pg.Client || isClientLike(t)) {
    // A client we do not own: run on it, never release it. Destroying means ending it; pg-pool's
    // release() then discards an ended client instead of pooling it.
    const client = target as pg.Client;
    return {
      reconnects: false,
      acquire: async () => {
        // BEGIN inside the caller's transaction would only warn, and our COMMIT or ROLLBACK would
        // then end the caller's transaction: refuse instead.
        if (inTransaction(client))
          throw new DsqlError('withRetry: the client is inside a transaction; withRetry opens its own');
        return lease(client, (destroy) => {
          if (destroy) client.end().catch(() => {});
        });
      },
    };
  }
  const pool = target as { connect(): Promise<pg.PoolClient> };
  return {
    reconnects: true,
    acquire: async () => {
      for (;;) {
        const client = await pool.connect();
        if (typeof client?.release !== 'function')
          throw new TypeError('withRetry: target.connect() must resolve to a client with release()');
        // Someone released this client with a transaction still open: it cannot be trusted.
        // Each one is destroyed, so the pool runs out of them and opens clean connections.
        if (inTransaction(client)) {
          client.release(new DsqlError('pooled client was released inside a transaction'));
          continue;
        }
        return lease(client, (destroy) => client.release(destroy));
      }
    },
  };
}

/** The server's last word (ReadyForQuery, pg ≥ 8.23) says a transaction is open or failed. */
function inTransaction(client: pg.ClientBase): boolean {
  const status = client.getTransactionStatus?.();
  return status === 'T' || status === 'E';
}

/** pg-native and other pg-compatible clients: `connect` and `query` like a pool, but escaping too. */
function isClientLike(t: object): boolean {
  return typeof (t as pg.ClientBase).escapeIdentifier === 'function';
}

/**
 * True when pg already knows the client cannot send a query, so a query now fails without
 * reaching the server. pg-pool reads the same two fields to discard dead clients; other clients
 * lack them and count as alive.
 */
function knownDead(client: pg.ClientBase): boolean {
  const c = client as { _queryable?: boolean; _ending?: boolean };
  return c._queryable === false || c._ending === true;
}

function lease(client: pg.ClientBase, giveBack: (destroy: Error | undefined) => void): Lease {
  let lost: Error | undefined = knownDead(client)
    ? new DsqlError('withRetry: the connection of this client is already closed')
    : undefined;
  let released = false;
  // A checked-out client has no pool listener: without ours, a socket error would crash the process.
  const onError = (err: Error) => {
    lost ??= err;
  };
  const onEnd = () => {
    lost ??= new DsqlError('connection ended');
  };
  client.on('error', onError);
  client.on('end', onEnd);
  return {
    client,
    get lost() {
      return lost;
    },
    done(destroy) {
      if (released) return;
      released = true;
      client.removeListener('error', onError);
      client.removeListener('end', onEnd);
      giveBack(destroy ?? lost);
    },
  };
}

/** How an attempt ended. `destroy` set: the connection must not be reused. */
type Outcome<T> =
  | { kind: 'ok'; value: T }
  | { kind: 'retry'; error: unknown; code: RetryCode; destroy?: Error | undefined }
  | { kind: 'connection-lost'; error: unknown; destroy: Error }
  | { kind: 'unknown'; error: unknown; destroy: Error }
  | { kind: 'fail'; error: unknown; destroy?: Error | undefined }
  | { kind: 'stop'; reason: 'deadline' | 'aborted'; error: unknown; destroy?: Error | undefined };

/** Where an attempt is; the abort watch reads it to let a COMMIT in flight finish. */
type Phase = 'begin' | 'body' | 'commit' | 'settled';

/** Rejection value of an attempt's watch: the deadline passed, or the signal aborted. */
class Interrupt {
  constructor(
    readonly reason: 'deadline' | 'aborted',
    readonly cause: unknown,
  ) {}
}

/** Deadline and abort signal of one attempt, as promises that reject with an {@link Interrupt}. */
interface Watch {
  phase: Phase;
  readonly options: ResolvedOptions;
  /** Rejects when the deadline passes. */
  readonly deadline: Promise<never>;
  /** Rejects when the signal aborts, unless COMMIT is in flight then. */
  readonly aborted: Promise<never>;
}

// setTimeout fires at once for delays beyond 2^31 − 1 ms (24.8 days): such a deadline is no deadline.
const MAX_TIMER_MS = 2 ** 31 - 1;

function watchAttempt(options: ResolvedOptions): Watch & { dispose(): void } {
  const { deadline, signal, now } = options;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  const never = new Promise<never>(() => {});
  const watch: Watch & { dispose(): void } = {
    phase: 'begin',
    options,
    deadline: never,
    aborted: never,
    dispose() {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    },
  };
  if (deadline !== undefined && deadline - now() <= MAX_TIMER_MS) {
    (watch as { deadline: Promise<never> }).deadline = new Promise<never>((_, reject) => {
      const fire = () => reject(new Interrupt('deadline', new DsqlError('withRetry: deadline reached')));
      timer = setTimeout(fire, Math.max(0, deadline - now()));
    });
  }
  if (signal) {
    (watch as { aborted: Promise<never> }).aborted = new Promise<never>((_, reject) => {
      onAbort = () => {
        // A COMMIT in flight is left to finish: abandoning it would make its outcome unknown.
        if (watch.phase !== 'commit') reject(new Interrupt('aborted', signal.reason));
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
  }
  watch.deadline.catch(() => {});
  watch.aborted.catch(() => {});
  return watch;
}

/** Races `p` against the deadline and, unless `abortable` is false, the abort signal. */
function guarded<T>(p: Promise<T>, watch: Watch, abortable = true): Promise<T> {
  p.catch(() => {}); // when the watch wins, a later rejection of p must not go unhandled
  return Promise.race(abortable ? [p, watch.deadline, watch.aborted] : [p, watch.deadline]);
}

/** Per-attempt record of errors that came out of `tx.query`, to tell them from fn's own errors. */
interface QueryLog {
  readonly fromDatabase: WeakSet<object>;
  firstError: unknown;
  occ: unknown;
}

function transactionClient(client: pg.ClientBase, log: QueryLog): TransactionClient & { close(): void } {
  let closed = false;
  const note = (err: unknown) => {
    if (typeof err === 'object' && err !== null) log.fromDatabase.add(err);
    if (log.firstError === undefined) log.firstError = err;
    if (log.occ === undefined && isOccError(err)) log.occ = err;
  };
  const query = (...args: unknown[]): unknown => {
    if (closed)
      throw new DsqlError('withRetry: tx.query() called after its attempt ended (was a query not awaited?)');
    const last = args.length - 1;
    const callback = args[last];
    if (typeof callback === 'function') {
      args[last] = (err: unknown, res: unknown) => {
        if (err) note(err);
        callback(err, res);
      };
    }
    const result = (client.query as (...a: unknown[]) => unknown).apply(client, args);
    // A thenable rather than `instanceof Promise`: pg can be configured with another Promise class.
    if (typeof (result as PromiseLike<unknown> | undefined)?.then === 'function') {
      return (result as PromiseLike<unknown>).then(undefined, (err: unknown) => {
        note(err);
        throw err;
      });
    }
    return result;
  };
  return {
    query: query as pg.ClientBase['query'],
    close() {
      closed = true;
    },
  };
}

function retryCode(err: unknown): RetryCode {
  return occCode(err) ?? (isOccError(err) ? '40001' : 'connection-lost');
}

/**
 * Rolls back unless the server says no transaction is open. Returns the reason to destroy the
 * connection (ROLLBACK failed, or the connection is gone), undefined when it is clean.
 */
async function rollbackIfNeeded(lease: Lease, watch: Watch): Promise<Error | undefined> {
  if (lease.lost) return lease.lost;
  // pg ≥ 8.23 exposes the last ReadyForQuery status: 'I' = idle, no ROLLBACK needed (a failed
  // COMMIT has already ended the transaction). Anything else, or unknown: roll back.
  if (lease.client.getTransactionStatus?.() === 'I') return undefined;
  try {
    // Not abortable: an aborted caller still wants a clean connection back in the pool.
    await guarded(lease.client.query('ROLLBACK'), watch, false);
    return lease.lost;
  } catch (err) {
    return asError(err instanceof Interrupt ? err.cause : err);
  }
}

async function transactionAttempt<T>(
  lease: Lease,
  watch: Watch,
  fn: (tx: TransactionClient) => Promise<T>,
): Promise<Outcome<T>> {
  const { client } = lease;
  const log: QueryLog = { fromDatabase: new WeakSet(), firstError: undefined, occ: undefined };
  const tx = transactionClient(client, log);
  let value: T;
  try {
    await guarded(client.query('BEGIN'), watch);
    watch.phase = 'body';
    value = await guarded(
      Promise.resolve().then(() => fn(tx)),
      watch,
    );
  } catch (err) {
    tx.close();
    return failedBeforeCommit(err, lease, watch, log);
  }
  tx.close();

  const { deadline, now, signal } = watch.options;
  if (deadline !== undefined && now() >= deadline) {
    // Past the deadline a COMMIT could only end as "outcome unknown", and there is no time left
    // for a ROLLBACK round trip: closing the connection rolls the transaction back.
    const cause = new DsqlError('withRetry: deadline reached');
    return { kind: 'stop', reason: 'deadline', error: cause, destroy: cause };
  }
  if (signal?.aborted) {
    // The caller no longer wants the result. fn is done, so nothing of it is in flight: a plain
    // ROLLBACK keeps the connection for the pool.
    return {
      kind: 'stop',
      reason: 'aborted',
      error: signal.reason,
      destroy: await rollbackIfNeeded(lease, watch),
    };
  }
  if (lease.lost) {
    // The socket died while fn ran and fn swallowed the error: COMMIT would never be sent.
    return { kind: 'connection-lost', error: lease.lost, destroy: lease.lost };
  }

  watch.phase = 'commit';
  let result: pg.QueryResult;
  try {
    result = await guarded(client.query('COMMIT'), watch);
  } catch (err) {
    return failedCommit(err, lease, watch);
  }
  watch.phase = 'settled';
  if (result.command === 'ROLLBACK') {
    // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK, not an error: fn caught a
    // statement error. Returning fn's value would report work that was never committed.
    if (log.occ !== undefined) return { kind: 'retry', error: log.occ, code: retryCode(log.occ) };
    const error = new DsqlError(
      'withRetry: COMMIT rolled the transaction back: a statement in fn failed and fn caught the error',
      { cause: log.firstError },
    );
    return { kind: 'fail', error };
  }
  return { kind: 'ok', value };
}

async function failedBeforeCommit(
  err: unknown,
  lease: Lease,
  watch: Watch,
  log: QueryLog,
): Promise<Outcome<never>> {
  const phase = watch.phase;
  watch.phase = 'settled';
  if (err instanceof Interrupt) {
    // fn may still be running, with queries queued on this connection: closing the connection
    // is the only prompt rollback that cannot race with them.
    return { kind: 'stop', reason: err.reason, error: err.cause, destroy: asError(err.cause) };
  }
  // Nothing can have been committed. A lost connection is worth a new one when the error came
  // from the database (not, say, an HTTP call in fn that failed with ECONNRESET).
  const fromDatabase =
    phase === 'begin' ||
    lease.lost !== undefined ||
    (typeof err === 'object' && err !== null && log.fromDatabase.has(err));
  if (fromDatabase && isConnectionLostError(err))
    return { kind: 'connection-lost', error: err, destroy: lease.lost ?? asError(err) };
  const destroy = await rollbackIfNeeded(lease, watch);
  if (isOccError(err)) return { kind: 'retry', error: err, code: retryCode(err), destroy };
  return { kind: 'fail', error: err, destroy };
}

async function statementAttempt<R extends pg.QueryResultRow>(
  lease: Lease,
  watch: Watch,
  sql: string,
  params: unknown[] | undefined,
): Promise<Outcome<pg.QueryResult<R>>> {
  if (lease.lost) return { kind: 'connection-lost', error: lease.lost, destroy: lease.lost };
  watch.phase = 'commit'; // autocommit: the statement is its own COMMIT
  try {
    return { kind: 'ok', value: await guarded(lease.client.query<R>(sql, params), watch) };
  } catch (err) {
    return failedCommit(err, lease, watch);
  }
}

/**
 * A COMMIT (or an autocommit statement) failed. If the connection went away or the attempt was
 * interrupted while it was in flight, nobody knows whether it committed; any other error is the
 * server's answer, so the outcome is known (nothing committed) and an OCC conflict is retryable.
 */
async function failedCommit(err: unknown, lease: Lease, watch: Watch): Promise<Outcome<never>> {
  watch.phase = 'settled';
  if (err instanceof Interrupt) return { kind: 'unknown', error: err.cause, destroy: asError(err.cause) };
  if (lease.lost || isConnectionLostError(err)) return { kind: 'unknown', error: err, destroy: asError(err) };
  // A statement such as BEGIN could leave a transaction open: make sure the connection is idle.
  const destroy = await rollbackIfNeeded(lease, watch);
  if (isOccError(err)) return { kind: 'retry', error: err, code: retryCode(err), destroy };
  return { kind: 'fail', error: err, destroy };
}

function asError(e: unknown): Error {
  return e instanceof Error ? e : new DsqlError(String(e), { cause: e });
}

function exhausted(
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

async function retryLoop<T>(
  target: RetryTarget,
  options: RetryOptions,
  attempt: (lease: Lease, watch: Watch) => Promise<Outcome<T>>,
): Promise<T> {
  const o = resolveOptions(options);
  const source = sourceOf(target);
  const { now, deadline, signal } = o;
  const started = now();
  let attempts = 0;
  let lastError: unknown;
  let previousDelay = 0;
  // Longest attempt so far: the estimate for the next one. The longest rather than the last or
  // the mean, because overrunning the deadline (a Lambda timeout) costs far more than one retry.
  let longestAttemptMs = 0;

  for (;;) {
    if (signal?.aborted) throw exhausted('aborted', attempts, now() - started, lastError ?? signal.reason);
    if (deadline !== undefined && now() + longestAttemptMs >= deadline)
      throw exhausted('deadline', attempts, now() - started, lastError);

    const attemptStarted = now();
    const watch = watchAttempt(o);
    let lease: Lease;
    const acquiring = source.acquire();
    try {
      // Waiting for a free pool client counts against the deadline and the signal too.
      lease = await guarded(acquiring, watch);
    } catch (err) {
      watch.dispose();
      if (!(err instanceof Interrupt)) throw err;
      acquiring.then(
        (late) => late.done(),
        () => {},
      );
      throw exhausted(err.reason, attempts, now() - started, lastError ?? err.cause);
    }
    attempts++;
    let outcome: Outcome<T>;
    try {
      outcome = await attempt(lease, watch);
    } catch (err) {
      // Attempts classify their own errors; this is a bug guard so the client is never leaked.
      outcome = { kind: 'fail', error: err, destroy: asError(err) };
    } finally {
      watch.dispose();
    }
    lease.done(outcome.kind === 'ok' ? undefined : outcome.destroy);
    longestAttemptMs = Math.max(longestAttemptMs, now() - attemptStarted);

    switch (outcome.kind) {
      case 'ok':
        return outcome.value;
      case 'fail':
        throw outcome.error;
      case 'unknown':
        throw new CommitOutcomeUnknownError(
          'The connection was lost (or the deadline passed) while COMMIT was in flight: the transaction may or may not have committed',
          attempts,
          { cause: outcome.error },
        );
      case 'stop':
        throw exhausted(outcome.reason, attempts, now() - started, lastError ?? outcome.error);
      case 'connection-lost':
        // A client we do not own has no replacement: the caller must learn that it died.
        if (!source.reconnects) throw outcome.error;
        break;
      case 'retry':
        if (outcome.destroy && !source.reconnects) throw outcome.destroy;
        break;
    }

    lastError = outcome.error;
    if (attempts >= o.maxAttempts) throw exhausted('attempts', attempts, now() - started, lastError);
    const delayMs = backoffDelay(attempts, previousDelay, o, o.random);
    previousDelay = delayMs;
    if (deadline !== undefined && now() + delayMs + longestAttemptMs >= deadline)
      throw exhausted('deadline', attempts, now() - started, lastError);
    o.onRetry?.({
      attempt: attempts,
      delayMs,
      error: lastError,
      code: outcome.kind === 'retry' ? outcome.code : 'connection-lost',
    });
    try {
      await o.sleep(delayMs, signal);
    } catch (err) {
      if (signal?.aborted) throw exhausted('aborted', attempts, now() - started, lastError);
      throw err;
    }
  }
}
