/**
 * Public types of the local DSQL-like endpoint.
 * @packageDocumentation
 */
import type { EventEmitter } from 'node:events';
import type { DsqlLimits } from './sql/limits.js';
import type { DialectStats } from './sql/session.js';
import type { AuthFailureReason, LocalCredentials } from './verify.js';

export type { OccStats } from './occ.js';
export type { DsqlLimits } from './sql/limits.js';
export type { DialectStats } from './sql/session.js';

export type { AuthFailureReason, LocalCredentials } from './verify.js';

/** How the endpoint drops a connection. */
export type DropHow = 'fin' | 'rst' | 'fatal' | 'silent';

/** How a client negotiated TLS: SSLRequest first (`'postgres'`) or TLS handshake first (`'direct'`). */
export type Negotiation = 'postgres' | 'direct';

/** OCC conflict codes DSQL puts in the 40001 message. */
export type OccCode = 'OC000' | 'OC001';

/** Options of {@link startLocalDsql}. Every field is optional. */
export interface LocalDsqlOptions {
  /** TCP port to listen on. Default `0` (a random free port). */
  port?: number;
  /** Address to listen on. Default `'127.0.0.1'`. */
  listenHost?: string;
  /**
   * Upstream PostgreSQL URL (`postgresql://user[:password]@host[:port]/database`); its user is
   * used for bootstrap (creating the database and roles), its database is where every session
   * lands (created if missing). Upstream authentication: trust, cleartext, md5 or
   * SCRAM-SHA-256. `'embedded'`: the embedded PostgreSQL.
   * Default: `$DSQL_LOCAL_UPSTREAM` if set, else the embedded PostgreSQL (a private server this
   * process starts on a free loopback port and shares between its endpoints; see embedded.ts).
   */
  upstream?: string;
  /** AWS region the endpoint pretends to be in. Default `'us-east-1'`. */
  region?: string;
  /** Cluster id, 26 characters `[a-z0-9]`. Default: random. */
  clusterId?: string;
  /**
   * DNS names on the server certificate.
   * Default `['*.dsql.<region>.on.aws', 'localhost']` (`127.0.0.1` is always added as an IP name).
   */
  hostnames?: string[];
  /**
   * Credentials whose tokens the endpoint accepts. Default: one generated temporary set
   * (`ASIA…` access key id, secret, session token, no expiration).
   */
  credentials?: LocalCredentials[];
  /** New-connection token bucket. Default `{ perSecond: 100, burst: 1000 }` (DSQL's limits). */
  rateLimit?: { perSecond?: number; burst?: number };
  /** Maximum concurrently open (admitted) connections. Default `10000`. */
  maxConnections?: number;
  /** The endpoint closes a connection this many seconds after it was accepted. Default `3600`. */
  maxConnectionAgeSeconds?: number;
  /**
   * `'dsql'`: every statement is checked against DSQL's SQL surface (parsed by PostgreSQL's own
   * parser) and refused with DSQL's SQLSTATE and text; DSQL's transaction rules and limits apply;
   * `CREATE INDEX ASYNC`, `sys.jobs` and `sys.wait_for_job()` work; writers never wait on
   * each other and the loser of a conflict fails with DSQL's 40001 OC000, mostly at COMMIT (see
   * occ.ts), a schema change underneath fails COMMIT with OC001; the session reports DSQL's `server_version`, `current_database()` and UTC.
   * `'postgres'`: a plain relay, PostgreSQL accepts what it accepts. Default `'dsql'`.
   */
  dialect?: 'dsql' | 'postgres';
  /**
   * Limits enforced under `dialect: 'dsql'`, each with DSQL's error. Default DSQL's:
   * `{ rowsPerTransaction: 3000, bytesPerTransaction: 10 MiB, transactionAgeSeconds: 300,
   * keyBytes: 1024, columnsPerIndex: 8, columnsPerTable: 255 }`.
   */
  limits?: Partial<DsqlLimits>;
  /**
   * Under `dialect: 'dsql'`, how long a statement may wait for a lock held by another
   * transaction that is busy (running a statement) before it fails as a conflict (40001 OC000),
   * ms; a holder idle in its transaction is rolled back at once instead and fails at COMMIT.
   * Default `10`.
   */
  lockTimeoutMs?: number;
  /**
   * Messages of injected and translated OCC conflicts (SQLSTATE is always 40001). Default
   * `{ OC000: 'change conflicts with another transaction (OC000)', OC001:
   * 'schema has been updated by another transaction, please retry: (OC001)' }`.
   */
  occMessages?: { OC000?: string; OC001?: string };
  /** Added delay per direction, in ms. Default `{ toClient: 0, toServer: 0 }`. */
  latencyMs?: { toClient?: number; toServer?: number };
  /**
   * Maps a DSQL user to an upstream role. A record (unlisted users keep their name) or a
   * function. Default: `admin` → the upstream URL's user (`postgres`), everyone else → a role of
   * the same name, created with LOGIN on first use.
   */
  userMap?: Record<string, string> | ((user: string) => string);
  /** Tolerated clock skew for tokens dated in the future, seconds. Default `300`. */
  clockSkewSeconds?: number;
  /**
   * Time allowed from TCP accept to a finished authentication (TLS, startup, token, upstream
   * session), ms; slower connections are closed. Default `30000`.
   */
  handshakeTimeoutMs?: number;
  /**
   * Cap on connections accepted and not yet authenticated; more are refused at accept with
   * FATAL 53300 `too many connections awaiting authentication`. Default `1000`.
   */
  maxUnauthenticatedConnections?: number;
}

