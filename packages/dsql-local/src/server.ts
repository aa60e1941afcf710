/**
 * The local DSQL-like endpoint: a TLS-only PostgreSQL front end that checks IAM tokens and relays
 * sessions to a real PostgreSQL, with DSQL's admission limits and injectable faults. This file
 * wires the stages; each lives in its own file:
 *
 *   accept (admission.ts) → negotiate.ts (SSLRequest / direct TLS, ALPN, SNI)
 *     → startup.ts (startup packet, admission, password, token check with verify.ts)
 *     → upstream.ts (open + authenticate the upstream session) → relay.ts (frames both ways;
 *       SQL rules plug in through policy.ts, commit faults from faults.ts act there)
 *
 * `connection.ts` is the state they share; `stats.ts` the counters they bump.
 * @packageDocumentation
 */
import { randomBytes, randomInt } from 'node:crypto';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { Admission, DEFAULT_MAX_UNAUTHENTICATED, MAX_STARTUP_PACKET_BYTES } from './admission.js';
import { localCertificates } from './certs.js';
import { Connection, type EndpointCore } from './connection.js';
import { sharedEmbeddedPostgres } from './embedded.js';
import { CommitFaults, createFaults } from './faults.js';
import { negotiate } from './negotiate.js';
import { OccArbiter } from './occ.js';
import { errorResponse } from './protocol.js';
import { startRelay } from './relay.js';
import { DEFAULT_LOCK_TIMEOUT_MS, dsqlPolicy, prepareDsql } from './sql/dialect.js';
import { resolveLimits } from './sql/limits.js';
import { type DialectCore, SchemaVersions } from './sql/session.js';
import { startup } from './startup.js';
import { bump, emptyStats } from './stats.js';
import type { LocalDsql, LocalDsqlOptions } from './types.js';
import { adminQuery, createRole, ensureDatabase, openUpstream, parseUpstream } from './upstream.js';
import type { LocalCredentials } from './verify.js';

/**
 * DSQL's message for a data conflict, as a real cluster sends it today (older texts: `change
 * conflicts with another transaction, please retry: (OC000)` and {@link OC000_MESSAGE_NEW}; see
 * the `occMessages` option).
 */
export const OC000_MESSAGE = 'change conflicts with another transaction (OC000)';
/** Newer DSQL text for a data conflict. */
export const OC000_MESSAGE_NEW = 'mutation conflicts with another transaction, retry as needed (OC000)';
/** DSQL's message for a schema change seen by a transaction at COMMIT. */
export const OC001_MESSAGE = 'schema has been updated by another transaction, please retry: (OC001)';
/**
 * Where the endpoint's sessions land: the `upstream` option, else `$DSQL_LOCAL_UPSTREAM`, else
 * (or for `'embedded'`) the embedded PostgreSQL this process starts and shares.
 */
export async function resolveUpstream(option: string | undefined): Promise<string> {
  const given = option ?? (process.env.DSQL_LOCAL_UPSTREAM || undefined);
  if (given !== undefined && given !== 'embedded') return given;
  return (await sharedEmbeddedPostgres()).url;
}

/** `url` without its password, for messages. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(invalid URL)';
  }
}

function randomString(alphabet: string, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += alphabet[randomInt(alphabet.length)];
  return s;
}

/** A random 26-character cluster id (`[a-z0-9]`), like DSQL's. */
export function randomClusterId(): string {
  return randomString('abcdefghijklmnopqrstuvwxyz0123456789', 26);
}

/** A random temporary credential set (looks like STS output; only the endpoint knows it). */
export function randomCredentials(): LocalCredentials {
  return {
    accessKeyId: `ASIA${randomString('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567', 16)}`,
    secretAccessKey: randomBytes(30).toString('base64'),
    // `+`, `/` and `=` in the session token exercise the signer's query encoding.
    sessionToken: `IQoJb3JpZ2luX2VjE${randomBytes(180).toString('base64')}`,
  };
}

/** One connection through every stage, in order; each stage says whether to go on. */
async function runConnection(core: EndpointCore, conn: Connection): Promise<void> {
  if (!(await negotiate(core, conn))) return;
  const login = await startup(core, conn);
  if (!login || conn.closed || conn.ending) return;
  conn.role = core.mapUser(conn.user);
  try {
    await core.ensureRole(conn.role);
  } catch (err) {
    conn.fatalAndClose(
      '28000',
      `role "${conn.role}" could not be prepared upstream: ${(err as Error).message}`,
    );
    return;
  }
  if (conn.closed || conn.ending) return;
  const upstream = await openUpstream(core, conn, login.params);
  if (!upstream || conn.closed || conn.ending) return;
  startRelay(core, conn, upstream);
}

