/**
 * Protocol sequences pg never sends but other clients (libpq, hand-written drivers) do: a
 * FunctionCall, COPY FROM STDIN through the extended protocol (libpq sends a Sync after the
 * Execute and another after CopyDone; PostgreSQL ignores the first), Syncs sent during COPY.
 * Every reply must still reach the request it answers: a commit fault or an OCC conflict at
 * COMMIT answers that COMMIT, not a later statement, and nothing hangs.
 */
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signTestToken, startTestEndpoint, testUpstream } from '../../../test/helpers/endpoint.js';
import type { LocalDsql } from '../src/index.js';
import {
  type Frame,
  FrameSplitter,
  frame,
  parseErrorFields,
  queryMessage,
  SSL_REQUEST_CODE,
  startupMessage,
} from '../src/protocol.js';

let endpoint: LocalDsql;
const table = `wire_${process.pid}_${Date.now().toString(36)}`;

beforeAll(async () => {
  endpoint = await startTestEndpoint();
});

afterAll(async () => {
  await endpoint.stop();
});

const cstr = (s: string) => Buffer.from(`${s}\0`);
const i16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
};
const i32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const parse = (sql: string) => frame('P', Buffer.concat([cstr(''), cstr(sql), i16(0)]));
const bind = () => frame('B', Buffer.concat([cstr(''), cstr(''), i16(0), i16(0), i16(0)]));
const execute = () => frame('E', Buffer.concat([cstr(''), i32(0)]));
const sync = () => frame('S', Buffer.alloc(0));
const describePortal = () => frame('D', Buffer.from('P\0'));

/** A raw authenticated session: send frames, read the replies up to each ReadyForQuery. */
interface Wire {
  send(...frames: Buffer[]): void;
  /** The replies up to the next ReadyForQuery, one word each: `C:COMMIT`, `E:40001`, `Z:I`, … */
  untilReady(): Promise<string[]>;
  /** The next reply frame's type. */
  nextType(): Promise<string>;
  close(): void;
}

async function wire(): Promise<Wire> {
  const raw = net.connect(endpoint.port, endpoint.address);
  await once(raw, 'connect');
  raw.write(Buffer.concat([i32(8), i32(SSL_REQUEST_CODE)]));
  await once(raw, 'data');
  const socket = tls.connect({ socket: raw, servername: endpoint.host, ca: endpoint.ca });
  await once(socket, 'secureConnect');
  const splitter = new FrameSplitter();
  const frames: Frame[] = [];
  let wake: (() => void) | undefined;
  let closed = false;
  socket.on('data', (chunk: Buffer) => {
    frames.push(...splitter.push(chunk));
    wake?.();
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    closed = true;
    wake?.();
  });
  const next = async (): Promise<Frame> => {
    while (frames.length === 0) {
      if (closed) throw new Error('connection closed');
      await new Promise<void>((r) => {
        wake = r;
      });
    }
    return frames.shift()!;
  };
  const describeFrame = (f: Frame): string => {
    if (f.type === 'E') return `E:${parseErrorFields(f.bytes).C}`;
    if (f.type === 'Z') return `Z:${f.bytes.toString('latin1', 5, 6)}`;
    if (f.type === 'C') return `C:${f.bytes.toString('utf8', 5, f.bytes.length - 1)}`;
    return f.type;
  };
  const untilReady = async () => {
    const out: string[] = [];
    for (;;) {
      const f = await next();
      out.push(describeFrame(f));
      if (f.type === 'Z') return out;
    }
  };
  socket.write(startupMessage({ user: 'admin', database: 'postgres' }));
  socket.write(frame('p', cstr(await signTestToken(endpoint))));
  expect((await untilReady()).at(-1)).toBe('Z:I');
  return {
    send: (...f) => socket.write(Buffer.concat(f)),
    untilReady,
    nextType: async () => (await next()).type,
    close: () => socket.destroy(),
  };
}

