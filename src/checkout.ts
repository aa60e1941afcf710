/**
 * Freeze-safe checkout: a `pg.Pool` whose `connect()` (and so `query()`) works like pgxpool's
 * `Acquire`. While Lambda has the process frozen no timer fires and no socket event runs, so
 * pg-pool's timers fire late and a connection the server closed still looks healthy. Every
 * decision is therefore made at checkout, by the wall clock: a reused connection past its
 * (jittered) lifetime or idle too long is destroyed; one idle a while first lets pending socket
 * events (FIN, RST, FATAL) run, and after a thaw gets one bounded validation round trip; a
 * rejected one is destroyed and the next taken. A user statement is never sent twice. Bookkeeping
 * comes from pg-pool's public events; no method of a client or of the pool instance is replaced.
 */
import type { Duplex } from 'node:stream';
import pg from 'pg';
import { DsqlConnectionError, isConnectionLostError } from './errors.js';

/** Checkout settings; all comparisons use the wall clock (`Date.now()`) at checkout. */
export interface CheckoutOptions {
  /** A reused connection older than this, seconds, is destroyed at checkout. `0`: never. */
  readonly maxLifetimeSeconds: number;
  /** Up to this many seconds come off each connection's lifetime at random. Default: `0`. */
  readonly maxLifetimeJitterSeconds?: number | undefined;
  /** A reused connection idle longer than this, ms, is destroyed at checkout. `0`: never. */
  readonly maxIdleMillis: number;
  /** A reused connection idle longer than this, ms, is validated first (`0`: every reuse). */
  readonly thawThresholdMillis: number;
  /** Timeout of that validation, ms (`0`: none; a silently dropped path never answers). */
  readonly validationTimeoutMillis: number;
}

/** Counters of a pool's checkouts, for tests, benchmarks and diagnostics. */
export interface CheckoutStats {
  /** Checkouts served (each successful `connect()`, including those `query()` makes). */
  checkouts: number;
  /** Validation round trips made on reused connections. */
  validations: number;
  /** Reused connections destroyed at checkout: past their lifetime. */
  evictedExpired: number;
  /** Reused connections destroyed at checkout: idle past `maxIdleMillis`. */
  evictedIdle: number;
  /** Reused connections destroyed at checkout: found dead (closed, failed validation, timed out). */
  evictedDead: number;
  /** Connections destroyed at release: they had failed, or were released inside a transaction. */
  evictedOnRelease: number;
  /** `'error'` events absorbed on idle connections (pg-pool had already removed them). */
  idleErrors: number;
}

interface ConnectionInfo {
  readonly expiresAt: number;
  releasedAt: number;
  /** Releases so far; 0 means brand new: handed out without checks. */
  uses: number;
  /** First error or end seen; the connection is never pooled again. */
  failure: unknown;
  /** Being destroyed by the checkout itself (not counted again at release). */
  evicting: boolean;
}

type Verdict = 'ok' | 'evictedExpired' | 'evictedIdle' | 'evictedDead';
type ConnectCallback = (
  err: Error | undefined,
  client: pg.PoolClient | undefined,
  done: (release?: unknown) => void,
) => void;

/** Loop turns a reused connection waits for pending socket events; after SIGCONT a drop shows within two. */
const SETTLE_TURNS = 3;
/** Only a connection idle this long waits those turns: one handed straight on under load does not. */
const SETTLE_IDLE_MILLIS = 10;

function noop(): void {}

/**
 * The client's socket. pg has no public accessor for it, and this is the one private field read
 * here: pg notices a peer's FIN only at the socket's `'close'`, a turn or two after the socket's
 * own `readableEnded`, and a dead connection must be destroyed (pg's graceful `end()` waits for a
 * peer that may be gone). `test/unit/checkout.test.ts` fails if pg stops keeping it here.
 */
export function socketOf(client: pg.ClientBase): Duplex | undefined {
  return (client as { connection?: { stream?: Duplex } }).connection?.stream;
}

