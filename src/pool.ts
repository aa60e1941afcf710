/**
 * Connections to Aurora DSQL: {@link createPool} (a real `pg.Pool`, so Kysely, Drizzle and anything
 * else that takes one works unchanged) and {@link connect} (one client). Both obtain the IAM token
 * before dialling (a token failure opens no socket), verify TLS fully against the cluster name
 * with one TLS context per pool, retry DSQL's admission refusals (53400 rate, 53300 cap) and
 * network errors on a new connection each time within `connectionTimeoutMillis`, send no `SET`,
 * and do no I/O until the first connection is needed.
 */
import type { Socket } from 'node:net';
import type { SecureContext } from 'node:tls';
import pg from 'pg';
import { FreezeSafePool } from './checkout.js';
import { type DsqlConfig, type ResolvedDsqlConfig, resolveConfig } from './config.js';
import { DSQL_DEFAULTS } from './defaults.js';
import { DsqlConnectionError, refusalOf } from './errors.js';
import type { RetryOptions } from './retry.js';
import { type TokenCache, tokenCacheFor } from './token.js';

const noop = () => {};
type Callback = ((err: Error) => void) | ((err: null, c: pg.Client) => void);

/** A `pg.Client` that obtains its IAM token before dialling; a rejected token (28000/28P01) is dropped from the cache. */
export class DsqlClient extends pg.Client {
  readonly #tokens: () => TokenCache;
  readonly #secret: { value: string } = { value: '' };

  constructor(config: pg.ClientConfig, tokens: () => TokenCache) {
    super(config);
    this.#tokens = tokens;
    // pg keeps the password it sends in these two properties, where inspect(…, { showHidden })
    // would print it. As accessors they print as [Getter/Setter], and hold the token only while
    // this client authenticates. (connector.test.ts fails if pg keeps it anywhere else.)
    const secret = this.#secret;
    const hidden = {
      configurable: true,
      get: () => secret.value,
      set: (v: string) => {
        secret.value = v;
      },
    };
    Object.defineProperty(this, 'password', hidden);
    Object.defineProperty(
      (this as unknown as { connectionParameters: object }).connectionParameters,
      'password',
      hidden,
    );
  }

  override connect(): Promise<pg.Client>;
  override connect(callback: Callback): void;
  override connect(callback?: Callback): Promise<pg.Client> | undefined {
    const connected = this.#connect();
    if (!callback) return connected;
    const done = callback as (err: Error | null, c?: pg.Client) => void;
    connected.then(
      (c) => process.nextTick(done, null, c),
      (err: Error) => process.nextTick(done, err),
    );
  }

  async #connect(): Promise<pg.Client> {
    const cache = this.#tokens();
    const token = await cache.get();
    this.#secret.value = token;
    try {
      await super.connect();
      return this;
    } catch (err) {
      const code = (err as { code?: unknown } | null)?.code;
      if (code === '28000' || code === '28P01') cache.invalidate(token);
      throw err;
    } finally {
      this.#secret.value = '';
    }
  }
}

/**
 * pg's configuration (without a password: {@link DsqlClient} brings the token). `ssl.servername`
 * is always the cluster; an IP `hostaddr` becomes pg's `host`, a DNS-name one is dialled through
 * a `stream` factory (pg would send the dialled name as SNI); one TLS context serves every connection.
 * @example
 * const client = new DsqlClient(toPgConfig(resolved), () => tokenCacheFor(resolved));
 */
export function toPgConfig(config: ResolvedDsqlConfig): pg.PoolConfig {
  const { host, hostaddr, ca } = config;
  let context: SecureContext | undefined;
  const dialName = hostaddr !== undefined && !hostaddr.includes(':') && /[a-z]/.test(hostaddr);
  return {
    allowExitOnIdle: DSQL_DEFAULTS.allowExitOnIdle,
    ...config.pgOptions,
    // Node ≥ 20.16: node:net is fetched only when a socket is made, never imported at init.
    stream: dialName
      ? () => {
          const socket = new (process.getBuiltinModule('node:net').Socket)();
          const connect = socket.connect.bind(socket) as (port: number, host: string) => Socket;
          return Object.assign(socket, { connect: (port: number) => connect(port, hostaddr) });
        }
      : undefined,
    host: dialName ? host : (hostaddr ?? host),
    port: config.port,
    user: config.user,
    database: config.database,
    ssl: {
      rejectUnauthorized: true,
      servername: host,
      ca,
      // pg copies `ssl` into the tls.connect options: this getter builds the context at the first handshake.
      get secureContext() {
        context ??= process.getBuiltinModule?.('node:tls').createSecureContext({ ca });
        return context;
      },
    },
    sslnegotiation: config.sslNegotiation,
    application_name: config.applicationName,
    max: config.max,
    min: config.min,
    idleTimeoutMillis: config.idleTimeoutMillis,
    connectionTimeoutMillis: config.connectionTimeoutMillis,
  };
}

