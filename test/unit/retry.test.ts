/**
 * withRetry / execWithRetry against fake clients and pools: classification paths, release
 * bookkeeping, backoff arithmetic, deadline and abort. No timed assertions: fake clocks and
 * injected sleeps make every run take the same path.
 */
import { EventEmitter } from 'node:events';
import fc from 'fast-check';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import {
  CommitOutcomeUnknownError,
  DsqlConfigError,
  DsqlError,
  OccRetryExhaustedError,
} from '../../src/errors.js';
import {
  backoffDelay,
  execWithRetry,
  RETRY_DEFAULTS,
  type RetryInfo,
  type RetryOptions,
  withRetry,
} from '../../src/retry.js';

// ------------------------------------------------------------------------------------------------
// Fakes
// ------------------------------------------------------------------------------------------------

type Reply = pg.QueryResult | Error | 'hang' | 'lost';

/** Decides the reply to a statement; `undefined` = the fake's default (success, or OCC-like rules). */
type Script = (sql: string, client: FakeClient) => Reply | undefined | Promise<Reply | undefined>;

const occ = (code: 'OC000' | 'OC001' = 'OC000') =>
  Object.assign(
    new Error(
      code === 'OC000'
        ? 'mutation conflicts with another transaction, retry as needed (OC000)'
        : 'schema has been updated by another transaction, please retry: (OC001)',
    ),
    { code: '40001' },
  );
const uniqueViolation = () => Object.assign(new Error('duplicate key value'), { code: '23505' });
const result = (command: string): pg.QueryResult =>
  ({ command, rowCount: 0, rows: [], fields: [], oid: 0 }) as pg.QueryResult;

let nextId = 1;

/** A pg.PoolClient look-alike that speaks just enough of the protocol's transaction states. */
class FakeClient extends EventEmitter {
  readonly id = nextId++;
  readonly log: string[] = [];
  readonly releases: Array<Error | boolean | undefined> = [];
  status: 'I' | 'T' | 'E' | null = 'I';
  dead = false;
  ended = 0;
  constructor(private readonly script: Script) {
    super();
  }
  getTransactionStatus() {
    return this.status;
  }
  release(err?: Error | boolean) {
    this.releases.push(err);
  }
  async end() {
    this.ended++;
    this.dead = true;
  }
  /** Simulates the socket going away, as pg does: 'error' on the client, then queries fail. */
  loseConnection(err: Error = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })) {
    this.dead = true;
    this.status = null;
    this.emit('error', err);
    this.emit('end');
    return err;
  }
  async connect() {}
  query(sql: string, params?: unknown, callback?: (err: Error | null, res?: pg.QueryResult) => void) {
    const done = this.run(sql);
    const cb = typeof params === 'function' ? params : callback;
    if (typeof cb !== 'function') return done;
    done.then(
      (res) => cb(null, res),
      (err: Error) => cb(err),
    );
    return undefined;
  }
  private async run(sql: string): Promise<pg.QueryResult> {
    this.log.push(sql);
    if (this.dead) throw new Error('Client has encountered a connection error and is not queryable');
    const reply = await this.script(sql, this);
    if (reply === 'hang') return new Promise(() => {});
    if (reply === 'lost') throw this.loseConnection();
    if (reply instanceof Error) {
      // A failed COMMIT ends the transaction; any other failure inside one aborts it.
      if (sql === 'COMMIT') this.status = 'I';
      else if (this.status === 'T') this.status = 'E';
      throw reply;
    }
    if (reply) return reply;
    switch (sql) {
      case 'BEGIN':
        this.status = 'T';
        return result('BEGIN');
      case 'COMMIT': {
        const failed = this.status === 'E';
        this.status = 'I';
        return result(failed ? 'ROLLBACK' : 'COMMIT');
      }
      case 'ROLLBACK':
        this.status = 'I';
        return result('ROLLBACK');
      default:
        if (this.status === 'E') throw new Error('current transaction is aborted');
        return result('SELECT');
    }
  }
}

/** A pool look-alike: a new FakeClient per connect(), scripted by attempt number (1-based). */
class FakePool {
  readonly clients: FakeClient[] = [];
  constructor(private readonly script: (attempt: number) => Script) {}
  async connect(): Promise<pg.PoolClient> {
    const client = new FakeClient(this.script(this.clients.length + 1));
    this.clients.push(client);
    return client as unknown as pg.PoolClient;
  }
  /** Every client released exactly once; returns which ones were destroyed. */
  destroyed(): boolean[] {
    for (const c of this.clients) expect(c.releases, `client ${c.id} releases`).toHaveLength(1);
    return this.clients.map((c) => Boolean(c.releases[0]));
  }
}

