import { inspect } from 'node:util';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { AwsCredentialIdentity } from '../../src/config.js';
import { resolveConfig } from '../../src/config.js';
import { DsqlTokenError } from '../../src/errors.js';
import { signAuthToken } from '../../src/sigv4.js';
import { TokenCache, type TokenCacheOptions, tokenCacheFor } from '../../src/token.js';

const HOST = 'abc.dsql.us-east-1.on.aws';
const T0 = Date.UTC(2030, 0, 1, 12, 0, 0);
const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY';
const SESSION = 'IQoJb3JpZ2luX2VjEjSESSIONTOKEN/+=';

function clock(start = T0) {
  let t = start;
  return {
    now: () => t,
    advance(ms: number) {
      t += ms;
    },
    set(ms: number) {
      t = ms;
    },
  };
}

function countingProvider(make: (call: number) => AwsCredentialIdentity) {
  let calls = 0;
  const provider = async () => make(++calls);
  return {
    provider,
    get calls() {
      return calls;
    },
  };
}

function cache(options: Partial<TokenCacheOptions> & Pick<TokenCacheOptions, 'credentials' | 'now'>) {
  return new TokenCache({ host: HOST, region: 'us-east-1', action: 'DbConnectAdmin', ...options });
}

const staticCreds = (call: number): AwsCredentialIdentity => ({
  accessKeyId: `AKID${call}`,
  secretAccessKey: SECRET,
  sessionToken: SESSION,
});

