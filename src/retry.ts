/**
 * OCC retry for Aurora DSQL: one loop ({@link retry}) and two attempt bodies, a transaction
 * ({@link withRetry}) and one autocommit statement ({@link execWithRetry}). Every attempt checks out
 * its own pool connection. Retried: an OCC conflict (nothing committed) and a connection lost before
 * anything that could commit was sent. Never retried: what may have committed (a connection lost or
 * the deadline reached while COMMIT or the statement was in flight: {@link CommitOutcomeUnknownError}),
 * and any other error (rolled back, rethrown unchanged).
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
 * Why an attempt is retried: the OCC code (`OC000` data, `OC001` schema), SQLSTATE `40001` without
 * one (plain PostgreSQL), or a connection lost before COMMIT was sent.
 * @example
 * await withRetry(pool, fn, { onRetry: ({ code }) => metrics.count(`retry_${code}`) });
 */
export type RetryCode = 'OC000' | 'OC001' | '40001' | 'connection-lost';

/**
 * What {@link RetryOptions.onRetry} is told before each backoff sleep.
 * @example
 * const onRetry = ({ attempt, delayMs, code }: RetryInfo) => console.warn(`#${attempt} ${code}, ${delayMs} ms`);
 */
export interface RetryInfo {
  /** The attempt that just failed (1 for the first). */
  attempt: number;
  /** The sleep before the next attempt, in ms. */
  delayMs: number;
  /** The error that failed the attempt. */
  error: unknown;
  /** Classification of `error`. */
  code: RetryCode;
}

/**
 * Retry policy. A field not given comes from the pool's policy (`createPool({ retry })`), then
 * from `DSQL_DEFAULTS.retry`.
 * @example
 * const options: RetryOptions = { deadline: Date.now() + context.getRemainingTimeInMillis() - 500 };
 */
export interface RetryOptions {
  /** Most attempts, the first included (1: never retry). Default `DSQL_DEFAULTS.retry.maxAttempts` (8). */
  maxAttempts?: number | undefined;
  /** Shortest backoff sleep, ms. Default `DSQL_DEFAULTS.retry.baseDelayMs` (50). */
  baseDelayMs?: number | undefined;
  /** Longest backoff sleep, ms; wins over `baseDelayMs`. Default `DSQL_DEFAULTS.retry.maxDelayMs` (1000). */
  maxDelayMs?: number | undefined;
  /**
   * Epoch ms by which the call settles, the wait for a connection included. No attempt or sleep
   * starts that is not expected to end before it (an attempt lasts as long as the longest so far).
   * An attempt running when it passes is abandoned and its connection closed (rolling it back), or
   * {@link CommitOutcomeUnknownError} if COMMIT or the statement was in flight. Default: none.
   */
  deadline?: number | undefined;
  /**
   * Aborting stops a sleep or a wait for a connection at once, and an attempt by closing its
   * connection; a COMMIT (or statement) in flight is left to finish. Default: none.
   */
  signal?: AbortSignal | undefined;
  /** Called before each backoff sleep, holding no connection; if it throws, the call rejects with that. */
  onRetry?: ((info: RetryInfo) => void) | undefined;
}

/**
 * The callback's handle on its transaction: `query` only (no release, no COMMIT), refused once its
 * attempt is over so that a query left running can never land in the next attempt.
 * @example
 * const debit = (tx: TransactionClient, id: string) => tx.query('UPDATE a SET n = n - 1 WHERE id = $1', [id]);
 */
export interface TransactionClient {
  /** `pg.Client#query`, inside this attempt's transaction. */
  query: pg.ClientBase['query'];
}

