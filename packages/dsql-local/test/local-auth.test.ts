import { execFile } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgConfig, signTestToken, startTestEndpoint } from '../../../test/helpers/endpoint.js';
import type { LocalDsql } from '../src/index.js';

const run = promisify(execFile);
const NON_ADMIN = 'dsql_local_test_user';

let endpoint: LocalDsql;

beforeAll(async () => {
  endpoint = await startTestEndpoint();
});

afterAll(async () => {
  await endpoint.stop();
});

/** Connects with `config`, runs `sql`, closes; returns rows. */
async function roundTrip(config: pg.ClientConfig, sql = 'SELECT 1 AS one') {
  const client = new pg.Client(config);
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

/** Expects the connection attempt to fail; returns the error. */
async function connectError(config: pg.ClientConfig): Promise<Error & { code?: string }> {
  const client = new pg.Client(config);
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    return err as Error & { code?: string };
  }
  await client.end();
  throw new Error('connection unexpectedly succeeded');
}

/** Reads one ErrorResponse's message field from raw bytes. */
function errorMessageOf(bytes: Buffer): string {
  expect(String.fromCharCode(bytes[0]!)).toBe('E');
  const m = bytes.indexOf('M', 5);
  return bytes.toString('utf8', m + 1, bytes.indexOf(0, m));
}

function readAll(socket: net.Socket | tls.TLSSocket): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => resolve(Buffer.concat(chunks)));
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

describe.each(['postgres', 'direct'] as const)('sslnegotiation %s', (sslnegotiation) => {
  it('admin token from DsqlSigner is accepted and a query round-trips', async () => {
    const password = await signTestToken(endpoint);
    const rows = await roundTrip(
      pgConfig(endpoint, { password, sslnegotiation }),
      "SELECT current_user AS u, current_setting('default_transaction_isolation') AS iso, 41 + 1 AS n",
    );
    expect(rows).toEqual([{ u: 'postgres', iso: 'repeatable read', n: 42 }]);
    expect(endpoint.stats().connections.byNegotiation[sslnegotiation]).toBeGreaterThan(0);
  });

  it('non-admin user with a DbConnect token maps to a role of its name', async () => {
    const password = await signTestToken(endpoint, { user: NON_ADMIN });
    const rows = await roundTrip(
      pgConfig(endpoint, { user: NON_ADMIN, password, sslnegotiation }),
      'SELECT current_user AS u',
    );
    expect(rows).toEqual([{ u: NON_ADMIN }]);
  });
});