function isOpen(client: pg.PoolClient, info: ConnectionInfo): boolean {
  const socket = socketOf(client);
  return info.failure === undefined && !(socket?.destroyed || socket?.readableEnded || socket?.writableEnded);
}

const settleTurns = (turns: number) =>
  new Promise<void>((resolve) => {
    const turn = () => (--turns <= 0 ? resolve() : setImmediate(turn));
    setImmediate(turn);
  });

const TIMED_OUT = new Error('Connection validation timed out');

/** One round trip (an empty statement, cheaper for the server than a SELECT), bounded. */
function validate(client: pg.PoolClient, timeoutMillis: number): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    if (timeoutMillis > 0) timer = setTimeout(reject, timeoutMillis, TIMED_OUT).unref();
  });
  return Promise.race([client.query(';'), timeout]).finally(() => clearTimeout(timer));
}

/**
 * A `pg.Pool` with the freeze-safe checkout described above. Everything else is pg-pool's: pass
 * it what `pg.Pool` takes. `createPool` builds a {@link DsqlPool} on it; use this class directly
 * for plain PostgreSQL.
 * @example
 * const pool = new FreezeSafePool({ max: 4 }, { maxLifetimeSeconds: 3300, maxIdleMillis: 300_000,
 *   thawThresholdMillis: 5_000, validationTimeoutMillis: 1_000 });
 * await pool.query('SELECT 1'); // stale or dead connections are replaced before this runs
 */