/**
 * Runs `fn` in a transaction (BEGIN, `fn(tx)`, COMMIT) and runs it again, in a new transaction on
 * a new checkout, after an OCC conflict or a connection lost before COMMIT was sent.
 *
 * **`fn` must be safe to run more than once**: only what it does through `tx` is rolled back. Send
 * emails or messages after withRetry returns. If `fn` catches a failed statement (PostgreSQL then
 * answers COMMIT with ROLLBACK), the attempt is retried when that error was a conflict, and fails
 * with a `DsqlError` whose `cause` is it otherwise, never a success. Out of attempts, past the
 * deadline or aborted: {@link OccRetryExhaustedError} (`cause`: the last error); no connection
 * within the deadline: `DsqlConnectionError`. A connection in an unknown state (ROLLBACK failed,
 * lost, abandoned) is destroyed, never pooled again.
 * @param pool Where each attempt checks out its connection.
 * @param fn The transaction body.
 * @param options See {@link RetryOptions}.
 * @returns What `fn` returned, once COMMIT succeeded.
 * @example
 * ```ts
 * const transferId = randomUUID(); // decided once, outside the retried callback
 * await withRetry(pool, async (tx) => {
 *   await tx.query('UPDATE account SET balance = balance - $2 WHERE id = $1', [from, amount]);
 *   await tx.query('UPDATE account SET balance = balance + $2 WHERE id = $1', [to, amount]);
 *   await tx.query('INSERT INTO transfer (id, amount) VALUES ($1, $2)', [transferId, amount]);
 * });
 * await sendReceipt(transferId); // after the commit, never inside fn
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
 * Runs one statement in autocommit, retried like {@link withRetry}: a statement refused with an
 * OCC conflict cannot have committed, so it is sent again (single writes; DDL such as
 * `CREATE INDEX ASYNC`, which can fail with `OC001`). Once it may have committed it is never resent:
 * {@link CommitOutcomeUnknownError}. Send one statement: a string of several that commits part of
 * its work before a conflict would run that part twice.
 * @param pool Where each attempt checks out its connection.
 * @param sql The statement, or a pg query config.
 * @param params Its parameters. Default: none.
 * @param options See {@link RetryOptions}.
 * @returns The statement's result.
 * @example
 * await execWithRetry(pool, 'UPDATE counter SET n = n + 1 WHERE id = $1', [id]);
 */
export function execWithRetry<R extends pg.QueryResultRow = pg.QueryResultRow>(
  pool: pg.Pool,
  sql: string | pg.QueryConfig,
  params?: unknown[],
  options?: RetryOptions,
): Promise<pg.QueryResult<R>> {
  return retry(pool, options, (a) => sent(a, a.client.query<R>(sql as string, params), 'the statement'));
}

/** Test and benchmark seams, read from a call's options object; not in {@link RetryOptions}. @internal */
export interface RetrySeams {
  now?: () => number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  random?: () => number;
  backoff?: (failures: number, previousMs: number, policy: Policy, random: () => number) => number;
}

/**
 * The backoff sleep ("decorrelated jitter", chosen with `bench/occ.ts`): uniform in
 * `[base, 3 × previous]` (`3 × base` the first time), capped. Every retry waits at least the base,
 * and colliding transactions drift apart.
 * @internal
 */
export function backoffDelay(
  _failures: number,
  previousMs: number,
  { baseDelayMs: base, maxDelayMs: cap }: Policy,
  random: () => number = Math.random,
): number {
  return Math.min(cap, base + random() * (Math.max(base, 3 * (previousMs || base)) - base));
}

type Policy = { baseDelayMs: number; maxDelayMs: number };
type Resolved = typeof DSQL_DEFAULTS.retry & RetryOptions & Required<Omit<RetrySeams, 'sleep'>> & RetrySeams;

/** Rejection of whatever a call awaits when the deadline passes or the signal aborts. */
class Stop {
  constructor(
    readonly reason: 'deadline' | 'aborted',
    readonly cause?: unknown,
  ) {}
}

/** An attempt failed before anything that could commit was sent: worth another connection. */
class Unsent {
  constructor(readonly error: unknown) {}
}

/** A call's deadline and signal: `guard(p)` races `p` against them. */
interface Scope {
  readonly o: Resolved;
  guard<T>(p: Promise<T>, abortable?: boolean): Promise<T>;
  sleep(ms: number): Promise<void>;
  dispose(): void;
}

