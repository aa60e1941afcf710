/**
 * The pool's freeze-safe checkout against a scripted in-memory pg client: wall-clock decisions at checkout
 * (Date.now is moved by hand, as a thaw moves it, while no timer fires), validation after a
 * thaw, eviction of failed clients, and the promise of never sending a user statement twice.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { DsqlConfig } from '../../src/config.js';
import type { DsqlPool } from '../../src/pool.js';
import { testUpstream } from '../helpers/endpoint.js';
import { plainPgPool } from '../helpers/plain-pool.js';

type Behaviour = 'ok' | 'fail' | 'hang';

/** Just enough of pg.Client for pg-pool: connect, query, end, events, the fields pg-pool reads. */
class FakeClient extends EventEmitter {
  static created: FakeClient[] = [];
  /** How this client answers the next statements, by text. */
  answers = new Map<string, Behaviour>();
  sent: string[] = [];
  ended = false;
  _queryable = true;
  _ending = false;
  txStatus: 'I' | 'T' | 'E' = 'I';
  readonly id: number;
  constructor() {
    super();
    this.id = FakeClient.created.push(this);
  }
  /** Milliseconds the next connections take to open (0: the next loop turn). */
  static connectDelay = 0;
  connect(cb: (err?: Error) => void) {
    if (FakeClient.connectDelay > 0) setTimeout(() => cb(), FakeClient.connectDelay);
    else setImmediate(() => cb());
  }
  /** pg-pool calls these with allowExitOnIdle (the library's default). */
  ref() {}
  unref() {}
  /** pg-pool asks when a connection attempt times out. */
  isConnected() {
    return false;
  }
  getTransactionStatus() {
    return this.txStatus;
  }
  query(text: string, values?: unknown, cb?: (err: Error | undefined, res?: unknown) => void) {
    if (typeof values === 'function') cb = values as typeof cb;
    const q = typeof text === 'string' ? text : (text as { text: string }).text;
    this.sent.push(q);
    const behaviour = this._queryable ? (this.answers.get(q) ?? 'ok') : 'fail';
    const result = new Promise((resolve, reject) => {
      if (behaviour === 'hang') return;
      setImmediate(() =>
        behaviour === 'ok'
          ? resolve({ rows: [{ client: this.id }] })
          : reject(new Error('Connection terminated unexpectedly')),
      );
    });
    if (cb) {
      result.then(
        (r) => cb(undefined, r),
        (e: Error) => cb(e),
      );
      return undefined;
    }
    return result;
  }
  end(cb?: () => void) {
    this._ending = true;
    this.ended = true;
    setImmediate(() => cb?.());
    return cb ? undefined : Promise.resolve();
  }
  /** The server drops the connection: pg marks the client unusable and emits 'error'. */
  drop() {
    this._queryable = false;
    this.emit('error', new Error('Connection terminated unexpectedly'));
  }
}

const defaults: DsqlConfig = {
  maxLifetimeSeconds: 3300,
  maxLifetimeJitterSeconds: 0,
  maxIdleMillis: 300_000,
  thawThresholdMillis: 5_000,
  validationTimeoutMillis: 1_000,
};

let now = 1_700_000_000_000;
function makePool(options: DsqlConfig = {}, max = 4) {
  return plainPgPool({ ...defaults, ...options }, { max, idleTimeoutMillis: 0, Client: FakeClient as never });
}
const advance = (ms: number) => {
  now += ms;
};
async function use(pool: DsqlPool): Promise<FakeClient> {
  const client = await pool.connect();
  client.release();
  return client as unknown as FakeClient;
}

beforeEach(() => {
  FakeClient.created = [];
  FakeClient.connectDelay = 0;
  vi.spyOn(Date, 'now').mockImplementation(() => now);
});
afterEach(() => {
  vi.restoreAllMocks();
});

