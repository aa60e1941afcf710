// createPool / connect against the local DSQL-like endpoint: TLS negotiation, IAM tokens and
// their cache, credential sources, certificate checks and admission retries. No timing
// assertions: the clock is moved (Date only) where expiry matters.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import type pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { LocalDsql } from '../../packages/dsql-local/src/index.js';
import { type DsqlConfig, resolveConfig } from '../../src/config.js';
import { DsqlConnectionError, DsqlTokenError } from '../../src/errors.js';
import { connect, createPool, type DsqlPool } from '../../src/pool.js';
import { tokenCacheFor } from '../../src/token.js';
import { startTestEndpoint, stopAllTestEndpoints } from '../helpers/endpoint.js';

let endpoint: LocalDsql;
const cleanups: Array<() => unknown> = [];

beforeAll(async () => {
  endpoint = await startTestEndpoint();
});

afterEach(async () => {
  vi.useRealTimers();
  endpoint.setClock(undefined);
  endpoint.faults.clear();
  endpoint.faults.setRateLimit({ perSecond: 100, burst: 1000 });
  endpoint.faults.setMaxConnections(10_000);
  while (cleanups.length > 0) await cleanups.pop()?.();
});

afterAll(() => stopAllTestEndpoints());

// Every test gets its own token cache: caches are shared by configuration, and a distinct
// credentials object (or token lifetime) makes a distinct configuration.
let nextDuration = 900;
function config(extra: DsqlConfig = {}): DsqlConfig {
  return {
    host: endpoint.host,
    hostaddr: endpoint.address,
    port: endpoint.port,
    ssl: { ca: endpoint.ca },
    credentials: { ...endpoint.credentials },
    tokenDurationSecs: nextDuration--,
    ...extra,
  };
}

function pool(extra: DsqlConfig = {}, full = config(extra)): pg.Pool {
  const p = createPool(full);
  cleanups.push(() => p.end());
  return p;
}

async function checkoutMany(p: pg.Pool, n: number): Promise<pg.PoolClient[]> {
  const clients = await Promise.all(Array.from({ length: n }, () => p.connect()));
  for (const c of clients) {
    cleanups.push(() => {
      try {
        c.release(true);
      } catch {
        // released by the test already
      }
    });
  }
  return clients;
}

