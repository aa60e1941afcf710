/**
 * Configuration: one place that turns what the user gave (an object, a connection string, the
 * environment) into validated settings, synchronously and without I/O, so a bad configuration
 * fails at module scope, during init, with a {@link DsqlConfigError} naming the field.
 *
 * Nothing here ever puts a secret (password, secret access key, session token) into an error
 * message: messages name the field and the rule, never the value.
 */
import { isIP } from 'node:net';
import type pg from 'pg';
import { DsqlConfigError, PACKAGE_NAME } from './errors.js';

/**
 * Version of this package, sent in `application_name`. Kept as a literal (a unit test checks it
 * against package.json) so the runtime never reads package.json: that would be file I/O on
 * every cold start, and package.json is not where a bundle puts it anyway.
 */
export const PACKAGE_VERSION = '0.1.0';

/** An AWS identity, shaped like the AWS SDK's `AwsCredentialIdentity`. */
export interface AwsCredentialIdentity {
  /** AWS access key ID. */
  readonly accessKeyId: string;
  /** AWS secret access key. */
  readonly secretAccessKey: string;
  /** Session token, present for temporary credentials (always, inside Lambda). */
  readonly sessionToken?: string | undefined;
  /** When temporary credentials stop working; tokens signed with them stop working too. */
  readonly expiration?: Date | undefined;
}

/**
 * A function returning credentials, shaped like the AWS SDK's `AwsCredentialIdentityProvider`,
 * so any provider from `@aws-sdk/credential-providers` can be passed as it is.
 */
export type AwsCredentialIdentityProvider = () => Promise<AwsCredentialIdentity>;

/** TLS settings. Verification is always full (chain and host name); nothing here can relax it. */
export interface DsqlSslConfig {
  /**
   * Extra certificate authorities to trust, PEM. For the local endpoint or a TLS-terminating
   * proxy. Default: the system's trusted roots (what Aurora DSQL's certificates chain to).
   */
  ca?: string | Buffer | Array<string | Buffer> | undefined;
}

/** The pg options dsql-lambda decides itself; everything else pg accepts passes through. */
type OwnedPgKeys =
  | 'host'
  | 'port'
  | 'user'
  | 'database'
  | 'password'
  | 'ssl'
  | 'sslnegotiation'
  | 'connectionString'
  | 'max'
  | 'min'
  | 'idleTimeoutMillis'
  | 'connectionTimeoutMillis'
  | 'maxLifetimeSeconds'
  | 'application_name'
  | 'Client';

/**
 * How to reach an Aurora DSQL cluster and how to pool connections to it. Every field is
 * optional when the environment supplies it (see {@link resolveConfig}); options of
 * `pg.PoolConfig` that are not listed here (`query_timeout`, `keepAlive`, `types`, …) pass
 * through to pg untouched.
 */