describe('the checkout', () => {
  it('reuses a warm connection without any extra statement', async () => {
    const pool = makePool();
    const a = await use(pool);
    advance(1_000);
    const b = await use(pool);
    expect(b).toBe(a);
    expect(a.sent).toEqual([]);
    expect(pool.checkoutStats()).toMatchObject({ checkouts: 2, validations: 0 });
  });

  it('never validates a brand-new connection', async () => {
    const pool = makePool({ thawThresholdMillis: 0 });
    const a = await use(pool);
    expect(a.sent).toEqual([]);
  });

  it('destroys a connection idle past maxIdleMillis at checkout, by the wall clock', async () => {
    const pool = makePool({ maxIdleMillis: 60_000 });
    const a = await use(pool);
    advance(60_001); // no timer fired: the process was "frozen"
    const b = await use(pool);
    expect(b).not.toBe(a);
    expect(a.ended).toBe(true);
    expect(a.sent).toEqual([]);
    expect(pool.checkoutStats()).toMatchObject({ evictedIdle: 1, validations: 0 });
  });

  it('destroys a connection past maxLifetimeSeconds at checkout even if it was just used', async () => {
    const pool = makePool({ maxLifetimeSeconds: 10 });
    const a = await use(pool);
    for (let i = 0; i < 5; i++) {
      advance(1_999);
      expect(await use(pool)).toBe(a);
    }
    advance(10);
    const b = await use(pool);
    expect(b).not.toBe(a);
    expect(a.ended).toBe(true);
    expect(pool.checkoutStats()).toMatchObject({ evictedExpired: 1 });
  });

  it('validates a reused connection after a thaw and keeps it when alive', async () => {
    const pool = makePool();
    const a = await use(pool);
    advance(5_001);
    const b = await use(pool);
    expect(b).toBe(a);
    expect(a.sent).toEqual([';']);
    expect(pool.checkoutStats()).toMatchObject({ validations: 1, evictedDead: 0 });
  });

  it('replaces a connection that fails validation; the user statement goes out once, on the new one', async () => {
    const pool = makePool();
    const a = await use(pool);
    a.answers.set(';', 'fail');
    advance(10_000);
    const res = (await pool.query('INSERT 1')) as unknown as { rows: Array<{ client: number }> };
    const b = FakeClient.created[1]!;
    expect(res.rows[0]!.client).toBe(b.id);
    expect(a.sent).toEqual([';']);
    expect(b.sent).toEqual(['INSERT 1']);
    expect(a.ended).toBe(true);
    expect(pool.checkoutStats()).toMatchObject({ validations: 1, evictedDead: 1 });
  });

  it('gives up on a validation that hangs after validationTimeoutMillis and replaces the connection', async () => {
    const pool = makePool({ validationTimeoutMillis: 50 });
    const a = await use(pool);
    a.answers.set(';', 'hang');
    advance(10_000);
    // Resolving at all is the point: the validation never answers, only its timeout ends the wait.
    const b = await use(pool);
    expect(b).not.toBe(a);
    expect(a.ended).toBe(true);
    expect(a.sent).toEqual([';']);
    expect(b.sent).toEqual([]);
    expect(pool.checkoutStats()).toMatchObject({ validations: 1, evictedDead: 1 });
  });

  it('after one dead connection, replaces the others idle since the same freeze without validating', async () => {
    const pool = makePool({ validationTimeoutMillis: 30 });
    const held = await Promise.all([pool.connect(), pool.connect(), pool.connect()]);
    for (const c of held) c.release();
    const fakes = held as unknown as FakeClient[];
    for (const c of fakes) c.answers.set(';', 'hang');
    advance(60_000);
    const fresh = await use(pool);
    expect(fakes).not.toContain(fresh);
    // One timeout, not three: only one of them was sent a validation.
    expect(fakes.map((c) => c.sent.length).sort()).toEqual([0, 0, 1]);
    expect(fakes.every((c) => c.ended)).toBe(true);
    expect(pool.checkoutStats()).toMatchObject({ validations: 1, evictedDead: 3 });
  });

  it('sees a drop that arrived during a short freeze before handing the connection out', async () => {
    const pool = makePool();
    const a = (await pool.connect()) as unknown as FakeClient & pg.PoolClient;
    a.release();
    // The FIN is already in the socket buffer; its event runs on the next turn of the loop.
    setImmediate(() => a.drop());
    advance(100);
    const b = await use(pool);
    expect(b).not.toBe(a);
    expect(a.sent).toEqual([]);
  });

  it('checks a connection pooled by pg-pool without ever being handed out (its waiter gave up) like any reused one', async () => {
    const pool = makePool({ connectionTimeoutMillis: 50 }, 1);
    const held = await pool.connect();
    // The only slot is taken: the waiter gives up, its request stays queued in pg-pool.
    await expect(pool.connect()).rejects.toThrow(/within 50 ms \(1 attempts\): timed out/);
    // The slot frees: pg-pool opens a connection for the abandoned request, and it is pooled unused.
    held.release(true);
    await vi.waitFor(() => expect(pool.idleCount).toBe(1), { timeout: 10_000 });
    const orphan = FakeClient.created[1]!;
    advance(3_600_000); // a long freeze: past maxIdleMillis and maxLifetimeSeconds
    const next = await use(pool);
    expect(next).not.toBe(orphan);
    expect(orphan.ended).toBe(true);
    expect(orphan.sent).toEqual([]);
  });

  it('end() settles a checkout waiting for a busy pool at once, saying the pool was ended', async () => {
    // A budget no test outlives: only end() can settle the waiter.
    const pool = makePool({ connectionTimeoutMillis: 2 ** 31 - 1 }, 1);
    const held = await pool.connect();
    const waiting = pool.connect().catch((e: Error) => e);
    await vi.waitFor(() => expect(pool.waitingCount).toBe(1));
    const ended = pool.end();
    expect(String(await waiting)).toMatch(/\(1 attempts\): the pool was ended$/);
    held.release();
    await ended;
  });

  it('end() settles a checkout waiting on a validation at once and closes that connection', async () => {
    // A validation no test outlives: only end() can stop the wait (pg-pool's end() waited for it too).
    const pool = makePool({ validationTimeoutMillis: 2 ** 31 - 1, connectionTimeoutMillis: 2 ** 31 - 1 });
    const a = await use(pool);
    a.answers.set(';', 'hang');
    advance(10_000);
    const waiting = pool.connect().catch((e: Error) => e);
    await vi.waitFor(() => expect(a.sent).toEqual([';']));
    const ended = pool.end();
    expect(String(await waiting)).toMatch(/the pool was ended$/);
    await ended;
    expect(a.ended).toBe(true);
  });

  it('keeps an errored checked-out client alive as an object (no crash) and destroys it on release', async () => {
    const pool = makePool();
    const client = await pool.connect();
    const fake = client as unknown as FakeClient;
    // pg-pool removed its own listener at checkout: without the guard's, this emit would throw.
    expect(() => fake.drop()).not.toThrow();
    client.release();
    expect(fake.ended).toBe(true);
    expect(pool.totalCount).toBe(0);
    expect(pool.checkoutStats()).toMatchObject({ evictedOnRelease: 1 });
  });

  it('destroys a client released inside a transaction', async () => {
    const pool = makePool();
    const client = await pool.connect();
    (client as unknown as FakeClient).txStatus = 'T';
    client.release();
    expect((client as unknown as FakeClient).ended).toBe(true);
    expect(pool.totalCount).toBe(0);
  });

  it('absorbs the error of a connection dropped while idle (pool listener)', async () => {
    const pool = makePool();
    const a = await use(pool);
    expect(() => a.drop()).not.toThrow();
    expect(pool.checkoutStats()).toMatchObject({ idleErrors: 1 });
    expect(pool.totalCount).toBe(0);
  });

  it('supports the callback form of connect (what pool.query uses)', async () => {
    const pool = makePool();
    const client = await new Promise<pg.PoolClient>((resolve, reject) =>
      pool.connect((err, c) => (err ? reject(err) : resolve(c!))),
    );
    client.release();
    expect(pool.idleCount).toBe(1);
  });

  it('listens through public events only: one error listener per client, connect not patched', async () => {
    const pool = makePool();
    expect(Object.hasOwn(pool, 'connect')).toBe(false);
    expect(pool.listenerCount('connect')).toBe(1);
    expect(pool.listenerCount('error')).toBe(1);
    const client = await pool.connect();
    expect(client.listenerCount('error')).toBe(1); // the checkout's; pg-pool's idle listener is off while checked out
    client.release();
    expect(client.listenerCount('error')).toBe(2); // and pg-pool's idle listener
    advance(10_000);
    await use(pool);
    expect((client as unknown as FakeClient).sent).toEqual([';']);
  });

  it('spreads the lifetimes of connections opened together (issue 8, defect 12: jitter)', async () => {
    // Fixed draws, so the outcome is exact: the jitter takes random × 300 s off a 3300 s life.
    const draws = [0, 0.25, 0.5, 0.75];
    let i = 0;
    vi.spyOn(Math, 'random').mockImplementation(() => draws[i++ % draws.length]!);
    const pool = makePool(
      { maxLifetimeSeconds: 3300, maxLifetimeJitterSeconds: 300, maxIdleMillis: 2 ** 31 - 1 },
      4,
    );
    const held = await Promise.all([pool.connect(), pool.connect(), pool.connect(), pool.connect()]);
    for (const c of held) c.release();
    // Lives of 3300, 3225, 3150 and 3075 s: 3160 s later, the last two are over.
    advance(3_160_000);
    const again = await Promise.all([pool.connect(), pool.connect(), pool.connect(), pool.connect()]);
    for (const c of again) c.release();
    expect(pool.checkoutStats().evictedExpired).toBe(2);
    expect(again.filter((c) => held.includes(c))).toHaveLength(2);
  });

  it('takes at most half a short lifetime as jitter: the default 300 s never makes a 60 s life negative', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.999);
    const pool = makePool(
      { maxLifetimeSeconds: 60, maxLifetimeJitterSeconds: 300, maxIdleMillis: 2 ** 31 - 1 },
      1,
    );
    (await pool.connect()).release();
    // A life of 60 − 0.999 × 30 ≈ 30 s: reused at 29 s, retired at 31 s.
    advance(29_000);
    (await pool.connect()).release();
    expect(pool.checkoutStats().evictedExpired).toBe(0);
    advance(2_000);
    (await pool.connect()).release();
    expect(pool.checkoutStats().evictedExpired).toBe(1);
  });
});