export class FreezeSafePool extends pg.Pool {
  readonly #options: CheckoutOptions;
  readonly #stats: CheckoutStats = {
    checkouts: 0,
    validations: 0,
    evictedExpired: 0,
    evictedIdle: 0,
    evictedDead: 0,
    evictedOnRelease: 0,
    idleErrors: 0,
  };
  readonly #connections = new WeakMap<pg.PoolClient, ConnectionInfo>();
  /**
   * After a reused connection turned out dead, the ones released before this are presumed dead
   * too (they went through the same freeze or outage) and replaced without a validation, which
   * on a silently dropped path would cost a full `validationTimeoutMillis` each.
   */
  #distrustReleasedBefore = 0;

  constructor(config: pg.PoolConfig, options: CheckoutOptions) {
    super(config);
    this.#options = { ...options };
    // Once per physical connection, right before its first checkout.
    this.on('connect', (client: pg.PoolClient) => this.#track(client));
    this.on('release', (err: unknown, client: pg.PoolClient) => this.#released(err, client));
    // pg-pool has already removed the idle client it reports; without a listener the emit would throw.
    this.on('error', () => this.#stats.idleErrors++);
  }

  /** This pool's checkout counters (a copy). */
  checkoutStats(): Readonly<CheckoutStats> {
    return { ...this.#stats };
  }

  /** One client from pg-pool, new or idle, unchecked. Subclasses add connection policy here. */
  protected take(): Promise<pg.PoolClient> {
    return super.connect();
  }

  override connect(): Promise<pg.PoolClient>;
  override connect(callback: ConnectCallback): void;
  override connect(callback?: ConnectCallback): Promise<pg.PoolClient> | undefined {
    const acquired = this.#acquire();
    if (!callback) return acquired;
    // Outside the promise chain, as with pg-pool: an exception in the callback is uncaught, not a rejection.
    acquired.then(
      (client) => process.nextTick(callback, undefined, client, client.release),
      (err: Error) => process.nextTick(callback, err, undefined, noop),
    );
    return undefined;
  }

  async #acquire(): Promise<pg.PoolClient> {
    // Each pass hands out or destroys one reused connection; this bounds churn from concurrent releases.
    const maxPasses = (this.options.max ?? 10) * 2 + 2;
    for (let pass = 0; pass < maxPasses; pass++) {
      const client = await this.take();
      const info = this.#connections.get(client) ?? this.#track(client);
      const verdict =
        info.uses === 0
          ? 'ok'
          : (this.#quickVerdict(client, info) ?? (await this.#inspectIdle(client, info)));
      if (verdict === 'ok') {
        this.#stats.checkouts++;
        return client;
      }
      this.#stats[verdict]++;
      info.evicting = true;
      client.release(true);
      // No goodbye for a dead connection: a graceful end waits for a peer that may be gone.
      if (verdict === 'evictedDead') socketOf(client)?.destroy();
    }
    throw new DsqlConnectionError('every pooled connection was stale or dead', maxPasses);
  }

  /** The wall-clock checks; `undefined` when the connection has been idle long enough to need more. */
  #quickVerdict(client: pg.PoolClient, info: ConnectionInfo): Verdict | undefined {
    const now = Date.now();
    if (now >= info.expiresAt) return 'evictedExpired';
    const idle = now - info.releasedAt;
    if (this.#options.maxIdleMillis > 0 && idle >= this.#options.maxIdleMillis) return 'evictedIdle';
    if (!isOpen(client, info)) return 'evictedDead';
    return idle >= SETTLE_IDLE_MILLIS || idle >= this.#options.thawThresholdMillis ? undefined : 'ok';
  }

  async #inspectIdle(client: pg.PoolClient, info: ConnectionInfo): Promise<Verdict> {
    const { thawThresholdMillis, validationTimeoutMillis } = this.#options;
    const idle = Date.now() - info.releasedAt;
    if (idle >= SETTLE_IDLE_MILLIS) {
      await settleTurns(SETTLE_TURNS);
      if (!isOpen(client, info)) return 'evictedDead';
    }
    if (idle < thawThresholdMillis) return 'ok';
    if (info.releasedAt < this.#distrustReleasedBefore) return 'evictedDead';
    this.#stats.validations++;
    try {
      await validate(client, validationTimeoutMillis);
      return isOpen(client, info) ? 'ok' : 'evictedDead';
    } catch (err) {
      info.failure ??= err;
      if (err === TIMED_OUT || isConnectionLostError(err)) {
        this.#distrustReleasedBefore = Math.max(
          this.#distrustReleasedBefore,
          Date.now() - thawThresholdMillis,
        );
      }
      return 'evictedDead';
    }
  }

  /** The one "may this connection be pooled again?" check, on pg-pool's `release` event. */
  #released(err: unknown, client: pg.PoolClient): void {
    const info = this.#connections.get(client);
    if (!info) return;
    info.uses++;
    info.releasedAt = Date.now();
    if (err || info.evicting) return;
    // 'T'/'E': an open transaction would leak its snapshot into the next caller's statements.
    const tx = client.getTransactionStatus?.();
    if (!isOpen(client, info) || (tx != null && tx !== 'I')) {
      this.#stats.evictedOnRelease++;
      info.evicting = true;
      // Ending marks the client so pg-pool removes it instead of pooling it.
      if (info.failure !== undefined) socketOf(client)?.destroy();
      client.end().catch(noop);
    }
  }

  /**
   * Starts tracking a connection, with its one `'error'` listener for life: while it is checked
   * out pg-pool listens no more, and an unheard `'error'` would crash the process.
   */
  #track(client: pg.PoolClient): ConnectionInfo {
    const now = Date.now();
    const { maxLifetimeSeconds, maxLifetimeJitterSeconds = 0 } = this.#options;
    const info: ConnectionInfo = {
      expiresAt:
        maxLifetimeSeconds > 0
          ? now + (maxLifetimeSeconds - Math.random() * maxLifetimeJitterSeconds) * 1000
          : Infinity,
      releasedAt: now,
      uses: 0,
      failure: undefined,
      evicting: false,
    };
    this.#connections.set(client, info);
    client.on('error', (err: unknown) => {
      info.failure ??= err ?? new Error('connection error');
    });
    client.once('end', () => {
      info.failure ??= new Error('Connection ended');
    });
    return info;
  }
}
