/**
 * The token cache: one signed token reused for every new connection until it nears expiry.
 *
 * DSQL checks a token only when a connection opens, so one token can open any number of
 * connections while it lives. Expiry is judged by the wall clock (`Date.now()`) at every `get()`,
 * never by a timer: a Lambda process frozen for an hour wakes with timers that have not fired
 * yet, but the wall clock has moved, so a stale token is never handed out after a thaw.
 */
import type {
  AwsCredentialIdentity,
  AwsCredentialIdentityProvider,
  CredentialSource,
  DsqlAction,
  ResolvedDsqlConfig,
} from './config.js';
import { DSQL_DEFAULTS } from './config.js';
import { createCredentialsProvider } from './credentials.js';
import { DsqlTokenError } from './errors.js';
import { signAuthToken } from './sigv4.js';

/** Options of a {@link TokenCache}. */
export interface TokenCacheOptions {
  /** Cluster host name the tokens are signed for. */
  readonly host: string;
  /** AWS Region of the cluster. */
  readonly region: string;
  /** `DbConnectAdmin` (user `admin`) or `DbConnect`. */
  readonly action: DsqlAction;
  /** Lifetime of each token, seconds. Default: `900`. */
  readonly tokenDurationSecs?: number | undefined;
  /** Where credentials come from; called once, and again only when they near `expiration`. */
  readonly credentials: AwsCredentialIdentityProvider;
  /** Wall clock, ms since the epoch. Default: `Date.now`. Tests inject a fake one. */
  readonly now?: (() => number) | undefined;
}

interface CachedToken {
  readonly token: string;
  readonly expiresAt: number;
  readonly renewAt: number;
}

/**
 * Caches the IAM token for one host, Region, action and credential source.
 *
 * - A token's expiry is the earlier of its signing time (whole seconds, as `X-Amz-Date` says)
 *   plus `tokenDurationSecs`, and the credentials' `expiration`: DSQL refuses a token whose
 *   temporary credentials have expired, whatever `X-Amz-Expires` says.
 * - It is renewed once less than `min(60 s, a fifth of its life)` remains (see
 *   `DSQL_DEFAULTS.tokenRefreshMarginMillis`); credentials expiring within 5 minutes are
 *   resolved again first.
 * - Concurrent `get()` calls during a renewal share one signing (single flight).
 * - Tokens and credentials live in `#private` fields, which `console.log`, `util.inspect` and
 *   `JSON.stringify` never show: printing a cache shows only host, Region, action and lifetime.
 * @example
 * const cache = new TokenCache({ host, region: 'us-east-1', action: 'DbConnectAdmin', credentials: provider });
 * const pool = new pg.Pool({ host, user: 'admin', password: () => cache.get(), ssl: true });
 */
export class TokenCache {
  /** Host name the tokens are signed for. */
  readonly host: string;
  /** AWS Region the tokens are signed for. */
  readonly region: string;
  /** IAM action the tokens grant. */
  readonly action: DsqlAction;
  /** Lifetime of each token, seconds. */
  readonly tokenDurationSecs: number;
  readonly #provider: AwsCredentialIdentityProvider;
  readonly #now: () => number;
  #credentials: AwsCredentialIdentity | undefined;
  #entry: CachedToken | undefined;
  #inflight: Promise<string> | undefined;
  #generation = 0;
  #signed = 0;

  constructor(options: TokenCacheOptions) {
    this.host = options.host;
    this.region = options.region;
    this.action = options.action;
    this.tokenDurationSecs = options.tokenDurationSecs ?? DSQL_DEFAULTS.tokenDurationSecs;
    this.#provider = options.credentials;
    this.#now = options.now ?? Date.now;
  }

  /**
   * The current token, signing a new one when there is none or it is about to expire.
   * @throws {@link DsqlTokenError} (with `cause`) when credentials cannot be resolved or signing fails.
   */
  get(): Promise<string> {
    const entry = this.#entry;
    if (entry !== undefined && this.#now() < entry.renewAt) return Promise.resolve(entry.token);
    if (!this.#inflight) {
      // Cleared only if still the one in flight: invalidate() may have started another since.
      const renewal: Promise<string> = this.#renew().finally(() => {
        if (this.#inflight === renewal) this.#inflight = undefined;
      });
      this.#inflight = renewal;
    }
    return this.#inflight;
  }