export interface DsqlConfig extends Omit<pg.PoolConfig, OwnedPgKeys> {
  /**
   * Cluster endpoint (`<id>.dsql.<region>.on.aws`), any other DNS name of the cluster (a VPC
   * endpoint, a custom name: then `region` is needed), or a bare 26-character cluster ID.
   * Default: `DSQL_ENDPOINT`, then `PGHOST`. Required.
   */
  host?: string | undefined;
  /**
   * AWS Region of the cluster, used to sign tokens. Default: read from an `*.on.aws` endpoint,
   * then `AWS_REGION`, then `AWS_DEFAULT_REGION`.
   */
  region?: string | undefined;
  /** Database user. `admin` signs `DbConnectAdmin` tokens, any other user `DbConnect`. Default: `PGUSER`, then `'admin'`. */
  user?: string | undefined;
  /** Database name. Default: `PGDATABASE`, then `'postgres'` (the only database DSQL has). */
  database?: string | undefined;
  /** TCP port. Default: `PGPORT`, then `5432`. */
  port?: number | undefined;
  /**
   * Shared-config profile to take credentials from (needs `@aws-sdk/credential-providers`).
   * Default: none (credentials come from the environment or the default chain).
   */
  profile?: string | undefined;
  /**
   * Credentials or a credentials provider. Default: `profile` if given, else
   * `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` (what Lambda sets), else the
   * AWS SDK's default chain (needs `@aws-sdk/credential-providers`).
   */
  credentials?: AwsCredentialIdentity | AwsCredentialIdentityProvider | undefined;
  /** Lifetime of a signed token, seconds, integer 1…604800. Default: `900`. */
  tokenDurationSecs?: number | undefined;
  /**
   * Maximum connections in the pool. Default: `AWS_LAMBDA_MAX_CONCURRENCY` when set (a Lambda
   * Managed Instance runs that many invocations in one process), else `4`.
   */
  max?: number | undefined;
  /** Minimum idle connections pg-pool keeps. Default: `0`. */
  min?: number | undefined;
  /** Retire a connection this old, seconds (DSQL closes connections at 60 minutes). Default: `3300`. */
  maxLifetimeSeconds?: number | undefined;
  /**
   * pg-pool's idle timer, milliseconds (`0` disables it). Default: `300000`. Timers do not run
   * while Lambda is frozen; the wall-clock check at checkout (`maxIdleMillis`) is what counts.
   */
  idleTimeoutMillis?: number | undefined;
  /**
   * Budget for opening one connection, retries included, and for waiting for a free pooled
   * connection, milliseconds. Default: `10000` (pg's default is no limit at all).
   */
  connectionTimeoutMillis?: number | undefined;
  /** Discard a pooled connection idle longer than this at checkout, milliseconds. Default: `300000` (below the 350 s NAT gateway idle timeout). */
  maxIdleMillis?: number | undefined;
  /** A pause longer than this since the pool was last used counts as a freeze/thaw, milliseconds. Default: `5000`. */
  thawThresholdMillis?: number | undefined;
  /** Timeout of the liveness check on a reused connection after a thaw, milliseconds. Default: `1000`. */
  validationTimeoutMillis?: number | undefined;
  /**
   * Your application's name; sent as `application_name` `<name>:dsql-lambda/<version>`
   * (printable ASCII, shortened to fit PostgreSQL's 63 bytes). Default: `dsql-lambda/<version>`.
   */
  applicationName?: string | undefined;
  /**
   * `'direct'`: TLS handshake first (ALPN `postgresql`), one round trip fewer.
   * `'postgres'`: classic SSLRequest first. Default: `'direct'`.
   */
  sslNegotiation?: 'direct' | 'postgres' | undefined;
  /** TLS settings; `true` means the defaults. Default: full verification against system roots. */
  ssl?: DsqlSslConfig | true | undefined;
  /**
   * Address to dial (IP or DNS name) while `host` is still used for SNI, the certificate check
   * and token signing (libpq's `hostaddr`). Default: `DSQL_HOSTADDR`, then `PGHOSTADDR`, then
   * none (dial `host`).
   */
  hostaddr?: string | undefined;
  /** A connection string to start from; the other fields override what it says. */
  connectionString?: string | undefined;
}

/** IAM action a token grants: `DbConnectAdmin` for the `admin` user, `DbConnect` for any other. */
export type DsqlAction = 'DbConnect' | 'DbConnectAdmin';

/** Where credentials come from, decided once when the configuration is resolved. */
export type CredentialSource =
  | { readonly kind: 'explicit'; readonly value: AwsCredentialIdentity | AwsCredentialIdentityProvider }
  | { readonly kind: 'profile'; readonly profile: string }
  | { readonly kind: 'environment' }
  | { readonly kind: 'default-chain' };

/** Settings after defaults, environment and validation: what the rest of the library reads. */
export interface ResolvedDsqlConfig {
  /** Full cluster host name (lower case), used for SNI, the certificate check and signing. */
  readonly host: string;
  /** Address to dial, when it differs from `host`. */
  readonly hostaddr: string | undefined;
  readonly region: string;
  readonly user: string;
  readonly database: string;
  readonly port: number;
  readonly action: DsqlAction;
  /**
   * Credential source. For explicit credentials this property is non-enumerable, so neither
   * `JSON.stringify` nor `console.log` of the resolved configuration shows the secret.
   */
  readonly credentialSource: CredentialSource;
  readonly tokenDurationSecs: number;
  readonly max: number;
  readonly min: number;
  readonly maxLifetimeSeconds: number;
  readonly idleTimeoutMillis: number;
  readonly connectionTimeoutMillis: number;
  readonly maxIdleMillis: number;
  readonly thawThresholdMillis: number;
  readonly validationTimeoutMillis: number;
  /** The `application_name` actually sent. */
  readonly applicationName: string;
  readonly sslNegotiation: 'direct' | 'postgres';
  /** Extra CAs to trust, if any. */
  readonly ca: string | Buffer | Array<string | Buffer> | undefined;
  /** Options passed through to pg untouched. */
  readonly pgOptions: Readonly<Record<string, unknown>>;
}