/**
 * Starts a local DSQL-like endpoint in front of a PostgreSQL server: TLS only (SSLRequest or
 * direct TLS with ALPN `postgresql`, SNI required), IAM tokens verified like Aurora DSQL does,
 * DSQL's admission limits, and injectable faults. For tests and local development only.
 *
 * @example
 * const dsql = await startLocalDsql();
 * // connect pg to dsql.address:dsql.port with ssl { ca: dsql.ca, servername: dsql.host }
 * await dsql.stop();
 */
export async function startLocalDsql(options: LocalDsqlOptions = {}): Promise<LocalDsql> {
  const region = options.region ?? 'us-east-1';
  const clusterId = options.clusterId ?? randomClusterId();
  const host = `${clusterId}.dsql.${region}.on.aws`;
  const hostnames = options.hostnames ?? [`*.dsql.${region}.on.aws`, 'localhost'];
  const upstreamUrl = await resolveUpstream(options.upstream);
  let upstream: ReturnType<typeof parseUpstream>;
  try {
    upstream = parseUpstream(upstreamUrl);
  } catch {
    throw new TypeError(`upstream must be a postgresql:// URL, got ${redact(upstreamUrl)}`);
  }
  const credentials = options.credentials?.length ? [...options.credentials] : [randomCredentials()];
  const listenHost = options.listenHost ?? '127.0.0.1';

  const dialect = options.dialect ?? 'dsql';
  if (dialect !== 'dsql' && dialect !== 'postgres')
    throw new RangeError("dialect must be 'dsql' or 'postgres'");
  const limits = resolveLimits(options.limits);
  const lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  if (!(lockTimeoutMs > 0)) throw new RangeError('lockTimeoutMs must be a number > 0');
  const [certs] = await Promise.all([
    localCertificates(hostnames),
    ensureDatabase(upstream)
      .catch((err: Error & { code?: string }) => {
        throw new Error(
          `upstream PostgreSQL ${redact(upstreamUrl)} is not usable (${err.code ?? ''} ${err.message}): start it or ` +
            'fix the URL, or leave the upstream unset (no --upstream, no DSQL_LOCAL_UPSTREAM) to use the embedded PostgreSQL',
          { cause: err },
        );
      })
      .then(() =>
        dialect === 'dsql'
          ? prepareDsql(`${upstream.host}:${upstream.port}/${upstream.database}`, (sql) =>
              adminQuery(upstream, upstream.database, sql),
            )
          : undefined,
      ),
  ]);
  const secureContext = tls.createSecureContext({ cert: certs.cert, key: certs.key });

  let clock: number | (() => number) | undefined;
  const connections = new Set<Connection>();
  const sessions = new Map<number, Connection>();
  const ensuredRoles = new Map<string, Promise<void>>();
  const userMap = options.userMap;

  const core: EndpointCore = {
    region,
    upstream,
    credentials,
    stats: emptyStats(),
    distinctTokens: new Set(),
    events: new EventEmitter(),
    secureContext,
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
    clockSkewSeconds: options.clockSkewSeconds ?? 300,
    maxConnectionAgeMs: (options.maxConnectionAgeSeconds ?? 3600) * 1000,
    dialect,
    limits,
    lockTimeoutMs,
    occMessages: {
      OC000: options.occMessages?.OC000 ?? OC000_MESSAGE,
      OC001: options.occMessages?.OC001 ?? OC001_MESSAGE,
    },
    latency: { toClient: options.latencyMs?.toClient ?? 0, toServer: options.latencyMs?.toServer ?? 0 },
    admission: new Admission(
      { perSecond: options.rateLimit?.perSecond ?? 100, burst: options.rateLimit?.burst ?? 1000 },
      options.maxConnections ?? 10000,
      options.maxUnauthenticatedConnections ?? DEFAULT_MAX_UNAUTHENTICATED,
    ),
    commitFaults: new CommitFaults(),
    arbiter: undefined,
    sessionPolicy: () => (dialect === 'dsql' ? dsqlPolicy(dialectCore) : {}),
    now: () => (clock === undefined ? Date.now() : typeof clock === 'number' ? clock : clock()),
    mapUser(user) {
      if (typeof userMap === 'function') return userMap(user);
      if (userMap && Object.hasOwn(userMap, user)) return userMap[user]!;
      return user === 'admin' ? upstream.user : user;
    },
    ensureRole(role) {
      if (role === upstream.user) return Promise.resolve();
      let p = ensuredRoles.get(role);
      if (!p) {
        p = createRole(upstream, role);
        p.catch(() => ensuredRoles.delete(role));
        ensuredRoles.set(role, p);
      }
      return p;
    },
    register(conn) {
      sessions.set(conn.pid, conn);
      core.stats.currentSessions = sessions.size;
    },
    cancelRequested(pid) {
      const target = sessions.get(pid);
      if (target) target.cancelsRequested++;
    },
    unregister(conn) {
      core.admission.release(conn);
      if (sessions.get(conn.pid) === conn) sessions.delete(conn.pid);
      core.stats.currentSessions = sessions.size;
    },
  };

  if (dialect === 'dsql')
    core.arbiter = new OccArbiter(
      upstream,
      (pid) => {
        const c = sessions.get(pid);
        return c && !c.closed && !c.ending ? c.session : undefined;
      },
      () => core.stats.sql.occ,
    );

  const dialectCore: DialectCore = {
    limits,
    occMessages: core.occMessages,
    schema: new SchemaVersions(),
    get stats() {
      return core.stats.sql;
    },
    refused(refusal) {
      core.stats.unsupportedRejected++;
      bump(core.stats.sql.refusedByCode, refusal.code);
    },
    conflict(upstreamCode) {
      core.stats.occFromContention++;
      bump(core.stats.sql.conflictsByUpstreamCode, upstreamCode);
    },
  };

  const server = net.createServer((raw) => {
    core.stats.connections.total++;
    const conn = new Connection(core, raw, MAX_STARTUP_PACKET_BYTES);
    if (!core.admission.accept(conn)) {
      // Too many clients between accept and authentication: refuse before doing any work.
      bump(core.stats.preAuthRefused, 'unauthenticated-cap');
      core.events.emit('refused', { reason: 'unauthenticated-cap' });
      raw.end(errorResponse('FATAL', '53300', 'too many connections awaiting authentication'));
      conn.close(true);
      return;
    }
    // Kept until the socket is really gone, so stop() also reaches half-open (silent) ones.
    connections.add(conn);
    raw.once('close', () => connections.delete(conn));
    void runConnection(core, conn);
  });
  server.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, listenHost, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  const address = listenHost === '0.0.0.0' || listenHost === '::' ? '127.0.0.1' : listenHost;

  const first = credentials[0]!;
  const env: Record<string, string> = {
    DSQL_ENDPOINT: host,
    DSQL_HOSTADDR: address,
    PGHOST: host,
    PGHOSTADDR: address,
    PGPORT: String(port),
    PGUSER: 'admin',
    PGDATABASE: 'postgres',
    PGSSLMODE: 'verify-full',
    PGSSLROOTCERT: certs.caFile,
    AWS_REGION: region,
    AWS_DEFAULT_REGION: region,
    AWS_ACCESS_KEY_ID: first.accessKeyId,
    AWS_SECRET_ACCESS_KEY: first.secretAccessKey,
    ...(first.sessionToken ? { AWS_SESSION_TOKEN: first.sessionToken } : {}),
    NODE_EXTRA_CA_CERTS: certs.caFile,
  };

  let stopping: Promise<void> | undefined;
  return {
    host,
    address,
    port,
    clusterId,
    ca: certs.ca,
    caFile: certs.caFile,
    region,
    credentials: first,
    upstream: upstreamUrl,
    env,
    events: core.events,
    faults: createFaults(core, connections),
    stats: () =>
      structuredClone({ ...core.stats, awaitingAuthentication: core.admission.awaitingAuthentication }),
    resetStats() {
      const current = core.stats.currentSessions;
      Object.assign(core.stats, emptyStats(), { currentSessions: current });
      core.distinctTokens.clear();
    },
    sessions: () => [...sessions.values()].filter((c) => !c.closed && !c.ending).map((c) => c.info()),
    setClock(now) {
      clock = now;
    },
    stop() {
      stopping ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        void core.arbiter?.stop();
        for (const c of [...connections]) {
          c.close();
          c.destroyClient();
        }
        connections.clear();
      });
      return stopping;
    },
  };
}
