/**
 * Freeze-safe checkout for a `pg.Pool`.
 *
 * Lambda freezes the process between invocations. While frozen no timer fires and no socket
 * event is processed, so pg-pool's own idle timeout and max-lifetime timer fire late, after the
 * next invocation has already picked a connection, and a connection the server closed during the
 * freeze still looks healthy until its pending socket events run. This module moves every
 * decision to checkout time and bases it on the wall clock:
 *
 * - a reused connection past its maximum lifetime, or idle longer than `maxIdleMillis`, is
 *   destroyed and replaced before anyone sees it;
 * - a reused connection idle for 10 ms or more waits a few event-loop turns before it is handed
 *   out, so socket events that arrived while the process was frozen (FIN, RST, a FATAL message)
 *   are processed first and a connection closed during even a short freeze is replaced, not used;
 * - a reused connection idle longer than `thawThresholdMillis` (which is what every connection
 *   looks like after a freeze) gets one cheap round trip to prove it is alive; a dead one is
 *   destroyed and replaced transparently. Warm checkouts make no extra round trip;
 * - a connection that fails while checked out is destroyed when released, never pooled again;
 * - no `'error'` event is ever left without a listener.
 *
 * A user statement is never sent twice: only the guard's own validation query is ever retried on
 * another connection. Once the caller holds a client, every error surfaces to the caller.
 */
import type pg from 'pg';
import { DsqlConnectionError, isConnectionLostError } from './errors.js';

/**
 * Freeze-safe checkout settings. All comparisons use the wall clock (`Date.now()`) at checkout.
 * `createPool` fills them from the configuration (defaults: `maxLifetimeSeconds` 3300,
 * `maxIdleMillis` 300000, `thawThresholdMillis` 5000, `validationTimeoutMillis` 1000).
 * @example
 * ```ts
 * const options: FreezeGuardOptions = {
 *   maxLifetimeSeconds: 3300, maxIdleMillis: 300_000, thawThresholdMillis: 5_000, validationTimeoutMillis: 1_000,
 * };
 * ```
 */
export interface FreezeGuardOptions {
  /**
   * A reused connection older than this (seconds since it was opened) is destroyed at checkout
   * instead of being handed out. `0` disables the check. Aurora DSQL closes connections after
   * 60 minutes, so keep this below 3600.
   */
  maxLifetimeSeconds: number;
  /**
   * A reused connection idle longer than this is destroyed at checkout (reconnecting is cheaper
   * than a validation that may hang on a silently dropped path, e.g. a NAT idle timeout of 350 s).
   * `0` disables the check.
   */
  maxIdleMillis: number;
  /**
   * A reused connection idle longer than this is validated with one round trip before it is
   * handed out: after a Lambda freeze every pooled connection is at least this idle. `0`
   * validates every reuse.
   */
  thawThresholdMillis: number;
  /**
   * How long the validation round trip may take before the connection is declared dead and
   * replaced. `0` disables the timeout (not recommended: a silently dropped path never answers).
   */
  validationTimeoutMillis: number;
}

/**
 * Counters kept per guarded pool, for tests, benchmarks and diagnostics (see
 * {@link getFreezeGuardStats}).
 * @example
 * ```ts
 * const stats: FreezeGuardStats | undefined = getFreezeGuardStats(pool);
 * ```
 */
export interface FreezeGuardStats {
  /** Checkouts served (each successful `connect()`, including the ones made by `pool.query()`). */
  checkouts: number;
  /** Validation round trips made on reused connections. */
  validations: number;
  /** Reused connections destroyed at checkout because they were past `maxLifetimeSeconds`. */
  evictedExpired: number;
  /** Reused connections destroyed at checkout because they were idle past `maxIdleMillis`. */
  evictedIdle: number;
  /**
   * Reused connections destroyed at checkout because they were found dead: closed or errored
   * (seen after letting pending socket events run) or failing validation.
   */
  evictedDead: number;
  /** Connections destroyed on release because they failed, or were released mid-transaction. */
  evictedOnRelease: number;
  /** `'error'` events absorbed on idle connections (the pool had already removed them). */
  idleErrors: number;
}

/** What the guard knows about one physical connection. */
interface ConnectionInfo {
  /** Wall-clock time the connection was opened. */
  openedAt: number;
  /** Wall-clock time it was last released (or opened, before its first use). */
  releasedAt: number;
  /** Releases to the pool; 0 means the connection is brand new and needs no checks. */
  uses: number;
  /** First error seen while checked out; the connection must not be pooled again. */
  failure: unknown;
}

