import { inspect } from 'node:util';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { AwsCredentialIdentity, DsqlConfig } from '../../src/config.js';
import { resolveConfig } from '../../src/config.js';
import { DsqlTokenError } from '../../src/errors.js';
import type * as Sigv4 from '../../src/sigv4.js';
import { type TokenCache, tokenCacheFor } from '../../src/token.js';

// Signing, observed: how many tokens were signed, and a switch that makes the next signings fail
// (so the cache must fall back on its token while it is valid: its expiry, seen from outside).
const signing = vi.hoisted(() => ({ count: 0, fail: false }));
vi.mock('../../src/sigv4.js', async (importOriginal) => {
  const real = await importOriginal<typeof Sigv4>();
  return {
    signAuthToken: (...args: Parameters<typeof real.signAuthToken>) => {
      if (signing.fail) throw new Error('signing switched off by the test');
      signing.count++;
      return real.signAuthToken(...args);
    },
  };
});
const { signAuthToken } = await vi.importActual<typeof Sigv4>('../../src/sigv4.js');

const HOST = 'abc.dsql.us-east-1.on.aws';
const T0 = Date.UTC(2030, 0, 1, 12, 0, 0);
const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY';
const SESSION = 'IQoJb3JpZ2luX2VjEjSESSIONTOKEN/+=';

// The wall clock is the cache's only clock: only Date is faked, promises and timers run.
beforeEach(() => {
  vi.useFakeTimers({ toFake: ['Date'] });
  vi.setSystemTime(T0);
  signing.count = 0;
  signing.fail = false;
});
afterEach(() => {
  vi.useRealTimers();
});
const advance = (ms: number) => vi.setSystemTime(Date.now() + ms);
/** Until every promise that can settle without a timer has (setImmediate is never faked here). */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

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

/** A cache of its own: a provider function is its own credential source. */
function cache(credentials: () => Promise<AwsCredentialIdentity>, extra: DsqlConfig = {}): TokenCache {
  return tokenCacheFor(resolveConfig({ host: HOST, credentials, ...extra }, {}));
}

/** Whether get() still hands out the cached token at `time` when signing fails; the clock is put back. */
async function validAt(tokens: TokenCache, time: number): Promise<boolean> {
  const saved = Date.now();
  vi.setSystemTime(time);
  signing.fail = true;
  try {
    await tokens.get();
    return true;
  } catch {
    return false;
  } finally {
    signing.fail = false;
    vi.setSystemTime(saved);
  }
}

async function expectExpiry(tokens: TokenCache, at: number) {
  expect(await validAt(tokens, at - 1)).toBe(true);
  expect(await validAt(tokens, at)).toBe(false);
}

const staticCreds = (call: number): AwsCredentialIdentity => ({
  accessKeyId: `AKID${call}`,
  secretAccessKey: SECRET,
  sessionToken: SESSION,
});