/** Deterministic time: sleeps advance the clock instead of waiting. */
function fakeTime(start = 1_000_000) {
  const t = { now: start, sleeps: [] as number[] };
  return {
    t,
    options: {
      now: () => t.now,
      sleep: async (ms: number, signal?: AbortSignal) => {
        if (signal?.aborted) throw signal.reason;
        t.sleeps.push(ms);
        t.now += ms;
      },
      random: () => 0.5,
    } satisfies RetryOptions,
  };
}

const fast: RetryOptions = { sleep: async () => {}, random: () => 0.5 };

async function rejectionOf(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

// ------------------------------------------------------------------------------------------------
// Backoff arithmetic
// ------------------------------------------------------------------------------------------------

describe('backoffDelay', () => {
  const policy = { baseDelayMs: 10, maxDelayMs: 1000 };

  it('doubles from the base and stops at the cap', () => {
    const delays = [1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => backoffDelay(n, 0, { ...policy, jitter: 'none' }));
    expect(delays).toEqual([10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    expect(backoffDelay(10_000, 0, { ...policy, jitter: 'none' })).toBe(1000);
  });

  it('full jitter spans [0, d); equal jitter [d/2, d)', () => {
    expect(backoffDelay(3, 0, { ...policy, jitter: 'full' }, () => 0)).toBe(0);
    expect(backoffDelay(3, 0, { ...policy, jitter: 'full' }, () => 0.5)).toBe(20);
    expect(backoffDelay(3, 0, { ...policy, jitter: 'equal' }, () => 0)).toBe(20);
    expect(backoffDelay(3, 0, { ...policy, jitter: 'equal' }, () => 0.999)).toBeCloseTo(39.98);
  });

  it('proportional jitter reproduces the official connectors: d × (1 + U × f)', () => {
    const node = { baseDelayMs: 1, maxDelayMs: 100, jitter: 0.25 };
    expect(backoffDelay(1, 0, node, () => 0)).toBe(1);
    expect(backoffDelay(3, 0, node, () => 1)).toBe(5);
    expect(backoffDelay(8, 0, node, () => 1)).toBe(125);
  });

  it('a cap below the base wins', () => {
    expect(backoffDelay(1, 0, { baseDelayMs: 50, maxDelayMs: 20, jitter: 'none' })).toBe(20);
    expect(backoffDelay(1, 0, { baseDelayMs: 50, maxDelayMs: 20, jitter: 'decorrelated' }, () => 1)).toBe(20);
  });

  it('decorrelated jitter grows from the previous delay, within [base, cap]', () => {
    expect(backoffDelay(1, 0, { ...policy, jitter: 'decorrelated' }, () => 1)).toBe(30);
    expect(backoffDelay(2, 30, { ...policy, jitter: 'decorrelated' }, () => 1)).toBe(90);
    expect(backoffDelay(9, 900, { ...policy, jitter: 'decorrelated' }, () => 1)).toBe(1000);
  });

  it('stays within its bounds for any attempt, policy and random value (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 200 }),
        fc.double({ min: 0, max: 5000, noNaN: true }),
        fc.double({ min: 0, max: 100, noNaN: true }),
        fc.double({ min: 0, max: 10_000, noNaN: true }),
        fc.constantFrom('full', 'equal', 'decorrelated', 'none', 0.25, 1) as fc.Arbitrary<
          RetryOptions['jitter']
        >,
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (failures, previous, base, cap, jitter, u) => {
          const d = backoffDelay(failures, previous, { baseDelayMs: base, maxDelayMs: cap, jitter }, () => u);
          const upper = typeof jitter === 'number' ? cap * (1 + jitter) : cap;
          expect(d).toBeGreaterThanOrEqual(0);
          expect(d).toBeLessThanOrEqual(upper + 1e-9);
          expect(Number.isFinite(d)).toBe(true);
        },
      ),
    );
  });

  it('has the documented defaults and schedule (0.35–5.6 s of sleep over 8 attempts)', () => {
    expect(RETRY_DEFAULTS).toEqual({
      maxAttempts: 8,
      baseDelayMs: 50,
      maxDelayMs: 1000,
      jitter: 'decorrelated',
    });
    const schedule = (u: number) => {
      const delays: number[] = [];
      for (let i = 1; i < RETRY_DEFAULTS.maxAttempts; i++)
        delays.push(backoffDelay(i, delays.at(-1) ?? 0, {}, () => u));
      return delays;
    };
    expect(schedule(0)).toEqual([50, 50, 50, 50, 50, 50, 50]);
    expect(schedule(0.999_999).map(Math.round)).toEqual([150, 450, 1000, 1000, 1000, 1000, 1000]);
  });
});

