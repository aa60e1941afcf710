/**
 * withRetry / execWithRetry against fake clients and pools: classification paths, release
 * bookkeeping, backoff arithmetic, deadline and abort. No timed assertions: vitest's fake clock
 * and a fixed Math.random make every run take the same path.
 */
import { EventEmitter } from 'node:events';
import fc from 'fast-check';
import type pg from 'pg';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DSQL_DEFAULTS } from '../../src/defaults.js';
import {
  CommitOutcomeUnknownError,
  DsqlConfigError,
  DsqlConnectionError,
  DsqlError,
  isOccError,
  OccRetryExhaustedError,
  occCode,
} from '../../src/errors.js';
import {
  execWithRetry as execWithRetryOn,
  type RetryInfo,
  type RetryOptions,
  type TransactionClient,
  withRetry as withRetryOn,
} from '../../src/retry.js';

/** The fakes stand in for pg.Pool. */
type Options = RetryOptions;
const withRetry = <T>(pool: unknown, fn: Parameters<typeof withRetryOn<T>>[1], options?: Options) =>
  withRetryOn<T>(pool as pg.Pool, fn, options);
const execWithRetry = (pool: unknown, sql: string, params?: unknown[], options?: Options) =>
  execWithRetryOn(pool as pg.Pool, sql, params, options);

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
    // pg refuses at once, sending nothing, on a client it knows is dead.
    if (this.dead) throw new Error('Client has encountered a connection error and is not queryable');
    this.log.push(sql);
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

/**
 * vitest's fake clock (setTimeout and Date; setImmediate stays real for the tests that flush with
 * it): time passes only when a test says so, however slowly the machine runs the test.
 */
function fakeClock(): void {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
}
/** `ms` of fake time pass (inside a statement or fn: the attempt takes that long). */
const elapse = (ms: number) => vi.advanceTimersByTime(ms);
afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

/** Runs a call to its end on the fake clock: each timer fires once nothing else is pending. */
async function settle<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  await vi.runAllTimersAsync();
  return p;
}

/** Backoff sleeps of no time; Math.random() as given (the default policy's jitter draws from it). */
const fast: Options = { baseDelayMs: 0, maxDelayMs: 0 };

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