/**
 * Every default in one place. Connection-retry and token-renewal timings live here too, so the
 * numbers that shape behaviour can be read at a glance.
 */
export const DSQL_DEFAULTS = {
  user: 'admin',
  database: 'postgres',
  port: 5432,
  /** The AWS SDK's default token lifetime. */
  tokenDurationSecs: 900,
  /**
   * Pool size outside Lambda Managed Instances. A standard Lambda runs one invocation at a time;
   * 4 lets a handler run a few queries in parallel (or take a client and still call
   * `pool.query`) without letting one instance open many connections, which count against the
   * cluster-wide rate of 100 new connections per second.
   */
  max: 4,
  min: 0,
  /** 55 minutes: retire connections before DSQL closes them at 60. */
  maxLifetimeSeconds: 3300,
  /** Matches `maxIdleMillis`: pg-pool's timer is only a backstop for processes that are not frozen. */
  idleTimeoutMillis: 300_000,
  connectionTimeoutMillis: 10_000,
  /** Below the 350 s idle timeout of a NAT gateway, which drops the path silently. */
  maxIdleMillis: 300_000,
  thawThresholdMillis: 5_000,
  validationTimeoutMillis: 1_000,
  sslNegotiation: 'direct' as 'direct' | 'postgres',
  /** First backoff after a refused connection attempt; doubles per attempt, full jitter. */
  connectRetryBaseMillis: 25,
  /** Ceiling of one backoff between connection attempts. */
  connectRetryMaxMillis: 1_000,
  /**
   * Renew a token once less than this remains of its life (or a fifth of its life, if that is
   * shorter). pg asks for the token only when the server requests the password, after TCP and
   * TLS, so this only has to cover one network trip and clock skew with DSQL: a minute is ample.
   */
  tokenRefreshMarginMillis: 60_000,
  /**
   * Resolve credentials again when they expire within this: the AWS SDK's own window, so a
   * token never outlives the credentials it was signed with by surprise.
   */
  credentialsRefreshMarginMillis: 300_000,
} as const;

const REGION_FROM_HOST = /\.dsql[^.]*\.([^.]+)\.on\.aws$/;
const CLUSTER_ID = /^[a-z0-9]{26}$/;
const REGION = /^[a-z0-9]+(-[a-z0-9]+)*$/;
const DNS_NAME =
  /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$/;
const MAX_APPLICATION_NAME = 63;

/** Keys of {@link DsqlConfig} this module interprets; all others go to pg as they are. */
const OWN_KEYS = new Set<string>([
  'host',
  'region',
  'user',
  'database',
  'port',
  'profile',
  'credentials',
  'tokenDurationSecs',
  'max',
  'min',
  'maxLifetimeSeconds',
  'idleTimeoutMillis',
  'connectionTimeoutMillis',
  'maxIdleMillis',
  'thawThresholdMillis',
  'validationTimeoutMillis',
  'applicationName',
  'application_name',
  'sslNegotiation',
  'sslnegotiation',
  'ssl',
  'hostaddr',
  'connectionString',
  'password',
  'Client',
]);

type Env = Readonly<Record<string, string | undefined>>;

function fail(field: string, message: string): never {
  throw new DsqlConfigError(field, message);
}

function nonEmptyString(field: string, value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') fail(field, 'must be a string');
  if (value.length === 0) fail(field, 'must not be empty');
  return value;
}