// ------------------------------------------------------------------------------------------------
// withRetry: classification and bookkeeping
// ------------------------------------------------------------------------------------------------

describe('withRetry', () => {
  it('runs BEGIN, fn, COMMIT once and returns what fn returned', async () => {
    const pool = new FakePool(() => () => undefined);
    const value = await withRetry(pool, async (tx) => {
      await tx.query('UPDATE t SET x = 1');
      return 42;
    });
    expect(value).toBe(42);
    expect(pool.clients[0]?.log).toEqual(['BEGIN', 'UPDATE t SET x = 1', 'COMMIT']);
    expect(pool.destroyed()).toEqual([false]);
  });

  it.each(['OC000', 'OC001'] as const)(
    'retries %s at COMMIT on a new checkout, without ROLLBACK',
    async (code) => {
      const pool = new FakePool(
        (attempt) => (sql) => (sql === 'COMMIT' && attempt <= 2 ? occ(code) : undefined),
      );
      const retries: RetryInfo[] = [];
      let calls = 0;
      const value = await withRetry(
        pool,
        async (tx) => {
          calls++;
          await tx.query('UPDATE t SET x = x + 1');
          return 'done';
        },
        { ...fast, onRetry: (info) => retries.push(info) },
      );
      expect(value).toBe('done');
      expect(calls).toBe(3);
      expect(retries.map((r) => [r.attempt, r.code])).toEqual([
        [1, code],
        [2, code],
      ]);
      // COMMIT failed: the server already ended the transaction ('I'), so no ROLLBACK round trip.
      for (const c of pool.clients) expect(c.log).not.toContain('ROLLBACK');
      expect(pool.destroyed()).toEqual([false, false, false]);
    },
  );

  it('rolls back and retries an OCC error raised by a statement', async () => {
    const pool = new FakePool(
      (attempt) => (sql) => (sql.startsWith('UPDATE') && attempt === 1 ? occ() : undefined),
    );
    await withRetry(pool, async (tx) => void (await tx.query('UPDATE t SET x = 1')), fast);
    expect(pool.clients[0]?.log).toEqual(['BEGIN', 'UPDATE t SET x = 1', 'ROLLBACK']);
    expect(pool.clients[1]?.log).toEqual(['BEGIN', 'UPDATE t SET x = 1', 'COMMIT']);
    expect(pool.destroyed()).toEqual([false, false]);
  });

  it('rethrows a non-OCC error from fn unchanged after ROLLBACK, without retrying', async () => {
    const pool = new FakePool(() => () => undefined);
    const boom = new Error('validation failed');
    let calls = 0;
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          calls++;
          await tx.query('SELECT 1');
          throw boom;
        },
        fast,
      ),
    );
    expect(err).toBe(boom);
    expect(calls).toBe(1);
    expect(pool.clients[0]?.log).toEqual(['BEGIN', 'SELECT 1', 'ROLLBACK']);
    expect(pool.destroyed()).toEqual([false]);
  });

  it('rethrows a non-OCC COMMIT error (e.g. unique violation) unchanged', async () => {
    const dup = uniqueViolation();
    const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? dup : undefined));
    expect(await rejectionOf(withRetry(pool, async () => 1, fast))).toBe(dup);
    expect(pool.clients).toHaveLength(1);
    expect(pool.destroyed()).toEqual([false]);
  });

  it('does not retry ECONNRESET thrown by something other than the database', async () => {
    const pool = new FakePool(() => () => undefined);
    const http = Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
    let calls = 0;
    const err = await rejectionOf(
      withRetry(
        pool,
        async () => {
          calls++;
          throw http;
        },
        fast,
      ),
    );
    expect(err).toBe(http);
    expect(calls).toBe(1);
    expect(pool.destroyed()).toEqual([false]);
  });

  it('destroys the connection when ROLLBACK fails, and retries the OCC error elsewhere', async () => {
    const pool = new FakePool((attempt) => (sql) => {
      if (attempt === 1 && sql.startsWith('UPDATE')) return occ();
      if (attempt === 1 && sql === 'ROLLBACK') return new Error('Query read timeout');
      return undefined;
    });
    await withRetry(pool, async (tx) => void (await tx.query('UPDATE t SET x = 1')), fast);
    expect(pool.destroyed()).toEqual([true, false]);
  });

  it('destroys the connection when ROLLBACK fails after a non-OCC error, and rethrows the original', async () => {
    const boom = new Error('boom');
    const pool = new FakePool(() => (sql) => (sql === 'ROLLBACK' ? 'lost' : undefined));
    expect(
      await rejectionOf(
        withRetry(
          pool,
          async () => {
            throw boom;
          },
          fast,
        ),
      ),
    ).toBe(boom);
    expect(pool.destroyed()).toEqual([true]);
  });

  it('gives up after maxAttempts with OccRetryExhaustedError (cause = last error)', async () => {
    const errors: Error[] = [];
    const pool = new FakePool(() => (sql) => {
      if (sql !== 'COMMIT') return undefined;
      const e = occ();
      errors.push(e);
      return e;
    });
    const err = await rejectionOf(withRetry(pool, async () => 1, { ...fast, maxAttempts: 3 }));
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    const ex = err as OccRetryExhaustedError;
    expect([ex.attempts, ex.reason, ex.cause]).toEqual([3, 'attempts', errors[2]]);
    expect(pool.destroyed()).toEqual([false, false, false]);
  });

  it('maxAttempts: 1 never retries', async () => {
    const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? occ() : undefined));
    const err = await rejectionOf(withRetry(pool, async () => 1, { ...fast, maxAttempts: 1 }));
    expect((err as OccRetryExhaustedError).attempts).toBe(1);
    expect(pool.clients).toHaveLength(1);
  });

  it('sleeps the backoff delays between attempts, and reports them to onRetry', async () => {
    const { t, options } = fakeTime();
    const pool = new FakePool((attempt) => (sql) => (sql === 'COMMIT' && attempt <= 3 ? occ() : undefined));
    const told: number[] = [];
    await withRetry(pool, async () => 1, {
      ...options,
      baseDelayMs: 10,
      maxDelayMs: 25,
      jitter: 'none',
      onRetry: (i) => told.push(i.delayMs),
    });
    expect(t.sleeps).toEqual([10, 20, 25]);
    expect(told).toEqual(t.sleeps);
  });

  it('a throwing onRetry rejects withRetry with its error, holding no connection', async () => {
    const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? occ() : undefined));
    const oops = new Error('logger down');
    const err = await rejectionOf(
      withRetry(pool, async () => 1, {
        ...fast,
        onRetry: () => {
          throw oops;
        },
      }),
    );
    expect(err).toBe(oops);
    expect(pool.destroyed()).toEqual([false]);
  });

  describe('connection lost', () => {
    it('before COMMIT: destroys the client and retries on a new one from the pool', async () => {
      const pool = new FakePool(
        (attempt) => (sql) => (attempt === 1 && sql.startsWith('UPDATE') ? 'lost' : undefined),
      );
      const codes: string[] = [];
      let calls = 0;
      const value = await withRetry(
        pool,
        async (tx) => {
          calls++;
          await tx.query('UPDATE t SET x = 1');
          return calls;
        },
        { ...fast, onRetry: (i) => codes.push(i.code) },
      );
      expect(value).toBe(2);
      expect(codes).toEqual(['connection-lost']);
      expect(pool.clients[0]?.log).toEqual(['BEGIN', 'UPDATE t SET x = 1']);
      expect(pool.destroyed()).toEqual([true, false]);
    });

    it('at BEGIN (a stale pooled connection): retried', async () => {
      const pool = new FakePool(
        (attempt) => (sql) => (attempt === 1 && sql === 'BEGIN' ? 'lost' : undefined),
      );
      expect(await withRetry(pool, async () => 'ok', fast)).toBe('ok');
      expect(pool.destroyed()).toEqual([true, false]);
    });

    it('while fn runs and fn swallows the error: COMMIT is not sent, the attempt is retried', async () => {
      const pool = new FakePool(() => () => undefined);
      let calls = 0;
      await withRetry(
        pool,
        async () => {
          calls++;
          if (calls === 1) pool.clients[0]?.loseConnection();
        },
        fast,
      );
      expect(pool.clients[0]?.log).toEqual(['BEGIN']);
      expect(pool.destroyed()).toEqual([true, false]);
    });

    it('while COMMIT is in flight: CommitOutcomeUnknownError, never retried', async () => {
      const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? 'lost' : undefined));
      let calls = 0;
      const err = await rejectionOf(
        withRetry(
          pool,
          async () => {
            calls++;
          },
          fast,
        ),
      );
      expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
      expect((err as CommitOutcomeUnknownError).attempts).toBe(1);
      expect((err as Error).cause).toMatchObject({ code: 'ECONNRESET' });
      expect(calls).toBe(1);
      expect(pool.destroyed()).toEqual([true]);
    });

    it('COMMIT hitting query_timeout: outcome unknown', async () => {
      const timeout = new Error('Query read timeout');
      const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? timeout : undefined));
      const err = await rejectionOf(withRetry(pool, async () => 1, fast));
      expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
      expect((err as Error).cause).toBe(timeout);
      expect(pool.destroyed()).toEqual([true]);
    });

    it('on a single client target: throws the connection error, nothing to retry on', async () => {
      const client = new FakeClient((sql) => (sql.startsWith('UPDATE') ? 'lost' : undefined));
      const target = Object.assign(client, { release: undefined, escapeIdentifier: (s: string) => s });
      const err = await rejectionOf(
        withRetry(
          target as unknown as pg.Client,
          async (tx) => void (await tx.query('UPDATE t SET x = 1')),
          fast,
        ),
      );
      expect(err).toMatchObject({ code: 'ECONNRESET' });
      expect(client.ended).toBe(1);
      expect(client.releases).toEqual([]);
    });
  });

  describe('single client targets', () => {
    it('retries OCC on the same checked-out PoolClient and never releases it', async () => {
      let commits = 0;
      const client = new FakeClient((sql) => (sql === 'COMMIT' && ++commits <= 2 ? occ() : undefined));
      await withRetry(client as unknown as pg.PoolClient, async () => 1, fast);
      expect(client.log.filter((s) => s === 'BEGIN')).toHaveLength(3);
      expect(client.releases).toEqual([]);
      expect(client.ended).toBe(0);
      expect(client.listenerCount('error')).toBe(0);
    });

    it('ends a borrowed PoolClient whose ROLLBACK failed, so its release() discards it', async () => {
      const client = new FakeClient((sql) =>
        sql === 'ROLLBACK' ? new Error('Query read timeout') : undefined,
      );
      const boom = new Error('boom');
      expect(
        await rejectionOf(
          withRetry(
            client as unknown as pg.PoolClient,
            async () => {
              throw boom;
            },
            fast,
          ),
        ),
      ).toBe(boom);
      expect(client.ended).toBe(1);
      expect(client.releases).toEqual([]);
    });
  });

  describe('clients already inside a transaction', () => {
    it("a borrowed client in a transaction is refused (our COMMIT would end the caller's)", async () => {
      const client = new FakeClient(() => undefined);
      client.status = 'T';
      const err = await rejectionOf(withRetry(client as unknown as pg.PoolClient, async () => 1, fast));
      expect(err).toBeInstanceOf(DsqlError);
      expect(client.log).toEqual([]);
      expect(client.listenerCount('error')).toBe(0);
    });

    it('a pooled client left in a transaction is destroyed and another one used', async () => {
      const pool = new FakePool(() => () => undefined);
      const connect = pool.connect.bind(pool);
      pool.connect = async () => {
        const c = await connect();
        if (pool.clients.length === 1) (c as unknown as FakeClient).status = 'E';
        return c;
      };
      expect(await withRetry(pool, async () => 'ok', fast)).toBe('ok');
      expect(pool.destroyed()).toEqual([true, false]);
      expect(pool.clients[0]?.log).toEqual([]);
    });
  });

  describe('fn swallowing errors', () => {
    it('a swallowed non-OCC statement error turns COMMIT into ROLLBACK: DsqlError, not success', async () => {
      const dup = uniqueViolation();
      const pool = new FakePool(() => (sql) => (sql.startsWith('INSERT') ? dup : undefined));
      const err = await rejectionOf(
        withRetry(
          pool,
          async (tx) => {
            await tx.query('INSERT INTO t VALUES (1)').catch(() => {});
            return 'looks fine';
          },
          fast,
        ),
      );
      expect(err).toBeInstanceOf(DsqlError);
      expect((err as Error).cause).toBe(dup);
      expect(pool.clients).toHaveLength(1);
    });

    it('a swallowed OCC error is still retried', async () => {
      const pool = new FakePool(
        (attempt) => (sql) => (attempt === 1 && sql.startsWith('UPDATE') ? occ() : undefined),
      );
      const value = await withRetry(
        pool,
        async (tx) => {
          await tx.query('UPDATE t SET x = 1').catch(() => {});
          return 'ok';
        },
        fast,
      );
      expect(value).toBe('ok');
      expect(pool.clients).toHaveLength(2);
    });
  });

  it('tx stops working once its attempt is over', async () => {
    const pool = new FakePool(() => () => undefined);
    let leaked: { query: (sql: string) => unknown } | undefined;
    await withRetry(
      pool,
      async (tx) => {
        leaked = tx;
      },
      fast,
    );
    expect(() => leaked?.query('SELECT 1')).toThrow(DsqlError);
    expect(pool.clients[0]?.log).toEqual(['BEGIN', 'COMMIT']);
  });

  it('supports callback-style tx.query', async () => {
    const pool = new FakePool(() => () => undefined);
    const command = await withRetry(
      pool,
      (tx) =>
        new Promise<string>((resolve, reject) =>
          tx.query('SELECT 1', [], (err, res) => (err ? reject(err) : resolve(res.command))),
        ),
      fast,
    );
    expect(command).toBe('SELECT');
  });

  it('rejects invalid options before touching the target', async () => {
    const pool = new FakePool(() => () => undefined);
    for (const bad of [
      { maxAttempts: 0 },
      { maxAttempts: 1.5 },
      { baseDelayMs: -1 },
      { maxDelayMs: -1 },
      { jitter: 2 },
      { jitter: 'sometimes' as 'full' },
      { deadline: Number.NaN },
    ]) {
      expect(await rejectionOf(withRetry(pool, async () => 1, bad))).toBeInstanceOf(DsqlConfigError);
    }
    expect(pool.clients).toHaveLength(0);
  });

  it('rejects a target that is neither a pool nor a client', async () => {
    expect(await rejectionOf(withRetry({} as pg.Pool, async () => 1))).toBeInstanceOf(TypeError);
  });
});

