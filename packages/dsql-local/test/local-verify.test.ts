import { DsqlSigner } from '@aws-sdk/dsql-signer';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type LocalCredentials, signToken, verifyToken } from '../src/index.js';

// The endpoint's verifier checked against the AWS SDK signer as the oracle.
const region = fc.constantFrom('us-east-1', 'eu-west-1', 'ap-northeast-1', 'us-gov-west-1');
const clusterId = fc.stringMatching(/^[a-z0-9]{26}$/);
const secret = fc.string({ minLength: 1, maxLength: 60 });
const credentials: fc.Arbitrary<LocalCredentials> = fc.record(
  {
    accessKeyId: fc.stringMatching(/^(AKIA|ASIA)[A-Z2-7]{16}$/),
    secretAccessKey: secret,
    sessionToken: fc.string({ minLength: 1, maxLength: 300 }),
  },
  { requiredKeys: ['accessKeyId', 'secretAccessKey'] },
);
const user = fc.oneof(fc.constant('admin'), fc.stringMatching(/^[a-z_][a-z0-9_]{0,20}$/));

async function sign(host: string, r: string, creds: LocalCredentials, u: string, expiresIn: number) {
  const signer = new DsqlSigner({ hostname: host, region: r, credentials: creds, expiresIn });
  return u === 'admin' ? signer.getDbConnectAdminAuthToken() : signer.getDbConnectAuthToken();
}

describe('verifyToken vs @aws-sdk/dsql-signer', () => {
  it('accepts every token the SDK signs for the right host, region, user and credentials', async () => {
    await fc.assert(
      fc.asyncProperty(
        clusterId,
        region,
        credentials,
        user,
        fc.integer({ min: 1, max: 604800 }),
        async (id, r, creds, u, expiresIn) => {
          const host = `${id}.dsql.${r}.on.aws`;
          const token = await sign(host, r, creds, u, expiresIn);
          const result = verifyToken(token, {
            user: u,
            sni: host,
            region: r,
            credentials: [creds],
            now: Date.now(),
            skewSeconds: 300,
          });
          expect(result).toMatchObject({ ok: true, token: { accessKeyId: creds.accessKeyId, expiresIn } });
        },
      ),
      { numRuns: 200 },
    );
  });

  it('refuses a token with any single character of its signature changed, or a different secret', async () => {
    await fc.assert(
      fc.asyncProperty(clusterId, credentials, secret, fc.nat(63), async (id, creds, otherSecret, pos) => {
        const host = `${id}.dsql.us-east-1.on.aws`;
        const token = await sign(host, 'us-east-1', creds, 'admin', 900);
        const ctx = { user: 'admin', sni: host, region: 'us-east-1', now: Date.now(), skewSeconds: 300 };
        const at = token.indexOf('X-Amz-Signature=') + 'X-Amz-Signature='.length + pos;
        const flipped = token[at] === '0' ? '1' : '0';
        const tampered = token.slice(0, at) + flipped + token.slice(at + 1);
        expect(verifyToken(tampered, { ...ctx, credentials: [creds] })).toEqual({
          ok: false,
          reason: 'signature',
        });
        fc.pre(otherSecret !== creds.secretAccessKey);
        expect(
          verifyToken(token, { ...ctx, credentials: [{ ...creds, secretAccessKey: otherSecret }] }),
        ).toEqual({
          ok: false,
          reason: 'signature',
        });
      }),
      { numRuns: 100 },
    );
  });

  it('reasons for the checks around the signature', async () => {
    const creds = { accessKeyId: 'ASIAAAAAAAAAAAAAAAAA', secretAccessKey: 's', sessionToken: 't' };
    const host = `${'a'.repeat(26)}.dsql.us-east-1.on.aws`;
    const token = await sign(host, 'us-east-1', creds, 'admin', 60);
    const ctx = {
      user: 'admin',
      sni: host,
      region: 'us-east-1',
      credentials: [creds],
      now: Date.now(),
      skewSeconds: 300,
    };
    expect(verifyToken(token, ctx).ok).toBe(true);
    expect(verifyToken(token, { ...ctx, sni: undefined })).toEqual({ ok: false, reason: 'no-sni' });
    expect(verifyToken(token, { ...ctx, sni: 'localhost' })).toEqual({ ok: false, reason: 'host' });
    expect(verifyToken(token, { ...ctx, user: 'bob' })).toEqual({ ok: false, reason: 'action' });
    expect(verifyToken(token, { ...ctx, region: 'us-west-2' })).toEqual({ ok: false, reason: 'region' });
    expect(verifyToken(token, { ...ctx, credentials: [] })).toEqual({ ok: false, reason: 'unknown-key' });
    expect(verifyToken(token, { ...ctx, credentials: [{ ...creds, sessionToken: undefined }] })).toEqual({
      ok: false,
      reason: 'session-token',
    });
    // Times relative to ctx.now, never a second Date.now(): on a busy machine milliseconds pass
    // between the two, and "expired 1 ms ago" would not be expired yet at ctx.now.
    expect(
      verifyToken(token, { ...ctx, credentials: [{ ...creds, expiration: new Date(ctx.now - 1) }] }),
    ).toEqual({
      ok: false,
      reason: 'credentials-expired',
    });
    expect(
      verifyToken(token, { ...ctx, credentials: [{ ...creds, expiration: new Date(ctx.now + 1) }] }).ok,
    ).toBe(true);
    expect(verifyToken(token, { ...ctx, now: ctx.now + 61_000 })).toEqual({
      ok: false,
      reason: 'expired',
    });
    expect(verifyToken(token, { ...ctx, now: ctx.now - 310_000 })).toEqual({
      ok: false,
      reason: 'not-yet-valid',
    });
    expect(verifyToken(token.replace('X-Amz-Expires=60', 'X-Amz-Expires=604801'), ctx)).toEqual({
      ok: false,
      reason: 'expires-range',
    });
    expect(verifyToken(token.replace('SignedHeaders=host', 'SignedHeaders=host%3Bx'), ctx)).toEqual({
      ok: false,
      reason: 'signed-headers',
    });
    expect(verifyToken(token.replace('%2Fdsql%2F', '%2Frds%2F'), ctx)).toEqual({
      ok: false,
      reason: 'service',
    });
    expect(verifyToken(`${token}&Action=DbConnect`, ctx)).toEqual({ ok: false, reason: 'malformed' });
    expect(verifyToken('', ctx)).toEqual({ ok: false, reason: 'malformed' });
    expect(verifyToken(`${host}/?%E0%A4%A=1`, ctx)).toEqual({ ok: false, reason: 'malformed' });
  });
});