/** One checkout and what happened to it. */
interface Attempt {
  readonly client: pg.PoolClient;
  readonly scope: Scope;
  readonly number: number;
  /** Set by the client's `'error'` or `'end'`: the connection is gone. */
  lost?: Error;
  /** Destroy the connection instead of pooling it again. */
  broken?: boolean;
}

const noop = () => {};
const NEVER = new Promise<never>(noop);

async function retry<T>(
  pool: pg.Pool,
  options: RetryOptions | undefined,
  attempt: (a: Attempt) => Promise<T>,
): Promise<T> {
  const o = resolve(pool, options);
  const s = scope(o);
  const started = o.now();
  let attempts = 0;
  let last: unknown; // the error of the last failed attempt
  let code: RetryCode = '40001';
  let slept = 0;
  let longest = 0; // the estimate of the next attempt: overrunning a deadline costs more than a retry
  const giveUp = (reason: 'attempts' | 'deadline' | 'aborted', cause = last) => {
    const why = { attempts: 'out of attempts', deadline: 'deadline reached', aborted: 'aborted' }[reason];
    const after = attempts
      ? `after ${attempts} attempt${attempts === 1 ? '' : 's'}`
      : 'before the first attempt';
    const message = `OCC retry gave up ${after} (${why})`;
    return new OccRetryExhaustedError(
      cause instanceof Error ? `${message}: ${cause.message}` : message,
      { attempts, elapsedMs: o.now() - started, reason },
      { cause },
    );
  };
  try {
    for (;;) {
      if (o.signal?.aborted) throw new Stop('aborted', o.signal.reason);
      if (o.deadline !== undefined && o.now() + longest >= o.deadline) throw new Stop('deadline');
      const attemptStarted = o.now();
      const a = lease(await checkout(pool, s, started, last), s, ++attempts);
      try {
        return await attempt(a);
      } catch (err) {
        if (err instanceof Unsent) [last, code] = [err.error, 'connection-lost'];
        else if (!(err instanceof Stop) && isOccError(err)) [last, code] = [err, occCode(err) ?? '40001'];
        else throw err;
      } finally {
        a.release();
        longest = Math.max(longest, o.now() - attemptStarted);
      }
      if (attempts >= o.maxAttempts) throw giveUp('attempts');
      slept = o.backoff(attempts, slept, o, o.random);
      if (o.deadline !== undefined && o.now() + slept + longest >= o.deadline) throw new Stop('deadline');
      o.onRetry?.({ attempt: attempts, delayMs: slept, error: last, code });
      await s.guard(s.sleep(slept));
    }
  } catch (err) {
    throw err instanceof Stop ? giveUp(err.reason, last ?? err.cause) : err;
  } finally {
    s.dispose();
  }
}

function resolve(pool: pg.Pool, options: RetryOptions | undefined): Resolved {
  const t = pool as unknown as Partial<pg.PoolClient> | null; // a client has release or escapeIdentifier
  if (typeof t?.connect !== 'function' || typeof (t.release ?? t.escapeIdentifier) === 'function')
    throw new TypeError('withRetry: expected a pg.Pool (each attempt checks out its own connection)');
  const seams: RetrySeams = { now: Date.now, random: Math.random, backoff: backoffDelay };
  // The pool's policy (createPool({ retry })), read defensively: any pg.Pool may be passed.
  const policy = (pool as { retry?: RetryOptions }).retry;
  const o = { ...DSQL_DEFAULTS.retry, ...seams, ...defined(policy), ...defined(options) } as Resolved;
  const bad = !(Number.isInteger(o.maxAttempts) && o.maxAttempts >= 1)
    ? 'maxAttempts'
    : !(o.baseDelayMs >= 0 && o.baseDelayMs < Infinity)
      ? 'baseDelayMs'
      : !(o.maxDelayMs >= 0 && o.maxDelayMs < Infinity)
        ? 'maxDelayMs'
        : o.deadline !== undefined && !Number.isFinite(o.deadline)
          ? 'deadline'
          : undefined;
  if (bad)
    throw new DsqlConfigError(
      bad,
      bad === 'maxAttempts' ? 'must be an integer ≥ 1' : 'must be a finite number',
    );
  return o;
}

