/**
 * Server-side check of an Aurora DSQL IAM authentication token: parses the presigned URL and
 * recomputes its SigV4 signature with node:crypto from the secret the endpoint knows.
 * @packageDocumentation
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

/** AWS credentials the local endpoint accepts tokens from. */
export interface LocalCredentials {
  /** Access key id, e.g. `ASIA…` (temporary) or `AKIA…` (long-term). */
  accessKeyId: string;
  /** Secret access key used to recompute signatures. */
  secretAccessKey: string;
  /** Session token; when set, tokens must carry exactly this `X-Amz-Security-Token`. */
  sessionToken?: string;
  /** When temporary credentials stop working (tokens signed with them are refused after it). */
  expiration?: Date;
}

/**
 * Why a token was refused. Clients only ever see `IAM authentication failed for user "<user>"`;
 * the reason is for stats and events.
 */
export type AuthFailureReason =
  | 'malformed'
  | 'no-sni'
  | 'host'
  | 'algorithm'
  | 'action'
  | 'service'
  | 'region'
  | 'scope-date'
  | 'expires-range'
  | 'unknown-key'
  | 'session-token'
  | 'credentials-expired'
  | 'signed-headers'
  | 'expired'
  | 'not-yet-valid'
  | 'signature';

/** What the verifier needs to know about the connection and the endpoint. */
export interface VerifyContext {
  /** Database user from the startup message. */
  user: string;
  /** SNI host name the client sent (undefined: none). */
  sni: string | undefined;
  /** Region the endpoint serves. */
  region: string;
  /** Accepted credentials. */
  credentials: readonly LocalCredentials[];
  /** Current time in ms since the epoch (the endpoint's clock). */
  now: number;
  /** Allowed clock skew for tokens dated in the future, in seconds. */
  skewSeconds: number;
}

/** Result of a successful verification. */
export interface VerifiedToken {
  /** `X-Amz-Date` of the token. */
  signingDate: string;
  /** Access key id that signed it. */
  accessKeyId: string;
  /** `X-Amz-Expires`, seconds. */
  expiresIn: number;
}

/** Outcome of {@link verifyToken}. */
export type VerifyResult = { ok: true; token: VerifiedToken } | { ok: false; reason: AuthFailureReason };

const REQUIRED = [
  'Action',
  'X-Amz-Algorithm',
  'X-Amz-Credential',
  'X-Amz-Date',
  'X-Amz-Expires',
  'X-Amz-Signature',
  'X-Amz-SignedHeaders',
] as const;

/** RFC 3986 encoding as SigV4 wants it (encodeURIComponent leaves `!'()*` alone). */
function rfc3986(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function sha256Hex(data: string): string {
  return createHash('sha256').update(data, 'utf8').digest('hex');
}

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

function safeEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a, 'utf8');
  const bb = Buffer.from(b, 'utf8');
  // timingSafeEqual needs equal lengths; comparing against itself keeps the timing flat.
  if (ab.length !== bb.length) {
    timingSafeEqual(ab, ab);
    return false;
  }
  return timingSafeEqual(ab, bb);
}

/** `20250102T030405Z` → epoch ms, or NaN. */
function parseAmzDate(s: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  if (!m) return Number.NaN;
  return Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
}

/**
 * Checks a DSQL IAM token the way the service does, as far as it can be known from outside:
 * signature over `GET https://<host>/?<query>` with only `host` signed, `Action` matching the
 * user, service `dsql`, region, host equal to the SNI name, validity window, session token.
 * Never throws on bad input.
 */