describe('against real pg and pg-pool (local PostgreSQL)', () => {
  it('a client released inside a transaction is ended, not pooled: pg-pool does not pool an ending client', async () => {
    vi.restoreAllMocks(); // real clock
    const pool = plainPgPool(defaults, { ...testUpstream('postgres'), max: 1 });
    try {
      const a = await pool.connect();
      const pidA = (await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      await a.query('BEGIN');
      a.release();
      expect(pool.checkoutStats().evictedOnRelease).toBe(1);
      const b = await pool.connect();
      const pidB = (await b.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      expect(b.getTransactionStatus()).toBe('I');
      b.release();
      expect(pidB).not.toBe(pidA);
    } finally {
      await pool.end();
    }
  });
});

describe('the one pg private field the checkout reads (socketOf in src/pool.ts)', () => {
  const socketOf = (client: pg.Client) =>
    (client as unknown as { connection?: { stream?: Duplex } }).connection?.stream;
  it('pg still keeps a connected client socket at client.connection.stream', async () => {
    const client = new pg.Client(testUpstream('postgres'));
    await client.connect();
    try {
      const socket = socketOf(client);
      expect(socket).toBeDefined();
      expect(socket?.readableEnded).toBe(false);
      expect(typeof socket?.destroy).toBe('function');
    } finally {
      await client.end();
    }
    expect(socketOf(client)?.destroyed).toBe(true);
  });
});
