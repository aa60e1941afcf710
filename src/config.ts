/**
 * Configuration: turns what the user gave (an object, a connection string, a bare host name or
 * cluster ID, the environment) into validated settings, synchronously and without I/O, so a bad
 * configuration fails at module scope with a {@link DsqlConfigError} naming the field. Messages
 * name the field and the rule, never a secret value.
 */
import type pg from 'pg';
import { DSQL_DEFAULTS } from './defaults.js';
import { DsqlConfigError } from './errors.js';
import type { RetryOptions } from './retry.js';

/** Version of this package, sent in `application_name` (a unit test checks it against package.json). */
export const PACKAGE_VERSION = '0.1.0';

/** An AWS identity, shaped like the AWS SDK's `AwsCredentialIdentity`. */
export interface AwsCredentialIdentity {
  /** AWS access key ID. */
  readonly accessKeyId: string;
  /** AWS secret access key. */
  readonly secretAccessKey: string;
  /** Session token of temporary credentials (always set inside Lambda). */
  readonly sessionToken?: string | undefined;
  /** When temporary credentials stop working; tokens signed with them stop working too. */
  readonly expiration?: Date | undefined;
}

/** A function returning credentials, like any provider from `@aws-sdk/credential-providers`. */
export type AwsCredentialIdentityProvider = () => Promise<AwsCredentialIdentity>;

/** pg options that pass through to pg untouched. */
type PgPassThrough =
  | 'keepAlive'
  | 'keepAliveInitialDelayMillis'
  | 'statement_timeout'
  | 'query_timeout'
  | 'lock_timeout'
  | 'idle_in_transaction_session_timeout'
  | 'types'
  | 'options'
  | 'client_encoding'
  | 'pipeline'
  | 'maxUses'
  | 'allowExitOnIdle'
  | 'log'
  | 'onConnect';
const PG_PASS_THROUGH: readonly PgPassThrough[] = [
  'keepAlive',
  'keepAliveInitialDelayMillis',
  'statement_timeout',
  'query_timeout',
  'lock_timeout',
  'idle_in_transaction_session_timeout',
  'types',
  'options',
  'client_encoding',
  'pipeline',
  'maxUses',
  'allowExitOnIdle',
  'log',
  'onConnect',
];

/**
 * How to reach an Aurora DSQL cluster and how to pool connections to it. Every field is optional
 * when the environment supplies it; defaults are in {@link DSQL_DEFAULTS}. Of pg's own options
 * only the ones picked here pass through (`allowExitOnIdle` defaults to `true`); any other key is
 * refused, so a typo (`credential:`) cannot go unnoticed.
 */