interface GuardState {
  readonly options: FreezeGuardOptions;
  readonly stats: FreezeGuardStats;
  readonly connections: WeakMap<pg.PoolClient, ConnectionInfo>;
  /**
   * After a reused connection turned out dead, connections released before this time are
   * presumed dead too and replaced without a validation round trip: after a freeze they were
   * all idle through the same event, and on a silently dropped path each validation would cost
   * a full `validationTimeoutMillis`.
   */
  distrustReleasedBefore: number;
}

/** The pool's own `connect` (callback form: no promise per checkout), before the guard replaced it. */
type RawConnect = (callback: (err: Error | undefined, client?: pg.PoolClient) => void) => void;

type Done = (err: Error | undefined, client?: pg.PoolClient) => void;

const guarded = new WeakMap<pg.Pool, GuardState>();

// pg-pool destroys a connection released with any truthy value; naming it makes evictions easy
// to find.
const EVICT = true;

function noop(): void {}

/**
 * Makes `pool.connect()` — and therefore `pool.query()`, which checks out through
 * `this.connect` — freeze-safe, as described in this module's documentation. Installing twice on
 * the same pool is a no-op. Called by `createPool`; call it yourself only on a pool you built.
 *
 * The pool keeps its public API: `connect()` with or without a callback, `release(err?)` on the
 * client, events. An `'error'` listener is added to the pool so an idle connection dropped by the
 * server never crashes the process.
 *
 * @param pool - the pool to guard (its `connect` property is replaced on this instance only).
 * @param options - see {@link FreezeGuardOptions}; `createPool` passes the resolved configuration
 *   (defaults: lifetime from the configuration, idle 300000 ms, thaw 5000 ms, validation 1000 ms).
 * @example
 * ```ts
 * const pool = new pg.Pool({ ...settings });
 * installFreezeGuard(pool, {
 *   maxLifetimeSeconds: 3300,
 *   maxIdleMillis: 300_000,
 *   thawThresholdMillis: 5_000,
 *   validationTimeoutMillis: 1_000,
 * });
 * await pool.query('SELECT 1'); // stale or dead connections are replaced before this runs
 * ```
 */
export function installFreezeGuard(pool: pg.Pool, options: FreezeGuardOptions): void {
  if (guarded.has(pool)) return;
  const state: GuardState = {
    options: { ...options },
    stats: {
      checkouts: 0,
      validations: 0,
      evictedExpired: 0,
      evictedIdle: 0,
      evictedDead: 0,
      evictedOnRelease: 0,
      idleErrors: 0,
    },
    connections: new WeakMap(),
    distrustReleasedBefore: 0,
  };
  guarded.set(pool, state);

  // 'connect' fires once per physical connection, right before its first checkout.
  pool.on('connect', (client: pg.PoolClient) => {
    track(state, client, 0);
  });
  // Every release, ours or pg-pool's own (it pools a new connection whose waiter timed out
  // without handing it out): only a connection never released is new and skips the checks.
  pool.on('release', (_: unknown, client: pg.PoolClient) => {
    const info = state.connections.get(client);
    if (info) {
      info.uses++;
      info.releasedAt = Date.now();
    }
  });
  // pg-pool has already removed the failed idle connection when it emits this; without a
  // listener the emit would throw and kill the Lambda process.
  pool.on('error', () => {
    state.stats.idleErrors++;
  });

  const rawConnect: RawConnect = Object.getPrototypeOf(pool).connect.bind(pool);

  function guardedConnect(
    callback?: (err: Error | undefined, client?: pg.PoolClient, done?: unknown) => void,
  ) {
    if (callback) {
      // Like pg-pool: the callback runs outside any promise chain, so an exception it throws
      // is uncaught rather than an unhandled rejection.
      checkout(pool, state, rawConnect, 0, (err, client) =>
        err ? callback(err, undefined, noop) : callback(undefined, client, client?.release),
      );
      return undefined;
    }
    return new Promise<pg.PoolClient>((resolve, reject) =>
      checkout(pool, state, rawConnect, 0, (err, client) =>
        err ? reject(err) : resolve(client as pg.PoolClient),
      ),
    );
  }
  (pool as { connect: unknown }).connect = guardedConnect;
}

/**
 * The guard's counters for `pool`, or `undefined` when the pool is not guarded.
 * @example
 * ```ts
 * const { validations, evictedDead } = getFreezeGuardStats(pool) ?? {};
 * ```
 */
export function getFreezeGuardStats(pool: pg.Pool): Readonly<FreezeGuardStats> | undefined {
  const state = guarded.get(pool);
  return state ? { ...state.stats } : undefined;
}

