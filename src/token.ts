/**
 * IAM tokens: one signed token reused for every new connection until it nears expiry (DSQL
 * checks a token only when a connection opens), and the credentials that sign it.
 *
 * Expiry is judged by the wall clock at every `get()`, never by a timer: a process frozen for an
 * hour wakes with its timers unfired but its clock moved, so a stale token is never handed out.
 * Tokens and credentials live only in closures, which `util.inspect` and JSON never show.
 */
import { type AwsCredentialIdentity, isIdentity, type ResolvedDsqlConfig } from './config.js';
import { DSQL_DEFAULTS } from './defaults.js';
import { DsqlTokenError } from './errors.js';
import { signAuthToken } from './sigv4.js';

type Env = Readonly<Record<string, string | undefined>>;
type Provider = () => Promise<unknown>;

/** The token cache of one host, Region, action, lifetime and credential source. */
export interface TokenCache {
  /**
   * The current token, signing a new one when none is cached or it is due for renewal.
   * @throws {@link DsqlTokenError} (with `cause`) when no valid token can be had.
   */
  get(): Promise<string>;
  /**
   * Forgets the token and credentials, so the next `get()` resolves and signs afresh. With
   * `token`, only if that is still the cached one. For when the server rejects a token (28000/28P01).
   */
  invalidate(token?: string): void;
}

/** The optional peer for profile and default-chain credentials. */
const PEER = '@aws-sdk/credential-providers';

function createTokenCache(config: ResolvedDsqlConfig, env: Env): TokenCache {
  const source = config.credentialSource;
  const fail = (why: string, cause?: unknown) =>
    new DsqlTokenError(
      `Could not resolve ${source.kind === 'profile' ? `profile "${source.profile}"` : source.kind} credentials${why}`,
      { cause },
    );
  let sdk: Provider | undefined;
  let credentials: AwsCredentialIdentity | undefined;
  let token: string | undefined;
  let [expiresAt, renewAt, startedAt] = [0, 0, 0];
  let inflight: Promise<string> | undefined;
  let generation = 0;

  /** One call of the source, whatever it is: explicit, the variables Lambda sets, else the SDK. */
  const call = async (): Promise<unknown> => {
    if (source.kind === 'explicit') return typeof source.value === 'function' ? source.value() : source.value;
    const { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey } = env;
    if (source.kind === 'environment' && accessKeyId && secretAccessKey)
      return { accessKeyId, secretAccessKey, sessionToken: env.AWS_SESSION_TOKEN || undefined };
    if (!sdk) {
      let m: { fromIni(o: { profile: string }): Provider; fromNodeProviderChain(): Provider };
      try {
        // A `require` bundlers cannot follow (the SDK weighs hundreds of KB); in Lambda it
        // resolves from the runtime's own copy through NODE_PATH, which createRequire honours.
        m = (
          typeof require === 'function'
            ? require
            : (await import('node:module')).createRequire(import.meta.url)
        )(PEER);
      } catch (err) {
        throw fail(`: they need the optional package ${PEER} (npm install ${PEER})`, err);
      }
      sdk = source.kind === 'profile' ? m.fromIni(source) : m.fromNodeProviderChain();
    }
    return sdk();
  };

  const renew = async (g: number): Promise<string> => {
    startedAt = Date.now();
    try {
      let c = credentials;
      if (
        !c ||
        (c.expiration?.getTime() ?? Infinity) - Date.now() <= DSQL_DEFAULTS.credentialsRefreshMarginMillis
      ) {
        // Bounded: a call that never settles would otherwise wedge every later get().
        const ms = DSQL_DEFAULTS.credentialsTimeoutMillis;
        let timer: NodeJS.Timeout | undefined;
        const value = await Promise.race([
          call(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(fail(` within ${ms} ms`)), ms);
            timer.unref?.();
          }),
        ]).finally(() => clearTimeout(timer));
        if (!isIdentity(value)) throw fail(': incomplete or invalid');
        c = value;
        if (g === generation) credentials = c;
      }
      const now = Date.now();
      // X-Amz-Date keeps whole seconds: the token's life starts at the truncated time.
      const signedAt = Math.floor(now / 1000) * 1000;
      const end = Math.min(signedAt + config.tokenDurationSecs * 1000, c.expiration?.getTime() ?? Infinity);
      if (end <= now) throw fail(': they have expired');
      const t = signAuthToken(config, c, now);
      if (g === generation) {
        token = t;
        expiresAt = end;
        renewAt = end - Math.min(DSQL_DEFAULTS.tokenRefreshMarginMillis, (end - signedAt) / 5);
      }
      return t;
    } catch (err) {
      throw err instanceof DsqlTokenError ? err : fail('', err);
    }
  };

  return {
    get: async () => {
      const now = Date.now();
      if (token !== undefined && now < renewAt) return token;
      // Concurrent callers share one renewal; one overtaken by invalidate() caches nothing, nor one older
      // than the provider's timeout (frozen mid-call: its timer fires late, its call may be lost).
      if (now - startedAt > DSQL_DEFAULTS.credentialsTimeoutMillis) inflight = void generation++;
      const g = generation;
      inflight ??= renew(g).finally(() => {
        if (g === generation) inflight = undefined;
      });
      const held = token;
      if (held === undefined || now >= expiresAt) return inflight;
      // Renewing early: the valid token goes out at once in the window's first half; later, too close
      // to expiry to dial with, the renewed one (the valid one if the renewal fails).
      const renewed = inflight.catch((err) =>
        g === generation && Date.now() < expiresAt ? held : Promise.reject(err),
      );
      if (2 * now > renewAt + expiresAt) return renewed;
      renewed.catch(() => {});
      return held;
    },
    invalidate: (t) => {
      if (t === undefined || t === token) token = credentials = inflight = void generation++;
    },
  };
}