export interface DsqlConfig extends Pick<pg.PoolConfig, PgPassThrough> {
  /**
   * Cluster endpoint (`<id>.dsql.<region>.on.aws`), another DNS name of the cluster (then
   * `region` is needed), or a bare 26-character cluster ID. Default: `DSQL_ENDPOINT`, then `PGHOST`.
   */
  host?: string | undefined;
  /** AWS Region tokens are signed for. Default: from an `*.on.aws` host, then `AWS_REGION`, then `AWS_DEFAULT_REGION`. */
  region?: string | undefined;
  /** Database user; `admin` signs `DbConnectAdmin` tokens, any other `DbConnect`. Default: `PGUSER`, then `admin`. */
  user?: string | undefined;
  /** Database name. Default: `PGDATABASE`, then `postgres`. */
  database?: string | undefined;
  /** TCP port. Default: `PGPORT`, then `5432`. */
  port?: number | undefined;
  /** Shared-config profile to take credentials from (needs `@aws-sdk/credential-providers`). */
  profile?: string | undefined;
  /**
   * Credentials or a provider. Default: `profile` if given, else `AWS_ACCESS_KEY_ID`/
   * `AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` (what Lambda sets), else the AWS SDK's default chain.
   */
  credentials?: AwsCredentialIdentity | AwsCredentialIdentityProvider | undefined;
  /** Token lifetime, seconds, 1…604800. */
  tokenDurationSecs?: number | undefined;
  /** Maximum connections. Default: `AWS_LAMBDA_MAX_CONCURRENCY` when set, else `DSQL_DEFAULTS.max`. */
  max?: number | undefined;
  /** Minimum idle connections pg-pool keeps. */
  min?: number | undefined;
  /** Retire a connection this old, seconds, 1…3600 (DSQL closes connections at 60 minutes). */
  maxLifetimeSeconds?: number | undefined;
  /** Up to this many seconds are taken off each connection's lifetime at random; `0`: none. */
  maxLifetimeJitterSeconds?: number | undefined;
  /** pg-pool's idle timer, ms (`0` disables it). The wall-clock check at checkout is `maxIdleMillis`. */
  idleTimeoutMillis?: number | undefined;
  /** Budget of one checkout: waiting for a pooled client and connecting, admission retries included, ms. */
  connectionTimeoutMillis?: number | undefined;
  /** Discard a pooled connection idle longer than this at checkout, ms. */
  maxIdleMillis?: number | undefined;
  /** A pause longer than this since a connection's last use counts as a freeze/thaw, ms. */
  thawThresholdMillis?: number | undefined;
  /** Timeout of the liveness round trip on a reused connection after a thaw, ms. */
  validationTimeoutMillis?: number | undefined;
  /**
   * Your application's name, sent as `<name>:dsql-lambda/<version>` (cut to PostgreSQL's 63
   * bytes). pg's spelling `application_name` is accepted too. Default: `dsql-lambda/<version>`.
   */
  applicationName?: string | undefined;
  /** pg's spelling of {@link DsqlConfig.applicationName}. */
  application_name?: string | undefined;
  /** `'direct'`: TLS first (one round trip fewer); `'postgres'`: SSLRequest first. */
  sslNegotiation?: 'direct' | 'postgres' | undefined;
  /**
   * TLS is always on and fully verified; `{ ca }` replaces Node's trusted roots (as
   * `tls.connect`'s `ca` does), for the local endpoint or a TLS-terminating proxy.
   */
  ssl?: { ca?: string | Buffer | Array<string | Buffer> | undefined } | true | undefined;
  /**
   * Address to dial (IPv4, IPv6 or DNS name; a name needs Node ≥ 20.16) while `host` is still used
   * for SNI, the certificate check and signing (libpq's `hostaddr`). Default: `DSQL_HOSTADDR`, then `PGHOSTADDR`.
   */
  hostaddr?: string | undefined;
  /** A connection string to start from; the other fields override it. */
  connectionString?: string | undefined;
  /** Retry policy of this pool's retried transactions and statements (see `withRetry`). */
  retry?: RetryOptions | undefined;
}

/** IAM action a token grants: `DbConnectAdmin` for `admin`, `DbConnect` for any other user. */
export type DsqlAction = 'DbConnect' | 'DbConnectAdmin';

/** Where credentials come from, decided once when the configuration is resolved. */
export type CredentialSource =
  | { readonly kind: 'explicit'; readonly value: AwsCredentialIdentity | AwsCredentialIdentityProvider }
  | { readonly kind: 'profile'; readonly profile: string }
  | { readonly kind: 'environment' }
  | { readonly kind: 'default-chain' };

