import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type DsqlConfig, resolveConfig } from '../../src/config.js';
import { DsqlTokenError } from '../../src/errors.js';
import { tokenCacheFor } from '../../src/token.js';

const SECRET = 'SecretKeyForUnitTests/abc+def';
const AWS_VARS = [
  'AWS_SHARED_CREDENTIALS_FILE',
  'AWS_CONFIG_FILE',
  'AWS_PROFILE',
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_CREDENTIAL_EXPIRATION',
  'AWS_EC2_METADATA_DISABLED',
];
const saved = Object.fromEntries(AWS_VARS.map((k) => [k, process.env[k]]));
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dsql-creds-'));
  writeFileSync(
    join(dir, 'credentials'),
    `[default]\naws_access_key_id = AKIDDEFAULTPROFILE\naws_secret_access_key = ${SECRET}\n\n` +
      `[dev]\naws_access_key_id = AKIDDEVPROFILE\naws_secret_access_key = ${SECRET}\naws_session_token = devsession\n`,
  );
  writeFileSync(join(dir, 'config'), '[default]\nregion = us-east-1\n');
});

afterEach(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function useProfileFiles() {
  for (const k of AWS_VARS) delete process.env[k];
  process.env.AWS_SHARED_CREDENTIALS_FILE = join(dir, 'credentials');
  process.env.AWS_CONFIG_FILE = join(dir, 'config');
  process.env.AWS_EC2_METADATA_DISABLED = 'true';
}

// Credential sources, through the token cache that resolves them: each test gets a cache of its
// own (caches are shared by configuration; a distinct lifetime makes a distinct one).
const HOST = 'abc.dsql.us-east-1.on.aws';
let nextDuration = 100;
function tokens(config: DsqlConfig, env: Record<string, string | undefined> = {}) {
  return tokenCacheFor(resolveConfig({ host: HOST, tokenDurationSecs: nextDuration++, ...config }, env), env);
}
const credentialOf = (token: string) => /X-Amz-Credential=([^%]+)%2F/.exec(token)?.[1];

describe('environment credentials', () => {
  it('signs with what Lambda sets, read again at each resolution', async () => {
    const env: Record<string, string> = {
      AWS_ACCESS_KEY_ID: 'ASIAENV',
      AWS_SECRET_ACCESS_KEY: SECRET,
      AWS_SESSION_TOKEN: 'envsession',
    };
    const cache = tokens({}, env);
    const token = await cache.get();
    expect(credentialOf(token)).toBe('ASIAENV');
    expect(token).toContain('X-Amz-Security-Token=envsession&');
    env.AWS_ACCESS_KEY_ID = 'ASIAENV2';
    cache.invalidate();
    expect(credentialOf(await cache.get())).toBe('ASIAENV2');
  });

  it('needs both halves of the key pair, else takes the default chain; no session token is sent when unset', async () => {
    useProfileFiles();
    const env = { AWS_ACCESS_KEY_ID: 'A', AWS_SECRET_ACCESS_KEY: 'S' };
    const cache = tokens({}, env);
    const token = await cache.get();
    expect(credentialOf(token)).toBe('A');
    expect(token).not.toContain('X-Amz-Security-Token');
    delete (env as Record<string, string | undefined>).AWS_SECRET_ACCESS_KEY;
    cache.invalidate();
    expect(credentialOf(await cache.get())).toBe('AKIDDEFAULTPROFILE');
  });
});

describe('explicit credentials', () => {
  it('signs with static credentials and calls a provider at each resolution', async () => {
    expect(
      credentialOf(await tokens({ credentials: { accessKeyId: 'AKIDX', secretAccessKey: SECRET } }).get()),
    ).toBe('AKIDX');
    let calls = 0;
    const cache = tokens({
      credentials: async () => {
        calls++;
        return { accessKeyId: 'AKIDX', secretAccessKey: SECRET };
      },
    });
    await cache.get();
    cache.invalidate();
    await cache.get();
    expect(calls).toBe(2);
  });

  it('rejects providers that return nothing usable, never repeating a secret', async () => {
    const err = await tokens({ credentials: async () => ({ accessKeyId: '', secretAccessKey: SECRET }) })
      .get()
      .catch((e) => e);
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect(err.message).not.toContain(SECRET);
    const badExpiry = tokens({
      credentials: async () => ({ accessKeyId: 'A', secretAccessKey: 'S', expiration: new Date(Number.NaN) }),
    });
    await expect(badExpiry.get()).rejects.toBeInstanceOf(DsqlTokenError);
  });

  it('wraps provider failures with the cause', async () => {
    const boom = new Error('sts down');
    const err = await tokens({
      credentials: async () => {
        throw boom;
      },
    })
      .get()
      .catch((e) => e);
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect(err.cause).toBe(boom);
  });
});

describe('profile and default-chain credentials (the optional peer, loaded lazily)', () => {
  it('reads a profile from the shared credentials file', async () => {
    useProfileFiles();
    const dev = await tokens({ profile: 'dev' }).get();
    expect(credentialOf(dev)).toBe('AKIDDEVPROFILE');
    expect(dev).toContain('X-Amz-Security-Token=devsession&');
    const missing = await tokens({ profile: 'nope' })
      .get()
      .catch((e) => e);
    expect(missing).toBeInstanceOf(DsqlTokenError);
    expect(missing.message).toContain('"nope"');
    expect(missing.cause).toBeDefined();
  });

  it('falls back to the default chain', async () => {
    useProfileFiles();
    expect(credentialOf(await tokens({}).get())).toBe('AKIDDEFAULTPROFILE');
  });

  it('tells the user to install the peer when it is missing (and a bundle does not contain it)', async () => {
    // Bundled where @aws-sdk/credential-providers cannot be resolved from, as a user's bundle is.
    const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
    const out = join(dir, 'bundle.mjs');
    await esbuild.build({
      stdin: {
        contents: `import { resolveConfig } from './src/config.ts';
          import { tokenCacheFor } from './src/token.ts';
          tokenCacheFor(resolveConfig({ host: '${HOST}', profile: 'dev' }, {})).get().catch((err) =>
            console.log(JSON.stringify({ name: err.name, message: err.message, cause: !!err.cause })));`,
        resolveDir: root,
        loader: 'ts',
      },
      bundle: true,
      platform: 'node',
      format: 'esm',
      outfile: out,
      logLevel: 'silent',
    });
    const run = spawnSync(process.execPath, [out], {
      cwd: dir,
      encoding: 'utf8',
      env: { PATH: process.env.PATH },
    });
    const err = JSON.parse(run.stdout);
    expect(err.name).toBe('DsqlTokenError');
    expect(err.message).toContain('"dev"');
    expect(err.message).toContain('npm install @aws-sdk/credential-providers');
    expect(err.cause).toBe(true);
  });
});
