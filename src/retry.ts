/**
 * OCC retry: one loop and two attempt bodies, a transaction ({@link withRetry}) and an autocommit
 * statement ({@link execWithRetry}), each attempt on its own checkout.
 */
import type pg from 'pg';
import { DSQL_DEFAULTS } from './defaults.js';
import {
  CommitOutcomeUnknownError,
  DsqlConfigError,
  DsqlConnectionError,
  DsqlError,
  isConnectionLostError,
  OccRetryExhaustedError,
  occCode,
} from './errors.js';

/** Why an attempt is retried: `OC000` (data) / `OC001` (schema), `40001` without either, or a connection lost before COMMIT. */
export type RetryCode = 'OC000' | 'OC001' | '40001' | 'connection-lost';

/** What {@link RetryOptions.onRetry} is told before each backoff sleep. */
export interface RetryInfo {
  /** The attempt that just failed (1 for the first), and the sleep before the next, ms. */
  attempt: number;
  delayMs: number;
  /** The error that failed the attempt, and its classification. */
  error: unknown;
  code: RetryCode;
}

/**
 * Retry policy. A field not given (or `undefined`) comes from the pool's (`createPool({ retry })`),
 * then `DSQL_DEFAULTS.retry`. Each sleep is drawn from `[baseDelayMs, 3 × the previous]`
 * ("decorrelated jitter", chosen with `bench/occ.ts`), capped at `maxDelayMs`.
 */
export interface RetryOptions {
  /** Most attempts, the first included (1: never retry). Default `DSQL_DEFAULTS.retry.maxAttempts` (8). */
  maxAttempts?: number | undefined;
  /** Shortest backoff sleep, ms. Default `DSQL_DEFAULTS.retry.baseDelayMs` (50). */
  baseDelayMs?: number | undefined;
  /** Longest backoff sleep, ms; wins over `baseDelayMs`. Default `DSQL_DEFAULTS.retry.maxDelayMs` (1000). */
  maxDelayMs?: number | undefined;
  /**
   * Epoch ms by which the call settles, connection wait included: no attempt (as long as the longest
   * so far) or sleep starts that would end after it; one running then is abandoned, its connection
   * closed ({@link CommitOutcomeUnknownError} if COMMIT or the statement was in flight). Default: none.
   */
  deadline?: number | undefined;
  /** Aborting stops a sleep or wait at once, an attempt by closing its connection; COMMIT in flight ends. Default: none. */
  signal?: AbortSignal | undefined;
  /** Called (and awaited) before each backoff sleep, holding no connection; if it throws or rejects, so does the call. */
  onRetry?: ((info: RetryInfo) => void) | undefined;
}

/**
 * The callback's handle on its transaction: `query` (pg's) only, no release or COMMIT; refused once
 * its attempt is over, so a query left running can never land in the next attempt.
 */
export interface TransactionClient {
  query: pg.ClientBase['query'];
}

/**
 * Runs `fn` in a transaction (BEGIN, `fn(tx)`, COMMIT) on a checkout of `pool`, again on a new one
 * after an OCC conflict or a connection lost before COMMIT was sent; never after anything else
 * (rolled back, rethrown) or what may have committed ({@link CommitOutcomeUnknownError}). **`fn`
 * must be safe to run again**: only its work through `tx` is rolled back. If `fn` catches a failed
 * statement (COMMIT is answered ROLLBACK), a conflict is retried, anything else fails the call (a
 * `DsqlError`, `cause`: it). Out of attempts, past the deadline or aborted:
 * {@link OccRetryExhaustedError}; no connection by the deadline: `DsqlConnectionError`. A
 * connection in an unknown state (ROLLBACK failed, lost, abandoned) is destroyed.
 * @param opts See {@link RetryOptions}.
 * @returns What `fn` returned, once COMMIT succeeded.
 * @example
 * await withRetry(pool, (tx) => tx.query('INSERT INTO transfer (id, amount) VALUES ($1, $2)', [id, 5]));
 */
