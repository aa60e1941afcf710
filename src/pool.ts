/**
 * Connections to Aurora DSQL: {@link createPool} (a real `pg.Pool`) and {@link connect} (one
 * client). The token comes before dialling (a token failure opens no socket), TLS is verified
 * against the cluster name (one context per pool), refusals (53400, 53300) and network errors are
 * retried on a new connection within `connectionTimeoutMillis`; no `SET`, no I/O before a query.
 *
 * The pool's `connect()` is pgxpool's `Acquire`. A frozen Lambda fires no timer and runs no socket
 * event, so every decision is made at checkout, by the wall clock: a reused connection past its
 * (jittered) lifetime or idle too long is destroyed; one idle a while first lets pending socket
 * events (FIN, RST, FATAL) run, and after a thaw gets one bounded round trip; a rejected one is
 * destroyed and the next taken. A user statement is never sent twice.
 */
import type { Duplex } from 'node:stream';
import pg from 'pg';
import { type DsqlConfig, type ResolvedDsqlConfig, resolveConfig } from './config.js';
import { DSQL_DEFAULTS } from './defaults.js';
import { DsqlConnectionError, isConnectionLostError, refusalOf } from './errors.js';
import type { RetryOptions } from './retry.js';
import { type TokenCache, tokenCacheFor } from './token.js';

type Verdict = 'evictedExpired' | 'evictedIdle' | 'evictedDead';
/**
 * Counters of a pool's checkouts: `checkouts` served (`query()`'s included), `validations` of
 * reused connections; destroyed at checkout, `evictedExpired` (past their lifetime), `evictedIdle`
 * (idle past `maxIdleMillis`), `evictedDead` (closed, or failed or timed out validating); destroyed
 * at release, `evictedOnRelease` (failed, or in a transaction); `idleErrors`: `'error'` events of
 * idle connections (pg-pool had already removed them).
 */
export type CheckoutStats = Record<
  Verdict | 'checkouts' | 'validations' | 'evictedOnRelease' | 'idleErrors',
  number
>;
const COUNTERS = 'checkouts validations evictedExpired evictedIdle evictedDead evictedOnRelease idleErrors';
/** `releasedAt` 0: brand new, handed out unchecked. `dead`: saw an `'error'`, never pooled again. */
type Connection = { readonly expiresAt: number; releasedAt: number; dead?: boolean };
/** What `end()` wakes: every wait of a checkout; `ended` once it has run. */
type Ending = { ended?: boolean; waits: Set<() => void> };

const noop = () => {};
/** Loop turns a connection idle ≥ 10 ms waits for pending socket events; after SIGCONT a drop shows within two. */
const settle = () => new Promise((resolve) => setImmediate(() => setImmediate(() => setImmediate(resolve))));

/**
 * The client's socket, the one private pg field read here: pg notices a peer's FIN only at the
 * socket's `'close'`, a turn or two after its `readableEnded`, and a dead connection must be
 * destroyed (pg's graceful `end()` waits for a peer that may be gone).
 * `test/unit/checkout.test.ts` fails if pg stops keeping it here.
 */
const socketOf = (c: pg.ClientBase) => (c as { connection?: { stream?: Duplex } }).connection?.stream;

/**
 * pg's settings for a configuration, without a password: the client class brings the token.
 * `ssl.servername` is always the cluster; an IP `hostaddr` becomes pg's `host`, a DNS-name one
 * is dialled through a `stream` factory (pg would send a dialled name as SNI).
 */
function pgConfig(config: ResolvedDsqlConfig): pg.PoolConfig {
  const { host, hostaddr, ca } = config;
  let context: unknown;
  const dialName = hostaddr && !hostaddr.includes(':') && /[a-z]/.test(hostaddr);
  return {
    allowExitOnIdle: DSQL_DEFAULTS.allowExitOnIdle,
    // What pg reads of it (user, database, port, max, min, idleTimeoutMillis, connectionTimeoutMillis) has pg's names.
    ...config,
    ...config.pgOptions,
    // Node ≥ 20.16: node:net is fetched when a socket is made, never imported at init.
    stream: dialName
      ? () => {
          const socket = new (process.getBuiltinModule('node:net').Socket)();
          const connect = socket.connect.bind(socket) as (port: number, host: string) => Duplex;
          return Object.assign(socket, { connect: (port: number) => connect(port, hostaddr) });
        }
      : undefined,
    host: dialName ? host : (hostaddr ?? host),
    ssl: {
      rejectUnauthorized: true,
      servername: host,
      ca,
      // pg copies `ssl` into the tls.connect options: one context per pool, built at the first handshake.
      get secureContext() {
        context ??= process.getBuiltinModule?.('node:tls').createSecureContext({ ca });
        return context;
      },
    } as pg.PoolConfig['ssl'],
    sslnegotiation: config.sslNegotiation,
    application_name: config.applicationName,
  };
}