/** One live, authenticated session. */
export interface LocalSessionInfo {
  /** Session id: the upstream backend pid (what `SELECT pg_backend_pid()` returns). */
  id: number;
  /** DSQL user name from the startup message. */
  user: string;
  /** Upstream role it maps to. */
  role: string;
  /** Milliseconds since the TCP connection was accepted. */
  ageMs: number;
  /** Milliseconds since the last frame in either direction. */
  idleMs: number;
  /** True when the upstream reported an open (or failed) transaction at the last ReadyForQuery. */
  inTransaction: boolean;
  /** Transaction status from the last ReadyForQuery: `'I'`, `'T'` or `'E'`. */
  txStatus: 'I' | 'T' | 'E';
  /** How TLS was negotiated. */
  negotiation: Negotiation;
  /** SNI name the client sent. */
  sni: string;
  /** `application_name` from the startup message, if any. */
  applicationName: string | undefined;
}

/** Snapshot of the endpoint's counters (see {@link LocalDsql.stats}). */
export interface LocalDsqlStats {
  /** TCP connections accepted, and how the TLS ones negotiated. */
  connections: {
    total: number;
    byNegotiation: Record<Negotiation, number>;
    /** ALPN protocol chosen (`'none'` when the client offered none). */
    byAlpn: Record<string, number>;
    /** SNI name (`'none'` when absent). */
    bySni: Record<string, number>;
  };
  /** Plaintext startup messages refused. */
  plaintextRefused: number;
  /** Connections closed for protocol violations (data after SSLRequest, direct TLS without ALPN, …). */
  protocolViolations: number;
  /**
   * Unauthenticated connections closed by a pre-authentication limit, by limit:
   * `unauthenticated-cap`, `negotiation-requests`, `handshake-timeout`.
   */
  preAuthRefused: Record<string, number>;
  /** Authentication outcomes. */
  auth: { ok: number; failed: number; failedByReason: Partial<Record<AuthFailureReason, number>> };
  /** Tokens accepted (one per successful authentication). */
  tokensAccepted: number;
  /** Distinct tokens among them (counted by a SHA-256 prefix; tokens are never stored). */
  distinctTokensAccepted: number;
  /** Accepted tokens by their `X-Amz-Date`. */
  tokensBySigningDate: Record<string, number>;
  /** Accepted tokens by DSQL user. */
  tokensByUser: Record<string, number>;
  /** Injected OCC failures (failNextCommits) by code. */
  occInjected: Record<OccCode, number>;
  /** Upstream lock timeouts and serialization failures reported as OC000 at a statement (`dialect: 'dsql'`); conflicts at COMMIT are `sql.occ.conflictsAtCommit`. */
  occFromContention: number;
  /** Statements refused under `dialect: 'dsql'`. */
  unsupportedRejected: number;
  /** The SQL layer's counters (`dialect: 'dsql'`). */
  sql: DialectStats;
  /** COMMIT statements seen inside a transaction. */
  commits: number;
  /** Connections dropped by a fault, by how. */
  dropped: Record<DropHow, number>;
  /** Connections closed because they reached the maximum age. */
  maxAgeClosed: number;
  /** Sessions open now. */
  currentSessions: number;
  /** Connections accepted and not yet authenticated, now (capped by `maxUnauthenticatedConnections`). */
  awaitingAuthentication: number;
  /** Admission refusals by SQLSTATE (`53300` too many connections, `53400` rate exceeded). */
  admissionRefused: Record<'53300' | '53400', number>;
  /** CancelRequests forwarded upstream. */
  cancelRequests: number;
}

