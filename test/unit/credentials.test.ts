import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  createCredentialsProvider,
  credentialsFromEnvironment,
  describeCredentialSource,
  loadOptionalModule,
} from '../../src/credentials.js';
import { DsqlTokenError } from '../../src/errors.js';

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

describe('credentialsFromEnvironment', () => {
  it('reads what Lambda sets and hides the secrets', () => {
    const creds = credentialsFromEnvironment({
      AWS_ACCESS_KEY_ID: 'ASIAENV',
      AWS_SECRET_ACCESS_KEY: SECRET,
      AWS_SESSION_TOKEN: 'envsession',
    });
    expect(creds?.accessKeyId).toBe('ASIAENV');
    expect(creds?.secretAccessKey).toBe(SECRET);
    expect(creds?.sessionToken).toBe('envsession');
    expect(creds?.expiration).toBeUndefined();
    expect(JSON.stringify(creds)).not.toContain(SECRET);
    expect(inspect(creds)).not.toContain(SECRET);
    expect(inspect(creds)).not.toContain('envsession');
  });

  it('needs both halves of the key pair', () => {
    expect(credentialsFromEnvironment({ AWS_ACCESS_KEY_ID: 'A' })).toBeUndefined();
    expect(credentialsFromEnvironment({})).toBeUndefined();
    expect(
      credentialsFromEnvironment({ AWS_ACCESS_KEY_ID: 'A', AWS_SECRET_ACCESS_KEY: 'S' })?.sessionToken,
    ).toBe(undefined);
  });
});

describe('createCredentialsProvider', () => {
  it('returns explicit credentials and calls explicit providers', async () => {
    const creds = { accessKeyId: 'AKIDX', secretAccessKey: SECRET };
    expect(await createCredentialsProvider({ kind: 'explicit', value: creds })()).toBe(creds);
    let calls = 0;
    const provider = createCredentialsProvider({
      kind: 'explicit',
      value: async () => {
        calls++;
        return creds;
      },
    });
    await provider();
    await provider();
    expect(calls).toBe(2); // caching is the token cache's job
  });

  it('reads the environment on every call', async () => {
    const env: Record<string, string> = { AWS_ACCESS_KEY_ID: 'AKID1', AWS_SECRET_ACCESS_KEY: SECRET };
    const provider = createCredentialsProvider({ kind: 'environment' }, env);
    expect((await provider()).accessKeyId).toBe('AKID1');
    env.AWS_ACCESS_KEY_ID = 'AKID2';
    expect((await provider()).accessKeyId).toBe('AKID2');
  });

  it('reads a profile from the shared credentials file (lazy SDK load)', async () => {
    useProfileFiles();
    const dev = await createCredentialsProvider({ kind: 'profile', profile: 'dev' })();
    expect(dev.accessKeyId).toBe('AKIDDEVPROFILE');
    expect(dev.sessionToken).toBe('devsession');
    const missing = await createCredentialsProvider({ kind: 'profile', profile: 'nope' })().catch((e) => e);
    expect(missing).toBeInstanceOf(DsqlTokenError);
    expect(missing.message).toContain('"nope"');
    expect(missing.cause).toBeDefined();
  });

  it('falls back to the default chain', async () => {
    useProfileFiles();
    const creds = await createCredentialsProvider({ kind: 'default-chain' })();
    expect(creds.accessKeyId).toBe('AKIDDEFAULTPROFILE');
  });

  it('rejects providers that return nothing usable', async () => {
    const provider = createCredentialsProvider({
      kind: 'explicit',
      value: async () => ({ accessKeyId: '', secretAccessKey: SECRET }),
    });
    const err = await provider().catch((e) => e);
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect(err.message).not.toContain(SECRET);
    const badExpiry = createCredentialsProvider({
      kind: 'explicit',
      value: async () => ({ accessKeyId: 'A', secretAccessKey: 'S', expiration: new Date(Number.NaN) }),
    });
    await expect(badExpiry()).rejects.toBeInstanceOf(DsqlTokenError);
  });

  it('wraps provider failures with the cause', async () => {
    const boom = new Error('sts down');
    const err = await createCredentialsProvider({
      kind: 'explicit',
      value: async () => {
        throw boom;
      },
    })().catch((e) => e);
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect(err.cause).toBe(boom);
  });
});

describe('loadOptionalModule', () => {
  it('tells the user to install a missing optional package', async () => {
    const err = await loadOptionalModule(
      '@dsql-lambda/definitely-not-installed',
      'profile credentials',
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DsqlTokenError);
    expect((err as Error).message).toContain('npm install @dsql-lambda/definitely-not-installed');
    expect((err as Error).cause).toBeDefined();
  });

  it('loads an installed one', async () => {
    const mod = await loadOptionalModule<{ fromIni: unknown }>('@aws-sdk/credential-providers', 'test');
    expect(typeof mod.fromIni).toBe('function');
  });

  it('describes sources without secrets', () => {
    expect(
      describeCredentialSource({ kind: 'explicit', value: { accessKeyId: 'A', secretAccessKey: SECRET } }),
    ).not.toContain(SECRET);
    expect(describeCredentialSource({ kind: 'profile', profile: 'dev' })).toContain('dev');
  });
});