describe('TokenCache', () => {
  it('reuses one token until its renewal point, then signs a new one', async () => {
    const c = clock();
    const creds = countingProvider(staticCreds);
    const tokens = cache({ credentials: creds.provider, now: c.now, tokenDurationSecs: 900 });
    const first = await tokens.get();
    expect(first).toBe(
      signAuthToken(
        { host: HOST, region: 'us-east-1', action: 'DbConnectAdmin', tokenDurationSecs: 900 },
        staticCreds(1),
        T0,
      ),
    );
    for (let i = 0; i < 20; i++) expect(await tokens.get()).toBe(first);
    expect(tokens.expiresAt).toBe(T0 + 900_000);
    // Renewal point: 60 s before expiry.
    c.advance(900_000 - 60_000 - 1);
    expect(await tokens.get()).toBe(first);
    c.advance(1);
    const second = await tokens.get();
    expect(second).not.toBe(first);
    expect(tokens.signedCount).toBe(2);
    // Credentials without an expiration are resolved once.
    expect(creds.calls).toBe(1);
  });

  it('never hands out a token that expired while the process was frozen', async () => {
    const c = clock();
    const tokens = cache({ credentials: countingProvider(staticCreds).provider, now: c.now });
    const before = await tokens.get();
    c.advance(60 * 60_000); // an hour "frozen": no timer ran, the wall clock moved
    const after = await tokens.get();
    expect(after).not.toBe(before);
    expect(after).toContain('X-Amz-Date=20300101T130000Z');
  });

  it('scales the margin down for short lifetimes', async () => {
    const c = clock();
    const tokens = cache({
      credentials: countingProvider(staticCreds).provider,
      now: c.now,
      tokenDurationSecs: 5,
    });
    const first = await tokens.get();
    c.advance(3_999); // renewal at 5 s − 1 s (a fifth of the life)
    expect(await tokens.get()).toBe(first);
    c.advance(1);
    expect(await tokens.get()).not.toBe(first);
  });

  it('counts the life from the whole second in X-Amz-Date', async () => {
    const c = clock(T0 + 999);
    const tokens = cache({
      credentials: countingProvider(staticCreds).provider,
      now: c.now,
      tokenDurationSecs: 900,
    });
    await tokens.get();
    expect(tokens.expiresAt).toBe(T0 + 900_000);
  });

  it('expires with the credentials when they expire first', async () => {
    const c = clock();
    const creds = countingProvider((call) => ({
      ...staticCreds(call),
      expiration: new Date(c.now() + 10 * 60_000),
    }));
    const tokens = cache({ credentials: creds.provider, now: c.now, tokenDurationSecs: 3600 });
    const first = await tokens.get();
    expect(tokens.expiresAt).toBe(T0 + 10 * 60_000);
    // Credentials expiring within 5 minutes are resolved again before the next signing.
    c.advance(9 * 60_000);
    const second = await tokens.get();
    expect(second).not.toBe(first);
    expect(creds.calls).toBe(2);
    expect(second).toContain('AKID2');
    expect(tokens.expiresAt).toBe(T0 + 19 * 60_000);
  });

  it('re-resolves credentials before their expiration, not after', async () => {
    const c = clock();
    const creds = countingProvider((call) => ({
      ...staticCreds(call),
      expiration: new Date(T0 + call * 30 * 60_000),
    }));
    const tokens = cache({ credentials: creds.provider, now: c.now, tokenDurationSecs: 900 });
    await tokens.get();
    c.advance(14 * 60_000); // token renewal; credentials still have 16 minutes
    await tokens.get();
    expect(creds.calls).toBe(1);
    c.advance(14 * 60_000); // 2 minutes of credentials left: inside the 5-minute window
    const token = await tokens.get();
    expect(creds.calls).toBe(2);
    expect(token).toContain('AKID2');
  });

  it('shares one signing among concurrent callers (single flight)', async () => {
    const c = clock();
    let release: (() => void) | undefined;
    let calls = 0;
    const provider = () =>
      new Promise<AwsCredentialIdentity>((resolve) => {
        calls++;
        release = () => resolve(staticCreds(calls));
      });
    const tokens = cache({ credentials: provider, now: c.now });
    const pending = Array.from({ length: 50 }, () => tokens.get());
    await Promise.resolve();
    expect(calls).toBe(1);
    release?.();
    const all = await Promise.all(pending);
    expect(new Set(all).size).toBe(1);
    expect(tokens.signedCount).toBe(1);
  });

  it('wraps failures in DsqlTokenError with the cause and recovers afterwards', async () => {
    const c = clock();
    const boom = new Error('metadata service unavailable');
    let fail = true;
    const tokens = cache({
      credentials: async () => {
        if (fail) throw boom;
        return staticCreds(1);
      },
      now: c.now,
    });
    const err = await tokens.get().catch((e) => e);
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect(err.cause).toBe(boom);
    fail = false;
    await expect(tokens.get()).resolves.toContain(HOST);
  });

  it('refuses credentials that have already expired', async () => {
    const c = clock();
    const tokens = cache({
      credentials: async () => ({ ...staticCreds(1), expiration: new Date(T0 - 1) }),
      now: c.now,
    });
    await expect(tokens.get()).rejects.toBeInstanceOf(DsqlTokenError);
  });

  it('invalidate drops the token (only the one named) and the credentials', async () => {
    const c = clock();
    const creds = countingProvider(staticCreds);
    const tokens = cache({ credentials: creds.provider, now: c.now });
    const first = await tokens.get();
    tokens.invalidate('some older token');
    expect(await tokens.get()).toBe(first);
    c.advance(1000); // a new signing time, so a new token
    tokens.invalidate(first);
    const second = await tokens.get();
    expect(second).not.toBe(first);
    expect(creds.calls).toBe(2);
    tokens.invalidate();
    expect(tokens.expiresAt).toBeUndefined();
  });

  it('does not cache a token whose signing was overtaken by invalidate()', async () => {
    const c = clock();
    let release: (() => void) | undefined;
    let calls = 0;
    const provider = () =>
      new Promise<AwsCredentialIdentity>((resolve) => {
        calls++;
        release = () => resolve(staticCreds(calls));
      });
    const tokens = cache({ credentials: provider, now: c.now });
    const pending = tokens.get();
    await Promise.resolve();
    tokens.invalidate();
    release?.();
    expect(await pending).toContain('AKID1');
    expect(tokens.expiresAt).toBeUndefined();
    const next = tokens.get();
    await Promise.resolve();
    release?.();
    expect(await next).toContain('AKID2');
    expect(tokens.expiresAt).toBeDefined();
  });

  it('after invalidate(), the next get() resolves and signs afresh, not joining an older signing', async () => {
    const c = clock();
    const releases: Array<() => void> = [];
    let calls = 0;
    const provider = () =>
      new Promise<AwsCredentialIdentity>((resolve) => {
        const call = ++calls;
        releases.push(() => resolve(staticCreds(call)));
      });
    const tokens = cache({ credentials: provider, now: c.now });
    const stale = tokens.get(); // started before the server rejected a token
    await Promise.resolve();
    tokens.invalidate();
    const fresh = tokens.get();
    await Promise.resolve();
    expect(calls).toBe(2);
    for (const release of releases) release();
    expect(await stale).toContain('AKID1');
    expect(await fresh).toContain('AKID2');
    // The older signing, finishing last or first, never replaces the newer one in flight or cached.
    expect(await tokens.get()).toBe(await fresh);
    expect(tokens.signedCount).toBe(2);
  });

  it('keeps tokens and secrets out of inspect, JSON and errors', async () => {
    const c = clock();
    const tokens = cache({ credentials: countingProvider(staticCreds).provider, now: c.now });
    const token = await tokens.get();
    const signature = /X-Amz-Signature=([0-9a-f]+)/.exec(token)?.[1] ?? 'missing';
    for (const text of [
      inspect(tokens, { depth: 10, showHidden: true }),
      JSON.stringify(tokens),
      String(tokens),
      inspect({ tokens }, { depth: 10 }),
    ]) {
      expect(text).not.toContain(signature);
      expect(text).not.toContain(SECRET);
      expect(text).not.toContain('SESSIONTOKEN');
    }
    const failing = cache({
      credentials: async () => ({ ...staticCreds(1), expiration: new Date(T0 - 1) }),
      now: c.now,
    });
    const err = await failing.get().catch((e: Error) => e);
    expect(inspect(err, { depth: 10 })).not.toContain(SECRET);
    expect(inspect(err, { depth: 10 })).not.toContain('SESSIONTOKEN');
  });
});