/** `{ ...defaults, ...options }` must not let an explicit `undefined` erase a default. @internal */
export function defined<T extends object>(o: T | undefined): Partial<T> {
  const out: Partial<T> = {};
  for (const key in o) if (o[key] !== undefined) out[key] = o[key];
  return out;
}

function scope(o: Resolved): Scope {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let nap: ReturnType<typeof setTimeout> | undefined;
  let onAbort = noop;
  const ms = o.deadline === undefined ? Infinity : o.deadline - o.now();
  // (setTimeout fires at once beyond 2^31 − 1 ms, 24.8 days: such a deadline is none.)
  const deadline =
    ms < 2 ** 31
      ? new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Stop('deadline')), Math.max(0, ms));
        })
      : NEVER;
  const aborted = o.signal
    ? new Promise<never>((_, reject) => {
        onAbort = () => reject(new Stop('aborted', o.signal?.reason));
        if (o.signal?.aborted) onAbort();
        else o.signal?.addEventListener('abort', onAbort, { once: true });
      })
    : NEVER;
  deadline.catch(noop);
  aborted.catch(noop);
  return {
    o,
    // The guard cuts a sleep short on abort; dispose() clears its timer.
    sleep: (ms) => o.sleep?.(ms, o.signal) ?? new Promise((done) => (nap = setTimeout(done, ms))),
    guard(p, abortable = true) {
      p.catch(noop); // when the deadline or the signal wins, p's later rejection is nobody's
      return Promise.race(abortable ? [p, deadline, aborted] : [p, deadline]);
    },
    dispose() {
      clearTimeout(timer);
      clearTimeout(nap);
      o.signal?.removeEventListener('abort', onAbort);
    },
  };
}

/**
 * `pool.connect()` within a deadline (`context.dsql.connect()`): past it, a `DsqlConnectionError`
 * saying what was waited for.
 * @internal
 */
export async function connectWithin(pool: pg.Pool, deadline: number | undefined): Promise<pg.PoolClient> {
  const s = scope(resolve(pool, { deadline }));
  try {
    return await checkout(pool, s, Date.now(), undefined);
  } finally {
    s.dispose();
  }
}

/** `pool.connect()` within the scope; a checkout granted after the scope gave up is released at once. */
function checkout(pool: pg.Pool, s: Scope, started: number, last: unknown): Promise<pg.PoolClient> {
  const pending = pool.connect();
  return s.guard(pending).catch((err: unknown) => {
    if (!(err instanceof Stop)) throw err;
    pending.then((late) => late.release(), noop);
    if (err.reason !== 'deadline') throw err;
    // Say what was waited for: a busy pool, or a connection still being opened.
    type Options = { host?: string; port?: number; max?: number; ssl?: { servername?: string } };
    const { host: dialled, port, max, ssl } = (pool as { options?: Options }).options ?? {};
    const host = ssl?.servername ?? dialled; // the cluster's name, when an address is dialled
    const busy = pool.totalCount >= (max ?? Infinity) && pool.idleCount === 0;
    const why = busy
      ? `all ${max} connections of the pool were in use`
      : 'a new connection was still being opened';
    const to = host ? ` to ${host}${port ? `:${port}` : ''}` : '';
    throw new DsqlConnectionError(
      `Could not get a connection${to} within ${Math.round(s.o.now() - started)} ms (deadline reached): ${why}`,
      0,
      { cause: last },
    );
  });
}