/**
 * True when pg's client can still carry a statement. pg-pool itself reads these fields to decide
 * whether a released client may be pooled; pg has no public equivalent.
 *
 * The socket is checked too: pg only learns of a peer's FIN on the socket's `'close'`, which comes
 * after our half of the shutdown completes, a loop turn or two after the FIN was read. The
 * socket's own `readableEnded` is set as soon as the FIN is read, so checking it lets one turn
 * suffice.
 */
function isOpen(client: pg.PoolClient): boolean {
  const c = client as unknown as {
    _queryable?: boolean;
    _ending?: boolean;
    _ended?: boolean;
    connection?: { stream?: { destroyed?: boolean; readableEnded?: boolean; writableEnded?: boolean } };
  };
  if (c._queryable === false || c._ending === true || c._ended === true) return false;
  const stream = c.connection?.stream;
  return !(stream?.destroyed || stream?.readableEnded || stream?.writableEnded);
}

/** Closes the client's socket at once (pg has no public way to abort a connection). */
function destroySocket(client: pg.PoolClient): void {
  const stream = (client as unknown as { connection?: { stream?: { destroy?: () => void } } }).connection
    ?.stream;
  stream?.destroy?.();
}

/**
 * Loop turns to let run before trusting a reused connection. Measured against the local
 * endpoint over TLS: after a SIGCONT the drop (FIN, RST, FATAL) shows on the client within the
 * first or second turn (TLS delivers what it decrypted a turn later than plain TCP); the third is
 * margin. An idle turn costs a few microseconds.
 */
const SETTLE_TURNS = 3;
/**
 * Only a connection idle at least this long waits for those turns: a connection handed straight
 * from one invocation to the next, as under sustained load, skips the wait, which on a busy
 * process would cost whole loop iterations. In a standard Lambda every invocation after a freeze
 * of 10 ms or more settles (a few microseconds when the loop is idle, as it is after a thaw).
 */
const SETTLE_IDLE_MILLIS = 10;

/** Resolves after `turns` macrotask turns, so socket events already received (FIN, RST, FATAL) run. */
function socketEventsTurns(turns: number): Promise<void> {
  return new Promise((resolve) => {
    let left = turns;
    const turn = () => (--left <= 0 ? resolve() : setImmediate(turn));
    setImmediate(turn);
  });
}

/**
 * One checkout, callback style so the warm path costs no promise: take a client from the pool;
 * a new one is handed out as is, a reused one after the wall-clock checks (and, when it has been
 * idle, the settle turns and the validation). A rejected one is destroyed and the next pass
 * takes another.
 */
function checkout(pool: pg.Pool, state: GuardState, rawConnect: RawConnect, pass: number, done: Done): void {
  // Every pass either hands out or destroys one reused connection; new connections are handed
  // out unconditionally, so this only bounds pathological churn from concurrent releases.
  const maxPasses = (pool.options.max ?? 10) * 2 + 2;
  if (pass >= maxPasses) {
    done(
      new DsqlConnectionError(
        'Could not check out a live connection: every pooled connection was stale or dead',
        maxPasses,
      ),
    );
    return;
  }
  // pg-pool hands out a client whenever it reports no error.
  rawConnect((err, c) => {
    if (err) {
      done(err);
      return;
    }
    const client = c as pg.PoolClient;
    // Opened before the guard was installed: nothing known, its age starts now.
    const conn = state.connections.get(client) ?? track(state, client, 1);
    wrapRelease(client, conn, state);

    const reused = conn.uses > 0;
    const settle = (verdict: Verdict) => {
      if (verdict === 'ok') {
        state.stats.checkouts++;
        done(undefined, client);
        return;
      }
      state.stats[verdict]++;
      client.release(EVICT);
      // A dead connection gets no goodbye: pg's graceful end waits for the server to close its
      // side, which on a silently dropped path never happens, leaving the socket open.
      if (verdict === 'evictedDead') destroySocket(client);
      checkout(pool, state, rawConnect, pass + 1, done);
    };
    if (!reused) {
      settle('ok');
      return;
    }
    const quick = quickVerdict(client, conn, state.options);
    if (quick !== 'later') {
      settle(quick);
      return;
    }
    inspectIdle(client, conn, state).then(settle, (e: unknown) => {
      // inspectIdle handles its own failures; anything else is a bug: fail safe.
      conn.failure ??= e;
      settle('evictedDead');
    });
  });
}

type Verdict = 'ok' | 'evictedExpired' | 'evictedIdle' | 'evictedDead';