/** BEGIN, a read, and a COMMIT made to fail: the COMMIT gets 40001, the next statement its own answer. */
async function commitFaultAnswersTheCommit(w: Wire): Promise<void> {
  w.send(queryMessage('BEGIN'));
  expect(await w.untilReady()).toEqual(['C:BEGIN', 'Z:T']);
  w.send(queryMessage(`SELECT count(*) FROM ${table}`));
  expect((await w.untilReady()).at(-1)).toBe('Z:T');
  endpoint.faults.failNextCommits({ count: 1 });
  w.send(queryMessage('COMMIT'));
  expect(await w.untilReady()).toEqual(['E:40001', 'Z:I']);
  w.send(queryMessage('SELECT 1'));
  expect(await w.untilReady()).toEqual(['T', 'D', 'C:SELECT 1', 'Z:I']);
  // DSQL's transaction rules still see the transaction status: after an error, PostgreSQL's
  // 25P02 (not DSQL's "multiple ddl" refusal) answers a second DDL.
  w.send(queryMessage('BEGIN'));
  await w.untilReady();
  w.send(queryMessage(`CREATE TABLE ${table}_a (id bigint PRIMARY KEY)`));
  expect(await w.untilReady()).toEqual(['C:CREATE TABLE', 'Z:T']);
  w.send(queryMessage('SELECT 1/0'));
  expect(await w.untilReady()).toEqual(['E:22012', 'Z:E']);
  w.send(queryMessage(`CREATE TABLE ${table}_b (id bigint PRIMARY KEY)`));
  expect(await w.untilReady()).toEqual(['E:25P02', 'Z:E']);
  w.send(queryMessage('ROLLBACK'));
  expect(await w.untilReady()).toEqual(['C:ROLLBACK', 'Z:I']);
  // Replies rewritten by the dialect still find their statement: two pipelined batches, the
  // first failing, the second a CREATE INDEX ASYNC (its job_id row, tag CREATE INDEX).
  w.send(parse('SELECT 1/0'), bind(), execute(), sync());
  w.send(parse(`CREATE INDEX ASYNC ON ${table} (id)`), bind(), describePortal(), execute(), sync());
  expect(await w.untilReady()).toEqual(['1', 'E:22012', 'Z:I']);
  expect(await w.untilReady()).toEqual(['1', '2', 'T', 'D', 'C:CREATE INDEX', 'Z:I']);
}

describe('replies stay matched to their requests', () => {
  beforeAll(async () => {
    const w = await wire();
    w.send(queryMessage(`CREATE TABLE ${table} (id bigint PRIMARY KEY)`));
    expect((await w.untilReady()).at(-1)).toBe('Z:I');
    w.close();
  });

  it('after a FunctionCall (answered with its own ReadyForQuery)', async () => {
    const w = await wire();
    // pg_backend_pid() by OID (2026), no arguments, text result.
    w.send(frame('F', Buffer.concat([i32(2026), i16(0), i16(0), i16(0)])));
    expect(await w.untilReady()).toEqual(['V', 'Z:I']);
    await commitFaultAnswersTheCommit(w);
    w.close();
  });

  it('after COPY FROM STDIN in the extended protocol, a Sync after Execute and one after CopyDone', async () => {
    const w = await wire();
    w.send(parse(`COPY ${table} FROM STDIN`), bind(), execute(), sync());
    expect([await w.nextType(), await w.nextType(), await w.nextType()]).toEqual(['1', '2', 'G']);
    w.send(frame('d', Buffer.from('1\n2\n')), frame('c', Buffer.alloc(0)), sync());
    expect(await w.untilReady()).toEqual(['C:COPY 2', 'Z:I']);
    await commitFaultAnswersTheCommit(w);
    w.close();
  });

  it('after a COPY that fails in the extended protocol, and Syncs sent while copying', async () => {
    const w = await wire();
    w.send(parse(`COPY ${table} FROM STDIN`), bind(), execute(), sync(), sync());
    expect([await w.nextType(), await w.nextType(), await w.nextType()]).toEqual(['1', '2', 'G']);
    // A Sync during COPY is ignored by PostgreSQL; the bad row fails the COPY.
    w.send(sync(), frame('d', Buffer.from('not a number\n')), frame('c', Buffer.alloc(0)), sync());
    expect(await w.untilReady()).toEqual(['E:22P02', 'Z:I']);
    await commitFaultAnswersTheCommit(w);
    w.close();
  });

  it('after COPY FROM STDIN as a simple query with a Sync in the data', async () => {
    const w = await wire();
    w.send(queryMessage(`COPY ${table} FROM STDIN`));
    expect(await w.nextType()).toBe('G');
    w.send(frame('d', Buffer.from('3\n')), sync(), frame('c', Buffer.alloc(0)));
    expect(await w.untilReady()).toEqual(['C:COPY 1', 'Z:I']);
    await commitFaultAnswersTheCommit(w);
    w.close();
  });

  it('a session idle after an extended-protocol COPY counts as idle (dropConnections idle finds it)', async () => {
    const w = await wire();
    w.send(parse(`COPY ${table} FROM STDIN`), bind(), execute(), sync());
    expect([await w.nextType(), await w.nextType(), await w.nextType()]).toEqual(['1', '2', 'G']);
    w.send(frame('d', Buffer.from('4\n')), frame('c', Buffer.alloc(0)), sync());
    expect(await w.untilReady()).toEqual(['C:COPY 1', 'Z:I']);
    expect(endpoint.faults.dropConnections({ which: 'idle', how: 'fin' })).toBeGreaterThanOrEqual(1);
    await expect(w.nextType()).rejects.toThrow('connection closed');
  });

  afterAll(async () => {
    const pg = (await import('pg')).default;
    const direct = new pg.Client(testUpstream());
    await direct.connect();
    await direct.query(`DROP TABLE IF EXISTS ${table}`);
    await direct.end();
  });
});