function integerIn(field: string, value: unknown, min: number, max: number): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    fail(field, `must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** Parses a decimal integer from a string source (environment, connection string) strictly. */
function integerText(field: string, text: string | undefined, min: number, max: number): number | undefined {
  if (text === undefined || text === '') return undefined;
  if (!/^\d{1,9}$/.test(text)) fail(field, `must be an integer from ${min} to ${max}`);
  return integerIn(field, Number(text), min, max);
}

function sslNegotiationOf(field: string, value: unknown): 'direct' | 'postgres' | undefined {
  if (value === undefined || value === null) return undefined;
  if (value !== 'direct' && value !== 'postgres') fail(field, "must be 'direct' or 'postgres'");
  return value;
}

function decode(field: string, text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return fail(field, 'malformed percent-encoding');
  }
}

const CONNECTION_STRING_SCHEMES = new Set(['postgres:', 'postgresql:', 'dsql:']);

/**
 * Parameters accepted in a connection string's query, mapped to the {@link DsqlConfig} field
 * they set. Unknown parameters are refused rather than ignored, so a typo cannot silently
 * change what is signed or dialled.
 */
const QUERY_PARAMETERS: Record<string, keyof DsqlConfig | 'sslmode' | 'connect_timeout'> = {
  region: 'region',
  profile: 'profile',
  tokenDurationSecs: 'tokenDurationSecs',
  sslnegotiation: 'sslNegotiation',
  hostaddr: 'hostaddr',
  application_name: 'applicationName',
  user: 'user',
  dbname: 'database',
  connect_timeout: 'connect_timeout',
  sslmode: 'sslmode',
};

/** libpq names worth a precise message: known, but meaningless or unsafe here. */
const REFUSED_QUERY_PARAMETERS = new Set([
  'password',
  'passfile',
  'sslrootcert',
  'sslcert',
  'sslkey',
  'sslpassword',
  'host',
  'port',
  'options',
  'target_session_attrs',
]);

/**
 * Parses a `postgres://`, `postgresql://` or `dsql://` connection string into a
 * {@link DsqlConfig}. User, host, port and database come from the URL (percent-decoded);
 * the query may set `region`, `profile`, `tokenDurationSecs`, `sslnegotiation`, `hostaddr`,
 * `application_name`, `user`, `dbname`, `connect_timeout` (seconds) and `sslmode`
 * (`require`, `verify-ca` or `verify-full`: verification is full regardless).
 *
 * A password in the string is refused (Aurora DSQL authenticates with IAM tokens), and no
 * error message ever repeats the string or any part of it that could be secret.
 * @throws {@link DsqlConfigError} for anything it cannot use.
 * @example
 * parseConnectionString('dsql://admin@abc.dsql.us-east-1.on.aws/postgres?tokenDurationSecs=300');
 * // → { user: 'admin', host: 'abc.dsql.us-east-1.on.aws', database: 'postgres', tokenDurationSecs: 300 }
 */
export function parseConnectionString(connectionString: string): DsqlConfig {
  const field = 'connectionString';
  if (typeof connectionString !== 'string') fail(field, 'must be a string');
  const schemeEnd = connectionString.indexOf('://');
  const scheme = schemeEnd > 0 ? `${connectionString.slice(0, schemeEnd).toLowerCase()}:` : '';
  if (!CONNECTION_STRING_SCHEMES.has(scheme)) {
    fail(field, 'must be a URL starting with postgres://, postgresql:// or dsql://');
  }
  let url: URL;
  try {
    url = new URL(connectionString);
  } catch {
    // The URL parser's error carries the whole input (with any password): never chain it.
    return fail(field, 'is not a valid URL');
  }
  if (url.password !== '') {
    fail(
      'password',
      'connection strings must not contain a password: Aurora DSQL authenticates with IAM tokens',
    );
  }
  const config: DsqlConfig & { connect_timeout?: number } = {};
  if (url.username !== '') config.user = decode('user', url.username);
  if (url.hostname !== '') {
    const host = decode('host', url.hostname);
    if (host.startsWith('[') || host.includes(',')) fail('host', 'must be a single DNS name');
    config.host = host;
  }
  if (url.port !== '') config.port = integerText('port', url.port, 1, 65535);
  const path = url.pathname;
  if (path !== '' && path !== '/') {
    const database = decode('database', path.slice(1));
    if (path.slice(1).includes('/')) fail('database', 'the URL path must be a single database name');
    config.database = database;
  }
  const seen = new Set<string>();
  // Parsed by hand, not with URLSearchParams: that turns '+' into a space, which libpq does not.
  const query = url.search.startsWith('?') ? url.search.slice(1) : '';
  for (const part of query.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const rawKey = eq === -1 ? part : part.slice(0, eq);
    const key = decode(field, rawKey);
    const value = decode(field, eq === -1 ? '' : part.slice(eq + 1));
    const target = Object.hasOwn(QUERY_PARAMETERS, key) ? QUERY_PARAMETERS[key] : undefined;
    if (target === undefined) {
      if (REFUSED_QUERY_PARAMETERS.has(key)) fail(field, `query parameter "${key}" is not supported`);
      fail(field, `unknown query parameter; supported: ${Object.keys(QUERY_PARAMETERS).join(', ')}`);
    }
    if (seen.has(key)) fail(field, `query parameter "${key}" given more than once`);
    seen.add(key);
    if (value === '' && target !== 'sslmode') fail(key, 'must not be empty');
    switch (target) {
      case 'tokenDurationSecs':
        config.tokenDurationSecs = integerText('tokenDurationSecs', value, 1, 604800);
        break;
      case 'connect_timeout': {
        const seconds = integerText('connect_timeout', value, 1, 3600);
        if (seconds !== undefined) config.connectionTimeoutMillis = seconds * 1000;
        break;
      }
      case 'sslmode':
        if (value !== 'require' && value !== 'verify-ca' && value !== 'verify-full') {
          fail('sslmode', 'TLS with full verification is mandatory: use verify-full (or omit sslmode)');
        }
        break;
      case 'sslNegotiation':
        config.sslNegotiation = sslNegotiationOf('sslnegotiation', value);
        break;
      case 'region':
      case 'profile':
      case 'hostaddr':
      case 'applicationName':
      case 'user':
      case 'database':
        (config as Record<string, unknown>)[target] = nonEmptyString(key, value);
        break;
      default:
        break;
    }
  }
  return config;
}

/** Region named by a `*.dsql*.<region>.on.aws` host, if it is one. */
export function regionFromHost(host: string): string | undefined {
  return REGION_FROM_HOST.exec(host.toLowerCase())?.[1];
}

function applicationNameOf(name: string | undefined): string {
  const suffix = `${PACKAGE_NAME}/${PACKAGE_VERSION}`;
  if (name === undefined) return suffix;
  if (!/^[\x20-\x7e]*$/.test(name)) fail('applicationName', 'must be printable ASCII');
  // PostgreSQL keeps only the first 63 bytes; shorten the user's part so our suffix survives.
  const room = MAX_APPLICATION_NAME - suffix.length - 1;
  return `${name.slice(0, room)}:${suffix}`;
}

function sslOf(value: unknown): DsqlSslConfig['ca'] {
  if (value === undefined || value === null || value === true) return undefined;
  if (value === false) fail('ssl', 'TLS is mandatory for Aurora DSQL and cannot be disabled');
  if (typeof value !== 'object') fail('ssl', 'must be an object like { ca }');
  const ssl = value as Record<string, unknown>;
  if (ssl.rejectUnauthorized === false) {
    fail(
      'ssl',
      'rejectUnauthorized: false is not allowed: certificates are always verified (add a CA with ssl.ca)',
    );
  }
  for (const key of Object.keys(ssl)) {
    if (key !== 'ca' && key !== 'rejectUnauthorized') {
      fail('ssl', `only "ca" is supported (verification stays full; the server name is always the host)`);
    }
  }
  const ca = ssl.ca;
  if (ca === undefined) return undefined;
  const isPem = (c: unknown) => typeof c === 'string' || Buffer.isBuffer(c);
  if (!isPem(ca) && !(Array.isArray(ca) && ca.every(isPem))) {
    fail('ssl.ca', 'must be a PEM string, a Buffer, or an array of them');
  }
  return ca as DsqlSslConfig['ca'];
}

function credentialsOf(value: unknown): CredentialSource | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'function') return { kind: 'explicit', value: value as AwsCredentialIdentityProvider };
  if (typeof value !== 'object')
    fail('credentials', 'must be credentials or a credentials provider function');
  const c = value as Record<string, unknown>;
  if (typeof c.accessKeyId !== 'string' || c.accessKeyId === '') {
    fail('credentials', 'accessKeyId must be a non-empty string');
  }
  if (typeof c.secretAccessKey !== 'string' || c.secretAccessKey === '') {
    fail('credentials', 'secretAccessKey must be a non-empty string');
  }
  if (c.sessionToken !== undefined && typeof c.sessionToken !== 'string') {
    fail('credentials', 'sessionToken must be a string');
  }
  if (
    c.expiration !== undefined &&
    !(c.expiration instanceof Date && !Number.isNaN(c.expiration.getTime()))
  ) {
    fail('credentials', 'expiration must be a valid Date');
  }
  return { kind: 'explicit', value: value as AwsCredentialIdentity };
}