/** Settings after defaults, environment and validation: what the rest of the library reads. */
export interface ResolvedDsqlConfig {
  /** Full cluster host name, lower case: SNI, certificate check and signing. */
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
  /** IAM action the tokens grant. */
  readonly action: DsqlAction;
  /** Credential source (non-enumerable when explicit, so printing the configuration shows no secret). */
  readonly credentialSource: CredentialSource;
  /** Token lifetime, seconds. */
  readonly tokenDurationSecs: number;
  /** Pool size. */
  readonly max: number;
  /** Minimum idle connections. */
  readonly min: number;
  /** Connection lifetime, seconds. */
  readonly maxLifetimeSeconds: number;
  /** Random reduction of each connection's lifetime, up to this, seconds. */
  readonly maxLifetimeJitterSeconds: number;
  /** pg-pool's idle timer, ms. */
  readonly idleTimeoutMillis: number;
  /** Budget of one checkout, ms. */
  readonly connectionTimeoutMillis: number;
  /** Idle limit checked at checkout, ms. */
  readonly maxIdleMillis: number;
  /** Pause that counts as a freeze/thaw, ms. */
  readonly thawThresholdMillis: number;
  /** Timeout of the post-thaw liveness check, ms. */
  readonly validationTimeoutMillis: number;
  /** The `application_name` sent. */
  readonly applicationName: string;
  /** TLS negotiation. */
  readonly sslNegotiation: 'direct' | 'postgres';
  /** CAs to trust instead of Node's roots, if any. */
  readonly ca: string | Buffer | Array<string | Buffer> | undefined;
  /** The pool-level retry policy, as given (validated where it is used). */
  readonly retry: RetryOptions | undefined;
  /** pg options passed through untouched. */
  readonly pgOptions: Readonly<Record<string, unknown>>;
}

type Env = Readonly<Record<string, string | undefined>>;
const MAX_INT = 2 ** 31 - 1;
const NO_PASSWORD = 'not allowed: DSQL uses IAM tokens';
/** Integer fields, their ranges; defaults in {@link DSQL_DEFAULTS}. */
const INTEGER_FIELDS = {
  tokenDurationSecs: [1, 604800],
  maxLifetimeSeconds: [1, 3600],
  maxLifetimeJitterSeconds: [0, 3600],
  idleTimeoutMillis: [0, MAX_INT],
  connectionTimeoutMillis: [1, MAX_INT],
  maxIdleMillis: [1, MAX_INT],
  thawThresholdMillis: [0, MAX_INT],
  validationTimeoutMillis: [1, MAX_INT],
} as const;
const KNOWN_KEYS = new Set<string>([
  ...Object.keys(INTEGER_FIELDS),
  ...PG_PASS_THROUGH,
  ...['host', 'region', 'user', 'database', 'port', 'profile', 'credentials', 'max', 'min', 'retry'],
  ...['applicationName', 'application_name', 'sslNegotiation', 'ssl', 'hostaddr', 'connectionString'],
]);
/** Query parameters a connection string may carry (others are refused), and renamed fields. */
const QUERY_PARAMETERS = ['region', 'profile', 'tokenDurationSecs', 'sslnegotiation', 'hostaddr'];
QUERY_PARAMETERS.push('application_name', 'user', 'dbname', 'sslmode');
const RENAMED: Record<string, string> = { sslnegotiation: 'sslNegotiation', dbname: 'database' };

function fail(field: string, message: string): never {
  throw new DsqlConfigError(field, message);
}

/**
 * True when `text` is a DNS name: labels of 1…63 of `[a-z0-9-]` (lower case), 253 at most.
 * Hand-written: regular expressions compile on first use, which every cold start would pay.
 */
function isDnsName(text: string): boolean {
  if (text.length > 253) return false;
  for (const label of text.split('.')) {
    if (label === '' || label.length > 63) return false;
    for (let i = 0; i < label.length; i++) {
      const c = label.charCodeAt(i);
      if (!((c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 45)) return false;
    }
  }
  return true;
}

/** Dotted-quad IPv4 exactly as pg and libpq read it (no `127.1`, no leading zeros). */
function isIPv4(text: string): boolean {
  const parts = text.split('.');
  return parts.length === 4 && parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255);
}

function isAllDigitsAndDots(text: string): boolean {
  for (const c of text) if (c !== '.' && (c < '0' || c > '9')) return false;
  return true;
}

function text(field: string, value: unknown): string | undefined {
  if (value == null) return undefined;
  if (typeof value !== 'string' || value === '') fail(field, 'must be a non-empty string');
  // A NUL ends a startup-message field: what follows would be read as another parameter.
  if (value.includes('\0')) fail(field, 'must not contain NUL characters');
  return value;
}