// ------------------------------------------------------------------------------------------------
// Deadline and abort
// ------------------------------------------------------------------------------------------------

describe('deadline', () => {
  it('does not start an attempt that cannot finish before the deadline', async () => {
    const { t, options } = fakeTime();
    // Every attempt takes 100 ms of (fake) time; backoff is 10, 20, 40 ms.
    const pool = new FakePool(() => (sql) => {
      if (sql === 'BEGIN') t.now += 100;
      return sql === 'COMMIT' ? occ() : undefined;
    });
    const deadline = t.now + 350;
    const err = await rejectionOf(
      withRetry(pool, async () => 1, {
        ...options,
        deadline,
        jitter: 'none',
        baseDelayMs: 10,
        maxDelayMs: 1000,
      }),
    );
    // 100 + 10 + 100 + 20 + 100 = 330; a third retry would need 40 + 100 more: not started.
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    expect((err as OccRetryExhaustedError).reason).toBe('deadline');
    expect((err as OccRetryExhaustedError).attempts).toBe(3);
    expect((err as OccRetryExhaustedError).elapsedMs).toBe(330);
    expect((err as Error).cause).toMatchObject({ code: '40001' });
    expect(t.sleeps).toEqual([10, 20]);
    expect(t.now).toBeLessThan(deadline);
  });

  it('does not sleep when sleep plus the estimated attempt would overrun', async () => {
    const { t, options } = fakeTime();
    const pool = new FakePool(() => (sql) => {
      if (sql === 'BEGIN') t.now += 100;
      return sql === 'COMMIT' ? occ() : undefined;
    });
    const err = await rejectionOf(
      withRetry(pool, async () => 1, { ...options, deadline: t.now + 150, jitter: 'none', baseDelayMs: 60 }),
    );
    expect((err as OccRetryExhaustedError).attempts).toBe(1);
    expect(t.sleeps).toEqual([]);
  });

  it('a deadline already passed: no attempt at all', async () => {
    const { t, options } = fakeTime();
    const pool = new FakePool(() => () => undefined);
    const err = await rejectionOf(withRetry(pool, async () => 1, { ...options, deadline: t.now }));
    expect(err).toMatchObject({ reason: 'deadline', attempts: 0 });
    expect(pool.clients).toHaveLength(0);
  });

  it('fn finishing after the deadline: COMMIT never sent, connection closed (no time for ROLLBACK)', async () => {
    const { t, options } = fakeTime();
    const pool = new FakePool(() => () => undefined);
    const err = await rejectionOf(
      withRetry(
        pool,
        async () => {
          t.now += 1000;
        },
        { ...options, deadline: t.now + 500 },
      ),
    );
    expect(err).toMatchObject({ reason: 'deadline', attempts: 1 });
    expect(pool.clients[0]?.log).toEqual(['BEGIN']);
    expect(pool.destroyed()).toEqual([true]);
  });

  it('a statement hanging past the deadline: attempt abandoned, connection destroyed', async () => {
    const pool = new FakePool(() => (sql) => (sql.startsWith('SELECT pg_sleep') ? 'hang' : undefined));
    const err = await rejectionOf(
      withRetry(pool, async (tx) => void (await tx.query('SELECT pg_sleep(3600)')), {
        deadline: Date.now() + 30,
      }),
    );
    expect(err).toMatchObject({ reason: 'deadline', attempts: 1 });
    expect(pool.destroyed()).toEqual([true]);
  });

  it('a COMMIT hanging past the deadline: CommitOutcomeUnknownError, connection destroyed', async () => {
    const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? 'hang' : undefined));
    const err = await rejectionOf(withRetry(pool, async () => 1, { deadline: Date.now() + 30 }));
    expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
    expect(pool.destroyed()).toEqual([true]);
  });
});

