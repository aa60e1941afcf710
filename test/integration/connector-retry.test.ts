// The pool's client class (what pg-pool instantiates for each new connection) against a tiny
// server in front of the test upstream PostgreSQL (trust auth): it relays, refuses, or asks for
// the password and then refuses or stalls. Plain TCP, so the token handling of one client is
// tested on its own; TLS, admission retries and the pool are covered by connector.test.ts
// against the DSQL-like endpoint.
import net from 'node:net';
import { inspect } from 'node:util';
import type pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { type DsqlConfig, resolveConfig } from '../../src/config.js';
import { DsqlConnectionError, DsqlTokenError } from '../../src/errors.js';
import { createPool } from '../../src/pool.js';
import { type TokenCache, tokenCacheFor } from '../../src/token.js';
import { testUpstream } from '../helpers/endpoint.js';

const UPSTREAM = testUpstream('postgres');

type Behaviour = 'relay' | '53400' | '53300' | '28P01' | 'stall' | 'reset' | 'refuse-open' | 'garbage';

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
      if (behaviour === '28P01' || behaviour === 'stall') {
        if (!askedPassword) {
          askedPassword = true;
          socket.write(CLEARTEXT_PASSWORD_REQUEST);
          return;
        }
        passwords.push(chunk.subarray(5, chunk.length - 1).toString('utf8'));
        if (behaviour === '28P01')
          socket.end(errorResponse('28P01', 'IAM authentication failed for user "admin"'));
        return;
      }
      // A server that lies: refuses, then keeps the connection open (a real one closes after a FATAL).
      if (behaviour === 'garbage') return void socket.write(Buffer.from([0xff, 0, 0, 0, 4]));
      if (behaviour === 'refuse-open')
        return void socket.write(errorResponse('53300', 'too many connections'));
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
    sockets,
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

const clientConfig = (port: number): pg.ClientConfig => ({
  host: '127.0.0.1',
  port,
  user: UPSTREAM.user,
  database: 'postgres',
});

/**
 * A client of a pool's own class, dialling `port` in plain TCP, and the token cache it uses. Each
 * call makes a distinct configuration (token lifetime), so its own cache.
 */
let nextDuration = 900;
function client(port: number, fail = false): { client: pg.Client; cache: TokenCache; calls: { n: number } } {
  const calls = { n: 0 };
  const config: DsqlConfig = {
    host: 'abc.dsql.us-east-1.on.aws',
    tokenDurationSecs: nextDuration--,
    credentials: async () => {
      calls.n++;
      if (fail) throw new Error('no credentials here');
      return { accessKeyId: 'AKIDTEST', secretAccessKey: 'TopSecretKeyForRetryTests' };
    },
  };
  const pool = createPool(config);
  cleanups.push(() => pool.end());
  const { Client } = pool as unknown as { Client: typeof pg.Client };
  return { client: new Client(clientConfig(port)), cache: tokenCacheFor(resolveConfig(config)), calls };
}
const signatureOf = (token: string) => /X-Amz-Signature=([0-9a-f]+)/.exec(token)?.[1] as string;

