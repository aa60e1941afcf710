/**
 * Connections: a real `pg.Pool` (so Kysely, Drizzle and anything else that takes one works
 * unchanged) and single clients, both opened with
 *
 * - full TLS verification against the cluster host name (SNI included), direct TLS negotiation
 *   by default;
 * - the cached IAM token as the password, read by pg once per new physical connection;
 * - connection attempts retried, with jittered exponential backoff within
 *   `connectionTimeoutMillis`, when DSQL refuses admission (53400 rate exceeded, 53300 too many
 *   connections) or the network fails transiently;
 * - no `SET` at connect time (DSQL refuses most session parameters);
 * - no I/O until the first connection is needed.
 */
import type { Socket } from 'node:net';
import pg from 'pg';
import { installFreezeGuard } from './checkout.js';
import { DSQL_DEFAULTS, type DsqlConfig, type ResolvedDsqlConfig, resolveConfig } from './config.js';
import { DsqlConnectionError, DsqlTokenError, isRetryableConnectError } from './errors.js';
import { type TokenCache, tokenCacheFor } from './token.js';

/** How a {@link DsqlClient} opens its connection. */
export interface DsqlConnectPolicy {
  /** Budget for all attempts together, milliseconds. Default: `10000`. */
  readonly connectionTimeoutMillis?: number | undefined;
  /**
   * Told which token the server rejected (SQLSTATE 28000/28P01), so the cache can drop it:
   * the connection is not retried, but the next one signs afresh with re-resolved credentials.
   */
  readonly onAuthFailure?: ((token: string) => void) | undefined;
}

/** The pg `Client` internals the retry loop touches (pg ≥ 8.22). */
interface ClientInternals {
  connection: pg.Connection;
  connectionTimeoutHandle?: ReturnType<typeof setTimeout>;
  password: unknown;
  connectionParameters: { password: unknown };
  _connectionTimeoutMillis: number;
  _ending: boolean;
}

function noop(): void {}

function isAuthFailure(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === '28000' || code === '28P01';
}

/**
 * A `pg.Client` whose `connect()` retries DSQL's admission refusals (53400, 53300) and
 * transient network errors with jittered exponential backoff until `connectionTimeoutMillis`
 * is spent. Authentication failures and token errors are never retried. Errors that are not
 * worth retrying are thrown as pg reported them; refusals that outlast the budget become a
 * {@link DsqlConnectionError} with the attempt count and the last error as `cause`.
 *
 * It also carries a permanent no-op `'error'` listener: pg emits `'error'` when the server drops
 * the connection, and an `'error'` with no listener would crash the process. The failure still
 * reaches whoever uses the client (the next query fails; the pool discards the client).
 *
 * Retrying needs a fresh pg `Connection` per attempt on the same `Client` object (the pool holds
 * on to that object), which means resetting pg's private per-connection state; the integration
 * tests exercise this against pg's current release.
 * @example
 * const client = new DsqlClient(toPgConfig(resolved, () => cache.get()), { connectionTimeoutMillis: 5000 });
 * await client.connect();
 */
export class DsqlClient extends pg.Client {
  readonly #timeout: number;
  readonly #onAuthFailure: DsqlConnectPolicy['onAuthFailure'];
  readonly #config: pg.ClientConfig;

  constructor(config: pg.ClientConfig, policy: DsqlConnectPolicy = {}) {
    super(config);
    this.#timeout =
      policy.connectionTimeoutMillis ??
      config.connectionTimeoutMillis ??
      DSQL_DEFAULTS.connectionTimeoutMillis;
    this.#onAuthFailure = policy.onAuthFailure;
    this.#config = config;
    this.on('error', noop);
  }

  override connect(): Promise<pg.Client>;
  override connect(callback: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): void;
  override connect(
    callback?: ((err: Error) => void) | ((err: null, c: pg.Client) => void),
  ): Promise<pg.Client> | undefined {
    const connected = this.#connectWithRetry().then(() => this);
    if (!callback) return connected;
    const done = callback as (err: Error | null, c?: pg.Client) => void;
    // Called outside the promise chain, so a throwing callback behaves as it does with pg.
    connected.then(
      (client) => process.nextTick(done, null, client),
      (err: Error) => process.nextTick(done, err),
    );
    return undefined;
  }

