/**
 * The token cache: one signed token reused for every new connection until it nears expiry.
 * DSQL checks a token only when a connection opens, so one token opens any number of them.
 * Expiry is judged by the wall clock at every `get()`, never by a timer: a process frozen for an
 * hour wakes with its timers unfired but its clock moved, so a stale token is never handed out.
 */
import type {
  AwsCredentialIdentity,
  AwsCredentialIdentityProvider,
  DsqlAction,
  ResolvedDsqlConfig,
} from './config.js';
import { createCredentialsProvider } from './credentials.js';
import { DSQL_DEFAULTS } from './defaults.js';
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
  /** Lifetime of each token, seconds. Default: `DSQL_DEFAULTS.tokenDurationSecs`. */
  readonly tokenDurationSecs?: number | undefined;
  /** Where credentials come from; called once, and again only when they near `expiration`. */
  readonly credentials: AwsCredentialIdentityProvider;
  /** A provider call not settled after this fails the renewal, ms. Default: `DSQL_DEFAULTS.credentialsTimeoutMillis`. */
  readonly credentialsTimeoutMillis?: number | undefined;
  /** Wall clock, ms since the epoch. Default: `Date.now`. */
  readonly now?: (() => number) | undefined;
}

type CachedToken = { readonly token: string; readonly expiresAt: number; readonly renewAt: number };

/**
 * Caches the IAM token for one host, Region, action and credential source.
 * - A token expires at the earlier of its signing second plus `tokenDurationSecs` and the
 *   credentials' `expiration`; it is renewed once less than `min(60 s, a fifth of its life)` remains.
 * - Concurrent `get()` calls share one renewal. A renewal whose provider call does not settle
 *   within `credentialsTimeoutMillis` fails, and the next `get()` starts afresh.
 * - A renewal that fails while the cached token is still valid hands out that token.
 * - Tokens and credentials live in `#private` fields, which `util.inspect` never shows.
 * @example
 * const cache = new TokenCache({ host, region: 'us-east-1', action: 'DbConnectAdmin', credentials: provider });
 * const token = await cache.get();
 */
export class TokenCache {
  /** What the tokens are signed for (see {@link TokenCacheOptions}). */
  readonly host: string;
  readonly region: string;
  readonly action: DsqlAction;
  readonly tokenDurationSecs: number;
  readonly #provider: AwsCredentialIdentityProvider;
  readonly #timeout: number;
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
    this.#timeout = options.credentialsTimeoutMillis ?? DSQL_DEFAULTS.credentialsTimeoutMillis;
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
      const renewal: Promise<string> = this.#renew().finally(() => {
        // Only if still the one in flight: invalidate() may have started another since.
        if (this.#inflight === renewal) this.#inflight = undefined;
      });
      this.#inflight = renewal;
    }
    if (entry === undefined) return this.#inflight;
    // Renewing early: a failing (or hung) provider must not fail connections a valid token can open.
    return this.#inflight.catch((err: unknown) => {
      if (this.#entry === entry && this.#now() < entry.expiresAt) return entry.token;
      throw err;
    });
  }

  /**
   * Forgets the cached token and credentials, so the next `get()` resolves and signs afresh. With
   * `token`, only if that is still the cached one. Used after the server rejects a token (28000/28P01).
   */
  invalidate(token?: string): void {
    if (token !== undefined && this.#entry?.token !== token) return;
    this.#entry = undefined;
    this.#credentials = undefined;
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

  /** One provider call, bounded: a call that never settles would otherwise wedge every later `get()`. */
  #resolveCredentials(): Promise<AwsCredentialIdentity> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new DsqlTokenError(`Credentials provider did not answer within ${this.#timeout} ms`)),
        this.#timeout,
      );
      timer.unref?.();
    });
    return Promise.race([Promise.resolve().then(this.#provider), timeout])
      .catch((err: unknown) => {
        throw err instanceof DsqlTokenError
          ? err
          : new DsqlTokenError('Could not resolve AWS credentials', { cause: err });
      })
      .finally(() => clearTimeout(timer));
  }

  async #renew(): Promise<string> {
    const generation = this.#generation;
    let credentials = this.#credentials;
    const expiration = credentials?.expiration?.getTime();
    if (
      credentials === undefined ||
      (expiration !== undefined && expiration - this.#now() <= DSQL_DEFAULTS.credentialsRefreshMarginMillis)
    ) {
      credentials = await this.#resolveCredentials();
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
      token = signAuthToken(this, credentials, signingTime);
    } catch (err) {
      throw new DsqlTokenError('Could not sign a token', { cause: err });
    }
    this.#signed++;
    // X-Amz-Date keeps whole seconds: the token's life starts at the truncated time.
    const signedAt = Math.floor(signingTime / 1000) * 1000;
    const expiresAt = Math.min(signedAt + this.tokenDurationSecs * 1000, credentialsExpire);
    const margin = Math.min(DSQL_DEFAULTS.tokenRefreshMarginMillis, (expiresAt - signedAt) / 5);
    if (generation === this.#generation) this.#entry = { token, expiresAt, renewAt: expiresAt - margin };
    return token;
  }
}

/** Registry bound: a Lambda uses one or two clusters; this only guards misuse. */
const MAX_SHARED = 32;
const shared = new Map<string, TokenCache>();
const providerIds = new WeakMap<object, number>();
let nextId = 0;

/**
 * The process-wide token cache for a configuration, the runtime's only registry: every pool and
 * `connect()` for the same host, Region, action, lifetime and credential source shares one cache,
 * so one token. Credentials are compared by value (a new `Date` for `expiration` is the same
 * credentials); a provider function by identity (two alike may answer differently).
 * @param env Environment of the `environment` credential source. Default: `process.env`.
 * @example
 * const token = await tokenCacheFor(resolveConfig(process.env.DSQL_URL)).get();
 */
export function tokenCacheFor(
  config: ResolvedDsqlConfig,
  env: Readonly<Record<string, string | undefined>> = process.env,
): TokenCache {
  const source = config.credentialSource;
  let id: unknown = source.kind === 'profile' ? source.profile : '';
  if (source.kind === 'explicit') {
    const v = source.value;
    if (typeof v === 'function' && !providerIds.has(v)) providerIds.set(v, nextId++);
    // (A module-private key: it never leaves this Map.)
    id =
      typeof v === 'function'
        ? providerIds.get(v)
        : [v.accessKeyId, v.secretAccessKey, v.sessionToken, v.expiration?.getTime()];
  }
  const key = JSON.stringify([
    config.host,
    config.region,
    config.action,
    config.tokenDurationSecs,
    source.kind,
    id,
  ]);
  let cache = shared.get(key);
  if (!cache) {
    cache = new TokenCache({ ...config, credentials: createCredentialsProvider(source, env) });
    if (shared.size >= MAX_SHARED) shared.delete(shared.keys().next().value as string);
    shared.set(key, cache);
  }
  return cache;
}