describe('the token cache', () => {
  it('reuses one token until its renewal point, then signs a new one', async () => {
    const creds = countingProvider(staticCreds);
    const tokens = cache(creds.provider, { tokenDurationSecs: 900 });
    const first = await tokens.get();
    expect(first).toBe(
      signAuthToken(
        { host: HOST, region: 'us-east-1', action: 'DbConnectAdmin', tokenDurationSecs: 900 },
        staticCreds(1),
        T0,
      ),
    );
    for (let i = 0; i < 20; i++) expect(await tokens.get()).toBe(first);
    await expectExpiry(tokens, T0 + 900_000);
    // Renewal point: 60 s before expiry.
    advance(900_000 - 60_000 - 1);
    expect(await tokens.get()).toBe(first);
    advance(1);
    const second = await tokens.get();
    expect(second).not.toBe(first);
    expect(signing.count).toBe(2);
    // Credentials without an expiration are resolved once.
    expect(creds.calls).toBe(1);
  });

  it('never hands out a token that expired while the process was frozen', async () => {
    const tokens = cache(countingProvider(staticCreds).provider);
    const before = await tokens.get();
    advance(60 * 60_000); // an hour "frozen": no timer ran, the wall clock moved
    const after = await tokens.get();
    expect(after).not.toBe(before);
    expect(after).toContain('X-Amz-Date=20300101T130000Z');
  });

  it('scales the margin down for short lifetimes', async () => {
    const tokens = cache(countingProvider(staticCreds).provider, { tokenDurationSecs: 5 });
    const first = await tokens.get();
    advance(3_999); // renewal at 5 s − 1 s (a fifth of the life)
    expect(await tokens.get()).toBe(first);
    advance(1);
    expect(await tokens.get()).not.toBe(first);
  });

  it('counts the life from the whole second in X-Amz-Date', async () => {
    vi.setSystemTime(T0 + 999);
    const tokens = cache(countingProvider(staticCreds).provider, { tokenDurationSecs: 900 });
    await tokens.get();
    await expectExpiry(tokens, T0 + 900_000);
  });

  it('counts the life from the whole second in X-Amz-Date before 1970 too (a clock set back)', async () => {
    // 1969-12-31T23:59:58.500Z: X-Amz-Date says 23:59:58, so the token dies 900 s after that second.
    vi.setSystemTime(-1_500);
    const tokens = cache(countingProvider(staticCreds).provider, { tokenDurationSecs: 900 });
    expect(await tokens.get()).toContain('X-Amz-Date=19691231T235958Z');
    await expectExpiry(tokens, -2_000 + 900_000);
  });

  it('expires with the credentials when they expire first', async () => {
    const make = (call: number) => ({ ...staticCreds(call), expiration: new Date(Date.now() + 10 * 60_000) });
    // (Probing an expiry resolves credentials near it: a twin cache is probed for the first.)
    const twin = cache(countingProvider(make).provider, { tokenDurationSecs: 3600 });
    await twin.get();
    await expectExpiry(twin, T0 + 10 * 60_000);
    const creds = countingProvider(make);
    const tokens = cache(creds.provider, { tokenDurationSecs: 3600 });
    const first = await tokens.get();
    // Credentials expiring within 5 minutes are resolved again before the next signing, while
    // the still-valid token is handed out.
    advance(9 * 60_000);
    expect(await tokens.get()).toBe(first);
    await settle();
    const second = await tokens.get();
    expect(second).not.toBe(first);
    expect(creds.calls).toBe(2);
    expect(second).toContain('AKID2');
    await expectExpiry(tokens, T0 + 19 * 60_000);
  });

  it('re-resolves credentials before their expiration, not after', async () => {
    const creds = countingProvider((call) => ({
      ...staticCreds(call),
      expiration: new Date(T0 + call * 30 * 60_000),
    }));
    const tokens = cache(creds.provider, { tokenDurationSecs: 900 });
    await tokens.get();
    advance(14 * 60_000); // token renewal; credentials still have 16 minutes
    await tokens.get();
    expect(creds.calls).toBe(1);
    advance(14 * 60_000); // 2 minutes of credentials left: inside the 5-minute window
    await tokens.get();
    expect(creds.calls).toBe(2);
    await settle();
    const token = await tokens.get();
    expect(token).toContain('AKID2');
  });

  it('shares one signing among concurrent callers (single flight)', async () => {
    let release: (() => void) | undefined;
    let calls = 0;
    const provider = () =>
      new Promise<AwsCredentialIdentity>((resolve) => {
        calls++;
        release = () => resolve(staticCreds(calls));
      });
    const tokens = cache(provider);
    const pending = Array.from({ length: 50 }, () => tokens.get());
    await Promise.resolve();
    expect(calls).toBe(1);
    release?.();
    const all = await Promise.all(pending);
    expect(new Set(all).size).toBe(1);
    expect(signing.count).toBe(1);
  });

  it('wraps failures in DsqlTokenError with the cause and recovers afterwards', async () => {
    const boom = new Error('metadata service unavailable');
    let fail = true;
    const tokens = cache(async () => {
      if (fail) throw boom;
      return staticCreds(1);
    });
    const err = await tokens.get().catch((e) => e);
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect(err.cause).toBe(boom);
    fail = false;
    await expect(tokens.get()).resolves.toContain(HOST);
  });

  it('refuses credentials that have already expired', async () => {
    const tokens = cache(async () => ({ ...staticCreds(1), expiration: new Date(T0 - 1) }));
    const err = await tokens.get().catch((e) => e);
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect(err.message).toMatch(/expired/);
  });

  it('invalidate drops the token (only the one named) and the credentials', async () => {
    const creds = countingProvider(staticCreds);
    const tokens = cache(creds.provider);
    const first = await tokens.get();
    tokens.invalidate('some older token');
    expect(await tokens.get()).toBe(first);
    advance(1000); // a new signing time, so a new token
    tokens.invalidate(first);
    const second = await tokens.get();
    expect(second).not.toBe(first);
    expect(creds.calls).toBe(2);
    tokens.invalidate();
    expect(await validAt(tokens, Date.now())).toBe(false); // nothing cached to fall back on
  });

  it('does not cache a token whose signing was overtaken by invalidate()', async () => {
    let release: (() => void) | undefined;
    let calls = 0;
    const provider = () =>
      new Promise<AwsCredentialIdentity>((resolve) => {
        calls++;
        release = () => resolve(staticCreds(calls));
      });
    const tokens = cache(provider);
    const pending = tokens.get();
    await Promise.resolve();
    tokens.invalidate();
    release?.();
    expect(await pending).toContain('AKID1');
    // Not cached: the next get() resolves credentials and signs again.
    const next = tokens.get();
    await Promise.resolve();
    expect(calls).toBe(2);
    release?.();
    expect(await next).toContain('AKID2');
    // That one is cached.
    expect(await tokens.get()).toBe(await next);
    expect(calls).toBe(2);
  });

  it('after invalidate(), the next get() resolves and signs afresh, not joining an older signing', async () => {
    const releases: Array<() => void> = [];
    let calls = 0;
    const provider = () =>
      new Promise<AwsCredentialIdentity>((resolve) => {
        const call = ++calls;
        releases.push(() => resolve(staticCreds(call)));
      });
    const tokens = cache(provider);
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
    expect(signing.count).toBe(2);
  });

  it('keeps tokens and secrets out of inspect, JSON and errors', async () => {
    const env = { AWS_ACCESS_KEY_ID: 'AKIDENV', AWS_SECRET_ACCESS_KEY: SECRET, AWS_SESSION_TOKEN: SESSION };
    for (const tokens of [
      cache(countingProvider(staticCreds).provider),
      tokenCacheFor(resolveConfig({ host: HOST, tokenDurationSecs: 61 }, env), env),
    ]) {
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
    }
    const failing = cache(async () => ({ ...staticCreds(1), expiration: new Date(T0 - 1) }));
    const err = await failing.get().catch((e) => e);
    expect(inspect(err, { depth: 10 })).not.toContain(SECRET);
    expect(inspect(err, { depth: 10 })).not.toContain('SESSIONTOKEN');
  });
});