describe('the client of a pool', () => {
  it('obtains the token before dialling: a token failure opens no socket', async () => {
    const server = await admissionServer(() => 'relay');
    cleanups.push(server.close);
    const { client: c } = client(server.port, true);
    await expect(c.connect()).rejects.toBeInstanceOf(DsqlTokenError);
    expect(server.connections).toBe(0);
  });

  it('sends the cached token; an authentication failure is not retried and drops that token', async () => {
    const server = await admissionServer(() => '28P01');
    cleanups.push(server.close);
    const { client: c, cache, calls } = client(server.port);
    const token = await cache.get();
    const err = await c.connect().catch((e) => e);
    expect(err.code).toBe('28P01');
    expect(server.connections).toBe(1);
    expect(server.passwords).toEqual([token]);
    // The rejected token was dropped: the next get() resolves credentials and signs again.
    expect(calls.n).toBe(1);
    await cache.get();
    expect(calls.n).toBe(2);
    // issue 8, defect 8: the rejected token does not stay on the client.
    expect(inspect(c, { depth: 8, showHidden: true, getters: true })).not.toContain(signatureOf(token));
  });

  it('issue 8, defect 8: the token is not visible on the client while it authenticates', async () => {
    const server = await admissionServer(() => 'stall');
    cleanups.push(server.close);
    const { client: c, cache } = client(server.port);
    const token = await cache.get();
    const pending = c.connect().catch((e) => e);
    while (server.passwords.length === 0) await new Promise((r) => setTimeout(r, 5));
    expect(server.passwords).toEqual([token]);
    expect(inspect(c, { depth: 8, showHidden: true })).not.toContain(signatureOf(token));
    await server.close();
    await pending;
  });

  it('connects with a callback too, and a second connect() is refused as pg refuses it', async () => {
    const server = await admissionServer(() => 'relay');
    cleanups.push(server.close);
    const { client: c } = client(server.port);
    cleanups.push(() => c.end());
    const viaCallback = await new Promise<unknown>((resolve) =>
      c.connect((err: Error | null) => resolve(err ?? 'connected')),
    );
    expect(viaCallback).toBe('connected');
    await expect(c.connect()).rejects.toThrow(/already been connected/);
    expect((await c.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });
});

describe('a server that refuses and keeps the connection open', () => {
  it('the client closes its socket itself: a refused attempt leaves nothing open', async () => {
    const server = await admissionServer(() => 'refuse-open');
    cleanups.push(server.close);
    const { client: c } = client(server.port);
    const err = await c.connect().catch((e) => e);
    expect(err.code).toBe('53300');
    // Before the fix the socket stayed open (and the process alive) until the server closed it.
    while (server.sockets.size > 0) await new Promise((r) => setTimeout(r, 10));
  });

  it('the same for a server that answers garbage: the error is pg’s, not retried, and the socket closed', async () => {
    const server = await admissionServer(() => 'garbage');
    cleanups.push(server.close);
    const { client: c } = client(server.port);
    const err = await c.connect().catch((e) => e);
    expect(err.message).toMatch(/received invalid response/);
    expect(server.connections).toBe(1);
    while (server.sockets.size > 0) await new Promise((r) => setTimeout(r, 10));
  });
});

describe('a dial that never completes', () => {
  /** A server that accepts TCP, reads, and never answers (the TLS handshake never completes), and a pool dialling it. */
  async function silentServerPool(connectionTimeoutMillis: number) {
    const sockets = new Set<net.Socket>();
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.resume().on('error', () => {});
      socket.on('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => {
      for (const socket of sockets) socket.destroy(); // a failing test would otherwise wait for them
      return new Promise((resolve) => server.close(resolve));
    });
    const pool = createPool({
      host: 'abc.dsql.us-east-1.on.aws',
      hostaddr: '127.0.0.1',
      port: (server.address() as net.AddressInfo).port,
      credentials: { accessKeyId: 'AKIDTEST', secretAccessKey: 'TopSecretKeyForRetryTests' },
      connectionTimeoutMillis,
    });
    return { pool, sockets };
  }

  it('is closed by the client itself after connectionTimeoutMillis, not left open after the give-up', async () => {
    const { pool, sockets } = await silentServerPool(200);
    cleanups.push(() => pool.end());
    const err = await pool.query('SELECT 1').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DsqlConnectionError);
    expect((err as Error).message).toContain('abc.dsql.us-east-1.on.aws within 200 ms');
    // pg-pool has no timer here: pg's own (per client) destroys the socket; nothing waits for the OS.
    while (sockets.size > 0) await new Promise((r) => setTimeout(r, 10));
  });

  it('is given up at once by end(), which says the pool was ended, not that it timed out', async () => {
    // No test outlives the budget: only end() can settle the query.
    const { pool, sockets } = await silentServerPool(600_000);
    const query = pool.query('SELECT 1').catch((e: unknown) => e);
    while (sockets.size === 0) await new Promise((r) => setTimeout(r, 5));
    const ended = pool.end();
    const err = await query;
    expect(err).toBeInstanceOf(DsqlConnectionError);
    expect((err as Error).message).toMatch(/\(1 attempts\): the pool was ended$/);
    // pg-pool's end() waits for the dial: end() closes it (it waited for pg's timer, here 10 minutes).
    await ended;
    while (sockets.size > 0) await new Promise((r) => setTimeout(r, 10));
  });
});