describe('signToken (what dsql-local token prints)', () => {
  it('signs exactly what the AWS SDK signs: same parameters, same signature', async () => {
    await fc.assert(
      fc.asyncProperty(
        clusterId,
        region,
        credentials,
        user,
        fc.integer({ min: 1, max: 604800 }),
        async (id, r, creds, u, expiresIn) => {
          const host = `${id}.dsql.${r}.on.aws`;
          // The SDK signs at "now"; sign ours at the same second (retry if the second turned).
          for (;;) {
            const before = Math.floor(Date.now() / 1000);
            const sdk = await sign(host, r, creds, u, expiresIn);
            const ours = signToken({
              host,
              region: r,
              credentials: creds,
              user: u,
              expiresIn,
              now: before * 1000,
            });
            if (Math.floor(Date.now() / 1000) !== before) continue;
            const params = (t: string) =>
              Object.fromEntries(new URLSearchParams(t.slice(t.indexOf('/?') + 2)));
            expect(params(ours)).toEqual(params(sdk));
            expect(ours.slice(0, ours.indexOf('/?'))).toBe(host);
            return;
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  it('refuses a lifetime DSQL does not accept', () => {
    const creds = { accessKeyId: 'ASIAAAAAAAAAAAAAAAAA', secretAccessKey: 's' };
    for (const expiresIn of [0, 604801, 1.5])
      expect(() => signToken({ host: 'h', region: 'us-east-1', credentials: creds, expiresIn })).toThrow(
        /expiresIn/,
      );
  });
});