describe('backoff (decorrelated jitter)', () => {
  /** The sleeps withRetry takes against a pool that always conflicts, with Math.random() fixed at u. */
  async function sleeps(u: number, policy: Options): Promise<number[]> {
    fakeClock();
    vi.spyOn(Math, 'random').mockReturnValue(u);
    const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? occ() : undefined));
    const told: number[] = [];
    const err = await rejectionOf(
      settle(withRetry(pool, async () => 1, { ...policy, onRetry: (i) => told.push(i.delayMs) })),
    );
    expect(err).toMatchObject({ reason: 'attempts' });
    return told;
  }
  const policy = { baseDelayMs: 10, maxDelayMs: 1000 };

  it('uniform in [base, 3 × previous] (3 × base the first time), capped', async () => {
    expect(await sleeps(0, { ...policy, maxAttempts: 3 })).toEqual([10, 10]);
    expect(await sleeps(1, { ...policy, maxAttempts: 4 })).toEqual([30, 90, 270]);
    expect(await sleeps(0.5, { ...policy, maxAttempts: 3 })).toEqual([20, 35]);
    expect(await sleeps(1, { ...policy, maxDelayMs: 100, maxAttempts: 4 })).toEqual([30, 90, 100]);
  });

  it('a cap below the base wins', async () => {
    expect(await sleeps(0, { baseDelayMs: 50, maxDelayMs: 20, maxAttempts: 3 })).toEqual([20, 20]);
    expect(await sleeps(1, { baseDelayMs: 50, maxDelayMs: 20, maxAttempts: 3 })).toEqual([20, 20]);
  });

  it('stays within [min(base, cap), cap] for any policy and random value (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 2, max: 6 }),
        fc.double({ min: 0, max: 100, noNaN: true }),
        fc.double({ min: 0, max: 10_000, noNaN: true }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        async (maxAttempts, base, cap, u) => {
          const delays = await sleeps(u, { baseDelayMs: base, maxDelayMs: cap, maxAttempts });
          expect(delays).toHaveLength(maxAttempts - 1);
          for (const d of delays) {
            expect(d).toBeGreaterThanOrEqual(Math.min(base, cap));
            expect(d).toBeLessThanOrEqual(cap);
          }
        },
      ),
      { numRuns: 50 },
    );
  });

  it('has the documented defaults and schedule (0.35–5.6 s of sleep over 8 attempts)', async () => {
    expect(DSQL_DEFAULTS.retry).toEqual({ maxAttempts: 8, baseDelayMs: 50, maxDelayMs: 1000 });
    expect(await sleeps(0, {})).toEqual([50, 50, 50, 50, 50, 50, 50]);
    expect((await sleeps(0.999_999, {})).map(Math.round)).toEqual([150, 450, 1000, 1000, 1000, 1000, 1000]);
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
    fakeClock();
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    const pool = new FakePool((attempt) => (sql) => (sql === 'COMMIT' && attempt <= 3 ? occ() : undefined));
    const told: number[] = [];
    const started = Date.now();
    await settle(
      withRetry(pool, async () => 1, {
        baseDelayMs: 10,
        maxDelayMs: 25,
        onRetry: (i) => told.push(i.delayMs),
      }),
    );
    // random 0.5: 10 + 0.5 × (30 − 10) = 20, then 10 + 0.5 × (60 − 10) = 35 → capped at 25.
    expect(told).toEqual([20, 25, 25]);
    expect(Date.now() - started).toBe(70); // and slept them (attempts take no fake time)
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
    await expect(leaked?.query('SELECT 1')).rejects.toThrow(DsqlError);
    expect(pool.clients[0]?.log).toEqual(['BEGIN', 'COMMIT']);
  });

  it('a late callback-style tx.query calls back with the error instead of throwing (a throw in a timer crashes)', async () => {
    const pool = new FakePool(() => () => undefined);
    let leaked: TransactionClient | undefined;
    await withRetry(
      pool,
      async (tx) => {
        leaked = tx;
      },
      fast,
    );
    const err = await new Promise((resolve) => {
      expect(() => leaked?.query('SELECT 1', [], resolve)).not.toThrow();
    });
    expect(err).toBeInstanceOf(DsqlError);
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
      { deadline: Number.NaN },
    ]) {
      expect(await rejectionOf(withRetry(pool, async () => 1, bad))).toBeInstanceOf(DsqlConfigError);
    }
    expect(pool.clients).toHaveLength(0);
  });

  it('rejects options of the wrong type, a non-AbortSignal signal included, before any checkout', async () => {
    const pool = new FakePool(() => () => undefined);
    for (const [field, bad] of [
      ['baseDelayMs', { baseDelayMs: '50' }], // concatenated into the backoff before
      ['maxDelayMs', { maxDelayMs: '1000' }],
      ['maxAttempts', { maxAttempts: '3' }],
      ['maxAttempts', { maxAttempts: Number.POSITIVE_INFINITY }],
      ['deadline', { deadline: 'tomorrow' }], // silently no deadline before
      ['signal', { signal: {} }], // threw only once a client was checked out, and stranded it
      ['onRetry', { onRetry: 'log' }],
    ] as const) {
      const err = await rejectionOf(withRetry(pool, async () => 1, bad as unknown as Options));
      expect(err).toBeInstanceOf(DsqlConfigError);
      expect((err as DsqlConfigError).field).toBe(field);
    }
    expect(pool.clients).toHaveLength(0);
  });

  it('a backoff no timer can sleep (2^31 ms or more) is refused, naming the field, not slept as 1 ms', async () => {
    // Before, Node clamped such a setTimeout to 1 ms (a TimeoutOverflowWarning): the retry hammered at once.
    const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? occ() : undefined));
    for (const [field, bad] of [
      ['baseDelayMs', { baseDelayMs: 2 ** 31, maxDelayMs: 2 ** 31 }],
      ['maxDelayMs', { baseDelayMs: 50, maxDelayMs: 2 ** 31 }],
    ] as const) {
      const err = await rejectionOf(withRetry(pool, async () => 1, { maxAttempts: 2, ...bad }));
      expect(err).toBeInstanceOf(DsqlConfigError);
      expect((err as DsqlConfigError).field).toBe(field);
    }
    expect(pool.clients).toHaveLength(0);
  });

  it('an async onRetry that rejects: the call rejects with its error, nothing unhandled, the client released', async () => {
    const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? occ() : undefined));
    const unhandled: unknown[] = [];
    const note = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', note);
    const oops = new Error('metrics down');
    const err = await rejectionOf(
      withRetry(pool, async () => 1, {
        ...fast,
        onRetry: async () => {
          throw oops;
        },
      }),
    );
    await new Promise((r) => setImmediate(r));
    process.off('unhandledRejection', note);
    expect(err).toBe(oops);
    expect(unhandled).toEqual([]);
    expect(pool.destroyed()).toEqual([false]);
  });

  it('rethrows unchanged what fn throws even if reading it throws (a getter, a Proxy trap)', async () => {
    const pool = new FakePool(() => () => undefined);
    const getter = {
      get code(): string {
        throw new Error('getter');
      },
    };
    // A trap on every key but `then` (which resolving any promise with it reads).
    const trap = new Proxy(new Error('x'), {
      get: (_target, key) => {
        if (key === 'then') return undefined;
        throw new Error(`trap ${String(key)}`);
      },
    });
    for (const thrown of [getter, trap]) {
      const err = await rejectionOf(
        withRetry(pool, async () => {
          throw thrown;
        }),
      );
      expect(err === thrown).toBe(true);
    }
    expect(pool.destroyed()).toEqual([false, false]);
  });

  it('rejects a target that is not a pool, a client included (each attempt needs its own checkout)', async () => {
    expect(await rejectionOf(withRetry({}, async () => 1))).toBeInstanceOf(TypeError);
    const client = new FakeClient(() => undefined);
    expect(await rejectionOf(withRetry(client, async () => 1))).toBeInstanceOf(TypeError);
    expect(client.log).toEqual([]);
  });

  it("an error whose code is 'OC000' or 'OC001' (as the official connectors raise) is retried as OCC", async () => {
    for (const code of ['OC000', 'OC001'] as const) {
      expect(isOccError(Object.assign(new Error('conflict'), { code }))).toBe(true);
      expect(occCode({ code })).toBe(code);
      const pool = new FakePool(
        (attempt) => (sql) =>
          sql === 'COMMIT' && attempt === 1 ? Object.assign(new Error('conflict'), { code }) : undefined,
      );
      const codes: string[] = [];
      expect(await withRetry(pool, async () => 'ok', { ...fast, onRetry: (i) => codes.push(i.code) })).toBe(
        'ok',
      );
      expect(codes).toEqual([code]);
    }
  });

  it('an OCC conflict whose ROLLBACK fails: the connection is destroyed and the error thrown keeps the conflict as cause', async () => {
    const conflict = occ();
    const pool = new FakePool(() => (sql) => {
      if (sql.startsWith('UPDATE')) return conflict;
      if (sql === 'ROLLBACK') return new Error('Query read timeout');
      return undefined;
    });
    const err = await rejectionOf(
      withRetry(pool, async (tx) => void (await tx.query('UPDATE t SET x = 1')), { ...fast, maxAttempts: 2 }),
    );
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    expect((err as Error).cause).toBe(conflict);
    expect(pool.destroyed()).toEqual([true, true]);
  });
});

