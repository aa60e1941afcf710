/**
 * Configuration: one place that turns what the user gave (an object, a connection string, the
 * environment) into validated settings, synchronously and without I/O, so a bad configuration
 * fails at module scope, during init, with a {@link DsqlConfigError} naming the field.
 *
 * Nothing here ever puts a secret (password, secret access key, session token) into an error
 * message: messages name the field and the rule, never the value.
 */
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
   * Certificate authorities to trust, PEM, for the local endpoint or a TLS-terminating proxy.
   * They replace Node's trusted roots (as `tls.connect`'s `ca` does), so a real cluster
   * behind this setting needs its root (Amazon's) in the list too. Default: Node's trusted roots
   * (what Aurora DSQL's certificates chain to).
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
   * (shortened to fit PostgreSQL's 63 bytes). Default: `dsql-lambda/<version>`.
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
   * Address to dial (IP or DNS name; a DNS name needs Node ≥ 20.16) while `host` is still used
   * for SNI, the certificate check and token signing (libpq's `hostaddr`). Default:
   * `DSQL_HOSTADDR`, then `PGHOSTADDR`, then none (dial `host`).
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
  /** AWS Region tokens are signed for. */
  readonly region: string;
  /** Database user. */
  readonly user: string;
  /** Database name. */
  readonly database: string;
  /** TCP port. */
  readonly port: number;
  /** IAM action the tokens grant, from `user`. */
  readonly action: DsqlAction;
  /**
   * Credential source. For explicit credentials this property is non-enumerable, so neither
   * `JSON.stringify` nor `console.log` of the resolved configuration shows the secret.
   */
  readonly credentialSource: CredentialSource;
  /** Token lifetime, seconds. */
  readonly tokenDurationSecs: number;
  /** Pool size. */
  readonly max: number;
  /** Minimum idle connections. */
  readonly min: number;
  /** Connection lifetime, seconds (pg-pool's timer and the checkout's wall-clock check). */
  readonly maxLifetimeSeconds: number;
  /** pg-pool's idle timer, milliseconds. */
  readonly idleTimeoutMillis: number;
  /** Budget for opening a connection, retries included, milliseconds. */
  readonly connectionTimeoutMillis: number;
  /** Idle limit checked at checkout, milliseconds. */
  readonly maxIdleMillis: number;
  /** Pause that counts as a freeze/thaw, milliseconds. */
  readonly thawThresholdMillis: number;
  /** Timeout of the post-thaw liveness check, milliseconds. */
  readonly validationTimeoutMillis: number;
  /** The `application_name` actually sent. */
  readonly applicationName: string;
  /** TLS negotiation. */
  readonly sslNegotiation: 'direct' | 'postgres';
  /** CAs to trust instead of Node's roots, if any. */
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

/**
 * True when every `separator`-separated word of `text` is a non-empty run of `[a-z0-9]` (and
 * hyphens, inside DNS labels). Hand-written, like the other checks on the `createPool` path:
 * V8 compiles a regular expression on its first use, and the handful these checks would need
 * cost ≈ 0.5 ms of every cold start.
 */
function isWords(text: string, separator: '.' | '-'): boolean {
  for (const word of text.split(separator)) {
    if (word === '') return false;
    for (let i = 0; i < word.length; i++) {
      const c = word.charCodeAt(i);
      if (!((c >= 97 && c <= 122) || (c >= 48 && c <= 57) || (c === 45 && separator === '.'))) return false;
    }
  }
  return true;
}
const MAX_INT = 2 ** 31 - 1;
const NO_PASSWORD = 'not allowed: DSQL uses IAM tokens';
const NOT_AN_ADDRESS = 'must be a DNS name (use hostaddr to dial an address)';

/** Integer fields and their ranges; their defaults are in {@link DSQL_DEFAULTS}. */
const INTEGER_FIELDS = {
  tokenDurationSecs: [1, 604800],
  maxLifetimeSeconds: [1, 3600],
  idleTimeoutMillis: [0, MAX_INT],
  connectionTimeoutMillis: [1, MAX_INT],
  maxIdleMillis: [1, MAX_INT],
  thawThresholdMillis: [0, MAX_INT],
  validationTimeoutMillis: [1, MAX_INT],
} as const;

/** Keys of {@link DsqlConfig} this module interprets; all others go to pg as they are. */
const OWN_KEYS = new Set<string>([
  ...Object.keys(DSQL_DEFAULTS),
  'host',
  'region',
  'profile',
  'credentials',
  'applicationName',
  'ssl',
  'hostaddr',
  'connectionString',
]);

type Env = Readonly<Record<string, string | undefined>>;

function fail(field: string, message: string): never {
  throw new DsqlConfigError(field, message);
}

function nonEmptyString(field: string, value: unknown): string | undefined {
  if (value == null) return undefined;
  if (typeof value !== 'string' || value === '') fail(field, 'must be a non-empty string');
  return value;
}

function integerIn(field: string, value: unknown, min: number, max: number): number | undefined {
  if (value == null) return undefined;
  if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) {
    fail(field, `must be an integer from ${min} to ${max}`);
  }
  return value as number;
}

/** A decimal integer from text (environment, connection string), strictly. */
function integerText(field: string, text: string | undefined, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  return integerIn(field, /^\d{1,9}$/.test(text) ? Number(text) : NaN, min, max);
}

function sslNegotiationOf(field: string, value: unknown): 'direct' | 'postgres' | undefined {
  if (value == null) return undefined;
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

/**
 * Query parameters a connection string may carry, and the field each sets. Unknown ones are
 * refused rather than ignored, so a typo cannot silently change what is signed or dialled.
 */
const QUERY_PARAMETERS = [
  'region',
  'profile',
  'tokenDurationSecs',
  'sslnegotiation',
  'hostaddr',
  'application_name',
  'user',
  'dbname',
  'sslmode',
];
/** Query parameters whose field has another name. */
const RENAMED: Record<string, string> = {
  sslnegotiation: 'sslNegotiation',
  application_name: 'applicationName',
  dbname: 'database',
};

/**
 * Parses a `postgres://`, `postgresql://` or `dsql://` connection string into a
 * {@link DsqlConfig}. User, host, port and database come from the URL (percent-decoded);
 * the query may set `region`, `profile`, `tokenDurationSecs`, `sslnegotiation`, `hostaddr`,
 * `application_name`, `user`, `dbname` and `sslmode`
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
  if (typeof connectionString !== 'string' || !/^(postgres|postgresql|dsql):\/\//i.test(connectionString)) {
    fail(field, 'must be a postgres:// or dsql:// URL');
  }
  let url: URL;
  try {
    url = new URL(connectionString);
  } catch {
    // The URL parser's error carries the whole input (with any password): never chain it.
    return fail(field, 'is not a valid URL');
  }
  if (url.password !== '') fail('password', NO_PASSWORD);
  const config: Record<string, unknown> = {};
  if (url.username) config.user = decode('user', url.username);
  if (url.hostname) {
    config.host = decode('host', url.hostname);
    if (url.hostname.startsWith('[')) fail('host', NOT_AN_ADDRESS);
  }
  if (url.port) config.port = Number(url.port);
  const path = url.pathname.slice(1);
  if (path) {
    if (path.includes('/')) fail('database', 'is invalid');
    config.database = decode('database', path);
  }
  // Parsed by hand, not with URLSearchParams: that turns '+' into a space, which libpq does not.
  for (const part of url.search.slice(1).split('&')) {
    if (!part) continue;
    const eq = part.includes('=') ? part.indexOf('=') : part.length;
    const key = decode(field, part.slice(0, eq));
    // An unknown key is not repeated: a mangled URL can put part of a password there.
    if (!QUERY_PARAMETERS.includes(key)) fail(field, `unknown query parameter (known: ${QUERY_PARAMETERS})`);
    const target = Object.hasOwn(RENAMED, key) ? (RENAMED[key] as string) : key;
    const value = decode(key, part.slice(eq + 1));
    if (value === '') fail(key, 'must not be empty');
    if (target === 'tokenDurationSecs') {
      config[target] = integerText(key, value, 1, 604800);
    } else if (target === 'sslmode') {
      if (!['require', 'verify-ca', 'verify-full'].includes(value)) fail(key, 'must be verify-full');
    } else {
      config[target] = target === 'sslNegotiation' ? sslNegotiationOf(key, value) : value;
    }
  }
  return config as DsqlConfig;
}

/** Region named by a `*.dsql*.<region>.on.aws` host, if it is one. */
export function regionFromHost(host: string): string | undefined {
  // `\.dsql[^.]*\.([^.]+)\.on\.aws$`, the pattern the official connectors use, without a RegExp.
  const labels = host.toLowerCase().split('.');
  const n = labels.length;
  return n >= 5 && labels[n - 2] === 'on' && labels[n - 1] === 'aws' && labels[n - 4]?.startsWith('dsql')
    ? labels[n - 3] || undefined
    : undefined;
}

/**
 * PostgreSQL keeps the first 63 bytes, after turning every byte other than printable ASCII into
 * `?` (16 and later: `\xNN`): the user's part is made printable ASCII here, one `?` per UTF-16
 * unit, then shortened so our suffix survives.
 */
function applicationNameOf(name: string | undefined): string {
  const suffix = `${PACKAGE_NAME}/${PACKAGE_VERSION}`;
  return name === undefined
    ? suffix
    : `${name.replace(/[^ -~]/g, '?').slice(0, 62 - suffix.length)}:${suffix}`;
}

function caOf(value: unknown): DsqlSslConfig['ca'] {
  if (value == null || value === true) return undefined;
  const ssl = value as Record<string, unknown>;
  if (
    typeof ssl !== 'object' ||
    ssl.rejectUnauthorized === false ||
    Object.keys(ssl).some((key) => key !== 'ca' && key !== 'rejectUnauthorized')
  ) {
    fail('ssl', 'is always on and fully verified; only { ca } may be set');
  }
  if (![ssl.ca ?? ''].flat().every((c) => typeof c === 'string' || Buffer.isBuffer(c))) {
    fail('ssl.ca', 'must be PEM text or Buffers');
  }
  return ssl.ca as DsqlSslConfig['ca'];
}

function credentialsOf(value: unknown): CredentialSource | undefined {
  if (value == null) return undefined;
  const c = value as Record<string, unknown>;
  if (
    typeof value !== 'function' &&
    (typeof c !== 'object' ||
      typeof c.accessKeyId !== 'string' ||
      !c.accessKeyId ||
      typeof c.secretAccessKey !== 'string' ||
      !c.secretAccessKey ||
      !['string', 'undefined'].includes(typeof c.sessionToken) ||
      (c.expiration !== undefined && !(c.expiration instanceof Date && c.expiration.getTime() >= 0)))
  ) {
    fail('credentials', 'must be an AWS identity or a provider function');
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
 * `AWS_LAMBDA_MAX_CONCURRENCY` (default `max`). Whether `AWS_ACCESS_KEY_ID` and
 * `AWS_SECRET_ACCESS_KEY` are set picks the credential source; their values are read only when
 * a token is first needed.
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
  if (input != null && typeof input !== 'string' && typeof input !== 'object') fail('config', 'is invalid');
  const object = (typeof input === 'object' && input) || {};
  const given: Record<string, unknown> & DsqlConfig = {
    ...(typeof input === 'string' ? parseConnectionString(input) : undefined),
    ...(object.connectionString !== undefined ? parseConnectionString(object.connectionString) : undefined),
  };
  for (const [key, value] of Object.entries(object)) if (value !== undefined) given[key] = value;
  if (given.password !== undefined) fail('password', NO_PASSWORD);
  if (given.Client !== undefined) fail('Client', 'not allowed');
  // pg's spellings, for JavaScript callers who bring pg options along.

  let host = (nonEmptyString('host', given.host) ?? (env.DSQL_ENDPOINT || env.PGHOST))?.trim().toLowerCase();
  if (!host) fail('host', 'is required (or set DSQL_ENDPOINT)');
  if (host.endsWith('.')) host = host.slice(0, -1);
  // Not `net.isIP`: its first call compiles Node's IPv6 pattern, ≈ 8 ms of cold start. A DNS
  // name never contains ':', and digits and dots are all a name check could mistake for one.
  if (host.includes(':') || [...host].every((c) => c === '.' || (c >= '0' && c <= '9'))) {
    fail('host', NOT_AN_ADDRESS);
  }
  if (!isWords(host, '.')) fail('host', 'must be a DNS name or cluster ID');
  const isClusterId = host.length === 26 && !host.includes('.') && !host.includes('-');
  const region =
    nonEmptyString('region', given.region) ??
    (isClusterId ? undefined : regionFromHost(host)) ??
    (env.AWS_REGION || env.AWS_DEFAULT_REGION);
  if (!region) fail('region', 'is required for this host (or set AWS_REGION)');
  if (!isWords(region, '-')) fail('region', 'is invalid');
  if (isClusterId) host = `${host}.dsql.${region}.on.aws`;

  const hostaddr =
    nonEmptyString('hostaddr', given.hostaddr) ?? (env.DSQL_HOSTADDR || env.PGHOSTADDR || undefined);
  const user = nonEmptyString('user', given.user) ?? (env.PGUSER || DSQL_DEFAULTS.user);
  const concurrency = Number(env.AWS_LAMBDA_MAX_CONCURRENCY);
  const max =
    integerIn('max', given.max, 1, 100_000) ??
    (Number.isInteger(concurrency) && concurrency >= 1 ? concurrency : DSQL_DEFAULTS.max);

  const explicit = credentialsOf(given.credentials);
  if (explicit && given.profile !== undefined) fail('profile', 'conflicts with credentials');
  const profile = nonEmptyString('profile', given.profile);
  const credentialSource: CredentialSource =
    explicit ??
    (profile !== undefined
      ? { kind: 'profile', profile }
      : { kind: env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY ? 'environment' : 'default-chain' });

  const resolved: Record<string, unknown> = {
    host,
    hostaddr,
    region,
    user,
    database: nonEmptyString('database', given.database) ?? (env.PGDATABASE || DSQL_DEFAULTS.database),
    port:
      integerIn('port', given.port, 1, 65535) ??
      integerText('PGPORT', env.PGPORT || undefined, 1, 65535) ??
      DSQL_DEFAULTS.port,
    action: user === 'admin' ? 'DbConnectAdmin' : 'DbConnect',
    credentialSource,
    max,
    min: integerIn('min', given.min, 0, max) ?? DSQL_DEFAULTS.min,
    applicationName: applicationNameOf(nonEmptyString('applicationName', given.applicationName)),
    sslNegotiation: sslNegotiationOf('sslNegotiation', given.sslNegotiation) ?? DSQL_DEFAULTS.sslNegotiation,
    ca: caOf(given.ssl),
    pgOptions: {},
  };
  for (const [key, [min, maxValue]] of Object.entries(INTEGER_FIELDS)) {
    resolved[key] =
      integerIn(key, given[key], min, maxValue) ?? DSQL_DEFAULTS[key as keyof typeof INTEGER_FIELDS];
  }
  for (const [key, value] of Object.entries(given)) {
    if (!OWN_KEYS.has(key)) (resolved.pgOptions as Record<string, unknown>)[key] = value;
  }
  // Explicit credentials hold a secret: keep them out of JSON.stringify and console.log.
  Object.defineProperty(resolved, 'credentialSource', { enumerable: !explicit });
  return resolved as unknown as ResolvedDsqlConfig;
}
