/**
 * Test helpers around the local DSQL-like endpoint: start one, sign tokens for it with the AWS
 * SDK signer (the oracle the endpoint's verifier is checked against), and build pg configs.
 */

import { formatUrl } from '@aws-sdk/core/util';
import { DsqlSigner } from '@aws-sdk/dsql-signer';
import { Sha256 } from '@smithy/core/checksum';
import { HttpRequest } from '@smithy/core/protocols';
import { SignatureV4 } from '@smithy/signature-v4';
import pg from 'pg';
import {
  type LocalCredentials,
  type LocalDsql,
  type LocalDsqlOptions,
  startLocalDsql,
} from '../../packages/dsql-local/src/index.js';

const started = new Set<LocalDsql>();

/** The PostgreSQL test endpoints relay to (chosen once per run by upstream-setup.ts). */
export function testUpstreamUrl(): string {
  const url = process.env.DSQL_LOCAL_UPSTREAM;
  if (!url)
    throw new Error('DSQL_LOCAL_UPSTREAM is not set: run the tests through vitest (its globalSetup sets it)');
  return url;
}

/** The test upstream's URL with another database. */
export function upstreamUrlFor(database: string): string {
  const u = new URL(testUpstreamUrl());
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.href;
}

/** pg connection settings for the test upstream, directly (no endpoint); `database` overrides its database. */
export function testUpstream(database?: string): {
  host: string;
  port: number;
  user: string;
  password: string | undefined;
  database: string;
} {
  const u = new URL(testUpstreamUrl());
  return {
    host: u.hostname,
    port: Number(u.port || 5432),
    user: decodeURIComponent(u.username) || 'postgres',
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: database ?? (decodeURIComponent(u.pathname.slice(1)) || 'dsql_local'),
  };
}

/**
 * Starts a local endpoint for a test (same options as `startLocalDsql`). Stop it with
 * `endpoint.stop()` or {@link stopAllTestEndpoints} (e.g. in `afterAll`).
 */
export async function startTestEndpoint(options: LocalDsqlOptions = {}): Promise<LocalDsql> {
  // No upstream option: the library takes DSQL_LOCAL_UPSTREAM (set by the vitest globalSetup),
  // or, outside vitest (bench scripts), starts its embedded PostgreSQL.
  const endpoint = await startLocalDsql(options);
  started.add(endpoint);
  const stop = endpoint.stop.bind(endpoint);
  return Object.assign(endpoint, {
    stop: () => {
      started.delete(endpoint);
      return stop();
    },
  });
}

/** Stops every endpoint started by {@link startTestEndpoint} and not stopped yet. */
export async function stopAllTestEndpoints(): Promise<void> {
  const all = [...started];
  started.clear();
  await Promise.all(all.map((e) => e.stop()));
}

/** Options of {@link signTestToken}. */
export interface SignTestTokenOptions {
  /** Database user; `admin` gets a DbConnectAdmin token. Default `'admin'`. */
  user?: string;
  /** Token lifetime, seconds. Default `900`. */
  expiresIn?: number;
  /** Signing credentials. Default: the endpoint's first accepted set. */
  credentials?: LocalCredentials;
  /** Host name to sign for. Default: `endpoint.host`. */
  hostname?: string;
  /** Region to sign for. Default: `endpoint.region`. */
  region?: string;
  /** Signing time. Default: now. */
  at?: Date;
  /** Force the action instead of deriving it from `user`. */
  action?: 'DbConnect' | 'DbConnectAdmin';
}

/**
 * Signs a DSQL IAM token for `endpoint` with `@aws-sdk/dsql-signer` (or, when `at` or `action`
 * is given, with the `@smithy/signature-v4` presigner the SDK signer uses, which can sign at a
 * given date).
 */
