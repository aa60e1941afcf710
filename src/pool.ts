/**
 * Connections to Aurora DSQL: {@link createPool} (a real `pg.Pool`, so Kysely, Drizzle and anything
 * else that takes one works unchanged) and {@link connect} (one client). Both
 *
 * - sign (or reuse) the IAM token before dialling, so a token failure opens no socket;
 * - verify TLS fully against the cluster name (SNI included), direct TLS by default, one TLS
 *   context per pool;
 * - retry DSQL's admission refusals (53400 rate, 53300 cap) and transient network errors with a
 *   new connection each time, spread by a backoff that reads the refusal, within
 *   `connectionTimeoutMillis`; nothing is retried after `end()`;
 * - send no `SET` at connect, and do no I/O until the first connection is needed.
 */
import type { Socket } from 'node:net';
import type { SecureContext } from 'node:tls';
import pg from 'pg';
import { type CheckoutStats, FreezeSafePool } from './checkout.js';
import { type DsqlConfig, type ResolvedDsqlConfig, resolveConfig } from './config.js';
import { DSQL_DEFAULTS } from './defaults.js';
import { DsqlConnectionError, refusalOf } from './errors.js';
import type { RetryOptions } from './retry.js';
import { type TokenCache, tokenCacheFor } from './token.js';

export type { CheckoutStats };

function noop(): void {}

/**
 * A `pg.Client` that obtains its IAM token before it dials. On an authentication failure
 * (28000/28P01) it tells the cache, which signs afresh for the next connection.
 */
export class DsqlClient extends pg.Client {
  readonly #tokens: () => TokenCache;
  readonly #setSecret: (value: string) => void;

  constructor(config: pg.ClientConfig, tokens: () => TokenCache) {
    super(config);
    this.#tokens = tokens;
    // pg keeps the password it sends in these two properties, where `util.inspect(…, { showHidden })`
    // would print it. As accessors over a closure they print as [Getter/Setter], and the token is
    // there only while this client authenticates. (connector.test.ts fails if pg keeps it elsewhere.)
    let secret = '';
    this.#setSecret = (value) => {
      secret = value;
    };
    const hidden = { configurable: true, enumerable: false, get: () => secret, set: this.#setSecret };
    Object.defineProperty(this, 'password', hidden);
    Object.defineProperty(
      (this as unknown as { connectionParameters: object }).connectionParameters,
      'password',
      hidden,
    );
  }

  override connect(): Promise<pg.Client>;
  override connect(callback: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): void;
  override connect(
    callback?: ((err: Error) => void) | ((err: null, c: pg.Client) => void),
  ): Promise<pg.Client> | undefined {
    const connected = this.#connect();
    if (!callback) return connected;
    const done = callback as (err: Error | null, c?: pg.Client) => void;
    connected.then(
      (client) => process.nextTick(done, null, client),
      (err: Error) => process.nextTick(done, err),
    );
    return undefined;
  }

  async #connect(): Promise<pg.Client> {
    const cache = this.#tokens();
    const token = await cache.get();
    this.#setSecret(token);
    try {
      await super.connect();
      return this;
    } catch (err) {
      const code = (err as { code?: unknown } | null)?.code;
      if (code === '28000' || code === '28P01') cache.invalidate(token);
      throw err;
    } finally {
      this.#setSecret('');
    }
  }
}

/** A socket factory (pg's `stream` option) dialling `address` whatever host pg asks for, so SNI still names the cluster. */
function dialing(address: string): () => Socket {
  return () => {
    // Fetched here: nothing else loads node:net this early on Node 22 (Node ≥ 20.16).
    const socket = new (process.getBuiltinModule('node:net').Socket)();
    const connect = socket.connect.bind(socket) as (port: number, host: string) => Socket;
    (socket as { connect: unknown }).connect = (port: number) => connect(port, address);
    return socket;
  };
}

/**
 * pg's configuration for a resolved configuration (without a password: {@link DsqlClient}
 * supplies the token). `ssl.servername` is always the cluster name; an IP `hostaddr` becomes pg's
 * `host`, a DNS-name one is dialled through a `stream` factory; one TLS context serves every
 * connection (pg passes `ssl` on to `tls.connect`), built on the first.
 * @example
 * const client = new DsqlClient(toPgConfig(resolved), () => tokenCacheFor(resolved));
 */
export function toPgConfig(config: ResolvedDsqlConfig): pg.PoolConfig {
  const { host, hostaddr } = config;
  let context: SecureContext | undefined;
  const ssl = {
    rejectUnauthorized: true,
    servername: host,
    ca: config.ca,
    // Read by pg's Object.assign into the tls.connect options, at the first TLS handshake.
    get secureContext() {
      context ??= process.getBuiltinModule?.('node:tls').createSecureContext({ ca: config.ca });
      return context;
    },
  };
  const dialName = hostaddr !== undefined && !hostaddr.includes(':') && /[a-z]/.test(hostaddr);
  return {
    allowExitOnIdle: DSQL_DEFAULTS.allowExitOnIdle,
    ...config.pgOptions,
    ...(dialName ? { stream: dialing(hostaddr) } : undefined),
    host: dialName ? host : (hostaddr ?? host),
    port: config.port,
    user: config.user,
    database: config.database,
    ssl,
    sslnegotiation: config.sslNegotiation,
    application_name: config.applicationName,
    max: config.max,
    min: config.min,
    idleTimeoutMillis: config.idleTimeoutMillis,
    connectionTimeoutMillis: config.connectionTimeoutMillis,
  };
}