function integerIn(field: string, value: unknown, min: number, max: number): number | undefined {
  if (value == null) return undefined;
  if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) {
    fail(field, `must be an integer from ${min} to ${max}`);
  }
  return value as number;
}

function integerText(field: string, value: string | undefined, min: number, max: number): number | undefined {
  return value === undefined
    ? undefined
    : integerIn(field, /^\d{1,9}$/.test(value) ? Number(value) : NaN, min, max);
}

function sslNegotiationOf(field: string, value: unknown): 'direct' | 'postgres' | undefined {
  if (value != null && value !== 'direct' && value !== 'postgres')
    fail(field, "must be 'direct' or 'postgres'");
  return value ?? undefined;
}

function decode(field: string, value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return fail(field, 'malformed percent-encoding');
  }
}

/**
 * Parses a `postgres://`, `postgresql://` or `dsql://` URL into a {@link DsqlConfig}: user, host,
 * port and database (percent-decoded), and the query parameters `region`, `profile`,
 * `tokenDurationSecs`, `sslnegotiation`, `hostaddr`, `application_name`, `user`, `dbname`,
 * `sslmode` (`require`, `verify-ca` or `verify-full`: verification is full regardless). A password
 * is refused; no message repeats any part of the string.
 * @throws {@link DsqlConfigError}
 * @example
 * parseConnectionString('dsql://admin@abc.dsql.us-east-1.on.aws/postgres?tokenDurationSecs=300');
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
    // The parser's error carries the whole input, password included: never chain it.
    return fail(field, 'is not a valid URL');
  }
  if (url.password !== '') fail('password', NO_PASSWORD);
  // `postgres://admin:1234/s3cr3t@host` parses as host `admin`, port 1234, path `/s3cr3t@host`:
  // an '@' after the authority means a password with a '/' in it, or a mangled string.
  if (url.pathname.includes('@') || url.search.includes('@'))
    fail('password', `${NO_PASSWORD} (or encode '@' as %40)`);
  const config: Record<string, unknown> = {};
  if (url.username) config.user = decode('user', url.username);
  if (url.hostname.startsWith('[')) fail('host', 'must be a DNS name (use hostaddr to dial an address)');
  if (url.hostname) config.host = decode('host', url.hostname);
  if (url.port) config.port = Number(url.port);
  const path = url.pathname.slice(1);
  if (path.includes('/')) fail('database', 'is invalid');
  if (path) config.database = decode('database', path);
  // By hand, not URLSearchParams: that turns '+' into a space, which libpq does not.
  for (const part of url.search.slice(1).split('&')) {
    if (!part) continue;
    const eq = part.includes('=') ? part.indexOf('=') : part.length;
    const key = decode(field, part.slice(0, eq));
    // Never repeated: a mangled URL can put part of a password here.
    if (!QUERY_PARAMETERS.includes(key)) fail(field, `unknown query parameter (known: ${QUERY_PARAMETERS})`);
    const value = decode(key, part.slice(eq + 1));
    if (value === '') fail(key, 'must not be empty');
    if (key === 'tokenDurationSecs') config[key] = integerText(key, value, 1, 604800);
    else if (key === 'sslnegotiation') config.sslNegotiation = sslNegotiationOf(key, value);
    else if (key === 'sslmode') {
      if (!['require', 'verify-ca', 'verify-full'].includes(value)) fail(key, 'must be verify-full');
    } else config[RENAMED[key] ?? key] = value;
  }
  return config as DsqlConfig;
}

/** A connection string, or a bare host name / cluster ID standing where one is expected. */
function fromString(field: string, value: string): DsqlConfig {
  if (typeof value !== 'string') fail(field, 'must be a string');
  if (value.includes('://')) return parseConnectionString(value);
  if (value !== '' && isDnsName(value.toLowerCase())) return { host: value };
  return fail(field, 'must be a postgres:// or dsql:// URL, a host name or a cluster ID');
}