export function withRetry<T>(pool: pg.Pool, fn: (tx: TransactionClient) => Promise<T>, opts?: RetryOptions) {
  return retry<T>(pool, opts, fn);
}

/**
 * Runs one statement (`sql`: text or a pg query config; `params`: default none) in autocommit,
 * retried like {@link withRetry}: refused with an OCC conflict, it cannot have committed and is
 * sent again (single writes; DDL such as `CREATE INDEX ASYNC`, which can fail with `OC001`); once
 * it may have committed, never. Send one statement: several could commit a part and run it twice.
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
  return retry(pool, options, undefined, sql, params);
}

/** `{ ...defaults, ...options }` must not let an explicit `undefined` erase a default. @internal */
export const defined = <T extends object>(o?: T): Partial<T> =>
  Object.fromEntries(Object.entries(o ?? {}).filter(([, v]) => v !== undefined)) as Partial<T>;

/** What a call's awaits reject with when its deadline passes or its signal aborts (the message). */
class Stop extends DsqlError {}
const noop = () => {};
const now = () => Date.now();
const MAYBE = 'it may or may not have committed';

/** Rejects with a Stop (made then: a stack costs more than a warm query) at `deadline`, at once if past. */
function timeout(deadline: number): [Promise<never>, () => void] {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    if (deadline <= now()) reject(new Stop('deadline'));
    else if (deadline - now() < 2e9) timer = setTimeout(() => reject(new Stop('deadline')), deadline - now());
  });
  late.catch(noop);
  return [late, () => clearTimeout(timer)];
}

/** `pool.connect()` unless `stop` rejects first: then a late client is released at once. */
async function checkout(pool: pg.Pool, stop: Promise<never>, started: number, last?: unknown) {
  const pending = pool.connect();
  try {
    return await Promise.race([pending, stop]);
  } catch (err) {
    if (!(err instanceof Stop)) throw err;
    pending.then((client) => client.release(), noop);
    if (err.message === 'aborted') throw err;
    // Name the host (the cluster's name when an address is dialled) and what was waited for.
    const { host, max = Infinity, ssl } = (pool as { options?: pg.PoolConfig }).options ?? {};
    const name = (ssl as { servername?: string } | undefined)?.servername ?? host;
    const why =
      pool.totalCount >= max && !pool.idleCount ? `all ${max} pool connections in use` : 'still connecting';
    const to = name ? ` to ${name}` : '';
    const message = `Could not connect${to} within ${now() - started} ms (deadline reached): ${why}`;
    throw new DsqlConnectionError(message, 0, { cause: last });
  }
}

/** `pool.connect()` by `deadline` (`context.dsql.connect()`), else a `DsqlConnectionError`. @internal */
export function connectWithin(pool: pg.Pool, deadline: number): Promise<pg.PoolClient> {
  const [late, clear] = timeout(deadline);
  return checkout(pool, late, now()).finally(clear);
}

