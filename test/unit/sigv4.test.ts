import { DsqlSigner } from '@aws-sdk/dsql-signer';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { resolveConfig } from '../../src/config.js';
import { DsqlConfigError } from '../../src/errors.js';
import { signAuthToken } from '../../src/sigv4.js';

afterEach(() => {
  vi.useRealTimers();
});

/** The official signer at a fixed time: only `Date` is faked, so its promises still run. */
async function officialToken(input: {
  host: string;
  region: string;
  admin: boolean;
  credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  expiresIn: number;
  time: number;
}): Promise<string> {
  vi.useFakeTimers({ toFake: ['Date'] });
  vi.setSystemTime(input.time);
  try {
    const signer = new DsqlSigner({
      hostname: input.host,
      region: input.region,
      credentials: input.credentials,
      expiresIn: input.expiresIn,
    });
    return input.admin ? await signer.getDbConnectAdminAuthToken() : await signer.getDbConnectAuthToken();
  } finally {
    vi.useRealTimers();
  }
}

const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?$/);
const host = fc.oneof(
  fc
    .tuple(fc.stringMatching(/^[a-z0-9]{26}$/), fc.constantFrom('us-east-1', 'eu-west-1', 'ap-southeast-2'))
    .map(([id, region]) => `${id}.dsql.${region}.on.aws`),
  fc.array(label, { minLength: 1, maxLength: 4 }).map((labels) => labels.join('.')),
);
const region = fc.stringMatching(/^[a-z]{2}(-[a-z]{2,9}){1,2}-[0-9]$/);
const accessKeyId = fc.stringMatching(/^(AKIA|ASIA)[A-Z0-9]{12,16}$/);
const secretAccessKey = fc.oneof(fc.stringMatching(/^[A-Za-z0-9/+]{40}$/), fc.string({ minLength: 1 }));
const sessionToken = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9/+=]{1,400}$/),
  fc.string({ minLength: 1, unit: 'binary' }),
);
const user = fc.oneof(fc.constant('admin'), fc.stringMatching(/^[a-z_][a-z0-9_]{0,15}$/));
// Whole years 2000…2099, any millisecond: the signer drops the milliseconds, so must we.
const time = fc.integer({ min: Date.UTC(2000, 0, 1), max: Date.UTC(2099, 11, 31, 23, 59, 59, 999) });
const duration = fc.oneof(fc.constantFrom(1, 900, 3600, 604800), fc.integer({ min: 1, max: 604800 }));

describe('signAuthToken', () => {
  it('matches the documented token shape', () => {
    const token = signAuthToken(
      {
        host: 'abc.dsql.us-east-1.on.aws',
        region: 'us-east-1',
        action: 'DbConnectAdmin',
        tokenDurationSecs: 900,
      },
      { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret', sessionToken: 'a/b+c=' },
      Date.UTC(2024, 0, 2, 3, 4, 5, 678),
    );
    expect(token).toMatch(
      /^abc\.dsql\.us-east-1\.on\.aws\/\?Action=DbConnectAdmin&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240102T030405Z&X-Amz-Expires=900&X-Amz-Security-Token=a%2Fb%2Bc%3D&X-Amz-Signature=[0-9a-f]{64}&X-Amz-SignedHeaders=host$/,
    );
  });

  it('omits the security token for long-term credentials', () => {
    const token = signAuthToken(
      { host: 'h', region: 'us-east-1', action: 'DbConnect', tokenDurationSecs: 60 },
      { accessKeyId: 'AKID', secretAccessKey: 's' },
      0,
    );
    expect(token).not.toContain('X-Amz-Security-Token');
    expect(token).toContain('Action=DbConnect&');
  });

  it('never signs a lifetime SigV4 cannot presign: the configuration refuses it', () => {
    // The one check is resolveConfig's; signAuthToken only ever sees resolved lifetimes.
    for (const tokenDurationSecs of [0, 604801, 1.5, Number.NaN]) {
      const err = (() => {
        try {
          resolveConfig({ host: 'abc.dsql.us-east-1.on.aws', tokenDurationSecs }, {});
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(DsqlConfigError);
      expect((err as DsqlConfigError).field).toBe('tokenDurationSecs');
    }
    const config = { host: 'h', region: 'r', action: 'DbConnect' as const, tokenDurationSecs: 1 };
    const credentials = { accessKeyId: 'a', secretAccessKey: 's' };
    expect(() => signAuthToken(config, credentials, Number.NaN)).toThrow(RangeError);
  });

  it('is byte-identical to @aws-sdk/dsql-signer (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        host,
        region,
        user,
        accessKeyId,
        secretAccessKey,
        fc.option(sessionToken, { nil: undefined }),
        duration,
        time,
        async (h, r, u, akid, secret, session, expiresIn, t) => {
          const credentials =
            session === undefined
              ? { accessKeyId: akid, secretAccessKey: secret }
              : { accessKeyId: akid, secretAccessKey: secret, sessionToken: session };
          const expected = await officialToken({
            host: h,
            region: r,
            admin: u === 'admin',
            credentials,
            expiresIn,
            time: t,
          });
          const action = u === 'admin' ? 'DbConnectAdmin' : 'DbConnect';
          const actual = signAuthToken(
            { host: h, region: r, action, tokenDurationSecs: expiresIn },
            credentials,
            t,
          );
          expect(actual).toBe(expected);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('writes X-Amz-Date as @aws-sdk/dsql-signer does at any valid time, years outside 0…9999 included', async () => {
    const credentials = { accessKeyId: 'AKID', secretAccessKey: 's', sessionToken: 't' };
    const at = async (t: number) => {
      const expected = await officialToken({
        host: 'h',
        region: 'r',
        admin: false,
        credentials,
        expiresIn: 900,
        time: t,
      });
      expect(
        signAuthToken(
          { host: 'h', region: 'r', action: 'DbConnect', tokenDurationSecs: 900 },
          credentials,
          t,
        ),
      ).toBe(expected);
    };
    // A wrong clock: year 999, 10000, 1 BC (year 0), 2 BC (-1), the ends of the Date range, and 1969.
    for (const t of [
      Date.UTC(999, 0, 1),
      Date.UTC(10000, 0, 1),
      -62167219200000,
      Date.UTC(-1, 5, 1),
      8.64e15,
      -8.64e15,
      -1,
    ])
      await at(t);
    await fc.assert(fc.asyncProperty(fc.integer({ min: -8.64e15, max: 8.64e15 }), at), { numRuns: 200 });
  });
});