describe('waiting for a pool client', () => {
  /** A pool with no free client until `grant()`. */
  function exhaustedPool() {
    let grant: (c: FakeClient) => void = () => {};
    const client = new FakeClient(() => undefined);
    const pool = {
      connect: () =>
        new Promise<pg.PoolClient>((resolve) => (grant = (c) => resolve(c as unknown as pg.PoolClient))),
    };
    return { pool, client, grant: () => grant(client) };
  }

  it('abort while waiting: no attempt; the client granted later is released at once', async () => {
    const { pool, client, grant } = exhaustedPool();
    const controller = new AbortController();
    const pending = withRetry(pool, async () => 1, { signal: controller.signal });
    controller.abort();
    expect(await rejectionOf(pending)).toMatchObject({ reason: 'aborted', attempts: 0 });
    grant();
    await new Promise((r) => setImmediate(r));
    expect(client.releases).toEqual([undefined]);
    expect(client.log).toEqual([]);
    expect(client.listenerCount('error')).toBe(0);
  });

  it('deadline while waiting: no attempt', async () => {
    const { pool, grant } = exhaustedPool();
    const err = await rejectionOf(withRetry(pool, async () => 1, { deadline: Date.now() + 20 }));
    expect(err).toMatchObject({ reason: 'deadline', attempts: 0 });
    grant();
  });
});

