/**
 * An endpoint no client can crash: floods, malformed and oversized frames, truncated TLS, slow
 * senders and random bytes, thrown at an endpoint running in its own process. Afterwards it must
 * still be running, serve a valid client, and its memory must have stayed within a bound derived
 * from the pre-authentication limits (not from timing).
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgConfig, signTestToken } from '../../../test/helpers/endpoint.js';
import { MAX_STARTUP_PACKET_BYTES } from '../src/admission.js';
import type { LocalDsql, LocalDsqlOptions, LocalDsqlStats } from '../src/index.js';
import {
  frame,
  GSSENC_REQUEST_CODE,
  PROTOCOL_V3,
  SSL_REQUEST_CODE,
  startupMessage,
} from '../src/protocol.js';

const MAX_UNAUTHENTICATED = 120;

interface Memory {
  usage: NodeJS.MemoryUsage;
  stats: LocalDsqlStats;
}

/** An endpoint in a child process (see fixtures/endpoint-process.ts). */
interface Child {
  endpoint: LocalDsql;
  ask(message: 'memory'): Promise<Memory>;
  exited(): boolean;
  stop(): Promise<void>;
}

async function startChild(options: LocalDsqlOptions): Promise<Child> {
  const child = fork(
    new URL('./fixtures/endpoint-process.ts', import.meta.url).pathname,
    [JSON.stringify(options)],
    {
      execArgv: ['--import', 'tsx', '--expose-gc'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    },
  );
  let exited = false;
  child.on('exit', () => {
    exited = true;
  });
  const [ready] = (await once(child, 'message')) as [{ endpoint: LocalDsql }];
  return {
    endpoint: ready.endpoint,
    exited: () => exited,
    ask: (message) =>
      new Promise((resolve, reject) => {
        const onExit = () => reject(new Error('endpoint process exited'));
        child.once('exit', onExit);
        child.once('message', (m: Memory) => {
          child.removeListener('exit', onExit);
          resolve(m);
        });
        child.send(message);
      }),
    stop: async () => {
      if (exited) return;
      child.send('stop');
      await once(child, 'exit');
    },
  };
}

// The main target: a handshake deadline far longer than any test here takes on a busy machine,
// so only the limits under test close connections. Slow senders get an endpoint of their own.
let main: Child;
let endpoint: LocalDsql;
const ask = (message: 'memory') => main.ask(message);

beforeAll(async () => {
  main = await startChild({
    handshakeTimeoutMs: 600_000,
    maxUnauthenticatedConnections: MAX_UNAUTHENTICATED,
  });
  endpoint = main.endpoint;
});

afterAll(async () => {
  await main.stop();
});

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

/** An 8-byte negotiation request (SSLRequest, GSSENCRequest). */
function request(code: number): Buffer {
  return Buffer.concat([u32(8), u32(code)]);
}

/** Everything the endpoint sends until it closes (or errors) the connection. */
function untilClosed(socket: net.Socket | tls.TLSSocket): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => resolve(Buffer.concat(chunks)));
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

function dial(target: LocalDsql = endpoint): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(target.port, target.address, () => resolve(s));
    s.once('error', reject);
  });
}

/** A TLS session (SSLRequest negotiation, SNI = endpoint host) on which nothing is sent yet. */
async function dialTls(): Promise<tls.TLSSocket> {
  const raw = await dial();
  raw.write(request(SSL_REQUEST_CODE));
  const [answer] = (await once(raw, 'data')) as [Buffer];
  expect(answer.toString()).toBe('S');
  const socket = tls.connect({ socket: raw, servername: endpoint.host, ca: endpoint.ca });
  await once(socket, 'secureConnect');
  return socket;
}

/** Error message fields (`M`) of every ErrorResponse in `bytes`. */
function errorMessages(bytes: Buffer): string[] {
  const out: string[] = [];
  let i = bytes.indexOf('E');
  while (i >= 0 && i + 5 <= bytes.length) {
    const len = bytes.readInt32BE(i + 1);
    const body = bytes.subarray(i + 5, i + 1 + len);
    const m = body.indexOf('\0M');
    if (m >= 0) out.push(body.toString('utf8', m + 2, body.indexOf(0, m + 2)));
    i = bytes.indexOf('E', i + 1 + len);
  }
  return out;
}

async function validClientWorks(): Promise<void> {
  const client = new pg.Client(pgConfig(endpoint, { password: await signTestToken(endpoint) }));
  await client.connect();
  try {
    expect((await client.query('SELECT 40 + 2 AS n')).rows).toEqual([{ n: 42 }]);
  } finally {
    await client.end();
  }
}