describe('createPool against the local endpoint', () => {
  it.each(['direct', 'postgres'] as const)('connects with %s TLS negotiation', async (sslNegotiation) => {
    endpoint.resetStats();
    const p = pool({ sslNegotiation });
    const { rows } = await p.query('SELECT 1 AS one');
    expect(rows[0].one).toBe(1);
    const stats = endpoint.stats();
    expect(stats.connections.byNegotiation[sslNegotiation]).toBe(1);
    expect(stats.connections.bySni[endpoint.host]).toBe(1);
    expect(stats.auth.ok).toBe(1);
  });

  it('dials a hostaddr that is a DNS name while SNI and the token name the cluster', async () => {
    endpoint.resetStats();
    const p = pool({ hostaddr: 'localhost' });
    expect((await p.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    expect(endpoint.stats().connections.bySni).toEqual({ [endpoint.host]: 1 });
    expect(endpoint.stats().auth.ok).toBe(1);
  });

  it('signs DbConnectAdmin for admin and DbConnect for other users', async () => {
    endpoint.resetStats();
    await pool({ user: 'admin' }).query('SELECT 1');
    await pool({ user: 'app_reader' }).query('SELECT 1');
    const stats = endpoint.stats();
    expect(stats.tokensByUser).toMatchObject({ admin: 1, app_reader: 1 });
    expect(stats.auth.ok).toBe(2);
  });

  it('sends application_name and issues no SET at connect', async () => {
    const p = pool({ applicationName: 'orders' });
    const client = await p.connect();
    try {
      const { rows } = await client.query('SELECT pg_backend_pid() AS pid');
      const session = endpoint.sessions().find((s) => s.id === rows[0].pid);
      expect(session?.applicationName).toMatch(/^orders:dsql-lambda\/\d+\.\d+\.\d+/);
    } finally {
      client.release();
    }
  });

  it('keeps the token and the secrets out of inspect and JSON of the pool and its clients', async () => {
    endpoint.resetStats();
    const cfg = config();
    const p = pool({}, cfg);
    const client = await p.connect();
    const single = await connect(cfg);
    cleanups.push(() => single.end());
    try {
      const token = await tokenCacheFor(resolveConfig(cfg)).get();
      expect(endpoint.stats().distinctTokensAccepted).toBe(1);
      const signature = /X-Amz-Signature=([0-9a-f]+)/.exec(token)?.[1] as string;
      const { secretAccessKey, sessionToken } = endpoint.credentials;
      // pg keeps the password it sends on the client: never readable there (showHidden shows
      // non-enumerable properties too; getters: the token is gone once connected).
      for (const text of [
        inspect(p, { depth: 8, showHidden: true }),
        inspect(client, { depth: 8, showHidden: true }),
        inspect(client, { depth: 8, showHidden: true, getters: true }),
        inspect(single, { depth: 8, showHidden: true }),
        JSON.stringify(p.options),
      ]) {
        expect(text).not.toContain(signature);
        expect(text).not.toContain(secretAccessKey);
        expect(text).not.toContain(sessionToken);
      }
    } finally {
      client.release();
    }
  });

  it('uses one token for many new connections, and a new one after expiry', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    endpoint.resetStats();
    const p = pool({ max: 6 });
    const first = await checkoutMany(p, 6);
    let stats = endpoint.stats();
    expect(stats.tokensAccepted).toBe(6);
    expect(stats.distinctTokensAccepted).toBe(1);
    for (const c of first) c.release(true);

    // 20 minutes later (Date only: the endpoint's clock moves too), new connections need a new token.
    vi.setSystemTime(Date.now() + 20 * 60_000);
    const later = await checkoutMany(p, 3);
    stats = endpoint.stats();
    expect(stats.tokensAccepted).toBe(9);
    expect(stats.distinctTokensAccepted).toBe(2);
    expect(Object.keys(stats.tokensBySigningDate)).toHaveLength(2);
    for (const c of later) c.release(true);
  });

  it('re-resolves credentials that carry an expiration', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    endpoint.resetStats();
    let calls = 0;
    const provider = async () => {
      calls++;
      return { ...endpoint.credentials, expiration: new Date(Date.now() + 10 * 60_000) };
    };
    const p = pool({ credentials: provider, tokenDurationSecs: 3600 });
    await p.query('SELECT 1');
    await checkoutMany(p, 2);
    expect(calls).toBe(1);
    // The token dies with the credentials (10 min); a minute before, both are renewed, in the
    // background: that connection opens with the still-valid token, the next with the new one.
    vi.setSystemTime(Date.now() + 9.5 * 60_000);
    await checkoutMany(p, 1);
    expect(calls).toBe(2);
    expect(endpoint.stats().distinctTokensAccepted).toBe(1);
    await checkoutMany(p, 1);
    expect(calls).toBe(2);
    expect(endpoint.stats().distinctTokensAccepted).toBe(2);
  });

  it('refuses an untrusted certificate authority without sending a token', async () => {
    endpoint.resetStats();
    const p = pool({ ssl: undefined });
    const err = await p.query('SELECT 1').catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(String(err.code ?? err.cause?.code)).toMatch(/CERT|SIGNATURE|ISSUER/);
    expect(endpoint.stats().auth.ok + endpoint.stats().auth.failed).toBe(0);
  });

  it('refuses a certificate for another host name', async () => {
    endpoint.resetStats();
    const p = pool({ host: 'db.example.com', region: endpoint.region });
    const err = await p.query('SELECT 1').catch((e) => e);
    expect(err.code ?? err.cause?.code).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
    expect(endpoint.stats().auth.ok + endpoint.stats().auth.failed).toBe(0);
  });

  it('does not retry an authentication failure, and re-signs for the next connection', async () => {
    endpoint.resetStats();
    // Credentials are resolved once per signing here: a rejected token is dropped with them.
    let resolutions = 0;
    const cfg = config({
      credentials: async () => {
        resolutions++;
        return { ...endpoint.credentials, secretAccessKey: 'wrong-secret' };
      },
    });
    const p = createPool(cfg);
    cleanups.push(() => p.end());
    const err = await p.query('SELECT 1').catch((e) => e);
    expect(err.code).toBe('28000');
    expect(endpoint.stats().auth.failed).toBe(1);
    expect(resolutions).toBe(1);
    await p.query('SELECT 1').catch(() => {});
    expect(resolutions).toBe(2); // the rejected token was dropped: signed afresh
    expect(endpoint.stats().auth.failed).toBe(2);
    expect(JSON.stringify(err)).not.toContain('wrong-secret');
  });

  it('closes the connection when it has no token to send, so it holds no connection slot', async () => {
    endpoint.faults.setMaxConnections(1);
    let calls = 0;
    const p = pool({
      connectionTimeoutMillis: 2000,
      credentials: async () => {
        if (++calls === 1) throw new Error('credentials not ready');
        return { ...endpoint.credentials };
      },
    });
    // The token is obtained before dialling: a token failure opens no socket at all.
    endpoint.resetStats();
    await expect(p.query('SELECT 1')).rejects.toBeInstanceOf(DsqlTokenError);
    expect(endpoint.stats().connections.total).toBe(0);
    expect((await p.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });

  it('retries rate-limit refusals (53400) until admitted', async () => {
    endpoint.resetStats();
    endpoint.faults.setRateLimit({ perSecond: 20, burst: 1 });
    const p = pool({ max: 5 });
    const clients = await checkoutMany(p, 5);
    expect(clients).toHaveLength(5);
    const stats = endpoint.stats();
    expect(stats.admissionRefused['53400']).toBeGreaterThan(0);
    expect(stats.auth.ok).toBe(5);
  });

  it('retries connection-cap refusals (53300) until a slot frees', async () => {
    endpoint.resetStats();
    const p = pool({ max: 3 });
    const held = await checkoutMany(p, 2);
    endpoint.faults.setMaxConnections(endpoint.stats().currentSessions);
    const third = p.connect();
    while (endpoint.stats().admissionRefused['53300'] === 0) await new Promise((r) => setTimeout(r, 10));
    held[0]?.release(true); // closes one connection: a slot frees
    const client = await third;
    cleanups.push(() => client.release(true));
    expect((await client.query('SELECT 2 AS two')).rows[0].two).toBe(2);
  });

  it('gives up with DsqlConnectionError when refusals outlast connectionTimeoutMillis', async () => {
    endpoint.faults.setMaxConnections(0);
    const p = pool({ connectionTimeoutMillis: 300 });
    const err = await p.query('SELECT 1').catch((e) => e);
    // The library's own error, not pg-pool's "Connection terminated due to connection timeout".
    expect(err).toBeInstanceOf(DsqlConnectionError);
    expect(err.message).toContain(endpoint.host);
    expect(err.message).toContain('300 ms');
    expect(err.attempts).toBeGreaterThan(1);
    expect(err.cause.code).toBe('53300');
  });

  it('issue 8, defect 6: pool.end() during admission backoff stops the retries at once', async () => {
    endpoint.faults.setMaxConnections(0);
    const p = createPool(config({ connectionTimeoutMillis: 60_000 }));
    const refused = () => endpoint.stats().admissionRefused['53300'];
    endpoint.resetStats();
    const pending = p.query('SELECT 1').catch((e) => e);
    // In backoff: refused, and the refused client gone (end() during an attempt settles it too, without a cause yet).
    while (refused() < 1 || p.totalCount > 0) await new Promise((r) => setTimeout(r, 5));
    const atEnd = refused();
    await p.end();
    const err = await pending;
    expect(err).toBeInstanceOf(DsqlConnectionError);
    expect(err.message).toMatch(/ended/);
    expect(err.cause.code).toBe('53300');
    // At most the attempt already in flight when end() was called reaches the server.
    await new Promise((r) => setTimeout(r, 300));
    expect(refused()).toBeLessThanOrEqual(atEnd + 1);
  });

  it('pool.end() while a new connection waits for its token: that connection is never dialled', async () => {
    let provide = (): void => {};
    const asked = new Promise<void>((resolveAsked) => {
      provide = resolveAsked; // replaced once the provider is called
    });
    const credentials = () =>
      new Promise<typeof endpoint.credentials>((resolve) => {
        const notify = provide;
        provide = () => resolve({ ...endpoint.credentials });
        notify();
      });
    const p = createPool(config({ credentials, connectionTimeoutMillis: 60_000 }));
    endpoint.resetStats();
    const err = p.query('SELECT 1').catch((e: unknown) => e);
    await asked;
    const ended = p.end();
    expect(String(await err)).toMatch(/the pool was ended/);
    provide();
    await ended;
    // Before the fix the client dialled and authenticated after end(), only to be closed.
    expect(endpoint.stats().connections.total).toBe(0);
  });

  it('a connection idle past maxIdleMillis on a silently dropped path is destroyed at checkout, not left half-closed', async () => {
    // A relay that can go silent as a dropped path does: no byte and no FIN comes back, ever.
    const pairs: Array<[net.Socket, net.Socket]> = [];
    const relay = net.createServer({ allowHalfOpen: true }, (socket) => {
      const upstream = net.connect(endpoint.port, endpoint.address);
      for (const s of [socket, upstream]) s.on('error', () => {});
      socket.pipe(upstream).pipe(socket);
      pairs.push([socket, upstream]);
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => {
      for (const pair of pairs) for (const s of pair) s.destroy();
      return new Promise((resolve) => relay.close(resolve));
    });
    const p = pool(
      { max: 1 },
      config({ hostaddr: '127.0.0.1', port: (relay.address() as net.AddressInfo).port }),
    );
    const first = await p.connect();
    const socket = (first as unknown as { connection: { stream: net.Socket } }).connection.stream;
    first.release();
    for (const [s, upstream] of pairs) {
      s.unpipe(upstream).resume();
      upstream.unpipe(s);
    }
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 400_000); // idle past maxIdleMillis (300 s), as after a long freeze
    expect((await p.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    expect((p as DsqlPool).checkoutStats().evictedIdle).toBe(1);
    // Before the fix pg's goodbye waited for a peer that is gone: the socket stayed open (and ref'd).
    expect(socket.destroyed).toBe(true);
  });

  it('keeps 20 checkouts in admission backoff without a MaxListenersExceededWarning', async () => {
    endpoint.faults.setMaxConnections(0);
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    cleanups.push(() => process.off('warning', onWarning));
    const p = createPool(config({ connectionTimeoutMillis: 600_000, max: 20 }));
    endpoint.resetStats();
    const queries = Array.from({ length: 20 }, () => p.query('SELECT 1').catch((e: Error) => e));
    // Each has an end() listener on the pool (Node warns past 10 on one AbortSignal).
    while ((endpoint.stats().admissionRefused['53300'] ?? 0) < 20 || p.totalCount > 0)
      await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 20)); // process.emitWarning emits on a later tick
    expect(warnings).not.toContain('MaxListenersExceededWarning');
    await p.end();
    for (const err of await Promise.all(queries)) expect(String(err)).toMatch(/the pool was ended/);
  });

  it('issue 8, defect 8: the token is not visible on the pool while a connection authenticates', async () => {
    const p = pool();
    let seen: string | undefined;
    const onAuth = () => {
      seen = inspect(p, { depth: 10, showHidden: true });
    };
    endpoint.events.once('auth', onAuth);
    await p.query('SELECT 1');
    expect(seen).toBeDefined();
    expect(seen).not.toMatch(/X-Amz-Signature=[0-9a-f]{64}/);
  });
});

describe('a script that never ends its pool', () => {
  it('issue 8, defect 11: exits once its connections are idle (allowExitOnIdle)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dsql-exit-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const script = join(dir, 'script.mts');
    const poolModule = new URL('../../src/pool.ts', import.meta.url).href;
    writeFileSync(
      script,
      `import { createPool } from ${JSON.stringify(poolModule)};\n` +
        `const pool = createPool(${JSON.stringify(config())});\n` +
        `console.log((await pool.query('SELECT 1 AS one')).rows[0].one);\n`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    // Bare pg exits after its 10 s idle timer; 300 s (our idle timer) would keep it alive past this.
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) =>
      child.once('exit', (c, s) => resolve([c, s])),
    );
    clearTimeout(killer);
    expect(signal, err).toBeNull();
    expect(code, err).toBe(0);
    expect(out.trim()).toBe('1');
  }, 90_000);
});