export async function signTestToken(
  endpoint: LocalDsql,
  options: SignTestTokenOptions = {},
): Promise<string> {
  const user = options.user ?? 'admin';
  const hostname = options.hostname ?? endpoint.host;
  const region = options.region ?? endpoint.region;
  const credentials = options.credentials ?? endpoint.credentials;
  const expiresIn = options.expiresIn ?? 900;
  const action = options.action ?? (user === 'admin' ? 'DbConnectAdmin' : 'DbConnect');
  if (options.at === undefined && options.action === undefined) {
    const signer = new DsqlSigner({ hostname, region, credentials, expiresIn });
    return user === 'admin' ? signer.getDbConnectAdminAuthToken() : signer.getDbConnectAuthToken();
  }
  const signer = new SignatureV4({ service: 'dsql', region, credentials, sha256: Sha256 });
  const request = new HttpRequest({
    method: 'GET',
    protocol: 'https:',
    hostname,
    path: '/',
    headers: { host: hostname },
    query: { Action: action },
  });
  const presigned = await signer.presign(request, { expiresIn, signingDate: options.at });
  return formatUrl(presigned).replace('https://', '');
}

/** Options of {@link pgConfig}. */
export interface PgConfigOptions {
  /** Default `'admin'`. */
  user?: string;
  /** The token (or a function returning one, as pg allows). */
  password?: string | (() => string | Promise<string>);
  /** Default `'postgres'`. */
  sslnegotiation?: 'direct' | 'postgres';
  /** Default `'postgres'`. */
  database?: string;
  /** SNI / certificate name. Default `endpoint.host`; `null` sends none (dial by IP only). */
  servername?: string | null;
}

/**
 * A pg client config dialing `endpoint.address:port` with SNI and certificate checks against
 * `endpoint.host` and the endpoint's CA.
 */
export function pgConfig(endpoint: LocalDsql, options: PgConfigOptions = {}): pg.ClientConfig {
  const servername = options.servername === undefined ? endpoint.host : options.servername;
  return {
    host: endpoint.address,
    port: endpoint.port,
    user: options.user ?? 'admin',
    password: options.password,
    database: options.database ?? 'postgres',
    sslnegotiation: options.sslnegotiation ?? 'postgres',
    ssl:
      servername === null
        ? { ca: endpoint.ca, checkServerIdentity: () => undefined }
        : { ca: endpoint.ca, servername },
  };
}

/** A pg config with a freshly signed token for `user` (default `admin`). */
export async function signedPgConfig(
  endpoint: LocalDsql,
  options: Omit<PgConfigOptions, 'password'> = {},
): Promise<pg.ClientConfig> {
  const password = await signTestToken(endpoint, { user: options.user ?? 'admin' });
  return pgConfig(endpoint, { ...options, password });
}

/**
 * Resolves once upstream backend `pid` is running a `pg_sleep`, as seen on `upstream` (a direct
 * connection) in `pg_stat_activity`: a wait on a fact, not on time.
 */
export async function untilSleeping(upstream: pg.ClientBase, pid: number): Promise<void> {
  for (;;) {
    const { rowCount } = await upstream.query(
      "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
      [pid],
    );
    if (rowCount) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * Keeps `client`'s session busy (a long `pg_sleep`) until the returned `release()` cancels it.
 * Under the endpoint's optimistic concurrency a transaction idle between statements is rolled back
 * when another one waits on its lock; a busy one is not, so a writer meeting its lock fails at the
 * statement (40001 OC000) after `lockTimeoutMs`. Resolves once the sleep is running upstream, seen
 * in `pg_stat_activity` on a direct upstream connection (no timing assumption). `release()`
 * cancels the sleep, which aborts the client's transaction and frees its locks.
 */
export async function holdBusy(client: pg.ClientBase): Promise<{ release(): Promise<void> }> {
  const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  const pid = rows[0]?.pid as number;
  const upstream = new pg.Client(testUpstream());
  await upstream.connect();
  const sleeping = client.query('SELECT pg_sleep(600)').catch(() => {});
  await untilSleeping(upstream, pid);
  return {
    async release() {
      await upstream.query('SELECT pg_cancel_backend($1)', [pid]);
      await sleeping;
      await upstream.end();
    },
  };
}