  /**
   * Forgets the cached token and credentials, so the next `get()` resolves and signs afresh.
   * With `token`, only if that is still the cached one (a late report about an old token must
   * not discard a newer one). Used after the server rejects a token (SQLSTATE 28000/28P01).
   */
  invalidate(token?: string): void {
    if (token !== undefined && this.#entry?.token !== token) return;
    this.#entry = undefined;
    this.#credentials = undefined;
    // A signing already in flight started from what is now distrusted: later callers do not join it.
    this.#inflight = undefined;
    this.#generation++;
  }

  /** When the cached token expires (ms since the epoch), or `undefined` if none is cached. */
  get expiresAt(): number | undefined {
    return this.#entry?.expiresAt;
  }

  /** How many tokens this cache has signed. */
  get signedCount(): number {
    return this.#signed;
  }

  async #renew(): Promise<string> {
    const generation = this.#generation;
    let credentials = this.#credentials;
    const expiration = credentials?.expiration?.getTime();
    if (
      credentials === undefined ||
      (expiration !== undefined && expiration - this.#now() <= DSQL_DEFAULTS.credentialsRefreshMarginMillis)
    ) {
      try {
        credentials = await this.#provider();
      } catch (err) {
        if (err instanceof DsqlTokenError) throw err;
        throw new DsqlTokenError('Could not resolve AWS credentials', { cause: err });
      }
      if (generation === this.#generation) this.#credentials = credentials;
    }
    const signingTime = this.#now();
    const credentialsExpire = credentials.expiration?.getTime() ?? Infinity;
    if (credentialsExpire <= signingTime) {
      if (generation === this.#generation) this.#credentials = undefined;
      throw new DsqlTokenError('AWS credentials have expired');
    }
    let token: string;
    try {
      token = signAuthToken({
        host: this.host,
        region: this.region,
        action: this.action,
        credentials,
        expiresInSecs: this.tokenDurationSecs,
        signingTime,
      });
    } catch (err) {
      throw new DsqlTokenError('Could not sign a token', { cause: err });
    }
    this.#signed++;
    // X-Amz-Date keeps whole seconds: the token's life starts at the truncated time.
    const signedAt = Math.floor(signingTime / 1000) * 1000;
    const expiresAt = Math.min(signedAt + this.tokenDurationSecs * 1000, credentialsExpire);
    const margin = Math.min(DSQL_DEFAULTS.tokenRefreshMarginMillis, (expiresAt - signedAt) / 5);
    if (generation === this.#generation) {
      this.#entry = { token, expiresAt, renewAt: expiresAt - margin };
    }
    return token;
  }
}

let nextSourceId = 1;
const explicitSourceIds = new WeakMap<object, number>();

function sourceKey(source: CredentialSource): string {
  if (source.kind !== 'explicit') return `${source.kind}:${source.kind === 'profile' && source.profile}`;
  let id = explicitSourceIds.get(source.value);
  if (id === undefined) {
    id = nextSourceId++;
    explicitSourceIds.set(source.value, id);
  }
  return `explicit#${id}`;
}

/** Bound on the shared registry; a Lambda uses one or two clusters, this only guards misuse. */
const MAX_SHARED_CACHES = 32;
const sharedCaches = new Map<string, TokenCache>();

/**
 * The process-wide token cache for a resolved configuration: pools and `connect()` calls that
 * target the same host, Region, action, token lifetime and credential source share one cache
 * (so one token), instead of signing their own.
 * @param config A resolved configuration.
 * @param env Environment for the `environment` credential source. Default: `process.env`.
 * @example
 * const cache = tokenCacheFor(resolveConfig(process.env.DSQL_URL));
 * const token = await cache.get();
 */
export function tokenCacheFor(
  config: ResolvedDsqlConfig,
  env: Readonly<Record<string, string | undefined>> = process.env,
): TokenCache {
  const key = [
    config.host,
    config.region,
    config.action,
    config.tokenDurationSecs,
    sourceKey(config.credentialSource),
  ].join('|');
  let cache = sharedCaches.get(key);
  if (cache === undefined) {
    cache = new TokenCache({
      ...config,
      credentials: createCredentialsProvider(config.credentialSource, env),
    });
    if (sharedCaches.size >= MAX_SHARED_CACHES) {
      const oldest = sharedCaches.keys().next().value;
      if (oldest !== undefined) sharedCaches.delete(oldest);
    }
    sharedCaches.set(key, cache);
  }
  return cache;
}