describe('token refusals', () => {
  const authFailed = (user = 'admin') => `IAM authentication failed for user "${user}"`;

  async function expectRefused(config: pg.ClientConfig, reason: string, user = 'admin') {
    const before = endpoint.stats().auth.failedByReason as Record<string, number>;
    const err = await connectError(config);
    expect(err.message).toBe(authFailed(user));
    expect(err.code).toBe('28000');
    const after = endpoint.stats().auth.failedByReason as Record<string, number>;
    expect(after[reason] ?? 0).toBe((before[reason] ?? 0) + 1);
  }

  it('tampered signature', async () => {
    const token = await signTestToken(endpoint);
    const tampered = token.replace(
      /X-Amz-Signature=([0-9a-f])/,
      (_m, c: string) => `X-Amz-Signature=${c === 'a' ? 'b' : 'a'}`,
    );
    expect(tampered).not.toBe(token);
    await expectRefused(pgConfig(endpoint, { password: tampered }), 'signature');
  });

  it('wrong secret access key', async () => {
    const credentials = { ...endpoint.credentials, secretAccessKey: 'not-the-secret' };
    await expectRefused(
      pgConfig(endpoint, { password: await signTestToken(endpoint, { credentials }) }),
      'signature',
    );
  });

  it('unknown access key id', async () => {
    const credentials = { ...endpoint.credentials, accessKeyId: 'ASIAUNKNOWNUNKNOWN00' };
    await expectRefused(
      pgConfig(endpoint, { password: await signTestToken(endpoint, { credentials }) }),
      'unknown-key',
    );
  });

  it('different session token', async () => {
    const credentials = { ...endpoint.credentials, sessionToken: 'other-session' };
    await expectRefused(
      pgConfig(endpoint, { password: await signTestToken(endpoint, { credentials }) }),
      'session-token',
    );
  });

  it('wrong region', async () => {
    await expectRefused(
      pgConfig(endpoint, { password: await signTestToken(endpoint, { region: 'eu-west-1' }) }),
      'region',
    );
  });

  it('token for another host', async () => {
    const hostname = `${'b'.repeat(26)}.dsql.${endpoint.region}.on.aws`;
    await expectRefused(
      pgConfig(endpoint, { password: await signTestToken(endpoint, { hostname }) }),
      'host',
    );
  });

  it('DbConnect token used for admin, DbConnectAdmin for another user', async () => {
    await expectRefused(
      pgConfig(endpoint, { password: await signTestToken(endpoint, { action: 'DbConnect' }) }),
      'action',
    );
    await expectRefused(
      pgConfig(endpoint, {
        user: NON_ADMIN,
        password: await signTestToken(endpoint, { user: NON_ADMIN, action: 'DbConnectAdmin' }),
      }),
      'action',
      NON_ADMIN,
    );
  });

  it('expired token (endpoint clock moved past X-Amz-Expires)', async () => {
    const password = await signTestToken(endpoint, { expiresIn: 60 });
    endpoint.setClock(Date.now() + 61_000);
    try {
      await expectRefused(pgConfig(endpoint, { password }), 'expired');
    } finally {
      endpoint.setClock(undefined);
    }
    // The same token works again once the clock is back: only the time made it fail.
    expect(await roundTrip(pgConfig(endpoint, { password }))).toEqual([{ one: 1 }]);
  });

  it('token signed in the past but still valid, and one dated in the future', async () => {
    const past = await signTestToken(endpoint, { at: new Date(Date.now() - 600_000), expiresIn: 900 });
    expect(await roundTrip(pgConfig(endpoint, { password: past }))).toEqual([{ one: 1 }]);
    const future = await signTestToken(endpoint, { at: new Date(Date.now() + 3_600_000) });
    await expectRefused(pgConfig(endpoint, { password: future }), 'not-yet-valid');
  });

  it('garbage password', async () => {
    await expectRefused(pgConfig(endpoint, { password: 'hunter2' }), 'malformed');
  });
});

describe('transport refusals', () => {
  it('missing SNI (dialled by IP with no servername)', async () => {
    const err = await connectError(
      pgConfig(endpoint, { password: await signTestToken(endpoint), servername: null }),
    );
    expect(err.message).toBe('unable to accept connection, sni was not received');
    expect(endpoint.stats().auth.failedByReason['no-sni']).toBeGreaterThan(0);
  });

  it('plaintext startup', async () => {
    const before = endpoint.stats().plaintextRefused;
    const err = await connectError({ ...pgConfig(endpoint, { password: 'x' }), ssl: false });
    expect(err.message).toMatch(/SSL\/TLS is required/);
    expect(endpoint.stats().plaintextRefused).toBe(before + 1);
  });

  it('direct TLS without ALPN', async () => {
    const socket = tls.connect({
      host: endpoint.address,
      port: endpoint.port,
      servername: endpoint.host,
      ca: endpoint.ca,
    });
    const bytes = await readAll(socket);
    expect(errorMessageOf(bytes)).toMatch(/without ALPN/);
  });

  it('bytes pipelined after SSLRequest', async () => {
    const socket = net.connect({ host: endpoint.address, port: endpoint.port });
    const sslRequest = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    socket.write(Buffer.concat([sslRequest, Buffer.from('garbage')]));
    const bytes = await readAll(socket);
    expect(errorMessageOf(bytes)).toBe('received unencrypted data after SSL request');
  });

  it('psql (libpq, SSLRequest, verify-full) with a signed token', async () => {
    const password = await signTestToken(endpoint);
    const conn = `host=${endpoint.host} hostaddr=${endpoint.address} port=${endpoint.port} sslmode=verify-full sslrootcert=${endpoint.caFile} user=admin dbname=postgres`;
    const { stdout } = await run('psql', [conn, '-At', '-c', 'SELECT 6 * 7'], {
      env: { ...process.env, PGPASSWORD: password },
    });
    expect(stdout.trim()).toBe('42');
    const bad = run('psql', [conn, '-At', '-c', 'SELECT 1'], {
      env: { ...process.env, PGPASSWORD: `${password}x` },
    });
    await expect(bad).rejects.toMatchObject({
      stderr: expect.stringContaining('IAM authentication failed for user "admin"'),
    });
  });
});