/** Watches a checked-out client: a plain pg client has no 'error' listener, and one would crash. */
function lease(client: pg.PoolClient, s: Scope, number: number): Attempt & { release(): void } {
  const onError = (err?: Error) => {
    a.lost ??= err ?? new DsqlError('connection ended');
  };
  const a = {
    client,
    scope: s,
    number,
    release() {
      client.removeListener('error', onError).removeListener('end', onError);
      client.release(a.broken || a.lost !== undefined);
    },
  } as Attempt & { release(): void };
  client.on('error', onError).on('end', onError);
  return a;
}

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
    // Interrupted: fn may still be running, with queries queued. Closing the connection is the only
    // prompt rollback that cannot race with them.
    if (err instanceof Stop) a.broken = true;
    // A lost connection is worth another when the error came from the database (not from, say, an
    // HTTP call in fn failing with ECONNRESET).
    else if ((!began || a.lost || log.fromDatabase.has(err as object)) && isConnectionLostError(err)) {
      a.broken = true;
      throw new Unsent(err);
    } else await rollback(a);
    throw err;
  }
  tx.closed = true;
  const { deadline, now, signal } = s.o;
  if (deadline !== undefined && now() >= deadline) {
    // A COMMIT now could only end as "outcome unknown"; closing the connection rolls back at once.
    a.broken = true;
    throw new Stop('deadline');
  }
  if (signal?.aborted) {
    await rollback(a);
    throw new Stop('aborted', signal.reason);
  }
  if (a.lost) throw new Unsent(a.lost); // fn swallowed the error of a connection that died
  const result = await sent(a, client.query('COMMIT'), 'COMMIT');
  if (result.command !== 'ROLLBACK') return value;
  // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK: fn caught a statement error.
  if (log.occ !== undefined) throw log.occ;
  throw new DsqlError('withRetry: COMMIT rolled back: a statement in fn failed and fn caught the error', {
    cause: log.first,
  });
}

/**
 * Awaits what may commit (COMMIT, an autocommit statement). The signal does not cut it short, so
 * its outcome is known; the deadline or a lost connection leaves it unknown.
 */
async function sent<R>(a: Attempt, p: Promise<R>, what: string): Promise<R> {
  try {
    return await a.scope.guard(p, false);
  } catch (err) {
    // pg answers at once, sending nothing, on a client it knows is dead.
    const unsent = /is not queryable/.test((err as Error | null)?.message ?? '');
    if (unsent || err instanceof Stop || a.lost || isConnectionLostError(err)) {
      a.broken = true;
      if (unsent) throw new Unsent(err);
      throw new CommitOutcomeUnknownError(
        `The connection was lost or the deadline passed while ${what} was in flight: it may or may not have committed`,
        a.number,
        { cause: err instanceof Stop ? new DsqlError('deadline reached') : err },
      );
    }
    await rollback(a); // e.g. execWithRetry('BEGIN') left a transaction open
    throw err;
  }
}

/** Rolls back unless the server says no transaction is open; destroys the connection if that fails. */
async function rollback(a: Attempt): Promise<void> {
  // pg ≥ 8.23 keeps the last ReadyForQuery status: 'I' = idle (a failed COMMIT ended the transaction).
  if (a.broken || a.lost || a.client.getTransactionStatus?.() === 'I') return;
  // Not abortable: an aborted caller still wants a clean connection back in the pool.
  await a.scope.guard(a.client.query('ROLLBACK'), false).catch(() => {
    a.broken = true;
  });
}

/** `tx`: pg's query, noting errors from the database; refused once its attempt is over. */
function transactionClient(
  client: pg.ClientBase,
  log: { fromDatabase: WeakSet<object>; first: unknown; occ: unknown },
): TransactionClient & { closed: boolean } {
  const note = (err: unknown) => {
    if (typeof err === 'object' && err !== null) log.fromDatabase.add(err);
    log.first ??= err;
    if (log.occ === undefined && isOccError(err)) log.occ = err;
  };
  const tx = {
    closed: false,
    query: ((...args: unknown[]) => {
      if (tx.closed)
        throw new DsqlError('withRetry: tx.query() after its attempt ended (was a query not awaited?)');
      const callback = args.at(-1);
      if (typeof callback === 'function')
        args[args.length - 1] = (err: unknown, res: unknown) => {
          if (err) note(err);
          callback(err, res);
        };
      const result = (client.query as (...a: unknown[]) => unknown).apply(client, args);
      // A thenable, not `instanceof Promise`: pg can be configured with another Promise class.
      if (typeof (result as PromiseLike<unknown> | undefined)?.then !== 'function') return result;
      return (result as PromiseLike<unknown>).then(undefined, (err: unknown) => {
        note(err);
        throw err;
      });
    }) as pg.ClientBase['query'],
  };
  return tx;
}