/** Region named by a `*.dsql*.<region>.on.aws` host (the official connectors' pattern, without a RegExp). */
export function regionFromHost(host: string): string | undefined {
  const labels = host.toLowerCase().split('.');
  const n = labels.length;
  return n >= 5 && labels[n - 2] === 'on' && labels[n - 1] === 'aws' && labels[n - 4]?.startsWith('dsql')
    ? labels[n - 3] || undefined
    : undefined;
}

/**
 * PostgreSQL keeps the first 63 bytes after turning every byte other than printable ASCII into
 * `?`: the name is made printable ASCII here and cut so our suffix survives.
 */
function applicationNameOf(given: Record<string, unknown>): string {
  const suffix = `dsql-lambda/${PACKAGE_VERSION}`;
  if (given.applicationName != null && given.application_name != null) {
    fail('application_name', 'conflicts with applicationName');
  }
  const field = given.applicationName != null ? 'applicationName' : 'application_name';
  const name = text(field, given[field])?.trim();
  if (name === '') fail(field, 'must not be blank');
  return name === undefined
    ? suffix
    : `${name.replace(/[^ -~]/g, '?').slice(0, 62 - suffix.length)}:${suffix}`;
}

function caOf(value: unknown): ResolvedDsqlConfig['ca'] {
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
  return ssl.ca as ResolvedDsqlConfig['ca'];
}

function isValidExpiration(value: unknown): boolean {
  return value === undefined || (value instanceof Date && value.getTime() >= 0);
}

/** The explicit credential source, if credentials were given (shared with credentials.ts's check). */
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
      !isValidExpiration(c.expiration))
  ) {
    fail('credentials', 'must be an AWS identity or a provider function');
  }
  return { kind: 'explicit', value: value as AwsCredentialIdentity };
}

/** Address to dial: an IP address pg can use as it is, or a DNS name. */
function hostaddrOf(field: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const lower = value.toLowerCase();
  const ok = lower.includes(':')
    ? // Only here, for an IPv6 hostaddr: net.isIP's first call costs milliseconds of cold start.
      (process.getBuiltinModule?.('node:net').isIPv6(lower) ?? /^[0-9a-f:.]+$/.test(lower))
    : isAllDigitsAndDots(lower)
      ? isIPv4(lower)
      : isDnsName(lower);
  if (!ok) fail(field, 'must be an IPv4 or IPv6 address or a DNS name');
  return lower;
}

/**
 * Resolves a configuration: connection string or object, then the environment, then
 * {@link DSQL_DEFAULTS}; validates every field. Synchronous, no I/O.
 *
 * Environment read (below anything explicit): `DSQL_ENDPOINT` then `PGHOST`, `DSQL_HOSTADDR`
 * then `PGHOSTADDR`, `PGUSER`, `PGDATABASE`, `PGPORT`, `AWS_REGION` then `AWS_DEFAULT_REGION`,
 * `AWS_LAMBDA_MAX_CONCURRENCY` (default `max`); whether `AWS_ACCESS_KEY_ID` and
 * `AWS_SECRET_ACCESS_KEY` are set picks the credential source.
 * @param input A {@link DsqlConfig}, a connection string, a host name or cluster ID, or nothing.
 * @param env Environment to read. Default: `process.env`.
 * @throws {@link DsqlConfigError} naming the field at fault; never anything else.
 * @example
 * resolveConfig({ host: 'abcdefghijklmnopqrstuvwxyz', region: 'us-east-1' }).host;
 * // 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws'
 */