describe('the token cache under a misbehaving provider (issue 8)', () => {
  it('defect 1: a provider call that never settles fails the renewal, and the next get() recovers', async () => {
    vi.useFakeTimers();
    vi.setSystemTime(T0);
    let calls = 0;
    const tokens = cache(() =>
      ++calls === 1 ? new Promise<AwsCredentialIdentity>(() => {}) : Promise.resolve(staticCreds(calls)),
    );
    const outcome = tokens.get().then(
      () => 'resolved',
      (err: unknown) => err,
    );
    await vi.advanceTimersByTimeAsync(5_000); // DSQL_DEFAULTS.credentialsTimeoutMillis
    const err = await outcome;
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect((err as Error).message).toMatch(/credentials within 5000 ms/);
    // Not wedged: the next call asks the provider again and signs.
    await expect(tokens.get()).resolves.toContain('X-Amz-Credential=AKID2%2F');
    expect(calls).toBe(2);
  });

  it('defect 2: a provider failing while the cached token is still valid: the valid token is used', async () => {
    let calls = 0;
    const tokens = cache(async () => {
      if (++calls === 1) return { ...staticCreds(1), expiration: new Date(T0 + 10 * 60_000) };
      throw new Error('STS throttled');
    });
    const first = await tokens.get();
    // The token expires with the credentials, in 10 min; 30 s before, the renewal fails.
    advance(9.5 * 60_000);
    await expect(tokens.get()).resolves.toBe(first);
    expect(calls).toBe(2);
    // Once the token itself has expired, the failure surfaces.
    advance(60_000);
    await expect(tokens.get()).rejects.toBeInstanceOf(DsqlTokenError);
  });
});