describe('TokenCache under a misbehaving provider (issue 8)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('defect 1: a provider call that never settles fails the renewal, and the next get() recovers', async () => {
    vi.useFakeTimers();
    const c = clock();
    let calls = 0;
    const tokens = cache({
      credentials: () =>
        ++calls === 1 ? new Promise<AwsCredentialIdentity>(() => {}) : Promise.resolve(staticCreds(calls)),
      credentialsTimeoutMillis: 2_000,
      now: c.now,
    });
    const hung = tokens.get();
    const outcome = hung.then(
      () => 'resolved',
      (err: unknown) => err,
    );
    await vi.advanceTimersByTimeAsync(2_000);
    const err = await outcome;
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect((err as Error).message).toMatch(/did not answer within 2000 ms/);
    // Not wedged: the next call asks the provider again and signs.
    await expect(tokens.get()).resolves.toContain('X-Amz-Credential=AKID2%2F');
    expect(calls).toBe(2);
  });

  it('defect 2: a provider failing while the cached token is still valid: the valid token is used', async () => {
    const c = clock();
    let calls = 0;
    const tokens = cache({
      credentials: async () => {
        if (++calls === 1) return { ...staticCreds(1), expiration: new Date(T0 + 10 * 60_000) };
        throw new Error('STS throttled');
      },
      now: c.now,
    });
    const first = await tokens.get();
    // The token expires with the credentials, in 10 min; 30 s before, the renewal fails.
    c.advance(9.5 * 60_000);
    await expect(tokens.get()).resolves.toBe(first);
    expect(calls).toBe(2);
    // Once the token itself has expired, the failure surfaces.
    c.advance(60_000);
    await expect(tokens.get()).rejects.toBeInstanceOf(DsqlTokenError);
  });
});

describe('tokenCacheFor', () => {
  it('defect 7: equal static credentials (a new Date for expiration included) share one cache', () => {
    const creds = () => ({ ...staticCreds(1), expiration: new Date(T0 + 3_600_000) });
    const a = tokenCacheFor(resolveConfig({ host: HOST, credentials: creds() }, {}));
    expect(tokenCacheFor(resolveConfig({ host: HOST, credentials: creds() }, {}))).toBe(a);
    expect(
      tokenCacheFor(resolveConfig({ host: HOST, credentials: { ...creds(), secretAccessKey: 'other' } }, {})),
    ).not.toBe(a);
    expect(
      tokenCacheFor(resolveConfig({ host: HOST, credentials: { ...creds(), expiration: new Date(T0) } }, {})),
    ).not.toBe(a);
  });

  it('shares a cache between equal configurations and separates different ones', () => {
    const provider = async () => staticCreds(1);
    const a = tokenCacheFor(resolveConfig({ host: HOST, credentials: provider }, {}));
    const b = tokenCacheFor(resolveConfig({ host: HOST, credentials: provider, max: 9 }, {}));
    expect(b).toBe(a);
    expect(
      tokenCacheFor(resolveConfig({ host: HOST, credentials: async () => staticCreds(2) }, {})),
    ).not.toBe(a);
    expect(tokenCacheFor(resolveConfig({ host: HOST, credentials: provider, user: 'app' }, {}))).not.toBe(a);
    expect(
      tokenCacheFor(resolveConfig({ host: HOST, credentials: provider, tokenDurationSecs: 60 }, {})),
    ).not.toBe(a);
    const app = tokenCacheFor(resolveConfig({ host: HOST, credentials: provider, user: 'app' }, {}));
    expect(app.action).toBe('DbConnect');
  });

  it('signs with environment credentials', async () => {
    const env = {
      AWS_ACCESS_KEY_ID: 'AKIDENVONLY',
      AWS_SECRET_ACCESS_KEY: SECRET,
      AWS_SESSION_TOKEN: SESSION,
    };
    const tokens = tokenCacheFor(resolveConfig({ host: HOST, tokenDurationSecs: 77 }, env), env);
    const token = await tokens.get();
    expect(token).toContain('X-Amz-Credential=AKIDENVONLY%2F');
    expect(token).toContain('X-Amz-Expires=77');
    expect(token).toContain(`X-Amz-Security-Token=${encodeURIComponent(SESSION)}`);
  });
});