/** A `pg.Client` class: token before dialling (none after end()); drops a rejected one (28000/28P01). */
function clientClass(config: ResolvedDsqlConfig, ending?: Ending): typeof pg.Client {
  let tokens: TokenCache | undefined; // at the first dial: nothing but validation at init
  return class extends pg.Client {
    #token = '';
    constructor(options: pg.ClientConfig) {
      // pg's own timer bounds each dial (a pool gives pg-pool none).
      super({ ...options, connectionTimeoutMillis: config.connectionTimeoutMillis });
      // pg keeps the password it sends on the client, where inspect(…, { showHidden }) would print
      // it: as a getter it prints as [Getter], and holds the token only while authenticating.
      Object.defineProperty(this, 'password', { get: () => this.#token });
    }

    override connect(): Promise<pg.Client>;
    override connect(callback: (err: Error | null) => void): void;
    override connect(callback?: (err: Error | null) => void): Promise<pg.Client> | undefined {
      const connected = this.#connect();
      return callback ? void connected.then(() => callback(null), callback) : connected;
    }

    async #connect(): Promise<pg.Client> {
      tokens ??= tokenCacheFor(config);
      const cache = tokens;
      this.#token = await cache.get();
      // Closes the dial at end(), and after a refusal or garbage (pg leaves that socket to the server).
      const abort = () => socketOf(this)?.destroy();
      ending?.waits.add(abort);
      try {
        if (ending?.ended) throw new Error('Cannot use a pool after calling end on the pool');
        return await super.connect();
      } catch (err) {
        if (err instanceof pg.DatabaseError) abort();
        if (/^28(000|P01)$/.test(String((err as { code?: unknown } | null)?.code)))
          cache.invalidate(this.#token);
        throw err;
      } finally {
        ending?.waits.delete(abort);
        this.#token = '';
      }
    }
  };
}

/** `promise`, or `value` if it has not settled after `ms` or once the pool has ended. */
function within<T, V>(promise: Promise<T>, ms: number, value: V, ending?: Ending): Promise<T | V> {
  let wake = noop;
  const late = new Promise<V>((resolve) => {
    wake = () => resolve(value);
  });
  const timer = setTimeout(wake, ms);
  if (ending?.ended) wake();
  ending?.waits.add(wake);
  return Promise.race([promise, late]).finally(() => {
    clearTimeout(timer);
    ending?.waits.delete(wake);
  });
}

/**
 * Attempts until one yields a client (`undefined`: try again at once) or the budget runs out; a
 * client arriving late is discarded. After a refusal the wait is drawn uniformly from a window
 * that doubles per attempt: an admission refusal means many sandboxes connect at once, so its
 * window starts wide and most get in at their next attempt; a network error starts narrow.
 */
async function admit<T>(
  config: ResolvedDsqlConfig,
  open: () => Promise<T | undefined>,
  discard: (late: T) => void,
  ending?: Ending,
): Promise<T> {
  const budget = config.connectionTimeoutMillis;
  const deadline = Date.now() + budget;
  let last: unknown;
  let n = 0;
  const giveUp = (why: string) => {
    const cause = last instanceof Error ? `: ${last.message}` : '';
    const message = `Could not connect to ${config.host} within ${budget} ms (${n} attempts): ${why}${cause}`;
    return new DsqlConnectionError(message, n, { cause: last });
  };
  for (;;) {
    n++;
    const attempt = open();
    let outcome: T | undefined | null;
    try {
      outcome = await within(attempt, deadline - Date.now(), null, ending);
    } catch (err) {
      const refusal = refusalOf(err);
      if (!refusal) throw err;
      last = err;
      const left = deadline - Date.now();
      if (left < 1) throw giveUp(refusal === 'network' ? 'unreachable' : 'refused');
      const window =
        DSQL_DEFAULTS[refusal === 'network' ? 'networkRetryWindowMillis' : 'admissionRetryWindowMillis'];
      // Within what is left, keeping a fifth of it for the attempt itself; end() wakes it.
      const delay = Math.random() * Math.min(window * 2 ** Math.min(n - 1, 8), left * 0.8);
      await within(new Promise(noop), delay, null, ending);
      if (ending?.ended) throw giveUp('the pool was ended');
      continue;
    }
    if (outcome) return outcome;
    if (outcome === null) {
      attempt.then((late) => late && discard(late), noop);
      throw giveUp(ending?.ended ? 'the pool was ended' : 'timed out');
    }
  }
}

/**
 * What {@link createPool} returns: a `pg.Pool` whose `connect()` (so `query()`) is the checkout
 * above; `end()` stops retries at once. Bookkeeping comes from pg-pool's events; nothing is patched.
 */
export class DsqlPool extends pg.Pool {
  /** The pool-level retry policy (config key `retry`), for the retrying helpers. */
  readonly retry: RetryOptions | undefined;
  readonly #config: ResolvedDsqlConfig;
  readonly #ending: Ending;
  readonly #connections = new WeakMap<pg.ClientBase, Connection>();
  readonly #stats = Object.fromEntries(COUNTERS.split(' ').map((k) => [k, 0])) as CheckoutStats;
  /**
   * Connections released before this went through the freeze or outage that killed one: replaced
   * without a validation, which on a silently dropped path would cost `validationTimeoutMillis` each.
   */
  #distrustBefore = 0;

  /**
   * Prefer {@link createPool}. pg-pool gets no timers: its connect timeout would hide the refusal
   * ("Connection terminated due to connection timeout"); lifetimes are kept, jittered, at checkout.
   * @param pgOverrides @internal Replaces pg settings (tests: a scripted `Client`, plain PostgreSQL).
   */
  constructor(config: ResolvedDsqlConfig, pgOverrides?: pg.PoolConfig) {
    const ending: Ending = { waits: new Set() };
    super({
      ...pgConfig(config),
      connectionTimeoutMillis: 0,
      maxLifetimeSeconds: 0,
      Client: clientClass(config, ending),
      ...pgOverrides,
    });
    this.#ending = ending;
    this.#config = config;
    this.retry = config.retry;
    // Once per physical connection, before its first checkout; its one 'error' listener for life
    // (pg-pool's listens only while it is idle, and an unheard 'error' crashes the process).
    this.on('connect', (client) => {
      const { maxLifetimeSeconds: max, maxLifetimeJitterSeconds: jitter } = config;
      const life = max - Math.random() * Math.min(jitter, max / 2);
      const info: Connection = { expiresAt: Date.now() + life * 1000, releasedAt: 0 };
      this.#connections.set(client, info);
      client.on('error', () => Object.assign(info, { dead: true }));
    });
    // The one "may this connection be pooled again?" check.
    this.on('release', (err, client) => {
      const info = this.#connections.get(client) as Connection;
      info.releasedAt = Date.now();
      // 'T'/'E': an open transaction would leak its snapshot into the next caller's statements.
      if (!err && (!this.#isOpen(client) || client.getTransactionStatus() !== 'I')) {
        this.#stats.evictedOnRelease++;
        if (info.dead) socketOf(client)?.destroy();
        // Ending marks the client, so pg-pool removes it instead of pooling it.
        client.end().catch(noop);
      }
    });
    // pg-pool has already removed the idle client it reports; without a listener the emit would throw.
    this.on('error', () => this.#stats.idleErrors++);
  }

  /** This pool's checkout counters (a copy). */
  checkoutStats(): Readonly<CheckoutStats> {
    return { ...this.#stats };
  }

  override connect(): Promise<pg.PoolClient>;
  override connect(callback: Parameters<pg.Pool['connect']>[0] & {}): void;
  override connect(callback?: Parameters<pg.Pool['connect']>[0]): Promise<pg.PoolClient> | undefined {
    const open = async () => {
      const client = await super.connect();
      const verdict = await this.#verdict(client);
      this.#stats[verdict ?? 'checkouts']++;
      if (!verdict) return client;
      client.release(true);
      // No goodbye: a graceful end waits for a peer that may be gone (after a long idle too).
      socketOf(client)?.destroy();
    };
    const acquired = admit(this.#config, open, (late) => late.release(), this.#ending);
    if (!callback) return acquired;
    acquired.then(
      (client) => callback(undefined, client, client.release),
      (err: Error) => callback(err, undefined, noop),
    );
  }

  override end(): Promise<void>;
  override end(callback: () => void): void;
  override end(callback?: () => void): Promise<void> | undefined {
    this.#ending.ended = true;
    for (const wake of this.#ending.waits) wake();
    return super.end(callback as () => void) as Promise<void> | undefined;
  }

  #isOpen(client: pg.ClientBase): boolean {
    const s = socketOf(client);
    return !this.#connections.get(client)?.dead && !(s?.destroyed || s?.readableEnded || s?.writableEnded);
  }

  /** Why a client from pg-pool must not be handed out, if it must not. */
  async #verdict(client: pg.PoolClient): Promise<Verdict | undefined> {
    const info = this.#connections.get(client) as Connection;
    const { maxIdleMillis, thawThresholdMillis, validationTimeoutMillis } = this.#config;
    const idle = Date.now() - info.releasedAt;
    if (!info.releasedAt) return;
    if (Date.now() >= info.expiresAt) return 'evictedExpired';
    if (idle >= maxIdleMillis) return 'evictedIdle';
    // Handed straight on under load, a connection does not wait.
    if (idle >= 10) await settle();
    if (!this.#isOpen(client)) return 'evictedDead';
    if (idle < thawThresholdMillis) return;
    if (info.releasedAt < this.#distrustBefore) return 'evictedDead';
    this.#stats.validations++;
    try {
      // An empty statement: one round trip, cheaper for the server than a SELECT; end() stops the wait.
      if (await within(client.query(';'), validationTimeoutMillis, null, this.#ending))
        return this.#isOpen(client) ? undefined : 'evictedDead';
    } catch (err) {
      if (!isConnectionLostError(err)) return 'evictedDead';
    }
    // No answer, or a lost connection: the others idle since the same freeze are presumed dead.
    this.#distrustBefore = Date.now() - thawThresholdMillis;
    return 'evictedDead';
  }
}

/**
 * Creates a pool for Aurora DSQL: cached IAM tokens, full TLS verification, admission refusals
 * retried, DSQL-sized defaults and the freeze-safe checkout. No I/O: the configuration is
 * validated synchronously (`DsqlConfigError`); credentials, token and connection wait for the first query.
 * @param config A {@link DsqlConfig}, a connection string, a host name or cluster ID, or nothing (environment only).
 * @example
 * import { createPool } from 'dsql-lambda';
 * const pool = createPool({ host: process.env.CLUSTER_ENDPOINT }); // module scope: no I/O
 * export const handler = async () => (await pool.query('SELECT now() AS now')).rows[0];
 */
export function createPool(config?: DsqlConfig | string): DsqlPool {
  return new DsqlPool(resolveConfig(config));
}

/**
 * Opens one connection (Go's `dsql.Connect`) with the guarantees of {@link createPool}; the caller
 * ends it. An `'error'` listener is attached, so a drop while idle never crashes the process.
 * @throws `DsqlConfigError`, `DsqlTokenError`, `DsqlConnectionError`, or pg's own error (e.g. 28P01).
 * @example
 * const client = await connect('dsql://admin@abc.dsql.us-east-1.on.aws');
 * try { console.log((await client.query('SELECT 1 AS one')).rows); } finally { await client.end(); }
 */
export async function connect(config?: DsqlConfig | string): Promise<pg.Client> {
  const resolved = resolveConfig(config);
  const Client = clientClass(resolved);
  const options = pgConfig(resolved);
  return admit(
    resolved,
    () => new Client(options).on('error', noop).connect(),
    (late) => void late.end().catch(noop),
  );
}