  async #connectWithRetry(): Promise<void> {
    const internals = this as unknown as ClientInternals;
    const connectionTimeoutMillis = this.#timeout;
    const deadline = Date.now() + connectionTimeoutMillis;
    let lastRefusal: unknown;
    for (let attempt = 1; ; attempt++) {
      // pg's own per-attempt timer gets whatever is left of the overall budget.
      internals._connectionTimeoutMillis = Math.max(1, deadline - Date.now());
      try {
        await new Promise<void>((resolve, reject) => {
          super.connect((err: Error | null) => (err ? reject(err) : resolve()));
        });
        // pg replaced the password function with the token it returned (non-enumerable, but
        // `inspect(client, { showHidden: true })` shows it): put the function back.
        internals.password = internals.connectionParameters.password = this.#config.password;
        return;
      } catch (err) {
        if (isAuthFailure(err) && typeof internals.password === 'string')
          this.#onAuthFailure?.(internals.password);
        if (internals._ending || err instanceof DsqlTokenError) {
          // No token to send: pg leaves the socket open while the server waits for a password,
          // holding a connection slot until the server's authentication timeout.
          (internals.connection as unknown as { stream: Socket }).stream.destroy();
          throw err;
        }
        const now = Date.now();
        const timedOut = now >= deadline;
        if (!timedOut && !isRetryableConnectError(err)) throw err;
        // Equal jitter: half the exponential step is fixed (so a refused burst really backs
        // off), half random (so many Lambdas refused together do not come back together).
        const step = Math.min(
          DSQL_DEFAULTS.connectRetryMaxMillis,
          DSQL_DEFAULTS.connectRetryBaseMillis * 2 ** (attempt - 1),
        );
        const delay = Math.round(step / 2 + Math.random() * (step / 2));
        if (timedOut || now + delay >= deadline) {
          // An attempt cut short by the budget says less than the refusal that used it up.
          const cause = timedOut && lastRefusal !== undefined ? lastRefusal : err;
          throw new DsqlConnectionError(
            `Could not connect within ${connectionTimeoutMillis} ms, ${attempt} attempts: ${(cause as Error).message}`,
            attempt,
            { cause },
          );
        }
        lastRefusal = err;
        this.#resetForRetry();
        await new Promise((resolve) => setTimeout(resolve, delay));
        if (internals._ending) throw err;
      }
    }
  }

  /**
   * Puts the client back into its never-connected state: every field pg keeps about a connection
   * is copied from a fresh, never-connected `pg.Client` built from the same configuration
   * (listeners excepted), so this follows pg's own idea of a new client.
   */
  #resetForRetry(): void {
    const c = this as unknown as ClientInternals;
    const old = c.connection;
    // The failed connection must not drive this client any more, nor crash on a late error.
    old.removeAllListeners();
    old.on('error', noop);
    (old as unknown as { stream: Socket }).stream.destroy();
    clearTimeout(c.connectionTimeoutHandle);
    const { _events, _eventsCount, _maxListeners, ...fresh } = new pg.Client(
      this.#config,
    ) as unknown as Record<string, unknown>;
    Object.assign(this, fresh);
    // pg keeps the password non-enumerable (not copied above): the function that asks the cache.
    c.password = this.#config.password;
  }
}

/**
 * A socket factory (pg's `stream` option) whose sockets dial `address` whatever host pg asks
 * for. Used for a hostaddr that is a DNS name: pg replaces `ssl.servername` with the host it
 * dials when that host is a name, so dialling the name directly would send the wrong SNI.
 */
function dialing(address: string): () => Socket {
  return () => {
    // Fetched here, not imported: on Node 22 nothing else loads node:net before the first
    // connect, and importing it would add ≈ 3 ms to every cold start. (Node ≥ 20.16.)
    const net: typeof import('node:net') = process.getBuiltinModule('node:net');
    const socket = new net.Socket();
    const connect = socket.connect.bind(socket) as (port: number, host: string) => Socket;
    (socket as { connect: unknown }).connect = (port: number) => connect(port, address);
    return socket;
  };
}

/**
 * The pg pool configuration for a resolved configuration: what {@link createPool} passes to
 * `pg.Pool` (minus the `Client` class). For wiring dsql-lambda's settings into something that
 * builds its own pg clients.
 * - `ssl.servername` is always the cluster host name, so SNI, the certificate's host-name check
 *   and the token all name the cluster, whatever address is dialled.
 * - With `hostaddr`: an IP address becomes pg's `host` (pg sends no SNI of its own for an IP);
 *   a DNS name is dialled through a `stream` factory while `host` stays the cluster name.
 * - `ssl.rejectUnauthorized` is always `true`.
 * @param config A resolved configuration.
 * @param password Returns the token; pg calls it once per new physical connection.
 * @example
 * const cache = tokenCacheFor(resolved);
 * const client = new pg.Client(toPgConfig(resolved, () => cache.get()));
 */