/**
 * The wait before the next attempt after a refusal, full jitter over a window that doubles per
 * attempt. A rate refusal (53400) means many sandboxes are connecting at once: its window starts
 * wide, so most get in at their next attempt; a cap refusal (53300) or network error starts narrow.
 */
function backoffMillis(refusal: '53400' | '53300' | 'network', attempt: number): number {
  const first =
    refusal === '53400' ? DSQL_DEFAULTS.rateRetryWindowMillis : DSQL_DEFAULTS.connectRetryWindowMillis;
  return Math.random() * first * 2 ** Math.min(attempt - 1, 8);
}

/** Shared by the pool and `connect()`: attempts, each on a new connection, until admitted or out of budget. */
async function admit<T>(
  open: () => Promise<T>,
  config: ResolvedDsqlConfig,
  sleep: (ms: number) => Promise<boolean>,
  discard: (late: T) => void,
): Promise<T> {
  const budget = config.connectionTimeoutMillis;
  const deadline = Date.now() + budget;
  const giveUp = (attempts: number, why: string, cause: unknown) =>
    new DsqlConnectionError(
      `Could not connect to ${config.host} within ${budget} ms (${attempts} attempts): ${why}${cause instanceof Error ? `: ${cause.message}` : ''}`,
      attempts,
      { cause },
    );
  let last: unknown;
  for (let attempt = 1; ; attempt++) {
    let timer: NodeJS.Timeout | undefined;
    const attemptDone = open();
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(resolve, Math.max(0, deadline - Date.now()), 'timeout');
    });
    let outcome: T | 'timeout';
    try {
      outcome = await Promise.race([attemptDone, timedOut]);
    } catch (err) {
      const refusal = refusalOf(err);
      if (refusal === undefined) throw err;
      last = err;
      const delay = backoffMillis(refusal, attempt);
      if (Date.now() + delay >= deadline) throw giveUp(attempt, 'still refused', err);
      if (!(await sleep(delay))) throw giveUp(attempt, 'the pool was ended', err);
      continue;
    } finally {
      clearTimeout(timer);
    }
    if (outcome !== 'timeout') return outcome;
    // Whatever the late attempt brings is not wanted any more.
    attemptDone.then(discard, noop);
    throw giveUp(attempt, last === undefined ? 'timed out' : 'last refused', last);
  }
}

/**
 * The pool {@link createPool} returns: a `pg.Pool` whose `connect()` (and `query()`) does the
 * freeze-safe checkout and admits new connections past DSQL's refusals. `end()` stops any retry
 * in progress at once.
 */
export class DsqlPool extends FreezeSafePool {
  /** The pool-level retry policy (config key `retry`), for the retrying helpers. */
  readonly retry: RetryOptions | undefined;
  readonly #config: ResolvedDsqlConfig;
  readonly #wake = new Set<() => void>();
  #ending = false;

  /** Prefer {@link createPool}; this takes an already resolved configuration. */
  constructor(config: ResolvedDsqlConfig) {
    let tokens: TokenCache | undefined;
    const cache = () => (tokens ??= tokenCacheFor(config));
    const connectionTimeoutMillis = config.connectionTimeoutMillis;
    class Client extends DsqlClient {
      constructor(options: pg.ClientConfig) {
        // pg's own timer bounds one dial; the pool's budget is kept by admit().
        super({ ...options, connectionTimeoutMillis }, cache);
      }
    }
    // pg-pool gets no timers of its own: its connection timeout would replace the refusal by
    // "Connection terminated due to connection timeout", and lifetimes are kept (jittered) at checkout.
    super(
      { ...toPgConfig(config), connectionTimeoutMillis: 0, maxLifetimeSeconds: 0, Client: Client as never },
      config,
    );
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

  /** Resolves `true` after `ms`, or `false` at once when the pool is ended meanwhile. */
  #sleep(ms: number): Promise<boolean> {
    if (this.#ending) return Promise.resolve(false);
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#wake.delete(wake);
        resolve(!this.#ending);
      };
      const timer = setTimeout(wake, ms);
      this.#wake.add(wake);
    });
  }

  override end(): Promise<void>;
  override end(callback: () => void): void;
  override end(callback?: () => void): Promise<void> | undefined {
    this.#ending = true;
    for (const wake of [...this.#wake]) wake();
    if (!callback) return super.end();
    super.end(callback);
    return undefined;
  }
}

/**
 * Creates a pool for Aurora DSQL: cached IAM tokens, full TLS verification, admission refusals
 * retried, DSQL-sized defaults and the freeze-safe checkout. No I/O here: the configuration is
 * validated synchronously (throwing `DsqlConfigError`); credentials, the token and the first
 * connection wait for the first query.
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
 * Opens one connection (Go's `dsql.Connect`), with the same guarantees as {@link createPool}.
 * The caller ends it. An `'error'` listener is attached, so a connection the server drops
 * while idle never crashes the process (the next query fails instead).
 * @throws `DsqlConfigError`, `DsqlTokenError`, `DsqlConnectionError`, or pg's own error (e.g. 28P01).
 * @example
 * const client = await connect('dsql://admin@abc.dsql.us-east-1.on.aws');
 * try { console.log((await client.query('SELECT 1 AS one')).rows); } finally { await client.end(); }
 */
export async function connect(config?: DsqlConfig | string): Promise<pg.Client> {
  const resolved = resolveConfig(config);
  const cache = () => tokenCacheFor(resolved);
  const open = async () => {
    const client = new DsqlClient(toPgConfig(resolved), cache);
    client.on('error', noop);
    return client.connect();
  };
  const sleep = (ms: number) => new Promise<boolean>((resolve) => setTimeout(resolve, ms, true));
  return admit(open, resolved, sleep, (late) => void late.end().catch(noop));
}