/**
 * Attempts, each on a new connection, until admitted or out of budget. After a refusal the wait
 * is drawn uniformly from a window that doubles per attempt: an admission refusal (53400, 53300)
 * means many sandboxes connect at once, so its window starts wide and most get in at their next
 * attempt; a network error starts narrow.
 */
async function admit<T>(
  open: () => Promise<T>,
  config: ResolvedDsqlConfig,
  sleep: (ms: number) => Promise<boolean>,
  discard: (late: T) => void,
): Promise<T> {
  const budget = config.connectionTimeoutMillis;
  const deadline = Date.now() + budget;
  const giveUp = (n: number, why: string, cause: unknown) =>
    new DsqlConnectionError(
      `Could not connect to ${config.host} within ${budget} ms (${n} attempts): ${why}${cause instanceof Error ? `: ${cause.message}` : ''}`,
      n,
      { cause },
    );
  let last: unknown;
  for (let n = 1; ; n++) {
    let timer: NodeJS.Timeout | undefined;
    const attempt = open();
    try {
      const outcome = await Promise.race([
        attempt,
        new Promise<typeof giveUp>((resolve) => {
          timer = setTimeout(resolve, deadline - Date.now(), giveUp);
        }),
      ]);
      if (outcome !== giveUp) return outcome as T;
    } catch (err) {
      const refusal = refusalOf(err);
      if (!refusal) throw err;
      last = err;
      const window =
        refusal === 'network'
          ? DSQL_DEFAULTS.networkRetryWindowMillis
          : DSQL_DEFAULTS.admissionRetryWindowMillis;
      // Within what is left, keeping a fifth of it for the attempt itself.
      const left = deadline - Date.now();
      const delay = Math.random() * Math.min(window * 2 ** Math.min(n - 1, 8), left * 0.8);
      if (left < 1) throw giveUp(n, refusal === 'network' ? 'unreachable' : 'still refused', err);
      if (!(await sleep(delay))) throw giveUp(n, 'the pool was ended', err);
      continue;
    } finally {
      clearTimeout(timer);
    }
    attempt.then(discard, noop);
    throw giveUp(n, last === undefined ? 'timed out' : 'timed out after a refusal', last);
  }
}

/**
 * The pool {@link createPool} returns: a `pg.Pool` whose `connect()` (and `query()`) does the
 * freeze-safe checkout and admits new connections past DSQL's refusals; `end()` stops retries at once.
 */
export class DsqlPool extends FreezeSafePool {
  /** The pool-level retry policy (config key `retry`), for the retrying helpers. */
  readonly retry: RetryOptions | undefined;
  readonly #config: ResolvedDsqlConfig;
  readonly #wake = new Set<() => void>();
  #ending = false;

  /** Prefer {@link createPool}; this takes a resolved configuration. */
  constructor(config: ResolvedDsqlConfig) {
    let tokens: TokenCache | undefined;
    const cache = () => (tokens ??= tokenCacheFor(config));
    const { connectionTimeoutMillis } = config;
    class Client extends DsqlClient {
      constructor(options: pg.ClientConfig) {
        // pg's own timer bounds each dial; pg-pool has none (below).
        super({ ...options, connectionTimeoutMillis }, cache);
      }
    }
    // pg-pool gets no timers of its own: its connect timeout would hide the refusal behind
    // "Connection terminated due to connection timeout"; lifetimes are kept, jittered, at checkout.
    const pgConfig = { ...toPgConfig(config), connectionTimeoutMillis: 0, maxLifetimeSeconds: 0, Client };
    super(pgConfig as unknown as pg.PoolConfig, config);
    this.#config = config;
    this.retry = config.retry;
  }

  protected override take(): Promise<pg.PoolClient> {
    return admit(
      () => super.take(),
      this.#config,
      (ms) => this.#sleep(ms),
      (late) => late.release(),
    );
  }

  /** `true` after `ms`, or `false` as soon as the pool is ended. */
  #sleep(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#wake.delete(wake);
        resolve(!this.#ending);
      };
      const timer = setTimeout(wake, this.#ending ? 0 : ms);
      this.#wake.add(wake);
    });
  }

  override end(): Promise<void>;
  override end(callback: () => void): void;
  override end(callback?: () => void): Promise<void> | undefined {
    this.#ending = true;
    for (const wake of [...this.#wake]) wake();
    return super.end(callback as () => void) as Promise<void> | undefined;
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
  const open = () =>
    new DsqlClient(toPgConfig(resolved), () => tokenCacheFor(resolved)).on('error', noop).connect();
  const sleep = (ms: number) => new Promise<boolean>((resolve) => setTimeout(resolve, ms, true));
  return admit(open, resolved, sleep, (late) => void late.end().catch(noop));
}