/** Selection for {@link LocalDsqlFaults.dropConnections}. */
export interface DropConnectionsOptions {
  /** `'all'` connections (default), only `'idle'` sessions, or one session id. */
  which?: 'all' | 'idle' | number;
  /** Default `'fin'`. */
  how?: DropHow;
}

/** Fault injection controls (see the package README, "Faults"). */
export interface LocalDsqlFaults {
  /** Drops connections now; returns how many. Their upstream sessions are closed too. */
  dropConnections(options?: DropConnectionsOptions): number;
  /**
   * The next `count` COMMITs (default 1) inside a transaction fail with 40001 and DSQL's text for
   * `code` (default `'OC000'`); the endpoint rolls back upstream and the connection stays usable.
   * `session` restricts it to one session id.
   */
  failNextCommits(options?: { count?: number; code?: OccCode; session?: number }): void;
  /**
   * The next COMMIT inside a transaction loses its connection (`how`, default `'fin'`). With
   * `afterCommit` (default `true`) the COMMIT runs upstream and only the reply is lost.
   */
  dropOnNextCommit(options?: {
    how?: Exclude<DropHow, 'fatal'>;
    afterCommit?: boolean;
    session?: number;
  }): void;
  /** Changes the maximum connection age (seconds, fractions allowed); applies to open connections too. */
  setMaxConnectionAge(seconds: number): void;
  /** Changes the new-connection token bucket; the bucket is refilled to the new burst. */
  setRateLimit(limit: { perSecond?: number; burst?: number }): void;
  /** Changes the cap on concurrently open connections. */
  setMaxConnections(max: number): void;
  /** Changes the added per-direction delay (ms). Order of data is preserved. */
  setLatency(latency: { toServer?: number; toClient?: number }): void;
  /** Forgets pending commit faults and resets latency to zero. */
  clear(): void;
}

/** A running local endpoint. */
export interface LocalDsql {
  /** Cluster host name `<clusterId>.dsql.<region>.on.aws` (does not resolve: use for SNI and signing). */
  readonly host: string;
  /** Address to dial, `'127.0.0.1'` unless `listenHost` says otherwise. */
  readonly address: string;
  /** Port it listens on. */
  readonly port: number;
  /** Cluster id. */
  readonly clusterId: string;
  /** CA certificate (PEM) to trust. */
  readonly ca: string;
  /** Path of a PEM file holding {@link ca}. */
  readonly caFile: string;
  /** Region. */
  readonly region: string;
  /** First accepted credential set (sign tokens with these). */
  readonly credentials: LocalCredentials;
  /** URL of the PostgreSQL behind the endpoint (the embedded one unless an upstream was given). */
  readonly upstream: string;
  /** Environment a Lambda handler needs to reach this endpoint. */
  readonly env: Record<string, string>;
  /**
   * Events: `'connection'`, `'refused'`, `'auth'`, `'session-start'`, `'session-end'`, `'fault'`,
   * each with one plain-object argument. Never emits `'error'`.
   */
  readonly events: EventEmitter;
  /** Fault injection. */
  readonly faults: LocalDsqlFaults;
  /** A snapshot of the counters. */
  stats(): LocalDsqlStats;
  /** Sets every counter back to zero (`currentSessions` keeps the live value). */
  resetStats(): void;
  /** Live sessions. */
  sessions(): LocalSessionInfo[];
  /**
   * Sets the clock used for token validity checks: a fixed epoch-ms value, a function, or
   * `undefined` for `Date.now`.
   */
  setClock(now: number | (() => number) | undefined): void;
  /** Closes the listener and every connection. Idempotent. */
  stop(): Promise<void>;
}