/** The synchronous, wall-clock part of the checks; `'later'` when the connection has been idle. */
function quickVerdict(
  client: pg.PoolClient,
  info: ConnectionInfo,
  options: FreezeGuardOptions,
): Verdict | 'later' {
  const now = Date.now();
  // No timer can be trusted after a freeze: the wall clock decides.
  if (options.maxLifetimeSeconds > 0 && now - info.openedAt >= options.maxLifetimeSeconds * 1000) {
    return 'evictedExpired';
  }
  const idle = now - info.releasedAt;
  if (options.maxIdleMillis > 0 && idle >= options.maxIdleMillis) return 'evictedIdle';
  if (info.failure !== undefined || !isOpen(client)) return 'evictedDead';
  return idle >= SETTLE_IDLE_MILLIS || idle >= options.thawThresholdMillis ? 'later' : 'ok';
}

/** The checks for a connection that has been idle: settle turns, then validation after a thaw. */
async function inspectIdle(client: pg.PoolClient, info: ConnectionInfo, state: GuardState): Promise<Verdict> {
  const { options } = state;
  const idle = Date.now() - info.releasedAt;
  // After a thaw the invocation can run before the socket events that arrived while the process
  // was frozen (FIN, RST, a FATAL message). A few macrotask turns (no I/O of our own) let them run,
  // so a connection closed during even a short freeze is replaced instead of failing the statement.
  if (idle >= SETTLE_IDLE_MILLIS) {
    await socketEventsTurns(SETTLE_TURNS);
    if (info.failure !== undefined || !isOpen(client)) return 'evictedDead';
  }
  if (idle < options.thawThresholdMillis) return 'ok';

  // A thaw (or a long idle): a silently dropped path shows nothing until it is used; prove it.
  if (info.releasedAt < state.distrustReleasedBefore) return 'evictedDead';

  state.stats.validations++;
  try {
    await validate(client, options.validationTimeoutMillis);
    return info.failure === undefined && isOpen(client) ? 'ok' : 'evictedDead';
  } catch (err) {
    info.failure ??= err;
    if (isConnectionLostError(err) || err instanceof ValidationTimeout) {
      // Every connection that was already this idle went through the same freeze or outage.
      state.distrustReleasedBefore = Math.max(
        state.distrustReleasedBefore,
        Date.now() - options.thawThresholdMillis,
      );
    }
    return 'evictedDead';
  }
}

class ValidationTimeout extends Error {
  constructor(ms: number) {
    super(`Connection validation timed out after ${ms} ms`);
    this.name = 'ValidationTimeout';
  }
}

/** One round trip: an empty statement (`EmptyQueryResponse`), cheaper for the server than a SELECT. */
function validate(client: pg.PoolClient, timeoutMillis: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    if (timeoutMillis > 0) {
      // Destroying the connection on release (client.end() with a query in flight destroys the
      // socket) is what finally stops the hung query; the timer only stops the wait.
      timer = setTimeout(() => reject(new ValidationTimeout(timeoutMillis)), timeoutMillis);
      timer.unref();
    }
    client.query(';').then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

/**
 * Wraps this checkout's `release` (pg-pool assigns a fresh one per checkout) so that the release
 * time is recorded on the wall clock and a connection that failed, or that is handed back
 * inside a transaction, is destroyed instead of pooled.
 */
function wrapRelease(client: pg.PoolClient, info: ConnectionInfo, state: GuardState): void {
  const poolRelease = client.release;
  client.release = function releaseGuarded(err?: Error | boolean) {
    let destroy: Error | boolean | undefined = err;
    if (!destroy) {
      // 'T'/'E': a transaction left open would leak its snapshot and locks-to-be into the next
      // caller's statements; pg-pool would pool it as is.
      const tx = client.getTransactionStatus?.();
      if (info.failure !== undefined || !isOpen(client) || (tx != null && tx !== 'I')) {
        destroy = info.failure instanceof Error ? info.failure : true;
        state.stats.evictedOnRelease++;
      }
    }
    poolRelease(destroy);
  };
}

/**
 * Starts tracking a connection. Its `'error'` listener stays for the connection's life: while it
 * is checked out pg-pool listens no more, and a checked-out client with no `'error'` listener
 * crashes the process when its socket fails between two statements. (While idle, pg-pool's own
 * listener discards it; the failure noted here is then never read.) One listener per connection
 * rather than one per checkout keeps the warm path free of listener churn.
 */
function track(state: GuardState, client: pg.PoolClient, uses: number): ConnectionInfo {
  const now = Date.now();
  const info: ConnectionInfo = { openedAt: now, releasedAt: now, uses, failure: undefined };
  state.connections.set(client, info);
  client.on('error', (err: unknown) => {
    info.failure ??= err ?? new Error('connection error');
  });
  return info;
}