export function verifyToken(token: string, ctx: VerifyContext): VerifyResult {
  const fail = (reason: AuthFailureReason): VerifyResult => ({ ok: false, reason });
  if (!ctx.sni) return fail('no-sni');
  const q = token.indexOf('/?');
  if (q <= 0 || token.length > 8192) return fail('malformed');
  const host = token.slice(0, q);
  const params = new Map<string, string>();
  try {
    for (const pair of token.slice(q + 2).split('&')) {
      const eq = pair.indexOf('=');
      if (eq <= 0) return fail('malformed');
      const k = decodeURIComponent(pair.slice(0, eq));
      if (params.has(k)) return fail('malformed');
      params.set(k, decodeURIComponent(pair.slice(eq + 1)));
    }
  } catch {
    return fail('malformed');
  }
  for (const k of REQUIRED) if (!params.has(k)) return fail('malformed');
  const p = (k: string) => params.get(k) ?? '';

  if (host.toLowerCase() !== ctx.sni.toLowerCase()) return fail('host');
  if (p('X-Amz-Algorithm') !== 'AWS4-HMAC-SHA256') return fail('algorithm');
  const wantAction = ctx.user === 'admin' ? 'DbConnectAdmin' : 'DbConnect';
  if (p('Action') !== wantAction) return fail('action');

  const scope = p('X-Amz-Credential').split('/');
  if (scope.length !== 5 || scope[4] !== 'aws4_request') return fail('malformed');
  const [accessKeyId, scopeDate, scopeRegion, service] = scope as [string, string, string, string];
  if (service !== 'dsql') return fail('service');
  if (scopeRegion !== ctx.region) return fail('region');
  const amzDate = p('X-Amz-Date');
  const signedAt = parseAmzDate(amzDate);
  if (Number.isNaN(signedAt)) return fail('malformed');
  if (scopeDate !== amzDate.slice(0, 8)) return fail('scope-date');
  const expiresRaw = p('X-Amz-Expires');
  const expiresIn = /^\d{1,7}$/.test(expiresRaw) ? Number(expiresRaw) : Number.NaN;
  if (!(expiresIn >= 1 && expiresIn <= 604800)) return fail('expires-range');
  if (p('X-Amz-SignedHeaders') !== 'host') return fail('signed-headers');

  const cred = ctx.credentials.find((c) => c.accessKeyId === accessKeyId);
  if (!cred) return fail('unknown-key');
  const presentedSession = params.get('X-Amz-Security-Token');
  if (cred.sessionToken !== undefined) {
    if (presentedSession === undefined || !safeEqual(presentedSession, cred.sessionToken))
      return fail('session-token');
  } else if (presentedSession !== undefined) {
    return fail('session-token');
  }

  const canonicalQuery = [...params.entries()]
    .filter(([k]) => k !== 'X-Amz-Signature')
    .map(([k, v]) => [rfc3986(k), rfc3986(v)] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const canonicalRequest = ['GET', '/', canonicalQuery, `host:${host}\n`, 'host', sha256Hex('')].join('\n');
  const credentialScope = `${scopeDate}/${scopeRegion}/${service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, credentialScope, sha256Hex(canonicalRequest)].join('\n');
  const kDate = hmac(`AWS4${cred.secretAccessKey}`, scopeDate);
  const kSigning = hmac(hmac(hmac(kDate, scopeRegion), service), 'aws4_request');
  const expected = createHmac('sha256', kSigning).update(stringToSign, 'utf8').digest('hex');
  if (!safeEqual(expected, p('X-Amz-Signature').toLowerCase())) return fail('signature');

  // Time checks after the signature, so a forged token learns nothing about the window.
  if (cred.expiration && ctx.now >= cred.expiration.getTime()) return fail('credentials-expired');
  if (signedAt > ctx.now + ctx.skewSeconds * 1000) return fail('not-yet-valid');
  if (ctx.now > signedAt + expiresIn * 1000) return fail('expired');
  return { ok: true, token: { signingDate: amzDate, accessKeyId, expiresIn } };
}

/** Options of {@link signToken}. */
export interface SignTokenOptions {
  /** Cluster host name the token is for (what clients send as SNI). */
  host: string;
  region: string;
  credentials: LocalCredentials;
  /** `admin` gets a `DbConnectAdmin` token, anyone else `DbConnect`. Default `'admin'`. */
  user?: string;
  /** Lifetime, seconds (1…604800). Default `900`. */
  expiresIn?: number;
  /** Signing time, ms since the epoch. Default: now. */
  now?: number;
}

/**
 * Signs a DSQL IAM token (a SigV4-presigned `GET https://<host>/?Action=…`, as the AWS SDK's
 * DsqlSigner makes it) with node:crypto: what `dsql-local token` prints for psql.
 */
export function signToken(options: SignTokenOptions): string {
  const { host, region, credentials } = options;
  const expiresIn = options.expiresIn ?? 900;
  if (!Number.isInteger(expiresIn) || expiresIn < 1 || expiresIn > 604800)
    throw new RangeError('expiresIn must be an integer from 1 to 604800 seconds');
  const amzDate = new Date(options.now ?? Date.now())
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
  const day = amzDate.slice(0, 8);
  const scope = `${day}/${region}/dsql/aws4_request`;
  const params: [string, string][] = [
    ['Action', (options.user ?? 'admin') === 'admin' ? 'DbConnectAdmin' : 'DbConnect'],
    ['X-Amz-Algorithm', 'AWS4-HMAC-SHA256'],
    ['X-Amz-Credential', `${credentials.accessKeyId}/${scope}`],
    ['X-Amz-Date', amzDate],
    ['X-Amz-Expires', String(expiresIn)],
    ...(credentials.sessionToken
      ? ([['X-Amz-Security-Token', credentials.sessionToken]] as [string, string][])
      : []),
    ['X-Amz-SignedHeaders', 'host'],
  ];
  const query = params
    .map(([k, v]) => `${rfc3986(k)}=${rfc3986(v)}`)
    .sort()
    .join('&');
  const canonicalRequest = ['GET', '/', query, `host:${host}\n`, 'host', sha256Hex('')].join('\n');
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  const kDate = hmac(`AWS4${credentials.secretAccessKey}`, day);
  const kSigning = hmac(hmac(hmac(kDate, region), 'dsql'), 'aws4_request');
  const signature = createHmac('sha256', kSigning).update(stringToSign, 'utf8').digest('hex');
  return `${host}/?${query}&X-Amz-Signature=${signature}`;
}

/** First 16 hex digits of the token's SHA-256: enough to count distinct tokens, useless to replay. */
export function tokenFingerprint(token: string): string {
  return sha256Hex(token).slice(0, 16);
}
