/**
 * Configuration: an object, a connection string, a host name or cluster ID, and the environment become
 * validated settings without I/O; a mistake throws a {@link DsqlConfigError} naming the field, never a secret.
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

/**
 * How to reach an Aurora DSQL cluster and pool connections to it. Of pg's options only those picked pass
 * through (`allowExitOnIdle`: default `true`); any other key is refused, so a typo (`credential:`) is seen.
 */
export interface DsqlConfig extends Pick<pg.PoolConfig, KeyOf<PgKind>> {
  /** Endpoint, another DNS name of it (give `region`) or a cluster ID. Default: `DSQL_ENDPOINT`, `PGHOST`. */
  host?: string | undefined;
  /** Region tokens are signed for. Default: from an `*.on.aws` host, `AWS_REGION`, `AWS_DEFAULT_REGION`. */
  region?: string | undefined;
  /** Database user; `admin` signs `DbConnectAdmin` tokens, others `DbConnect`. Default: `PGUSER`, `admin`. */
  user?: string | undefined;
  /** Database name. Default: `PGDATABASE`, then `postgres`. */
  database?: string | undefined;
  /** TCP port. Default: `PGPORT`, then `5432`. */
  port?: number | undefined;
  /** Shared-config profile of the credentials (needs `@aws-sdk/credential-providers`). Default: none. */
  profile?: string | undefined;
  /** Credentials or a provider. Default: `profile`, else `AWS_ACCESS_KEY_ID`…, else the SDK's chain. */
  credentials?: AwsCredentialIdentity | AwsCredentialIdentityProvider | undefined;
  /** Token lifetime, seconds, 1…604800. Default: `900`. */
  tokenDurationSecs?: number | undefined;
  /** Maximum connections. Default: `AWS_LAMBDA_MAX_CONCURRENCY` when set, else `4`. */
  max?: number | undefined;
  /** Minimum idle connections pg-pool keeps, 0…`max`. Default: `0`. */
  min?: number | undefined;
  /** Retire a connection this old, seconds, 1…3600 (DSQL closes it at 60 minutes). Default: `3300`. */
  maxLifetimeSeconds?: number | undefined;
  /** Up to this much (at most half the lifetime) comes off each lifetime at random, seconds. Default: `300`. */
  maxLifetimeJitterSeconds?: number | undefined;
  /** pg-pool's idle timer, ms (`0`: off); the wall-clock check is `maxIdleMillis`. Default: `300000`. */
  idleTimeoutMillis?: number | undefined;
  /** Budget of one checkout: waiting for a client and connecting, retries included, ms. Default: `10000`. */
  connectionTimeoutMillis?: number | undefined;
  /** Discard a pooled connection idle longer than this at checkout, ms. Default: `300000`. */
  maxIdleMillis?: number | undefined;
  /** A longer pause since a connection's last use counts as a freeze/thaw, ms. Default: `5000`. */
  thawThresholdMillis?: number | undefined;
  /** Timeout of the liveness round trip on a reused connection after a thaw, ms. Default: `1000`. */
  validationTimeoutMillis?: number | undefined;
  /** Sent as `<name>:dsql-lambda/<version>`, cut to 63 bytes. Default: `dsql-lambda/<version>`. */
  applicationName?: string | undefined;
  /** pg's spelling of `applicationName` (give one of the two). Default: none. */
  application_name?: string | undefined;
  /** `'direct'`: TLS first (one round trip fewer); `'postgres'`: SSLRequest first. Default: `'direct'`. */
  sslNegotiation?: 'direct' | 'postgres' | undefined;
  /** TLS is always on and fully verified; `{ ca }` replaces Node's trusted roots. Default: Node's. */
  ssl?: { ca?: string | Buffer | Array<string | Buffer> | undefined } | true | undefined;
  /** Address to dial (an IP, or a DNS name on Node ≥ 20.16). Default: `DSQL_HOSTADDR`, `PGHOSTADDR`. */
  hostaddr?: string | undefined;
  /** A connection string to start from; the other fields override it. Default: none. */
  connectionString?: string | undefined;
  /** Policy of this pool's retried transactions and statements. Default: `DSQL_DEFAULTS.retry`. */
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

/**
 * The {@link DsqlConfig} fields resolved (`host` in full, lower case), plus the IAM `action`, the
 * `credentialSource` (non-enumerable when explicit: printing it shows no secret) and `pgOptions`.
 */
export interface ResolvedDsqlConfig
  extends Readonly<Record<Exclude<KeyOf<number>, KeyOf<0>>, number>>,
    Readonly<Record<'host' | 'region' | 'user' | 'database' | 'applicationName', string>> {
  readonly hostaddr: string | undefined;
  readonly action: DsqlAction;
  readonly credentialSource: CredentialSource;
  readonly sslNegotiation: 'direct' | 'postgres';
  readonly ca: string | Buffer | Array<string | Buffer> | undefined;
  readonly retry: RetryOptions | undefined;
  readonly pgOptions: Readonly<Record<string, unknown>>;
}

const M = 2 ** 31 - 1;
/**
 * Every key a configuration may have, and how it is checked: `''` text, `n` an integer 1…n, `-n`
 * one 0…n (both defaulting to `DSQL_DEFAULTS[key]`), a `typeof` a pg option passed through, `0` own checks.
 */
// biome-ignore format: a table, one kind per row
const KEYS = {
  host: '', region: '', user: '', database: '', profile: '', hostaddr: '', applicationName: '',
  application_name: '', sslNegotiation: '',
  port: 65535, max: 1e5, min: -1e5, tokenDurationSecs: 604800, maxLifetimeSeconds: 3600,
  maxLifetimeJitterSeconds: -3600, idleTimeoutMillis: -M, connectionTimeoutMillis: M, maxIdleMillis: M,
  thawThresholdMillis: -M, validationTimeoutMillis: M,
  keepAlive: 'boolean', keepAliveInitialDelayMillis: 'number', statement_timeout: 'number', query_timeout: 'number',
  lock_timeout: 'number', idle_in_transaction_session_timeout: 'number', types: 'object', options: 'string',
  client_encoding: 'string', maxUses: 'number', allowExitOnIdle: 'boolean', log: 'function',
  credentials: 0, ssl: 0, retry: 0, connectionString: 0,
} as const;
type PgKind = 'boolean' | 'number' | 'string' | 'object' | 'function';
type KeyOf<Kind> = { [K in keyof typeof KEYS]: (typeof KEYS)[K] extends Kind ? K : never }[keyof typeof KEYS];
/** What a connection string's query may set; `dbname`, `sslnegotiation` stand for `database`, `sslNegotiation`. */
const QUERY = 'region profile tokenDurationSecs sslnegotiation hostaddr application_name user dbname sslmode';
const NO_PASSWORD = 'absent: DSQL signs in with IAM tokens';
const RETRY = 'maxAttempts baseDelayMs maxDelayMs deadline signal onRetry'.split(' ');

/** The one message template: `<field>: must be <what>`. */
function mustBe(field: string, what: string): never {
  throw new DsqlConfigError(field, `must be ${what}`);
}
// (Character scans, not regular expressions: V8 compiles each expression at its first use, at init.)
const LDH = 'abcdefghijklmnopqrstuvwxyz0123456789-';
const all = (s: string, chars: string) => [...s].every((c) => chars.includes(c));
/** Labels of 1…63 of `[a-z0-9-]`, 253 characters at most. */
const isDnsName = (s: string) =>
  s.length < 254 && s.split('.').every((l) => l && l.length < 64 && all(l, LDH));
const isNumeric = (s: string) => all(s, '0123456789.');
/** An integer written in text (environment, query): 1…9 digits only, else NaN, which no range takes. */
const num = (s = '') => (s && s.length < 10 && all(s, LDH.slice(26, 36)) ? +s : NaN);

/** `read()`, or a {@link DsqlConfigError} naming `field` when reading the user's object throws (a getter, a Proxy trap): never its message, which may hold a secret. */
function readable<T>(field: string, read: () => T, what = 'readable'): T {
  try {
    return read();
  } catch (err) {
    throw err instanceof DsqlConfigError ? err : new DsqlConfigError(field, `must be ${what}`);
  }
}
const decode = (f: string, s: string) => readable(f, () => decodeURIComponent(s), 'validly percent-encoded');
export const checkRetry = (retry: unknown) =>
  readable('retry', () => {
    if (retry != null && (typeof retry !== 'object' || Object.keys(retry).some((k) => !RETRY.includes(k))))
      mustBe('retry', `an object of ${RETRY.join(', ')}`);
  });
function int(field: string, value: unknown, bound: number): number | undefined {
  const [min, max] = bound < 0 ? [0, -bound] : [1, bound];
  const n = value as number | undefined;
  if (n == null || (Number.isInteger(n) && n >= min && n <= max)) return n;
  return mustBe(field, `an integer from ${min} to ${max}`);
}

/** A `postgres://`, `postgresql://` or `dsql://` URL (or a bare host name) as raw keys; no message repeats it. */
function fromString(s: unknown): Record<string, unknown> {
  const F = 'connectionString';
  const bad = () => mustBe(F, 'a postgres:// or dsql:// URL');
  if (typeof s !== 'string') return bad();
  if (!/^(postgres(ql)?|dsql):\/\//i.test(s)) return isDnsName(s.toLowerCase()) ? { host: s } : bad();
  // (Not `new URL` in a try: its error would carry the whole input, password included.)
  const { username, password, hostname, port, pathname, search, hash } = URL.canParse(s) ? new URL(s) : bad();
  // `postgres://admin:1234/s3cr3t@host` parses as host admin, port 1234, path `/s3cr3t@host` (or `#s3cr3t@host`).
  if (password || (pathname + search + hash).includes('@')) mustBe('password', NO_PASSWORD);
  const path = pathname.slice(1);
  if (path.includes('/')) mustBe('database', 'one path segment');
  const given: Record<string, unknown> = {};
  if (port) given.port = +port;
  if (username) given.user = decode('user', username);
  if (hostname) given.host = decode('host', hostname);
  if (path) given.database = decode('database', path);
  // By hand, not URLSearchParams: that turns '+' into a space, which libpq does not.
  for (const part of search.slice(1).split('&').filter(Boolean)) {
    const [rawKey, ...rest] = part.split('=') as [string, ...string[]];
    let key = decode(F, rawKey);
    if (!QUERY.split(' ').includes(key)) mustBe(F, `a URL whose query sets only ${QUERY}`);
    const value = decode(key, rest.join('='));
    key = { dbname: 'database', sslnegotiation: 'sslNegotiation' }[key] ?? key;
    if (key !== 'sslmode') given[key] = (KEYS as Record<string, unknown>)[key] ? num(value) : value;
    else if (!/^(require|verify-(ca|full))$/.test(value)) mustBe(key, 'require or verify-*');
  }
  return given;
}

/** True for a usable AWS identity: a key pair, a string session token if any, a valid `expiration` if any. */
export function isIdentity(value: unknown): value is AwsCredentialIdentity {
  try {
    const { accessKeyId: a, secretAccessKey: s, sessionToken: t, expiration: e } = Object(value);
    const keys =
      [a, s].every((x) => x && typeof x === 'string') && (t === undefined || typeof t === 'string');
    return keys && (e === undefined || (e instanceof Date && +e >= 0));
  } catch {
    return false; // a getter or Proxy trap that throws
  }
}

/**
 * Resolves a configuration, synchronously and without I/O: the object's keys over the connection string's
 * over the environment's (`DSQL_ENDPOINT`/`PGHOST`, `DSQL_HOSTADDR`/`PGHOSTADDR`, `PGUSER`, `PGDATABASE`,
 * `PGPORT`, `AWS_LAMBDA_MAX_CONCURRENCY`) over `DSQL_DEFAULTS`; the region is `region`, the host's or
 * `AWS_REGION`/`AWS_DEFAULT_REGION`; credentials: `credentials`, `profile`, the environment's key pair
 * (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), the SDK's default chain.
 * @param input A {@link DsqlConfig}, a connection string, a host name or cluster ID, or nothing.
 * @param env Environment to read. Default: `process.env`.
 * @throws {@link DsqlConfigError} naming the field at fault; never anything else.
 * @example
 * resolveConfig({ host: 'abcdefghijklmnopqrstuvwxyz', region: 'us-east-1' }).host; // '<id>.dsql.us-east-1.on.aws'
 */
export function resolveConfig(
  input: DsqlConfig | string | undefined,
  env: Readonly<Record<string, string | undefined>> = process.env,
): ResolvedDsqlConfig {
  const object = (input == null || typeof input === 'string' ? {} : input) as Record<string, unknown>;
  const entries = readable('config', () => {
    // A URL or a Map has no own keys: taken as `{}`, it would silently mean "DSQL_ENDPOINT".
    if (![Object.prototype, null].includes(Object.getPrototypeOf(object)))
      mustBe('config', 'a plain object or a string');
    return Object.keys(object).map((key) => [key, readable(key, () => object[key])] as const);
  });
  const s = typeof input === 'string' ? input : Object.fromEntries(entries).connectionString;
  const given: Record<string, unknown> = {
    host: env.DSQL_ENDPOINT || env.PGHOST || undefined,
    hostaddr: env.DSQL_HOSTADDR || env.PGHOSTADDR || undefined,
    user: env.PGUSER || undefined,
    database: env.PGDATABASE || undefined,
    max: num(env.AWS_LAMBDA_MAX_CONCURRENCY) || undefined,
  };
  for (const [key, value] of [...Object.entries(s == null ? {} : fromString(s)), ...entries]) {
    if (!Object.hasOwn(KEYS, key)) mustBe(key, key === 'password' ? NO_PASSWORD : 'a known option');
    if (value !== undefined) given[key] = value;
  }
  if (given.port === undefined && env.PGPORT) given.port = int('PGPORT', num(env.PGPORT), 65535);
  const r: Record<string, unknown> = {};
  const pgOptions: Record<string, unknown> = {};
  for (const [key, k] of Object.entries(KEYS)) {
    const value = given[key];
    // A NUL ends a startup-message field: what follows would be read as another parameter.
    if (k === '' && value != null && (typeof value !== 'string' || !value.trim() || value.includes('\0')))
      mustBe(key, 'a non-blank string without NUL');
    if (typeof k === 'string' && k) {
      // pg's type (a wrong one fails later, inside pg); a NUL would inject a startup parameter; `false`: none.
      if (k === 'number') int(key, value === false ? 0 : value, -M);
      else if (
        value !== undefined &&
        (typeof value !== k || (k === 'string' && (value as string).includes('\0')))
      )
        mustBe(key, `a ${k}${k === 'string' ? ' without NUL' : ''}`);
      if (value !== undefined) pgOptions[key] = value;
    } else if (k !== 0) r[key] = (k ? int(key, value, k as number) : value) ?? DSQL_DEFAULTS[key as 'port'];
  }
  const dotted = (r.host as string | undefined)?.trim().toLowerCase() ?? '';
  const host = dotted.endsWith('.') ? dotted.slice(0, -1) : dotted;
  // A cluster ID is 26 of [a-z0-9], possibly all digits; any other all-digit name is an address.
  const isClusterId = host.length === 26 && all(host, LDH.slice(0, 36));
  if (!isDnsName(host) || (!isClusterId && isNumeric(host)))
    mustBe('host', host ? 'a DNS name or cluster ID' : 'given (or DSQL_ENDPOINT set)');
  // The official connectors' pattern: <id>.dsql<suffix>.<region>.on.aws.
  const [, dsql = '', fromHost, on, aws] = host.split('.').slice(-5);
  const detected = aws && dsql.startsWith('dsql') && `${on}.${aws}` === 'on.aws' ? fromHost : undefined;
  const region = String(r.region ?? detected ?? (env.AWS_REGION || env.AWS_DEFAULT_REGION || ''));
  if (!isDnsName(region) || region.includes('.'))
    mustBe('region', region ? 'a region name' : 'given (or AWS_REGION set)');
  const fqdn = isClusterId ? `${host}.dsql.${region}.on.aws` : host;
  const a = (r.hostaddr as string | undefined)?.toLowerCase();
  // node:net only for an address (pg loads it to connect anyway); before Node 20.16 any goes.
  const isIP = (x: string) => process.getBuiltinModule?.('node:net').isIP(x) !== 0;
  if (a && !(isNumeric(a) || a.includes(':') ? isIP(a) : isDnsName(a)))
    mustBe('hostaddr', 'an IP or a DNS name');
  if ((r.min as number) > (r.max as number)) mustBe('min', 'at most max');
  if (!['direct', 'postgres'].includes(r.sslNegotiation as string))
    mustBe('sslNegotiation', "'direct' or 'postgres'");
  if (r.applicationName && r.application_name) mustBe('application_name', 'absent with applicationName');
  const name = ((r.applicationName ?? r.application_name) as string | undefined)?.trim();
  // PostgreSQL keeps 63 bytes after turning every byte but printable ASCII into '?': keep our suffix.
  const tag = `dsql-lambda/${PACKAGE_VERSION}`;
  r.applicationName = name ? `${name.replace(/[^ -~]/g, '?').slice(0, 62 - tag.length)}:${tag}` : tag;

  const { credentials: c, ssl, retry } = given;
  if (c != null && typeof c !== 'function' && !isIdentity(c))
    mustBe('credentials', 'an AWS identity or a provider');
  if (c != null && r.profile) mustBe('profile', 'absent with credentials');
  const ca = readable('ssl', () => {
    const { ca, rejectUnauthorized, ...rest } = Object(ssl);
    const shape = ssl === true || typeof (ssl ?? {}) === 'object';
    if (!shape || rejectUnauthorized === false || Object.keys(rest).length)
      mustBe('ssl', 'true or { ca } (TLS is always verified)');
    if (![ca ?? ''].flat().every((x) => typeof x === 'string' || Buffer.isBuffer(x))) mustBe('ssl.ca', 'PEM');
    return ca;
  });
  checkRetry(retry); // the pool's policy (the handler's: lifecycle); a misspelt key would be ignored
  const action = `DbConnect${r.user === 'admin' ? 'Admin' : ''}`;
  Object.assign(r, { host: fqdn, region, hostaddr: a, ca, retry, pgOptions, action });
  // Explicit credentials hold a secret: keep them out of JSON.stringify and console.log.
  return Object.defineProperty(r, 'credentialSource', {
    enumerable: c == null,
    value:
      c != null
        ? { kind: 'explicit', value: c }
        : r.profile
          ? { kind: 'profile', profile: r.profile }
          : { kind: env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY ? 'environment' : 'default-chain' },
  }) as unknown as ResolvedDsqlConfig;
}