/**
 * Resolves a configuration: connection string or object, then the environment, then
 * {@link DSQL_DEFAULTS}; validates every field. Synchronous and free of I/O.
 *
 * Environment variables read (as defaults, below anything given explicitly): `DSQL_ENDPOINT`
 * then `PGHOST` (host), `DSQL_HOSTADDR` then `PGHOSTADDR`, `PGUSER`, `PGDATABASE`, `PGPORT`,
 * `AWS_REGION` then `AWS_DEFAULT_REGION` (region, after the one in an `*.on.aws` host), and
 * `AWS_LAMBDA_MAX_CONCURRENCY` (default `max`). Credentials from the environment are read later,
 * when a token is first needed.
 * @param input A {@link DsqlConfig}, a connection string, or `undefined` (environment only).
 * @param env Environment to read. Default: `process.env`.
 * @throws {@link DsqlConfigError} naming the field at fault; never anything else.
 * @example
 * const resolved = resolveConfig({ host: 'abcdefghijklmnopqrstuvwxyz', region: 'us-east-1' });
 * resolved.host; // 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws'
 */
export function resolveConfig(
  input: DsqlConfig | string | undefined,
  env: Env = process.env,
): ResolvedDsqlConfig {
  let given: DsqlConfig;
  if (typeof input === 'string') {
    given = parseConnectionString(input);
  } else if (input === undefined || input === null) {
    given = {};
  } else if (typeof input === 'object') {
    const object = input as DsqlConfig & { password?: unknown; Client?: unknown };
    if (object.password !== undefined) {
      fail('password', 'not supported: Aurora DSQL authenticates with IAM tokens, signed for you');
    }
    if (object.Client !== undefined)
      fail('Client', 'not supported: dsql-lambda provides its own client class');
    const fromString =
      object.connectionString !== undefined ? parseConnectionString(object.connectionString) : undefined;
    given = { ...fromString };
    for (const [key, value] of Object.entries(object)) {
      if (value !== undefined && key !== 'connectionString') (given as Record<string, unknown>)[key] = value;
    }
    if (given.applicationName === undefined && (object as pg.PoolConfig).application_name !== undefined) {
      given.applicationName = nonEmptyString('application_name', (object as pg.PoolConfig).application_name);
    }
    const pgSpelling = (object as pg.PoolConfig).sslnegotiation;
    if (given.sslNegotiation === undefined && pgSpelling !== undefined) {
      given.sslNegotiation = sslNegotiationOf('sslnegotiation', pgSpelling);
    }
  } else {
    return fail('config', 'must be an object, a connection string or undefined');
  }

  const explicitRegion = nonEmptyString('region', given.region);
  if (explicitRegion !== undefined && !REGION.test(explicitRegion))
    fail('region', 'is not a valid AWS Region name');
  const envRegion =
    nonEmptyString('AWS_REGION', env.AWS_REGION) ??
    nonEmptyString('AWS_DEFAULT_REGION', env.AWS_DEFAULT_REGION);

  let host =
    nonEmptyString('host', given.host) ?? (env.DSQL_ENDPOINT || undefined) ?? (env.PGHOST || undefined);
  if (host === undefined) {
    fail('host', 'is required: a cluster endpoint or cluster ID (or set DSQL_ENDPOINT)');
  }
  host = host.trim().toLowerCase();
  if (isIP(host) !== 0) {
    fail('host', 'must be a DNS name (DSQL needs it for SNI and signing); to dial an address, use hostaddr');
  }
  if (!DNS_NAME.test(host)) fail('host', 'must be a DNS name or a 26-character cluster ID');
  host = host.replace(/\.$/, '');

  let region: string | undefined;
  if (CLUSTER_ID.test(host)) {
    region = explicitRegion ?? envRegion;
    if (region === undefined)
      fail('region', 'is required to build the endpoint from a cluster ID (or set AWS_REGION)');
    if (!REGION.test(region)) fail('region', 'is not a valid AWS Region name');
    host = `${host}.dsql.${region}.on.aws`;
  } else {
    region = explicitRegion ?? regionFromHost(host) ?? envRegion;
    if (region === undefined) {
      fail(
        'region',
        'is required when the host is not a *.dsql.<region>.on.aws endpoint (or set AWS_REGION)',
      );
    }
    if (!REGION.test(region)) fail('region', 'is not a valid AWS Region name');
  }

  const hostaddr =
    nonEmptyString('hostaddr', given.hostaddr) ??
    (env.DSQL_HOSTADDR || undefined) ??
    (env.PGHOSTADDR || undefined);
  if (hostaddr !== undefined && (/\s|\//.test(hostaddr) || hostaddr.length > 253)) {
    fail('hostaddr', 'must be an IP address or a DNS name');
  }

  const user = nonEmptyString('user', given.user) ?? (env.PGUSER || undefined) ?? DSQL_DEFAULTS.user;
  const database =
    nonEmptyString('database', given.database) ?? (env.PGDATABASE || undefined) ?? DSQL_DEFAULTS.database;
  const port =
    integerIn('port', given.port, 1, 65535) ??
    integerText('PGPORT', env.PGPORT, 1, 65535) ??
    DSQL_DEFAULTS.port;

  const lambdaConcurrency = /^\d{1,6}$/.test(env.AWS_LAMBDA_MAX_CONCURRENCY ?? '')
    ? Number(env.AWS_LAMBDA_MAX_CONCURRENCY)
    : 0;
  const max =
    integerIn('max', given.max, 1, 100_000) ??
    (lambdaConcurrency >= 1 ? lambdaConcurrency : DSQL_DEFAULTS.max);
  const min = integerIn('min', given.min, 0, max) ?? DSQL_DEFAULTS.min;

  const credentialSource: CredentialSource =
    credentialsOf(given.credentials) ??
    (given.profile !== undefined
      ? { kind: 'profile', profile: nonEmptyString('profile', given.profile) as string }
      : env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
        ? { kind: 'environment' }
        : { kind: 'default-chain' });
  if (credentialSource.kind === 'explicit' && given.profile !== undefined) {
    fail('profile', 'give either credentials or profile, not both');
  }

  const resolved = {
    host,
    hostaddr,
    region,
    user,
    database,
    port,
    action: (user === 'admin' ? 'DbConnectAdmin' : 'DbConnect') as DsqlAction,
    credentialSource,
    tokenDurationSecs:
      integerIn('tokenDurationSecs', given.tokenDurationSecs, 1, 604800) ?? DSQL_DEFAULTS.tokenDurationSecs,
    max,
    min,
    maxLifetimeSeconds:
      integerIn('maxLifetimeSeconds', given.maxLifetimeSeconds, 1, 3600) ?? DSQL_DEFAULTS.maxLifetimeSeconds,
    idleTimeoutMillis:
      integerIn('idleTimeoutMillis', given.idleTimeoutMillis, 0, 2 ** 31 - 1) ??
      DSQL_DEFAULTS.idleTimeoutMillis,
    connectionTimeoutMillis:
      integerIn('connectionTimeoutMillis', given.connectionTimeoutMillis, 1, 2 ** 31 - 1) ??
      DSQL_DEFAULTS.connectionTimeoutMillis,
    maxIdleMillis:
      integerIn('maxIdleMillis', given.maxIdleMillis, 1, 2 ** 31 - 1) ?? DSQL_DEFAULTS.maxIdleMillis,
    thawThresholdMillis:
      integerIn('thawThresholdMillis', given.thawThresholdMillis, 0, 2 ** 31 - 1) ??
      DSQL_DEFAULTS.thawThresholdMillis,
    validationTimeoutMillis:
      integerIn('validationTimeoutMillis', given.validationTimeoutMillis, 1, 2 ** 31 - 1) ??
      DSQL_DEFAULTS.validationTimeoutMillis,
    applicationName: applicationNameOf(nonEmptyString('applicationName', given.applicationName)),
    sslNegotiation: sslNegotiationOf('sslNegotiation', given.sslNegotiation) ?? DSQL_DEFAULTS.sslNegotiation,
    ca: sslOf(given.ssl),
    pgOptions: {} as Record<string, unknown>,
  };
  for (const [key, value] of Object.entries(given)) {
    if (!OWN_KEYS.has(key)) resolved.pgOptions[key] = value;
  }
  // Explicit credentials hold a secret: keep them out of JSON.stringify and console.log.
  Object.defineProperty(resolved, 'credentialSource', { enumerable: credentialSource.kind !== 'explicit' });
  return resolved;
}