/** A real TLS ClientHello for the endpoint's host. */
async function clientHello(): Promise<Buffer> {
  let hello: Buffer | undefined;
  const wire = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      hello ??= Buffer.from(chunk);
      callback();
    },
  });
  const socket = tls.connect({ socket: wire, servername: endpoint.host, ALPNProtocols: ['postgresql'] });
  socket.on('error', () => {});
  while (!hello) await new Promise((r) => setImmediate(r));
  socket.destroy();
  return hello;
}

describe('the endpoint survives hostile clients', () => {
  let before: Memory;

  it('serves a valid client at the start', async () => {
    await validClientWorks();
    before = await ask('memory');
  });

  it('8,000 GSSENCRequests in one write: one N, then PostgreSQL’s refusal; no recursion', async () => {
    const socket = await dial();
    const got = untilClosed(socket);
    socket.write(Buffer.concat(Array.from({ length: 8000 }, () => request(GSSENC_REQUEST_CODE))));
    const bytes = await got;
    expect(bytes.subarray(0, 1).toString()).toBe('N');
    expect(errorMessages(bytes.subarray(1))).toEqual([
      'unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0',
    ]);
  });

  it('GSSENCRequest then SSLRequest (what libpq sends with gssencmode=prefer) still gets TLS', async () => {
    const socket = await dial();
    socket.write(Buffer.concat([request(GSSENC_REQUEST_CODE), request(SSL_REQUEST_CODE)]));
    let answer = Buffer.alloc(0);
    while (answer.length < 2) answer = Buffer.concat([answer, ((await once(socket, 'data')) as [Buffer])[0]]);
    expect(answer.toString()).toBe('NS');
    socket.destroy();
  });

  it('SSLRequest floods: a repeated request after TLS is refused, as PostgreSQL does', async () => {
    const socket = await dialTls();
    const got = untilClosed(socket);
    socket.write(Buffer.concat(Array.from({ length: 5000 }, () => request(SSL_REQUEST_CODE))));
    expect(errorMessages(await got)).toEqual(['unsupported frontend protocol']);
  });

  it('a startup packet announcing more than 10,000 bytes is refused at its length, plaintext and TLS', async () => {
    for (const len of [MAX_STARTUP_PACKET_BYTES + 1, 512 * 1024 * 1024, 0x7fffffff, 3]) {
      const plain = await dial();
      const got = untilClosed(plain);
      plain.write(Buffer.concat([u32(len), u32(PROTOCOL_V3)]));
      expect(errorMessages(await got)).toEqual(['invalid startup packet']);
      const secure = await dialTls();
      const gotTls = untilClosed(secure);
      secure.write(Buffer.concat([u32(len), u32(PROTOCOL_V3)]));
      expect(errorMessages(await gotTls)).toEqual(['invalid startup packet']);
    }
  });

  it('a password message announcing 1 GiB is refused at its length', async () => {
    const socket = await dialTls();
    const got = untilClosed(socket);
    socket.write(startupMessage({ user: 'admin', database: 'postgres' }));
    socket.write(Buffer.concat([Buffer.from('p'), u32(1024 * 1024 * 1024)]));
    expect(errorMessages(await got)).toEqual(['invalid startup packet']);
  });

  it('streaming megabytes into an oversized startup packet does not make the endpoint hold them', async () => {
    // Before the limit, 4 connections announcing 512 MB grew the endpoint from 57 MB to 2.1 GB.
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const replies = await Promise.all(
      Array.from({ length: 16 }, async () => {
        const socket = await dial();
        const done = untilClosed(socket);
        socket.write(Buffer.concat([u32(512 * 1024 * 1024), u32(PROTOCOL_V3)]));
        let sent = 0;
        while (!socket.destroyed && sent < 8 * 1024 * 1024) {
          if (!socket.write(chunk)) await Promise.race([once(socket, 'drain'), done]);
          sent += chunk.length;
        }
        return { socket, done };
      }),
    );
    // Measured before the clients close: whatever the endpoint kept of the 128 MB is still held.
    const during = await ask('memory');
    const heap = (m: Memory) => m.usage.heapUsed + m.usage.arrayBuffers;
    expect(heap(during) - heap(before)).toBeLessThan(48 * 1024 * 1024);
    for (const { socket, done } of replies) {
      socket.destroy();
      expect(errorMessages(await done)).toEqual(['invalid startup packet']);
    }
  });

  it('truncated TLS (half a ClientHello, then silence or FIN) and garbage records', async () => {
    const hello = await clientHello();
    for (const cut of [1, 5, 6, Math.floor(hello.length / 2), hello.length - 1]) {
      const withFin = await dial();
      const closed = untilClosed(withFin);
      withFin.end(hello.subarray(0, cut));
      await closed;
    }
    const garbage = await dial();
    const closed = untilClosed(garbage);
    garbage.write(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff]), Buffer.alloc(2000, 7)]));
    garbage.end();
    await closed;
  });

  it('random bytes, plaintext and inside TLS, never take it down', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 1, maxLength: 400 }),
        fc.boolean(),
        async (bytes, overTls) => {
          const socket = overTls ? await dialTls() : await dial();
          const closed = untilClosed(socket);
          socket.write(Buffer.from(bytes));
          socket.end();
          await closed;
        },
      ),
      { numRuns: 150 },
    );
  });

  it('random typed frames after authentication reach PostgreSQL, which refuses them; the endpoint stays up', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            type: fc.constantFrom('Q', 'P', 'B', 'E', 'S', 'C', 'D', 'H', 'F', 'X', 'z'),
            body: fc.uint8Array({ maxLength: 200 }),
          }),
          { minLength: 1, maxLength: 8 },
        ),
        async (frames) => {
          const socket = await dialTls();
          const closed = untilClosed(socket);
          socket.write(startupMessage({ user: 'admin', database: 'postgres' }));
          socket.write(frame('p', Buffer.from(`${await signTestToken(endpoint)}\0`)));
          socket.write(Buffer.concat(frames.map((f) => frame(f.type, Buffer.from(f.body)))));
          socket.end();
          await closed;
        },
      ),
      { numRuns: 40 },
    );
  });

  it('slow senders are closed by the handshake deadline', async () => {
    const slowTarget = await startChild({ handshakeTimeoutMs: 1500 });
    try {
      const slow = await Promise.all(Array.from({ length: 5 }, () => dial(slowTarget.endpoint)));
      const closed = slow.map((s) => untilClosed(s));
      const header = Buffer.concat([u32(64), u32(PROTOCOL_V3)]);
      let i = 0;
      const timer = setInterval(() => {
        for (const s of slow) if (!s.destroyed && i < header.length) s.write(header.subarray(i, i + 1));
        i++;
      }, 200);
      try {
        await Promise.all(closed);
      } finally {
        clearInterval(timer);
      }
      const { stats } = await slowTarget.ask('memory');
      expect(stats.preAuthRefused['handshake-timeout']).toBe(5);
      expect(slowTarget.exited()).toBe(false);
    } finally {
      await slowTarget.stop();
    }
  });

  it('memory stays bounded while the cap of unauthenticated connections is held, and extra ones are refused', async () => {
    // Each held connection keeps the most a client can make it keep: a startup packet one byte
    // short of the limit (plaintext) or, after TLS and startup, a password message 1 KB short of
    // its 65,535-byte limit.
    const held: (net.Socket | tls.TLSSocket)[] = [];
    const half = MAX_UNAUTHENTICATED / 2;
    for (let i = 0; i < half; i++) {
      const s = await dial();
      s.write(Buffer.concat([u32(MAX_STARTUP_PACKET_BYTES), u32(PROTOCOL_V3), Buffer.alloc(9000, 1)]));
      held.push(s);
    }
    for (let i = 0; i < half; i++) {
      const s = await dialTls();
      s.write(startupMessage({ user: 'admin', database: 'postgres' }));
      s.write(Buffer.concat([Buffer.from('p'), u32(65_535), Buffer.alloc(64_000, 2)]));
      held.push(s);
    }
    const extra = await dial();
    const refused = await untilClosed(extra);
    expect(errorMessages(refused)).toEqual(['too many connections awaiting authentication']);
    const during = await ask('memory');
    expect(during.stats.preAuthRefused['unauthenticated-cap']).toBeGreaterThanOrEqual(1);
    // Bound: what the limits allow (60 × 10 KB + 60 × 64 KB ≈ 4.4 MB of frames) plus TLS state,
    // with a wide margin; without the limits this test alone would hold several hundred MB.
    const heap = (m: Memory) => m.usage.heapUsed + m.usage.arrayBuffers;
    expect(heap(during) - heap(before)).toBeLessThan(48 * 1024 * 1024);
    expect(during.usage.rss - before.usage.rss).toBeLessThan(160 * 1024 * 1024);
    for (const s of held) s.destroy();
    // The endpoint notices the closes in its own time: wait until it has, so the next test's
    // client is not refused by the cap these connections held.
    while ((await ask('memory')).stats.awaitingAuthentication > 0)
      await new Promise((r) => setTimeout(r, 20));
  });

  it('is still running and serves a valid client afterwards', async () => {
    await validClientWorks();
    expect(main.exited()).toBe(false);
    const after = await ask('memory');
    expect(after.stats.protocolViolations).toBeGreaterThan(0);
  });
});