/** Registry bound: a Lambda uses one or two clusters; this only guards misuse. */
const MAX_SHARED = 32;
const shared = new Map<string, TokenCache>();
const providerIds = new WeakMap<object, number>();
let lastId = 0;

/**
 * The process-wide token cache for a configuration, the runtime's only registry: every pool and
 * `connect()` for the same host, Region, action, lifetime and credential source shares one cache,
 * so one token. Credentials are compared by value (a new `Date` for `expiration` is the same
 * credentials); a provider function by identity (two alike may answer differently).
 * - A token expires at the earlier of its signing second plus `tokenDurationSecs` and the
 *   credentials' `expiration`; it is renewed once less than `min(60 s, a fifth of its life)` remains.
 * - Credentials are resolved once, and again within `DSQL_DEFAULTS.credentialsRefreshMarginMillis`
 *   of their `expiration`; a call not settled within `DSQL_DEFAULTS.credentialsTimeoutMillis`
 *   fails that renewal, and the next `get()` starts afresh.
 * - In the first half of the renewal window `get()` hands out the cached token at once, renewing in
 *   the background; in the second half it awaits the renewal, falling back to the cached token while
 *   it is valid. A failed renewal is retried by the next `get()`; with no valid token, none is handed out.
 * - Sources: explicit credentials or provider; a `profile` or the AWS SDK's default chain (both
 *   need the optional peer `@aws-sdk/credential-providers`, loaded on first use); the environment
 *   (`AWS_ACCESS_KEY_ID`, …, read at each resolution, else the default chain).
 * @param env Environment of the `environment` credential source. Default: `process.env`.
 * @example
 * const token = await tokenCacheFor(resolveConfig(process.env.DSQL_URL)).get();
 */
export function tokenCacheFor(config: ResolvedDsqlConfig, env: Env = process.env): TokenCache {
  const source = config.credentialSource;
  let id: unknown = source.kind === 'profile' ? source.profile : '';
  if (source.kind === 'explicit') {
    const v = source.value;
    if (typeof v === 'function') {
      id = providerIds.get(v) ?? ++lastId;
      providerIds.set(v, id as number);
    } else id = [v.accessKeyId, v.secretAccessKey, v.sessionToken, v.expiration];
  }
  const { host, region, action, tokenDurationSecs } = config;
  // (A module-private key: it never leaves this Map. JSON writes a Date as its ISO time.)
  const key = JSON.stringify([host, region, action, tokenDurationSecs, source.kind, id]);
  let cache = shared.get(key);
  if (!cache) {
    if (shared.size >= MAX_SHARED) shared.delete(shared.keys().next().value as string);
    cache = createTokenCache(config, env);
    shared.set(key, cache);
  }
  return cache;
}