describe('abort signal', () => {
  it('already aborted: no attempt', async () => {
    const pool = new FakePool(() => () => undefined);
    const err = await rejectionOf(withRetry(pool, async () => 1, { signal: AbortSignal.abort() }));
    expect(err).toMatchObject({ reason: 'aborted', attempts: 0 });
    expect(pool.clients).toHaveLength(0);
  });

  it('interrupts a backoff sleep at once (the real timer-based sleep)', async () => {
    const controller = new AbortController();
    const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? occ() : undefined));
    const err = await rejectionOf(
      withRetry(pool, async () => 1, {
        signal: controller.signal,
        // An hour-long sleep: the test would time out if the abort were not honoured during it.
        baseDelayMs: 3_600_000,
        maxDelayMs: 3_600_000,
        jitter: 'none',
        onRetry: () => queueMicrotask(() => controller.abort()),
      }),
    );
    expect(err).toMatchObject({ reason: 'aborted', attempts: 1 });
    expect((err as Error).cause).toMatchObject({ code: '40001' });
    expect(pool.destroyed()).toEqual([false]);
  });

  it('abandons an attempt whose fn is still running, destroying its connection', async () => {
    const controller = new AbortController();
    const pool = new FakePool(() => (sql) => (sql.startsWith('SELECT pg_sleep') ? 'hang' : undefined));
    let lateQuery: unknown;
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          queueMicrotask(() => controller.abort(new Error('client went away')));
          await tx.query('SELECT pg_sleep(3600)');
        },
        { signal: controller.signal },
      ),
    );
    expect(err).toMatchObject({ reason: 'aborted', attempts: 1 });
    expect((err as Error).cause).toMatchObject({ message: 'client went away' });
    expect(pool.destroyed()).toEqual([true]);
    expect(lateQuery).toBeUndefined();
  });

  it('abort at the very end of fn: attempt abandoned, COMMIT never sent', async () => {
    const controller = new AbortController();
    const pool = new FakePool(() => () => undefined);
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          await tx.query('SELECT 1');
          controller.abort();
        },
        { signal: controller.signal },
      ),
    );
    expect(err).toMatchObject({ reason: 'aborted' });
    expect(pool.clients[0]?.log).toEqual(['BEGIN', 'SELECT 1']);
    expect(pool.destroyed()).toEqual([true]);
  });

  it('lets a COMMIT in flight finish: the result is known, so it is returned', async () => {
    const controller = new AbortController();
    const pool = new FakePool(() => async (sql) => {
      if (sql !== 'COMMIT') return undefined;
      controller.abort();
      await new Promise((r) => setImmediate(r));
      return undefined;
    });
    expect(await withRetry(pool, async () => 'committed', { signal: controller.signal })).toBe('committed');
    expect(pool.destroyed()).toEqual([false]);
  });
});