export function toPgConfig(config: ResolvedDsqlConfig, password: () => Promise<string>): pg.PoolConfig {
  const { host, hostaddr } = config;
  // (`ca: undefined` is what tls takes as "the system roots".)
  const ssl = { rejectUnauthorized: true, servername: host, ca: config.ca };
  const dialName = hostaddr !== undefined && !hostaddr.includes(':') && !/^[\d.]+$/.test(hostaddr);
  return {
    ...config.pgOptions,
    ...(dialName ? { stream: dialing(hostaddr) } : undefined),
    host: dialName ? host : (hostaddr ?? host),
    port: config.port,
    user: config.user,
    database: config.database,
    password,
    ssl,
    sslnegotiation: config.sslNegotiation,
    application_name: config.applicationName,
    max: config.max,
    min: config.min,
    idleTimeoutMillis: config.idleTimeoutMillis,
    connectionTimeoutMillis: config.connectionTimeoutMillis,
    maxLifetimeSeconds: config.maxLifetimeSeconds,
  };
}

/**
 * What both `createPool` and `connect` need: the resolved configuration, pg's configuration and
 * the connect policy, sharing one token cache. The cache (and its credentials provider) is looked
 * up when the first connection asks for a token, not at init: nothing on that path is needed
 * before then, and every microsecond of init is paid on each cold start.
 */
function prepare(config: DsqlConfig | string | undefined) {
  const resolved = resolveConfig(config);
  let tokens: TokenCache | undefined;
  const cache = () => (tokens ??= tokenCacheFor(resolved));
  // (No connectionTimeoutMillis here: the client reads it from pgConfig.)
  const policy: DsqlConnectPolicy = { onAuthFailure: (token) => cache().invalidate(token) };
  return { resolved, pgConfig: toPgConfig(resolved, () => cache().get()), policy };
}

/**
 * Creates a `pg.Pool` for Aurora DSQL: IAM tokens from a shared cache, full TLS verification,
 * direct TLS negotiation, admission refusals retried, DSQL-sized defaults, an `'error'` listener
 * so a connection the server drops while idle never crashes the process, and the freeze-safe
 * checkout (`installFreezeGuard`). Creating it does no I/O: the configuration is validated
 * synchronously (throwing {@link DsqlConfigError}), and credentials, the token and the first
 * connection wait for the first query.
 * @param config A {@link DsqlConfig}, a connection string, or nothing (environment only: see
 *   {@link resolveConfig}).
 * @example
 * import { createPool } from 'dsql-lambda';
 * const pool = createPool({ host: process.env.CLUSTER_ENDPOINT }); // module scope: no I/O
 * export const handler = async () => (await pool.query('SELECT now() AS now')).rows[0];
 */
export function createPool(config?: DsqlConfig | string): pg.Pool {
  const { resolved, pgConfig, policy } = prepare(config);
  class DsqlPoolClient extends DsqlClient {
    constructor(options: pg.ClientConfig) {
      super(options, policy);
    }
  }
  const pool = new pg.Pool({ ...pgConfig, Client: DsqlPoolClient as unknown as pg.PoolConfig['Client'] });
  // pg-pool has already discarded the idle client it reports here; without a listener the
  // emit would throw and take the Lambda process down.
  pool.on('error', noop);
  // The resolved configuration carries the four FreezeGuardOptions fields, validated.
  installFreezeGuard(pool, resolved);
  return pool;
}

/**
 * Opens one connection to Aurora DSQL, with the same guarantees as {@link createPool} (shared
 * token cache, full TLS verification, admission refusals retried). The caller ends it.
 * @param config A {@link DsqlConfig}, a connection string, or nothing (environment only).
 * @throws {@link DsqlConfigError}, {@link DsqlTokenError}, {@link DsqlConnectionError}, or pg's
 *   own error (e.g. an authentication failure, SQLSTATE 28P01).
 * @example
 * const client = await connect('dsql://admin@abc.dsql.us-east-1.on.aws');
 * try { console.log((await client.query('SELECT 1 AS one')).rows); } finally { await client.end(); }
 */
export async function connect(config?: DsqlConfig | string): Promise<pg.Client> {
  const { pgConfig, policy } = prepare(config);
  const client = new DsqlClient(pgConfig, policy);
  await client.connect();
  return client;
}
