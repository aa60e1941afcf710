// Connection retry against a tiny admission server in front of the local PostgreSQL
// (the test upstream, trust auth): it refuses, then relays. Plain TCP, so the retry loop is tested
// on its own; TLS and tokens are covered by connector.test.ts against the DSQL-like endpoint.
import net from 'node:net';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { DsqlConnectionError } from '../../src/errors.js';
import { DsqlClient, type DsqlConnectPolicy } from '../../src/pool.js';
import { testUpstream } from '../helpers/endpoint.js';

const UPSTREAM = testUpstream('postgres');

type Behaviour = 'relay' | '53400' | '53300' | '28P01' | 'reset';

function errorResponse(code: string, message: string): Buffer {
  const fields = Buffer.from(`SFATAL\0VFATAL\0C${code}\0M${message}\0\0`, 'utf8');
  const head = Buffer.alloc(5);
  head.write('E', 0);
  head.writeInt32BE(fields.length + 4, 1);
  return Buffer.concat([head, fields]);
}

const CLEARTEXT_PASSWORD_REQUEST = Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 3]);

async function admissionServer(plan: (n: number) => Behaviour) {
  let connections = 0;
  const passwords: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const behaviour = plan(++connections);
    if (behaviour === 'relay') {
      const upstream = net.connect(UPSTREAM.port, UPSTREAM.host);
      upstream.on('error', () => socket.destroy());
      socket.pipe(upstream).pipe(socket);
      return;
    }
    if (behaviour === 'reset') {
      socket.resetAndDestroy();
      return;
    }
    let askedPassword = false;
    socket.on('data', (chunk) => {
      if (behaviour === '28P01') {
        if (!askedPassword) {
          askedPassword = true;
          socket.write(CLEARTEXT_PASSWORD_REQUEST);
          return;
        }
        passwords.push(chunk.subarray(5, chunk.length - 1).toString('utf8'));
        socket.end(errorResponse('28P01', 'IAM authentication failed for user "admin"'));
        return;
      }
      const message =
        behaviour === '53400'
          ? 'Unable to accept connection, rate exceeded.'
          : 'Unable to accept connection, too many open connections.';
      socket.end(errorResponse(behaviour, message));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    get connections() {
      return connections;
    },
    passwords,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

function clientConfig(port: number, token = 'the-token'): pg.ClientConfig {
  return { host: '127.0.0.1', port, user: 'postgres', database: 'postgres', password: async () => token };
}

const fast: DsqlConnectPolicy = { connectionTimeoutMillis: 10_000 };

describe('DsqlClient.connect retries admission refusals', () => {
  it('retries 53400 and 53300 until admitted', async () => {
    const server = await admissionServer((n) =>
      n === 1 ? '53400' : n === 2 ? '53300' : n === 3 ? 'reset' : 'relay',
    );
    cleanups.push(server.close);
    const client = new DsqlClient(clientConfig(server.port), fast);
    cleanups.push(() => client.end());
    await client.connect();
    expect(server.connections).toBe(4);
    expect((await client.query('SELECT 41 + 1 AS answer')).rows[0].answer).toBe(42);
  });

  it('gives up with DsqlConnectionError when the budget is spent', async () => {
    const server = await admissionServer(() => '53400');
    cleanups.push(server.close);
    const client = new DsqlClient(clientConfig(server.port), { ...fast, connectionTimeoutMillis: 300 });
    const err = await client.connect().catch((e) => e);
    expect(err).toBeInstanceOf(DsqlConnectionError);
    expect(err.attempts).toBeGreaterThan(1);
    expect(err.attempts).toBe(server.connections);
    expect(err.cause.code).toBe('53400');
  });

  it('never retries an authentication failure, and reports the rejected token', async () => {
    const server = await admissionServer(() => '28P01');
    cleanups.push(server.close);
    const rejected: string[] = [];
    const client = new DsqlClient(clientConfig(server.port, 'token-123'), {
      ...fast,
      onAuthFailure: (t) => rejected.push(t),
    });
    const err = await client.connect().catch((e) => e);
    expect(err.code).toBe('28P01');
    expect(server.connections).toBe(1);
    expect(server.passwords).toEqual(['token-123']);
    expect(rejected).toEqual(['token-123']);
  });

  it('works as a pg.Pool Client, with callbacks', async () => {
    const server = await admissionServer((n) => (n <= 2 ? '53400' : 'relay'));
    cleanups.push(server.close);
    class PoolClient extends DsqlClient {
      constructor(options: pg.ClientConfig) {
        super(options, fast);
      }
    }
    const pool = new pg.Pool({ ...clientConfig(server.port), Client: PoolClient as never, max: 2 });
    cleanups.push(() => pool.end());
    const { rows } = await pool.query('SELECT 1 AS one');
    expect(rows[0].one).toBe(1);
    expect(server.connections).toBe(3);
    const viaCallback = await new Promise<unknown>((resolve) => {
      const c = new DsqlClient(clientConfig(server.port), fast);
      c.connect((err: Error | null) => {
        resolve(err ?? 'connected');
        c.end().catch(() => {});
      });
    });
    expect(viaCallback).toBe('connected');
  });

  it('stops retrying when the client is ended meanwhile', async () => {
    const server = await admissionServer(() => '53300');
    cleanups.push(server.close);
    const client = new DsqlClient(clientConfig(server.port), fast);
    const pending = client.connect().catch((e) => e);
    while (server.connections < 1) await new Promise((r) => setTimeout(r, 5));
    await client.end();
    const err = await pending;
    expect(err).toBeInstanceOf(Error);
    expect(server.connections).toBeLessThanOrEqual(2);
  });

  it('a second connect() is refused as pg refuses it, and the connection stays usable', async () => {
    const server = await admissionServer(() => 'relay');
    cleanups.push(server.close);
    const client = new DsqlClient(clientConfig(server.port), fast);
    cleanups.push(() => client.end());
    await client.connect();
    await expect(client.connect()).rejects.toThrow(/already been connected/);
    expect((await client.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });
});