// ------------------------------------------------------------------------------------------------
// execWithRetry
// ------------------------------------------------------------------------------------------------

describe('execWithRetry', () => {
  it('retries OC001 on DDL and returns the QueryResult', async () => {
    const pool = new FakePool(
      (attempt) => (sql) => (attempt === 1 ? occ('OC001') : result(sql.split(' ')[0]!)),
    );
    const res = await execWithRetry(pool, 'CREATE INDEX ASYNC i ON t (x)', undefined, fast);
    expect(res.command).toBe('CREATE');
    expect(pool.destroyed()).toEqual([false, false]);
    expect(pool.clients.map((c) => c.log)).toEqual([
      ['CREATE INDEX ASYNC i ON t (x)'],
      ['CREATE INDEX ASYNC i ON t (x)'],
    ]);
  });

  it('does not retry other errors', async () => {
    const dup = uniqueViolation();
    const pool = new FakePool(() => () => dup);
    expect(await rejectionOf(execWithRetry(pool, 'INSERT INTO t VALUES ($1)', [1], fast))).toBe(dup);
    expect(pool.clients).toHaveLength(1);
  });

  it('a connection lost while the statement ran: outcome unknown', async () => {
    const pool = new FakePool(() => () => 'lost');
    const err = await rejectionOf(execWithRetry(pool, 'UPDATE t SET x = 1', [], fast));
    expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
    expect(pool.destroyed()).toEqual([true]);
  });

  it('a pooled client already dead before sending: retried on another, not outcome unknown', async () => {
    const pool = new FakePool(() => () => undefined);
    const connect = pool.connect.bind(pool);
    pool.connect = async () => {
      const c = await connect();
      if (pool.clients.length === 1) Object.assign(c, { _queryable: false });
      return c;
    };
    const codes: string[] = [];
    const res = await execWithRetry(pool, 'UPDATE t SET x = 1', [], {
      ...fast,
      onRetry: (i) => codes.push(i.code),
    });
    expect(res.command).toBe('SELECT');
    expect(codes).toEqual(['connection-lost']);
    expect(pool.clients[0]?.log).toEqual([]);
    expect(pool.destroyed()).toEqual([true, false]);
  });

  it('a single client already dead before sending: the connection error, not outcome unknown', async () => {
    const client = new FakeClient(() => undefined);
    client.on('error', () => {}); // the owner's listener
    client.loseConnection();
    Object.assign(client, { _queryable: false });
    const err = await rejectionOf(
      execWithRetry(client as unknown as pg.PoolClient, 'UPDATE t SET x = 1', [], fast),
    );
    expect(err).not.toBeInstanceOf(CommitOutcomeUnknownError);
  });
});

