/**
 * Configuration: turns an object, a connection string, a bare host name or cluster ID, and the
 * environment into validated settings, synchronously and without I/O, so a bad configuration
 * fails at module scope with a {@link DsqlConfigError} naming the field (never a secret value).
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

/** pg options that pass through untouched; any other key is refused. */
const PG_OPTIONS = [
  ...['keepAlive', 'keepAliveInitialDelayMillis', 'statement_timeout', 'query_timeout', 'lock_timeout'],
  ...[
    'idle_in_transaction_session_timeout',
    'types',
    'options',
    'client_encoding',
    'maxUses',
    'allowExitOnIdle',
    'log',
  ],
] as const;

/**
 * How to reach an Aurora DSQL cluster and pool connections to it. Every field is optional when
 * the environment supplies it; defaults are in `DSQL_DEFAULTS`. Of pg's own options only the
 * ones picked here pass through (`allowExitOnIdle` defaults to `true`); any other key is refused,
 * so a typo (`credential:`) cannot go unnoticed.
 */
export interface DsqlConfig extends Pick<pg.PoolConfig, (typeof PG_OPTIONS)[number]> {
  /**
   * Cluster endpoint (`<id>.dsql.<region>.on.aws`), another DNS name of it (then `region` is
   * needed), or a bare 26-character cluster ID. Default: `DSQL_ENDPOINT`, then `PGHOST`.
   */
  host?: string | undefined;
  /** AWS Region tokens are signed for. Default: from an `*.on.aws` host, then `AWS_REGION`, `AWS_DEFAULT_REGION`. */
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
  /** Up to this many seconds come off each connection's lifetime at random; `0`: none. */
  maxLifetimeJitterSeconds?: number | undefined;
  /** pg-pool's idle timer, ms (`0`: off); the wall-clock check at checkout is `maxIdleMillis`. */
  idleTimeoutMillis?: number | undefined;
  /** Budget of one checkout: waiting for a pooled client and connecting, retries included, ms. */
  connectionTimeoutMillis?: number | undefined;
  /** Discard a pooled connection idle longer than this at checkout, ms. */
  maxIdleMillis?: number | undefined;
  /** A pause longer than this since a connection's last use counts as a freeze/thaw, ms. */
  thawThresholdMillis?: number | undefined;
  /** Timeout of the liveness round trip on a reused connection after a thaw, ms. */
  validationTimeoutMillis?: number | undefined;
  /** Your application's name, sent as `<name>:dsql-lambda/<version>` (cut to 63 bytes). Default: `dsql-lambda/<version>`. */
  applicationName?: string | undefined;
  /** pg's spelling of `applicationName`. */
  application_name?: string | undefined;
  /** `'direct'`: TLS first (one round trip fewer); `'postgres'`: SSLRequest first. */
  sslNegotiation?: 'direct' | 'postgres' | undefined;
  /** TLS is always on and fully verified; `{ ca }` replaces Node's trusted roots (local endpoint, proxies). */
  ssl?: { ca?: string | Buffer | Array<string | Buffer> | undefined } | true | undefined;
  /**
   * Address to dial (IPv4, IPv6 or a DNS name, which needs Node ≥ 20.16) while `host` names SNI,
   * the certificate and the token (libpq's `hostaddr`). Default: `DSQL_HOSTADDR`, then `PGHOSTADDR`.
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

/** Integer settings, their ranges; defaults in `DSQL_DEFAULTS`. */
const INTEGERS = {
  tokenDurationSecs: [1, 604800],
  maxLifetimeSeconds: [1, 3600],
  maxLifetimeJitterSeconds: [0, 3600],
  idleTimeoutMillis: [0, 2 ** 31 - 1],
  connectionTimeoutMillis: [1, 2 ** 31 - 1],
  maxIdleMillis: [1, 2 ** 31 - 1],
  thawThresholdMillis: [0, 2 ** 31 - 1],
  validationTimeoutMillis: [1, 2 ** 31 - 1],
} as const;

/**
 * Settings after defaults, environment and validation, what the rest of the library reads: the
 * {@link DsqlConfig} fields resolved (`host` in full, lower case), plus the IAM `action`, the
 * `credentialSource` (non-enumerable when explicit, so printing it shows no secret), the CAs
 * (`ca`) and the pass-through `pgOptions`.
 */
export interface ResolvedDsqlConfig
  extends Readonly<Record<keyof typeof INTEGERS | 'port' | 'max' | 'min', number>>,
    Readonly<Record<'host' | 'region' | 'user' | 'database' | 'applicationName', string>> {
  readonly hostaddr: string | undefined;
  readonly action: DsqlAction;
  readonly credentialSource: CredentialSource;
  readonly sslNegotiation: 'direct' | 'postgres';
  readonly ca: string | Buffer | Array<string | Buffer> | undefined;
  readonly retry: RetryOptions | undefined;
  readonly pgOptions: Readonly<Record<string, unknown>>;
}

type Env = Readonly<Record<string, string | undefined>>;
const KNOWN = new Set<string>([
  ...Object.keys(INTEGERS),
  ...PG_OPTIONS,
  ...'host region user database port profile credentials max min retry sslNegotiation ssl hostaddr'.split(
    ' ',
  ),
  ...['applicationName', 'application_name', 'connectionString'],
]);
/** Query parameters a connection string may carry; any other is refused (a typo must not pass). */
const QUERY =
  'region profile tokenDurationSecs sslnegotiation hostaddr application_name user dbname sslmode'.split(' ');
const NO_PASSWORD = 'not allowed: DSQL uses IAM tokens';

function fail(field: string, message: string): never {
  throw new DsqlConfigError(field, message);
}

/**
 * Labels of 1…63 of `[a-z0-9-]`, 253 characters at most. By hand: a regular expression compiles
 * on first use, and this runs on every cold start.
 */
function isDnsName(name: string): boolean {
  return (
    name.length <= 253 &&
    name.split('.').every((label) => {
      for (let i = 0; i < label.length; i++) {
        const c = label.charCodeAt(i);
        if (!((c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 45)) return false;
      }
      return label.length > 0 && label.length < 64;
    })
  );
}

const isDigitsAndDots = (s: string) => [...s].every((c) => c === '.' || (c >= '0' && c <= '9'));

function text(field: string, value: unknown): string | undefined {
  if (value == null) return undefined;
  if (typeof value !== 'string' || !value) fail(field, 'must be a non-empty string');
  // A NUL ends a startup-message field: what follows would be read as another parameter.
  if (value.includes('\0')) fail(field, 'must not contain NUL');
  return value;
}

/** A decimal integer from text (environment, query), strictly. */
const fromText = (value: string | undefined) =>
  value === undefined || /^\d{1,9}$/.test(value) ? value && Number(value) : NaN;

function integer(field: string, value: unknown, min: number, max: number): number | undefined {
  if (value != null && !(Number.isInteger(value) && (value as number) >= min && (value as number) <= max)) {
    fail(field, `must be an integer from ${min} to ${max}`);
  }
  return (value ?? undefined) as number | undefined;
}

function decode(field: string, value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return fail(field, 'bad percent-encoding');
  }
}

/**
 * Parses a `postgres://`, `postgresql://` or `dsql://` URL: user, host, port and database, and
 * the query parameters `region`, `profile`, `tokenDurationSecs`, `sslnegotiation`, `hostaddr`,
 * `application_name`, `user`, `dbname`, `sslmode` (`require`, `verify-ca` or `verify-full`:
 * verification is full regardless). A password is refused; no message repeats the string.
 * @throws {@link DsqlConfigError}
 * @example
 * parseConnectionString('dsql://admin@abc.dsql.us-east-1.on.aws/postgres?tokenDurationSecs=300');
 */
export function parseConnectionString(connectionString: string): DsqlConfig {
  const field = 'connectionString';
  let url: URL | undefined;
  try {
    if (/^(postgres|postgresql|dsql):\/\//i.test(connectionString)) url = new URL(connectionString);
  } catch {}
  // (The URL parser's error would carry the whole input, password included: never chained.)
  if (!url) return fail(field, 'must be a postgres:// or dsql:// URL');
  // `postgres://admin:1234/s3cr3t@host` parses as host admin, port 1234, path `/s3cr3t@host`.
  if (url.password || (url.pathname + url.search).includes('@')) fail('password', NO_PASSWORD);
  if (url.hostname.startsWith('[')) fail('host', 'must be a DNS name (use hostaddr for an address)');
  const path = url.pathname.slice(1);
  if (path.includes('/')) fail('database', 'is invalid');
  const config: Record<string, unknown> = {
    user: url.username ? decode('user', url.username) : undefined,
    host: url.hostname ? decode('host', url.hostname) : undefined,
    port: url.port ? Number(url.port) : undefined,
    database: path ? decode('database', path) : undefined,
  };
  // By hand, not URLSearchParams: that turns '+' into a space, which libpq does not.
  for (const part of url.search.slice(1).split('&').filter(Boolean)) {
    const [rawKey = '', ...rest] = part.split('=');
    const key = decode(field, rawKey);
    if (!QUERY.includes(key)) fail(field, `unknown query parameter (known: ${QUERY})`);
    const value = decode(key, rest.join('='));
    if (!value) fail(key, 'must not be empty');
    if (key === 'sslmode') {
      if (!['require', 'verify-ca', 'verify-full'].includes(value)) fail(key, 'must be verify-full');
    } else if (key === 'sslnegotiation') {
      if (value !== 'direct' && value !== 'postgres') fail(key, "must be 'direct' or 'postgres'");
      config.sslNegotiation = value;
    } else {
      config[key === 'dbname' ? 'database' : key] =
        key === 'tokenDurationSecs' ? integer(key, fromText(value), 1, 604800) : value;
    }
  }
  for (const key of Object.keys(config)) if (config[key] === undefined) delete config[key];
  return config as DsqlConfig;
}

/** Region named by a `*.dsql*.<region>.on.aws` host (the official connectors' pattern, without a RegExp). */
export function regionFromHost(host: string): string | undefined {
  const l = host.toLowerCase().split('.');
  const n = l.length;
  return n > 4 && l[n - 2] === 'on' && l[n - 1] === 'aws' && l[n - 4]?.startsWith('dsql')
    ? l[n - 3] || undefined
    : undefined;
}

/** True for a usable AWS identity: a key pair, a string session token if any, a valid `expiration` if any. */
export function isIdentity(value: unknown): value is AwsCredentialIdentity {
  const c = value as Record<string, unknown> | null | undefined;
  const e = c?.expiration;
  return (
    typeof c?.accessKeyId === 'string' &&
    typeof c.secretAccessKey === 'string' &&
    !!c.accessKeyId &&
    !!c.secretAccessKey &&
    ['string', 'undefined'].includes(typeof c.sessionToken) &&
    (e === undefined || (e instanceof Date && e.getTime() >= 0))
  );
}

function credentialsOf(value: unknown): CredentialSource | undefined {
  if (value == null) return undefined;
  if (typeof value !== 'function' && !isIdentity(value))
    fail('credentials', 'must be an AWS identity or a provider');
  return { kind: 'explicit', value: value as AwsCredentialIdentity };
}

function caOf(ssl: unknown): ResolvedDsqlConfig['ca'] {
  if (ssl == null || ssl === true) return undefined;
  const { ca, rejectUnauthorized, ...rest } = (typeof ssl === 'object' ? ssl : { x: 1 }) as Record<
    string,
    unknown
  >;
  if (rejectUnauthorized === false || Object.keys(rest).length)
    fail('ssl', 'is always verified; only { ca } may be set');
  if (![ca ?? ''].flat().every((c) => typeof c === 'string' || Buffer.isBuffer(c)))
    fail('ssl.ca', 'must be PEM');
  return ca as ResolvedDsqlConfig['ca'];
}

/** An IPv4 or IPv6 address pg dials as it is, or a DNS name. */
function hostaddrOf(value: string | undefined): string | undefined {
  const a = value?.toLowerCase();
  if (a === undefined) return undefined;
  const ok = a.includes(':')
    ? // Only for an IPv6 hostaddr: net.isIP's first call costs milliseconds of cold start.
      (process.getBuiltinModule?.('node:net').isIPv6(a) ?? true)
    : isDigitsAndDots(a)
      ? a.split('.').length === 4 &&
        a.split('.').every((p) => p && Number(p) < 256 && String(Number(p)) === p)
      : isDnsName(a);
  return ok ? a : fail('hostaddr', 'must be an IP address or a DNS name');
}

/**
 * Resolves a configuration: connection string or object, then the environment (`DSQL_ENDPOINT`
 * then `PGHOST`, `DSQL_HOSTADDR` then `PGHOSTADDR`, `PGUSER`, `PGDATABASE`, `PGPORT`,
 * `AWS_REGION` then `AWS_DEFAULT_REGION`, `AWS_LAMBDA_MAX_CONCURRENCY`; whether
 * `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` are set picks the credential source), then
 * `DSQL_DEFAULTS`. Synchronous, no I/O.
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
  /** A connection string, or a bare host name or cluster ID standing where one goes. */
  const fromString = (value: unknown): DsqlConfig =>
    typeof value === 'string' && !value.includes('://') && isDnsName(value.toLowerCase())
      ? { host: value }
      : parseConnectionString(value as string);
  const proto = input != null && typeof input === 'object' && Object.getPrototypeOf(input);
  if (input != null && typeof input !== 'string' && proto !== Object.prototype && proto !== null) {
    fail('config', 'must be a plain object or a string (for a URL: its href)');
  }
  const object = (typeof input === 'object' && input) || {};
  const given: Record<string, unknown> = {
    ...(typeof input === 'string' && fromString(input)),
    ...(object.connectionString != null && fromString(object.connectionString)),
  };
  for (const [key, value] of Object.entries(object)) {
    if (key === 'password') fail(key, NO_PASSWORD);
    if (!KNOWN.has(key)) fail(key, 'is not a dsql-lambda or pg option');
    if (value !== undefined && key !== 'connectionString') given[key] = value;
  }

  let host = (
    text('host', given.host) ??
    (env.DSQL_ENDPOINT || env.PGHOST) ??
    fail('host', 'is required (or set DSQL_ENDPOINT)')
  )
    .trim()
    .toLowerCase();
  if (host.endsWith('.')) host = host.slice(0, -1);
  // A cluster ID is 26 of [a-z0-9], possibly all digits; any other all-digit name is an address.
  const isClusterId = host.length === 26 && !host.includes('.') && !host.includes('-');
  if (!isDnsName(host) || (!isClusterId && isDigitsAndDots(host)))
    fail('host', 'must be a DNS name or cluster ID');
  const region =
    text('region', given.region) ??
    (isClusterId ? undefined : regionFromHost(host)) ??
    (env.AWS_REGION ||
      env.AWS_DEFAULT_REGION ||
      fail('region', 'is required for this host (or set AWS_REGION)'));
  if (!isDnsName(region) || region.includes('.')) fail('region', 'is invalid');
  if (isClusterId) host = `${host}.dsql.${region}.on.aws`;

  const user = text('user', given.user) ?? (env.PGUSER || DSQL_DEFAULTS.user);
  const concurrency = Number(env.AWS_LAMBDA_MAX_CONCURRENCY);
  const max =
    integer('max', given.max, 1, 100_000) ??
    (Number.isInteger(concurrency) && concurrency > 0 ? concurrency : DSQL_DEFAULTS.max);
  const explicit = credentialsOf(given.credentials);
  if (explicit && given.profile !== undefined) fail('profile', 'conflicts with credentials');
  const profile = text('profile', given.profile);
  if (given.applicationName != null && given.application_name != null)
    fail('application_name', 'conflicts with applicationName');
  const nameField = given.applicationName != null ? 'applicationName' : 'application_name';
  const name = text(nameField, given[nameField])?.trim();
  if (name === '') fail(nameField, 'must not be blank');
  // PostgreSQL keeps 63 bytes after turning every byte but printable ASCII into '?': keep our suffix.
  const suffix = `dsql-lambda/${PACKAGE_VERSION}`;
  const negotiation = given.sslNegotiation ?? DSQL_DEFAULTS.sslNegotiation;
  if (negotiation !== 'direct' && negotiation !== 'postgres')
    fail('sslNegotiation', "must be 'direct' or 'postgres'");

  const resolved: Record<string, unknown> = {
    host,
    hostaddr: hostaddrOf(
      text('hostaddr', given.hostaddr) ?? (env.DSQL_HOSTADDR || env.PGHOSTADDR || undefined),
    ),
    region,
    user,
    database: text('database', given.database) ?? (env.PGDATABASE || DSQL_DEFAULTS.database),
    port:
      integer('port', given.port, 1, 65535) ??
      integer('PGPORT', fromText(env.PGPORT || undefined), 1, 65535) ??
      DSQL_DEFAULTS.port,
    action: user === 'admin' ? 'DbConnectAdmin' : 'DbConnect',
    credentialSource: explicit ?? {
      kind:
        profile !== undefined
          ? 'profile'
          : env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
            ? 'environment'
            : 'default-chain',
      ...(profile !== undefined && { profile }),
    },
    max,
    min: integer('min', given.min, 0, max) ?? DSQL_DEFAULTS.min,
    applicationName:
      name === undefined ? suffix : `${name.replace(/[^ -~]/g, '?').slice(0, 62 - suffix.length)}:${suffix}`,
    sslNegotiation: negotiation,
    ca: caOf(given.ssl),
    retry: given.retry,
    pgOptions: Object.fromEntries(PG_OPTIONS.filter((k) => given[k] !== undefined).map((k) => [k, given[k]])),
  };
  for (const [key, [min, top]] of Object.entries(INTEGERS)) {
    resolved[key] = integer(key, given[key], min, top) ?? DSQL_DEFAULTS[key as keyof typeof INTEGERS];
  }
  // Explicit credentials hold a secret: keep them out of JSON.stringify and console.log.
  Object.defineProperty(resolved, 'credentialSource', { enumerable: !explicit });
  return resolved as unknown as ResolvedDsqlConfig;
}