describe('sessions and stats', () => {
  it('session id is the backend pid; tokens are counted, not stored', async () => {
    endpoint.resetStats();
    const password = await signTestToken(endpoint);
    const a = new pg.Client(pgConfig(endpoint, { password, sslnegotiation: 'direct' }));
    const b = new pg.Client(pgConfig(endpoint, { password }));
    await a.connect();
    await b.connect();
    try {
      const pid = (await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      await a.query('BEGIN');
      const session = endpoint.sessions().find((s) => s.id === pid);
      expect(session).toMatchObject({
        user: 'admin',
        negotiation: 'direct',
        inTransaction: true,
        sni: endpoint.host,
      });
      await a.query('ROLLBACK');
      const stats = endpoint.stats();
      expect(stats.tokensAccepted).toBe(2);
      expect(stats.distinctTokensAccepted).toBe(1);
      expect(Object.values(stats.tokensBySigningDate)).toEqual([2]);
      expect(stats.tokensByUser).toEqual({ admin: 2 });
      expect(stats.currentSessions).toBe(2);
      expect(JSON.stringify(stats)).not.toContain(password.slice(-64));
    } finally {
      await a.end();
      await b.end();
    }
  });

  it('CancelRequest over TLS reaches the upstream', async () => {
    const client = new pg.Client(pgConfig(endpoint, { password: await signTestToken(endpoint) }));
    await client.connect();
    try {
      const running = client.query('SELECT pg_sleep(10)').then(
        () => undefined,
        (err: unknown) => err,
      );
      await new Promise((r) => setTimeout(r, 200));
      const { processID, secretKey } = client as unknown as { processID: number; secretKey: number };
      const cancel = Buffer.alloc(16);
      cancel.writeInt32BE(16, 0);
      cancel.writeInt32BE(80877102, 4);
      cancel.writeInt32BE(processID, 8);
      cancel.writeInt32BE(secretKey, 12);
      const socket = tls.connect({
        host: endpoint.address,
        port: endpoint.port,
        servername: endpoint.host,
        ca: endpoint.ca,
        ALPNProtocols: ['postgresql'],
      });
      socket.once('secureConnect', () => socket.write(cancel));
      await readAll(socket);
      expect(await running).toMatchObject({ code: '57014' });
    } finally {
      await client.end();
    }
  });
});

describe('options', () => {
  it('region, cluster id, long-term credentials, userMap and events', async () => {
    const longTerm = { accessKeyId: 'AKIA-test-long-term', secretAccessKey: 'long/term+secret' };
    const custom = await startTestEndpoint({
      region: 'eu-central-1',
      clusterId: 'abcdefghijklmnopqrstuvwxyz',
      credentials: [
        longTerm,
        { accessKeyId: 'ASIASECONDSECOND0000', secretAccessKey: 's2', sessionToken: 'tok' },
      ],
      userMap: { app: 'postgres' },
    });
    const seen: { ok: boolean; reason?: string }[] = [];
    custom.events.on('auth', (e: { ok: boolean; reason?: string }) => seen.push(e));
    try {
      expect(custom.host).toBe('abcdefghijklmnopqrstuvwxyz.dsql.eu-central-1.on.aws');
      expect(custom.credentials).toEqual(longTerm);
      expect(custom.env).toMatchObject({ AWS_REGION: 'eu-central-1', DSQL_ENDPOINT: custom.host });
      expect(custom.env.AWS_SESSION_TOKEN).toBeUndefined();
      const rows = await roundTrip(
        pgConfig(custom, { user: 'app', password: await signTestToken(custom, { user: 'app' }) }),
        'SELECT current_user AS u',
      );
      expect(rows).toEqual([{ u: 'postgres' }]);
      const second = { accessKeyId: 'ASIASECONDSECOND0000', secretAccessKey: 's2', sessionToken: 'tok' };
      expect(
        await roundTrip(pgConfig(custom, { password: await signTestToken(custom, { credentials: second }) })),
      ).toEqual([{ one: 1 }]);
      // A session token on a token signed with long-term credentials is refused.
      const withSession = { ...longTerm, sessionToken: 'extra' };
      const err = await connectError(
        pgConfig(custom, { password: await signTestToken(custom, { credentials: withSession }) }),
      );
      expect(err.code).toBe('28000');
      expect(seen.map((e) => e.ok)).toEqual([true, true, false]);
      expect(seen[2]?.reason).toBe('session-token');
    } finally {
      await custom.stop();
    }
  });
});