describe('the token cache in its renewal window (renewAt ≤ now < expiresAt)', () => {
  // Timers are fake (the renewal's timeout only fires when the test says so); setImmediate is
  // real: every promise that can settle without a timer has settled before it runs.
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    vi.setSystemTime(T0);
  });
  const settledNow = <T>(p: Promise<T>) => Promise.race([p, settle().then(() => 'pending' as const)]);
  // The first credentials expire in 4 min (inside the 5 min margin: every renewal asks the
  // provider again), so the token does too, its renewal window opening at 3 min. Later calls hang
  // until released.
  const WINDOW = T0 + 210_000;
  const hangingAfterFirst = () => {
    let calls = 0;
    const releases: Array<() => void> = [];
    const provider = () =>
      new Promise<AwsCredentialIdentity>((resolve) => {
        const call = ++calls;
        if (call === 1) resolve({ ...staticCreds(call), expiration: new Date(T0 + 240_000) });
        else releases.push(() => resolve(staticCreds(call)));
      });
    return {
      provider,
      releases,
      get calls() {
        return calls;
      },
    };
  };

  it('hands out the still-valid token at once while one renewal runs in the background', async () => {
    const creds = hangingAfterFirst();
    const tokens = cache(creds.provider, { tokenDurationSecs: 900 });
    const first = await tokens.get();
    vi.setSystemTime(WINDOW); // 30 s left
    expect(await settledNow(tokens.get())).toBe(first);
    expect(await settledNow(tokens.get())).toBe(first);
    expect(creds.calls).toBe(2); // one renewal, shared
    creds.releases[0]!();
    await settle();
    expect(await tokens.get()).toContain('AKID2');
    expect(creds.calls).toBe(2);
  });

  it('a background renewal that times out is swallowed; the next get() starts another', async () => {
    const creds = hangingAfterFirst();
    const tokens = cache(creds.provider, { tokenDurationSecs: 900 });
    const first = await tokens.get();
    vi.setSystemTime(WINDOW);
    expect(await settledNow(tokens.get())).toBe(first);
    await vi.advanceTimersByTimeAsync(5_000); // DSQL_DEFAULTS.credentialsTimeoutMillis
    expect(await settledNow(tokens.get())).toBe(first);
    expect(creds.calls).toBe(3);
    creds.releases[1]!();
    await settle();
    expect(await tokens.get()).toContain('AKID3');
  });

  it('a background renewal outliving the token rejects unobserved; without a valid token get() waits', async () => {
    const creds = hangingAfterFirst();
    const tokens = cache(creds.provider, { tokenDurationSecs: 5 }); // renewal window: the last 1 s
    const first = await tokens.get();
    vi.setSystemTime(T0 + 4_500);
    expect(await settledNow(tokens.get())).toBe(first);
    // The token expires while the provider hangs; the renewal's failure reaches no one.
    await vi.advanceTimersByTimeAsync(5_000);
    const next = tokens.get();
    expect(await settledNow(next)).toBe('pending');
    expect(creds.calls).toBe(3);
    creds.releases[1]!();
    expect(await next).toContain('AKID3');
  });

  // The window is 192 s … 240 s after T0: its second half starts at 216 s.
  it('late in the window get() waits for the renewal: a new connection gets the fresh token, not one about to expire', async () => {
    const creds = hangingAfterFirst();
    const tokens = cache(creds.provider);
    const first = await tokens.get();
    vi.setSystemTime(T0 + 239_000); // 1 s of life left: too little to dial with
    const late = tokens.get();
    expect(await settledNow(late)).toBe('pending');
    creds.releases[0]!();
    const fresh = await late;
    expect(fresh).not.toBe(first);
    expect(fresh).toContain('AKID2');
    expect(await tokens.get()).toBe(fresh);
  });

  it('late in the window a renewal that fails falls back to the token while it is valid, and fails once it is not', async () => {
    const creds = hangingAfterFirst();
    const tokens = cache(creds.provider);
    const first = await tokens.get();
    vi.setSystemTime(T0 + 230_000);
    const late = tokens.get();
    expect(await settledNow(late)).toBe('pending');
    await vi.advanceTimersByTimeAsync(5_000); // the provider's timeout, at 235 s: still valid
    expect(await late).toBe(first);
    vi.setSystemTime(T0 + 236_000);
    const later = tokens.get(); // another renewal (the provider hangs again), timing out past expiry
    const outcome = later.then(
      () => 'resolved',
      (err: unknown) => err,
    );
    await vi.advanceTimersByTimeAsync(5_000);
    expect(await outcome).toBeInstanceOf(DsqlTokenError);
    expect(creds.calls).toBe(3);
  });

  it('a background renewal frozen mid-call is not joined after the thaw: get() asks the provider afresh', async () => {
    const creds = hangingAfterFirst();
    const tokens = cache(creds.provider, { tokenDurationSecs: 900 });
    const first = await tokens.get();
    vi.setSystemTime(WINDOW);
    expect(await settledNow(tokens.get())).toBe(first); // call 2 hangs: the invocation ends, the process freezes
    // An hour later (Date only): the token has expired; the frozen call's timeout has not fired yet,
    // and once it does the call fails, while a fresh one answers at once.
    vi.setSystemTime(T0 + 3_600_000);
    const thawed = tokens.get();
    expect(creds.calls).toBe(3);
    creds.releases[1]!();
    expect(await thawed).toContain('AKID3');
    await vi.advanceTimersByTimeAsync(5_000); // the frozen call's timer: it changes nothing
    creds.releases[0]!();
    await settle();
    expect(await tokens.get()).toBe(await thawed);
    expect(creds.calls).toBe(3);
  });

  it('invalidate() during a background renewal: the stale renewal is not cached', async () => {
    const creds = hangingAfterFirst();
    const tokens = cache(creds.provider, { tokenDurationSecs: 900 });
    const first = await tokens.get();
    vi.setSystemTime(WINDOW);
    expect(await settledNow(tokens.get())).toBe(first);
    tokens.invalidate(first);
    const fresh = tokens.get(); // no valid token: waits for a renewal of its own
    expect(await settledNow(fresh)).toBe('pending');
    expect(creds.calls).toBe(3);
    creds.releases[1]!(); // the fresh one first
    expect(await fresh).toContain('AKID3');
    creds.releases[0]!(); // the stale one last
    await settle();
    expect(await tokens.get()).toBe(await fresh);
    expect(creds.calls).toBe(3);
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

  it('shares a cache between equal configurations and separates different ones', async () => {
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
    expect(await app.get()).toContain('/?Action=DbConnect&');
  });

  it('is bounded: the oldest cache goes once 32 are held', () => {
    const configs = Array.from({ length: 33 }, () =>
      resolveConfig({ host: HOST, credentials: async () => staticCreds(1) }, {}),
    );
    const caches = configs.map((c) => tokenCacheFor(c));
    expect(tokenCacheFor(configs[32]!)).toBe(caches[32]);
    expect(tokenCacheFor(configs[1]!)).toBe(caches[1]);
    expect(tokenCacheFor(configs[0]!)).not.toBe(caches[0]);
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