// ------------------------------------------------------------------------------------------------
// Deadline and abort
// ------------------------------------------------------------------------------------------------

describe('deadline', () => {
  it('does not start an attempt that cannot finish before the deadline', async () => {
    fakeClock();
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    // Every attempt takes 100 ms of (fake) time; backoff is 20, 35, 57.5 ms.
    const pool = new FakePool(() => (sql) => {
      if (sql === 'BEGIN') elapse(100);
      return sql === 'COMMIT' ? occ() : undefined;
    });
    const started = Date.now();
    const deadline = started + 400;
    const told: number[] = [];
    const err = await rejectionOf(
      settle(
        withRetry(pool, async () => 1, { baseDelayMs: 10, deadline, onRetry: (i) => told.push(i.delayMs) }),
      ),
    );
    // 100 + 20 + 100 + 35 + 100 = 355; a third retry would need 57.5 + 100 more: not started.
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    expect((err as OccRetryExhaustedError).reason).toBe('deadline');
    expect((err as OccRetryExhaustedError).attempts).toBe(3);
    expect((err as OccRetryExhaustedError).elapsedMs).toBe(355);
    expect((err as Error).cause).toMatchObject({ code: '40001' });
    expect(told).toEqual([20, 35]);
    expect(Date.now()).toBe(started + 355);
  });

  it('does not sleep when sleep plus the estimated attempt would overrun', async () => {
    fakeClock();
    const pool = new FakePool(() => (sql) => {
      if (sql === 'BEGIN') elapse(100);
      return sql === 'COMMIT' ? occ() : undefined;
    });
    const started = Date.now();
    const told: number[] = [];
    const err = await rejectionOf(
      settle(
        withRetry(pool, async () => 1, {
          deadline: started + 150,
          baseDelayMs: 60,
          maxDelayMs: 60,
          onRetry: (i) => told.push(i.delayMs),
        }),
      ),
    );
    expect((err as OccRetryExhaustedError).attempts).toBe(1);
    expect(told).toEqual([]);
    expect(Date.now()).toBe(started + 100);
  });

  it('a deadline already passed: no attempt at all', async () => {
    const pool = new FakePool(() => () => undefined);
    const err = await rejectionOf(withRetry(pool, async () => 1, { deadline: Date.now() }));
    expect(err).toMatchObject({ reason: 'deadline', attempts: 0 });
    expect(pool.clients).toHaveLength(0);
  });

  it('fn finishing after the deadline: COMMIT never sent, connection closed (no time for ROLLBACK)', async () => {
    fakeClock();
    const pool = new FakePool(() => () => undefined);
    const err = await rejectionOf(
      settle(
        withRetry(
          pool,
          async () => {
            elapse(1000);
          },
          { deadline: Date.now() + 500 },
        ),
      ),
    );
    expect(err).toMatchObject({ reason: 'deadline', attempts: 1 });
    expect(pool.clients[0]?.log).toEqual(['BEGIN']);
    expect(pool.destroyed()).toEqual([true]);
  });

  it('a statement hanging past the deadline: attempt abandoned, connection destroyed', async () => {
    fakeClock();
    const pool = new FakePool(() => (sql) => (sql.startsWith('SELECT pg_sleep') ? 'hang' : undefined));
    const err = await rejectionOf(
      settle(
        withRetry(pool, async (tx) => void (await tx.query('SELECT pg_sleep(3600)')), {
          deadline: Date.now() + 30,
        }),
      ),
    );
    expect(err).toMatchObject({ reason: 'deadline', attempts: 1 });
    expect(pool.destroyed()).toEqual([true]);
  });

  it('a COMMIT hanging past the deadline: CommitOutcomeUnknownError, connection destroyed', async () => {
    fakeClock();
    const pool = new FakePool(() => (sql) => (sql === 'COMMIT' ? 'hang' : undefined));
    const err = await rejectionOf(settle(withRetry(pool, async () => 1, { deadline: Date.now() + 30 })));
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

  it('deadline while waiting: a connection error saying so, not "gave up after 0 attempts"', async () => {
    fakeClock();
    const { pool, client, grant } = exhaustedPool();
    const err = await rejectionOf(settle(withRetry(pool, async () => 1, { deadline: Date.now() + 20 })));
    expect(err).toBeInstanceOf(DsqlConnectionError);
    expect((err as Error).message).toMatch(/Could not connect within \d+ ms \(deadline reached\)/);
    grant();
    await new Promise((r) => setImmediate(r));
    expect(client.releases).toEqual([undefined]);
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
      if (pool.clients.length === 1) (c as unknown as FakeClient).dead = true;
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

describe('one physical connection across attempts: its error listeners', () => {
  /** A pool handing out one client every time; it keeps a permanent 'error' listener, like createPool's. */
  function samePool(script: Script, connect?: (n: number) => Promise<void> | void) {
    const client = new FakeClient(script).on('error', () => {});
    let most = 0;
    client.on('newListener', () =>
      queueMicrotask(() => (most = Math.max(most, client.listenerCount('error')))),
    );
    let n = 0;
    const pool = {
      connect: async () => {
        await connect?.(++n);
        return client as unknown as pg.PoolClient;
      },
    };
    return { pool, client, most: () => most };
  }
  const conflicts = (times: number): Script => {
    let n = 0;
    return (sql) => ((sql === 'COMMIT' || sql === 'UPDATE t') && ++n <= times ? occ() : undefined);
  };

  it('retried conflicts: one listener of its own per attempt, none left after', async () => {
    const a = samePool(conflicts(3));
    expect(await withRetry(a.pool, async (tx) => tx.query('SELECT 1').then(() => 'ok'), fast)).toBe('ok');
    const b = samePool(conflicts(2));
    await execWithRetry(b.pool, 'UPDATE t', [], fast);
    for (const { client, most } of [a, b]) {
      expect(client.releases.length).toBeGreaterThan(2);
      expect(most()).toBe(2);
      expect(client.listenerCount('error')).toBe(1);
    }
  });

  it('none left by a deadline, an abort, a failed checkout, a throwing onRetry or a late checkout', async () => {
    fakeClock();
    const hangsAfter = conflicts(1);
    const a = samePool((sql, c) => hangsAfter(sql, c) ?? (sql === 'COMMIT' ? 'hang' : undefined));
    await rejectionOf(settle(withRetry(a.pool, async () => 1, { ...fast, deadline: Date.now() + 50 })));
    const controller = new AbortController();
    const b = samePool(conflicts(1));
    const fn = async () => {
      if (b.client.releases.length) {
        controller.abort();
        await new Promise(() => {});
      }
    };
    await rejectionOf(settle(withRetry(b.pool, fn, { ...fast, signal: controller.signal })));
    const c = samePool(conflicts(9), (n) => {
      if (n === 2) throw new Error('no connection');
    });
    await rejectionOf(settle(withRetry(c.pool, async () => 1, fast)));
    const onRetry = () => {
      throw new Error('onRetry failed');
    };
    const d = samePool(conflicts(9));
    await rejectionOf(settle(withRetry(d.pool, async () => 1, { ...fast, onRetry })));
    let grant = () => {};
    const e = samePool(conflicts(9), (n) => (n === 2 ? new Promise<void>((r) => (grant = r)) : undefined));
    await rejectionOf(settle(withRetry(e.pool, async () => 1, { ...fast, deadline: Date.now() + 50 })));
    grant();
    await new Promise((r) => setImmediate(r));
    expect(e.client.releases).toHaveLength(2);
    a.client.emit('error', new Error('after the call'));
    for (const { client } of [a, b, c, d, e]) expect(client.listenerCount('error')).toBe(1);
  });
});