/** The loop; each attempt runs the transaction `fn` or, without it, the statement `sql`. */
async function retry<T>(
  pool: pg.Pool,
  options: RetryOptions | undefined,
  fn?: (tx: TransactionClient) => Promise<unknown>,
  sql?: string | pg.QueryConfig,
  params?: unknown[],
): Promise<T> {
  const t = pool as unknown as Partial<pg.PoolClient> | null; // a client has release or escapeIdentifier
  if (!t?.connect || 'release' in t || 'escapeIdentifier' in t)
    throw new TypeError('withRetry needs a pg.Pool');
  const policy = (pool as { retry?: RetryOptions }).retry; // createPool({ retry }), or any pg.Pool's
  const o = { ...DSQL_DEFAULTS.retry, ...defined(policy), ...defined(options) };
  const { maxAttempts, baseDelayMs: base, maxDelayMs: cap, deadline = Infinity, signal } = o;
  const check = (field: string, ok: boolean, rule = 'must be a number of ms, 0 … 2^31 - 1') => {
    if (!ok) throw new DsqlConfigError(field, rule);
  };
  // Typed checks: a string ('50', as read from the environment) would concatenate in the backoff.
  const ms = (v: unknown) => typeof v === 'number' && v >= 0 && v < 2 ** 31; // a timer's range
  check('maxAttempts', Number.isInteger(maxAttempts) && maxAttempts > 0, 'must be an integer > 0');
  check('baseDelayMs', ms(base));
  check('maxDelayMs', ms(cap));
  check('deadline', typeof deadline === 'number' && !Number.isNaN(deadline), 'must be epoch ms');
  // Checked before anything is checked out: a failing listener call would strand the checkout.
  check('signal', !signal || typeof signal.addEventListener === 'function', 'must be an AbortSignal');
  check('onRetry', !o.onRetry || typeof o.onRetry === 'function', 'must be a function');
  const [late, clear] = timeout(deadline);
  let onAbort = noop;
  let nap: ReturnType<typeof setTimeout> | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(new Stop('aborted', { cause: signal?.reason }));
    signal?.addEventListener('abort', onAbort);
  });
  const either = Promise.race([late, aborted]);
  either.catch(noop);
  /** `p`, or the Stop that comes first (`late`: the deadline only, for what must finish to be known). */
  const guard = <R>(p: Promise<R>, stop = either): Promise<R> => {
    p.catch(noop); // when a Stop wins, p's later rejection is nobody's
    return Promise.race([p, stop]);
  };
  const halt = (ms: number) => {
    if (signal?.aborted) throw new Stop('aborted', { cause: signal.reason });
    if (now() + ms >= deadline) throw new Stop('deadline');
  };
  const started = now();
  let attempts = 0;
  let last: unknown; // the last failed attempt's error
  let code: RetryCode = '40001';
  let delay = 0;
  let longest = 0; // the next attempt's estimate: overrunning a deadline costs more than a retry
  const giveUp = (reason: OccRetryExhaustedError['reason'], cause = last) => {
    const ran = attempts ? `after ${attempts} attempt${attempts > 1 ? 's' : ''}` : 'before the first attempt';
    const why = { attempts: 'out of attempts', deadline: 'deadline reached' }[reason as 'deadline'] ?? reason;
    const message = `OCC retry gave up ${ran} (${why})${cause instanceof Error ? `: ${cause.message}` : ''}`;
    return new OccRetryExhaustedError(message, { attempts, elapsedMs: now() - started, reason }, { cause });
  };

  try {
    for (;;) {
      halt(longest);
      const t0 = now();
      const client = await checkout(pool, either, started, last);
      attempts++;
      let lost: Error | undefined; // set by 'error' (pg emits it at any unexpected end)
      let broken = false; // destroy, do not pool again
      let unsent = false; // failed before anything that could commit was sent: worth another connection
      const onError = (err: unknown) => (lost ??= err as Error);
      client.on('error', onError);
      // ROLLBACK unless none is open ('I'); failing, destroy. Not abortable: a clean connection is worth it.
      const rollback = async () => {
        if (!broken && !lost && client.getTransactionStatus() !== 'I')
          await guard(client.query('ROLLBACK'), late).catch(onError);
      };
      // What may commit: the signal lets it finish; the deadline or a lost connection leaves it unknown.
      const sent = async <R>(p: Promise<R>, what: string): Promise<R> => {
        try {
          return await guard(p, late);
        } catch (err) {
          const { code, message } = (err ?? {}) as { code?: unknown; message?: unknown };
          unsent = !code && /is not queryable/.test(`${message}`); // pg sent nothing (a server error has a code)
          if (unsent || err instanceof Stop || lost || isConnectionLostError(err)) broken = true;
          else await rollback(); // e.g. execWithRetry('BEGIN') left a transaction open
          if (unsent || !broken) throw err;
          const why = `The connection was lost or the deadline passed while ${what} was in flight: ${MAYBE}`;
          throw new CommitOutcomeUnknownError(why, attempts, { cause: err });
        }
      };
      const transaction = async (body: (tx: TransactionClient) => Promise<unknown>) => {
        const fromDb = new WeakSet<object>(); // errors that came from the database
        let [first, occ]: unknown[] = []; // the first statement error and the first conflict: fn may have caught them
        let closed = false;
        // tx.query: pg's, noting errors from the database, refused once the attempt is over (as pg
        // fails: a rejection or the callback; a throw from a late callback-style call crashed the process).
        const query = (...args: unknown[]) => {
          const callback = typeof args.at(-1) === 'function' ? (args.pop() as (...a: unknown[]) => void) : 0;
          const result = closed
            ? Promise.reject(new DsqlError('tx.query() after its attempt ended'))
            : (client as unknown as { query(...a: unknown[]): Promise<unknown> }).query(...args);
          if (!result?.then) return result; // a cursor or stream (a thenable: pg may use another Promise)
          const noted = result.then(undefined, (err) => {
            if (err === Object(err)) fromDb.add(err);
            first ??= err;
            occ ??= occCode(err) ? err : undefined;
            throw err;
          });
          if (!callback) return noted;
          noted.then((res) => callback(null, res), callback);
        };
        let value: unknown;
        try {
          await guard(query('BEGIN') as Promise<unknown>);
          value = await guard((async () => body({ query } as TransactionClient))());
        } catch (err) {
          closed = true;
          // Interrupted, fn may still be running: only closing the connection cannot race its queries.
          // A lost connection is retried if the error came from it (not from, say, fn's HTTP call).
          if (err instanceof Stop) broken = true;
          else if ((lost || fromDb.has(err as object)) && isConnectionLostError(err)) broken = unsent = true;
          else await rollback();
          throw err;
        }
        closed = true;
        // A dead connection fn ignored, or past the deadline (COMMIT would be outcome unknown): close it.
        broken = true;
        unsent = !!lost;
        if (lost) throw lost;
        halt(0);
        broken = false;
        if (client.getTransactionStatus() === 'I')
          throw new CommitOutcomeUnknownError(`fn sent COMMIT or ROLLBACK itself: ${MAYBE}`, attempts);
        if ((await sent(client.query('COMMIT'), 'COMMIT')).command !== 'ROLLBACK') return value;
        // COMMIT of a failed transaction is answered ROLLBACK: fn caught a failed statement.
        throw occ ?? new DsqlError('COMMIT rolled back: fn caught an error', { cause: first });
      };
      try {
        return (await (fn
          ? transaction(fn)
          : sent(client.query(sql as string, params), 'the statement'))) as T;
      } catch (err) {
        const occ = !(err instanceof Stop) && occCode(err);
        if (!unsent && !occ) throw err;
        [last, code] = [err, occ || 'connection-lost'];
      } finally {
        client.off('error', onError);
        // Left in a transaction (execWithRetry('BEGIN')): any pg.Pool would hand it on so, uncommitted.
        client.release(broken || lost || client.getTransactionStatus() !== 'I');
        longest = Math.max(longest, now() - t0);
      }
      if (attempts >= maxAttempts) throw giveUp('attempts');
      delay = Math.min(cap, base + Math.random() * (Math.max(base, 3 * (delay || base)) - base));
      halt(delay + longest);
      // Awaited (within the deadline and signal): an async onRetry's rejection is this call's, not unhandled.
      await guard(Promise.resolve(o.onRetry?.({ attempt: attempts, delayMs: delay, error: last, code })));
      await guard(new Promise((done) => (nap = setTimeout(done, delay))));
    }
  } catch (err) {
    throw err instanceof Stop ? giveUp(err.message as 'deadline', last ?? err.cause) : err;
  } finally {
    clear();
    clearTimeout(nap);
    signal?.removeEventListener('abort', onAbort);
  }
}