// ------------------------------------------------------------------------------------------------
// Property: whatever each attempt runs into, bookkeeping holds
// ------------------------------------------------------------------------------------------------

type Event = 'ok' | 'occ-commit' | 'occ-stmt' | 'fatal-stmt' | 'rollback-fails' | 'lost-stmt' | 'lost-commit';

describe('withRetry bookkeeping (property)', () => {
  it('releases each client once, destroys exactly the broken ones, and classifies the end', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.constantFrom<Event>(
            'ok',
            'occ-commit',
            'occ-stmt',
            'fatal-stmt',
            'rollback-fails',
            'lost-stmt',
            'lost-commit',
          ),
          { minLength: 1, maxLength: 8 },
        ),
        fc.integer({ min: 1, max: 6 }),
        async (events, maxAttempts) => {
          const fatal = new Error('fatal');
          const pool = new FakePool((attempt) => (sql) => {
            const e = events[attempt - 1] ?? 'ok';
            if (sql.startsWith('UPDATE')) {
              if (e === 'occ-stmt' || e === 'rollback-fails') return occ();
              if (e === 'fatal-stmt') return fatal;
              if (e === 'lost-stmt') return 'lost';
            }
            if (sql === 'COMMIT') {
              if (e === 'occ-commit') return occ();
              if (e === 'lost-commit') return 'lost';
            }
            if (sql === 'ROLLBACK' && e === 'rollback-fails') return new Error('Query read timeout');
            return undefined;
          });
          let calls = 0;
          const outcome = await withRetry(
            pool,
            async (tx) => {
              calls++;
              await tx.query('UPDATE t SET x = 1');
              return 'value';
            },
            { ...fast, maxAttempts },
          ).catch((err: unknown) => err);

          // Expected: walk the events like the policy does.
          let expected: unknown = 'value';
          let n = 0;
          for (;;) {
            const e = events[n] ?? 'ok';
            n++;
            if (e === 'ok') break;
            if (e === 'fatal-stmt') {
              expected = fatal;
              break;
            }
            if (e === 'lost-commit') {
              expected = CommitOutcomeUnknownError;
              break;
            }
            if (n >= maxAttempts) {
              expected = OccRetryExhaustedError;
              break;
            }
          }
          if (typeof expected === 'function') expect(outcome).toBeInstanceOf(expected);
          else expect(outcome).toBe(expected);
          expect(calls).toBe(n);
          expect(pool.clients).toHaveLength(n);
          const broken = pool.clients.map((_, i) =>
            ['rollback-fails', 'lost-stmt', 'lost-commit'].includes(events[i] ?? 'ok'),
          );
          expect(pool.destroyed()).toEqual(broken);
          for (const c of pool.clients) expect(c.listenerCount('error') + c.listenerCount('end')).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });
});