export function resolveConfig(
  input: DsqlConfig | string | undefined,
  env: Env = process.env,
): ResolvedDsqlConfig {
  const given: Record<string, unknown> = {};
  if (typeof input === 'string') Object.assign(given, fromString('connectionString', input));
  else if (input != null) {
    const proto = typeof input === 'object' ? Object.getPrototypeOf(input) : undefined;
    if (proto !== Object.prototype && proto !== null) {
      fail('config', 'must be a plain object or a connection string (for a URL object, pass its href)');
    }
    if (input.connectionString != null)
      Object.assign(given, fromString('connectionString', input.connectionString));
    for (const [key, value] of Object.entries(input)) {
      if (key === 'password') fail('password', NO_PASSWORD);
      if (!KNOWN_KEYS.has(key)) fail(key, 'is not a dsql-lambda or pg option');
      if (value !== undefined && key !== 'connectionString') given[key] = value;
    }
  }

  const hostText = text('host', given.host) ?? (env.DSQL_ENDPOINT || env.PGHOST);
  if (!hostText) fail('host', 'is required (or set DSQL_ENDPOINT)');
  let host = hostText.trim().toLowerCase();
  if (host.endsWith('.')) host = host.slice(0, -1);
  if (!isDnsName(host)) fail('host', 'must be a DNS name or cluster ID');
  // A cluster ID is 26 of [a-z0-9], possibly all digits; any other all-digit name is an address.
  const isClusterId = host.length === 26 && !host.includes('.') && !host.includes('-');
  if (!isClusterId && isAllDigitsAndDots(host))
    fail('host', 'must be a DNS name (use hostaddr to dial an address)');
  const region =
    text('region', given.region) ??
    (isClusterId ? undefined : regionFromHost(host)) ??
    (env.AWS_REGION || env.AWS_DEFAULT_REGION);
  if (!region) fail('region', 'is required for this host (or set AWS_REGION)');
  if (!isDnsName(region) || region.includes('.')) fail('region', 'is invalid');
  if (isClusterId) host = `${host}.dsql.${region}.on.aws`;

  const user = text('user', given.user) ?? (env.PGUSER || DSQL_DEFAULTS.user);
  const concurrency = Number(env.AWS_LAMBDA_MAX_CONCURRENCY);
  const max =
    integerIn('max', given.max, 1, 100_000) ??
    (Number.isInteger(concurrency) && concurrency >= 1 ? concurrency : DSQL_DEFAULTS.max);
  const explicit = credentialsOf(given.credentials);
  if (explicit && given.profile !== undefined) fail('profile', 'conflicts with credentials');
  const profile = text('profile', given.profile);
  const credentialSource: CredentialSource =
    explicit ??
    (profile !== undefined
      ? { kind: 'profile', profile }
      : { kind: env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY ? 'environment' : 'default-chain' });

  const resolved: Record<string, unknown> = {
    host,
    hostaddr: hostaddrOf(
      'hostaddr',
      text('hostaddr', given.hostaddr) ?? (env.DSQL_HOSTADDR || env.PGHOSTADDR || undefined),
    ),
    region,
    user,
    database: text('database', given.database) ?? (env.PGDATABASE || DSQL_DEFAULTS.database),
    port:
      integerIn('port', given.port, 1, 65535) ??
      integerText('PGPORT', env.PGPORT || undefined, 1, 65535) ??
      DSQL_DEFAULTS.port,
    action: user === 'admin' ? 'DbConnectAdmin' : 'DbConnect',
    credentialSource,
    max,
    min: integerIn('min', given.min, 0, max) ?? DSQL_DEFAULTS.min,
    applicationName: applicationNameOf(given),
    sslNegotiation: sslNegotiationOf('sslNegotiation', given.sslNegotiation) ?? DSQL_DEFAULTS.sslNegotiation,
    ca: caOf(given.ssl),
    retry: given.retry,
    pgOptions: Object.fromEntries(
      PG_PASS_THROUGH.filter((k) => given[k] !== undefined).map((k) => [k, given[k]]),
    ),
  };
  for (const [key, [min, maxValue]] of Object.entries(INTEGER_FIELDS)) {
    resolved[key] =
      integerIn(key, given[key], min, maxValue) ?? DSQL_DEFAULTS[key as keyof typeof INTEGER_FIELDS];
  }
  Object.defineProperty(resolved, 'credentialSource', { enumerable: !explicit });
  return resolved as unknown as ResolvedDsqlConfig;
}