describe('credential sources against the local endpoint', () => {
  const saved = { ...process.env };
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'dsql-connector-'));
  });
  afterEach(() => {
    for (const key of Object.keys(process.env)) if (!(key in saved)) delete process.env[key];
    Object.assign(process.env, saved);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function base(extra: DsqlConfig = {}): DsqlConfig {
    const { credentials: _omit, ...rest } = config(extra);
    return rest;
  }

  it('reads a profile from a shared credentials file', async () => {
    const c = endpoint.credentials;
    writeFileSync(
      join(dir, 'credentials'),
      `[dsql-test]\naws_access_key_id = ${c.accessKeyId}\naws_secret_access_key = ${c.secretAccessKey}\n` +
        (c.sessionToken ? `aws_session_token = ${c.sessionToken}\n` : ''),
    );
    writeFileSync(join(dir, 'config'), '[profile dsql-test]\nregion = us-east-1\n');
    process.env.AWS_SHARED_CREDENTIALS_FILE = join(dir, 'credentials');
    process.env.AWS_CONFIG_FILE = join(dir, 'config');
    const p = pool({}, { ...base(), profile: 'dsql-test' });
    expect((await p.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });

  it('takes credentials from the environment (the Lambda fast path)', async () => {
    process.env.AWS_ACCESS_KEY_ID = endpoint.credentials.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = endpoint.credentials.secretAccessKey;
    if (endpoint.credentials.sessionToken) process.env.AWS_SESSION_TOKEN = endpoint.credentials.sessionToken;
    const resolved = resolveConfig(base());
    expect(resolved.credentialSource.kind).toBe('environment');
    const p = pool({}, base());
    expect((await p.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });

  it('configures everything from the environment the endpoint describes', async () => {
    Object.assign(process.env, endpoint.env);
    const client = await connect({ ssl: { ca: endpoint.ca }, tokenDurationSecs: nextDuration-- });
    cleanups.push(() => client.end());
    expect((await client.query('SELECT current_user AS u')).rows[0].u).toBeTruthy();
  });
});

describe('connect', () => {
  it('returns a connected pg.Client for a non-admin user', async () => {
    endpoint.resetStats();
    const client = await connect(config({ user: 'app_writer' }));
    cleanups.push(() => client.end());
    expect((await client.query('SELECT 3 AS three')).rows[0].three).toBe(3);
    expect(endpoint.stats().tokensByUser.app_writer).toBe(1);
  });

  it('accepts a connection string', async () => {
    const url = `dsql://admin@${endpoint.host}:${endpoint.port}/postgres?hostaddr=${endpoint.address}&sslnegotiation=postgres&tokenDurationSecs=${nextDuration--}`;
    const client = await connect({
      connectionString: url,
      ssl: { ca: endpoint.ca },
      credentials: endpoint.credentials,
    });
    cleanups.push(() => client.end());
    expect((await client.query('SELECT 4 AS four')).rows[0].four).toBe(4);
  });
});
