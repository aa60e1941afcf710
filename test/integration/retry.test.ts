/**
 * withRetry / execWithRetry against the local DSQL-like endpoint: injected OCC conflicts at
 * COMMIT, dropped connections before and during COMMIT, a ROLLBACK that cannot complete, a
 * swallowed statement error, deadline and abort, a real conflict for execWithRetry, mostly on
 * plain pg.Pool / pg.Client built from the endpoint's pgConfig, and once on createPool().
 * Assertions are on counts (rows, attempts, COMMITs seen, pool size, sessions) and ordering,
 * never on durations.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  CommitOutcomeUnknownError,
  DsqlConnectionError,
  DsqlError,
  OccRetryExhaustedError,
} from '../../src/errors.js';
import { createPool } from '../../src/pool.js';
import { execWithRetry, type RetryInfo, type TransactionClient, withRetry } from '../../src/retry.js';
import { holdBusy, pgConfig, signTestToken, startTestEndpoint } from '../helpers/endpoint.js';

type Endpoint = Awaited<ReturnType<typeof startTestEndpoint>>;

let endpoint: Endpoint;
let config: pg.PoolConfig;
const pools: pg.Pool[] = [];
const table = `retry_it_${randomUUID().slice(0, 8)}`;

/** A pool on the endpoint; every pool is ended after the file. */
function newPool(extra: pg.PoolConfig = {}): pg.Pool {
  const pool = new pg.Pool({ ...config, max: 4, ...extra });
  pool.on('error', () => {}); // idle connections dropped on purpose by some tests
  pools.push(pool);
  return pool;
}

async function rowCount(id: string): Promise<number> {
  const { rows } = await admin().query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${table} WHERE id = $1`,
    [id],
  );
  return rows[0]!.n;
}

let adminPool: pg.Pool | undefined;
function admin(): pg.Pool {
  adminPool ??= newPool({ max: 1 });
  return adminPool;
}

async function sessionOf(tx: TransactionClient): Promise<number> {
  const { rows } = await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  return rows[0]!.pid;
}

/** Fast retries: these tests are about what is retried, not about backoff timing. */
const quick = { baseDelayMs: 1, maxDelayMs: 5 };

async function rejectionOf(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

beforeAll(async () => {
  endpoint = await startTestEndpoint({});
  // A fresh token per new connection, as a Lambda's pool would do.
  config = pgConfig(endpoint, { user: 'admin', password: () => signTestToken(endpoint, { user: 'admin' }) });
  await admin().query(`CREATE TABLE ${table} (id text PRIMARY KEY, n int NOT NULL DEFAULT 0)`);
});

afterEach(() => {
  endpoint.faults.clear();
});

afterAll(async () => {
  await admin()
    .query(`DROP TABLE IF EXISTS ${table}`)
    .catch(() => {});
  await Promise.all(pools.map((p) => p.end().catch(() => {})));
  await endpoint?.stop();
});

describe('OCC conflicts injected at COMMIT', () => {
  it.each(['OC000', 'OC001'] as const)('%s twice: retried, then committed exactly once', async (code) => {
    const pool = newPool();
    const id = randomUUID();
    endpoint.faults.failNextCommits({ count: 2, code });
    const retries: RetryInfo[] = [];
    let calls = 0;
    const value = await withRetry(
      pool,
      async (tx) => {
        calls++;
        await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
        return 'committed';
      },
      { ...quick, onRetry: (info) => retries.push(info) },
    );
    expect(value).toBe('committed');
    expect(calls).toBe(3);
    expect(retries.map((r) => [r.attempt, r.code])).toEqual([
      [1, code],
      [2, code],
    ]);
    expect(await rowCount(id)).toBe(1);
    // Conflicts are ordinary errors on a healthy connection: nothing was destroyed.
    expect(pool.totalCount).toBe(1);
  });

  it('gives up after maxAttempts with the last conflict as cause, nothing committed', async () => {
    const pool = newPool();
    const id = randomUUID();
    endpoint.faults.failNextCommits({ count: 3, code: 'OC000' });
    const err = await rejectionOf(
      withRetry(pool, async (tx) => void (await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id])), {
        ...quick,
        maxAttempts: 3,
      }),
    );
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    expect(err).toMatchObject({ attempts: 3, reason: 'attempts' });
    expect((err as Error).cause).toMatchObject({ code: '40001' });
    expect(await rowCount(id)).toBe(0);
  });
});

describe('errors that are not retried', () => {
  it('a unique violation is rethrown unchanged after one attempt', async () => {
    const pool = newPool();
    const id = randomUUID();
    await admin().query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
    let calls = 0;
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          calls++;
          await tx.query(`UPDATE ${table} SET n = n + 1 WHERE id = $1`, [id]);
          await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
        },
        quick,
      ),
    );
    expect(err).toBeInstanceOf(pg.DatabaseError);
    expect(err).toMatchObject({ code: '23505' });
    expect(calls).toBe(1);
    // The UPDATE before the failure was rolled back, and the connection went back to the pool.
    const { rows } = await admin().query(`SELECT n FROM ${table} WHERE id = $1`, [id]);
    expect(rows).toEqual([{ n: 0 }]);
    expect(pool.totalCount).toBe(1);
    expect(pool.idleCount).toBe(1);
  });

  it("fn's own error is rethrown unchanged", async () => {
    const pool = newPool();
    const mine = new Error('insufficient funds');
    let calls = 0;
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          calls++;
          await tx.query('SELECT 1');
          throw mine;
        },
        quick,
      ),
    );
    expect(err).toBe(mine);
    expect(calls).toBe(1);
  });
});

describe('a statement error whose message quotes what a classifier looks for', () => {
  it.each(['OC000', 'Connection terminated', 'is not queryable', 'Query read timeout'])(
    'the value %s in a 22P02: rethrown unchanged after one attempt, the connection kept',
    async (quoted) => {
      const pool = newPool({ max: 1 });
      const retries: RetryInfo[] = [];
      const options = { ...quick, onRetry: (i: RetryInfo) => retries.push(i) };
      // PostgreSQL quotes the value in its message: invalid input syntax for type integer: "…".
      const single = await rejectionOf(execWithRetry(pool, 'SELECT $1::int', [quoted], options));
      expect(single).toBeInstanceOf(pg.DatabaseError);
      expect(single).toMatchObject({ code: '22P02', message: expect.stringContaining(quoted) });
      let calls = 0;
      const inTx = await rejectionOf(
        withRetry(
          pool,
          async (tx) => {
            calls++;
            await tx.query('SELECT $1::int', [quoted]);
          },
          options,
        ),
      );
      expect(inTx).toMatchObject({ code: '22P02' });
      expect([calls, retries.length]).toEqual([1, 0]);
      // Neither call took it for a lost connection: the one connection went back to the pool.
      expect([pool.totalCount, pool.idleCount]).toEqual([1, 1]);
    },
  );
});

describe('fn that swallows a failed statement', () => {
  it('COMMIT answered with ROLLBACK is reported, not returned as success', async () => {
    const pool = newPool();
    const id = randomUUID();
    await admin().query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
    const other = randomUUID();
    let calls = 0;
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          calls++;
          await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [other]);
          await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]).catch(() => {}); // duplicate, swallowed
          return 'looks committed';
        },
        quick,
      ),
    );
    expect(err).toBeInstanceOf(DsqlError);
    expect((err as Error).cause).toMatchObject({ code: '23505' });
    expect(calls).toBe(1);
    expect(await rowCount(other)).toBe(0);
    expect(pool.idleCount).toBe(1);
  });
});

describe('fn that ends the transaction itself', () => {
  it.each(['ROLLBACK', 'COMMIT'])(
    'a %s sent through tx: reported, not returned as a committed transaction',
    async (end) => {
      const pool = newPool();
      const [before, after] = [randomUUID(), randomUUID()];
      let calls = 0;
      const err = await rejectionOf(
        withRetry(
          pool,
          async (tx) => {
            calls++;
            await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [before]);
            await tx.query(end);
            await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [after]); // autocommit now
            return 'looks committed';
          },
          quick,
        ),
      );
      // A COMMIT through tx did commit, a ROLLBACK did not: the caller must check before retrying.
      expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
      expect((err as Error).message).toMatch(
        /fn sent COMMIT or ROLLBACK itself: it may or may not have committed/,
      );
      expect(calls).toBe(1);
      expect(await rowCount(before)).toBe(end === 'COMMIT' ? 1 : 0);
      expect(pool.idleCount).toBe(1);
    },
  );
});

describe('a ROLLBACK that fails destroys the connection', () => {
  it('silently dropped path: ROLLBACK times out, the client is not returned to the pool', async () => {
    // query_timeout makes the black-holed ROLLBACK fail instead of hanging forever.
    const pool = newPool({ max: 1, query_timeout: 1000 });
    const mine = new Error('application failure');
    let session = 0;
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          session = await sessionOf(tx);
          endpoint.faults.dropConnections({ which: session, how: 'silent' });
          throw mine;
        },
        quick,
      ),
    );
    expect(err).toBe(mine);
    expect(pool.totalCount).toBe(0);
    expect(endpoint.sessions().map((x) => x.id)).not.toContain(session);
    // The pool still works: a new connection, a new session.
    const { rows } = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    expect(rows[0]!.pid).not.toBe(session);
  });

  it('connection reset during fn: destroyed without ROLLBACK, the original error rethrown', async () => {
    const pool = newPool({ max: 1 });
    const mine = new Error('application failure');
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          const session = await sessionOf(tx);
          endpoint.faults.dropConnections({ which: session, how: 'rst' });
          await new Promise((resolve) => setTimeout(resolve, 50)); // let the reset arrive
          throw mine;
        },
        quick,
      ),
    );
    expect(err).toBe(mine);
    expect(pool.totalCount).toBe(0);
  });
});

describe('connection lost', () => {
  it.each(['fin', 'rst'] as const)(
    'before COMMIT (%s): retried on a new connection, committed once',
    async (how) => {
      const pool = newPool();
      const id = randomUUID();
      const sessions: number[] = [];
      const retries: RetryInfo[] = [];
      await withRetry(
        pool,
        async (tx) => {
          const session = await sessionOf(tx);
          sessions.push(session);
          await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
          if (sessions.length === 1) endpoint.faults.dropConnections({ which: session, how });
          await tx.query('SELECT pg_sleep(0.05)');
        },
        { ...quick, onRetry: (info) => retries.push(info) },
      );
      expect(sessions).toHaveLength(2);
      expect(sessions[1]).not.toBe(sessions[0]);
      expect(retries.map((r) => r.code)).toEqual(['connection-lost']);
      expect(await rowCount(id)).toBe(1);
    },
  );

  it.each([
    ['fin', true, 1],
    ['rst', true, 1],
    ['fin', false, 0],
  ] as const)(
    'while COMMIT is in flight (%s, committed: %s): CommitOutcomeUnknownError, never retried',
    async (how, afterCommit, rows) => {
      const pool = newPool();
      const id = randomUUID();
      let calls = 0;
      endpoint.resetStats();
      endpoint.faults.dropOnNextCommit({ how, afterCommit });
      const err = await rejectionOf(
        withRetry(
          pool,
          async (tx) => {
            calls++;
            await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
          },
          quick,
        ),
      );
      expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
      expect(err).toMatchObject({ attempts: 1 });
      expect(calls).toBe(1);
      // One COMMIT reached the endpoint: nothing was sent again.
      expect(endpoint.stats().commits).toBe(1);
      expect(await rowCount(id)).toBe(rows);
      expect(pool.totalCount).toBe(0);
    },
  );

  it('COMMIT on a silently dropped path with query_timeout: outcome unknown, not retried', async () => {
    const pool = newPool({ query_timeout: 1000 });
    const id = randomUUID();
    let calls = 0;
    endpoint.faults.dropOnNextCommit({ how: 'silent', afterCommit: true });
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          calls++;
          await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
        },
        quick,
      ),
    );
    expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
    expect(calls).toBe(1);
    expect(await rowCount(id)).toBe(1);
    expect(pool.totalCount).toBe(0);
  });
});

describe('deadline and abort', () => {
  it('conflicts until the deadline: OccRetryExhaustedError(deadline), every attempt counted, nothing committed', async () => {
    // Which attempt is the last depends on the machine's speed; what is checked does not: the
    // reason, that the attempts reported are those fn saw (the last may have been stopped in its
    // BEGIN, before fn ran), and that nothing committed.
    // (That no attempt or sleep starts past the deadline is checked on a fake clock in the unit tests.)
    const pool = newPool();
    const id = randomUUID();
    endpoint.faults.failNextCommits({ count: 1000, code: 'OC000' });
    let calls = 0;
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          calls++;
          await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
        },
        { baseDelayMs: 20, maxDelayMs: 100, maxAttempts: 1000, deadline: Date.now() + 1500 },
      ),
    );
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    expect(err).toMatchObject({ reason: 'deadline' });
    expect([calls, calls + 1]).toContain((err as OccRetryExhaustedError).attempts);
    expect(await rowCount(id)).toBe(0);
  });

  it('abort during the backoff: stops at once, no further attempt', async () => {
    const pool = newPool();
    const controller = new AbortController();
    endpoint.faults.failNextCommits({ count: 1000, code: 'OC000' });
    let calls = 0;
    const err = await rejectionOf(
      withRetry(
        pool,
        async () => {
          calls++;
        },
        {
          signal: controller.signal,
          // A minute-long backoff: only the abort can end this test in time.
          baseDelayMs: 60_000,
          maxDelayMs: 60_000,
          onRetry: () => void setTimeout(() => controller.abort(), 10),
        },
      ),
    );
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    expect(err).toMatchObject({ reason: 'aborted', attempts: 1 });
    expect(calls).toBe(1);
    expect(pool.totalCount).toBe(1);
  });

  it('abort while fn waits on a statement: the attempt is abandoned and its connection destroyed', async () => {
    const pool = newPool();
    const controller = new AbortController();
    const id = randomUUID();
    let session = 0;
    const err = await rejectionOf(
      withRetry(
        pool,
        async (tx) => {
          session = await sessionOf(tx);
          await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
          setTimeout(() => controller.abort(), 20);
          await tx.query('SELECT pg_sleep(30)');
        },
        { signal: controller.signal },
      ),
    );
    expect(err).toMatchObject({ reason: 'aborted', attempts: 1 });
    expect(pool.totalCount).toBe(0);
    // PostgreSQL notices the closed socket only when pg_sleep ends: end the session now, so that
    // its row lock does not hold up the table's cleanup for 30 s.
    await admin().query('SELECT pg_terminate_backend($1)', [session]);
    expect(await rowCount(id)).toBe(0);
  });

  it('deadline while waiting for a pool client: a connection error naming the wait, the client is not leaked', async () => {
    const pool = newPool({ max: 1 });
    const holder = await pool.connect();
    let calls = 0;
    const pending = withRetry(pool, async () => void calls++, { deadline: Date.now() + 50 });
    const err = await rejectionOf(pending);
    expect(err).toBeInstanceOf(DsqlConnectionError);
    expect((err as Error).message).toMatch(/all 1 pool connections in use/);
    expect(calls).toBe(0);
    holder.release();
    // The checkout withRetry abandoned is handed back as soon as it is granted.
    const { rows } = await pool.query('SELECT 1 AS one');
    expect(rows).toEqual([{ one: 1 }]);
    expect(pool.idleCount).toBe(1);
  });
});

describe('execWithRetry', () => {
  it('runs one autocommit statement and returns its QueryResult', async () => {
    const pool = newPool();
    const id = randomUUID();
    const res = await execWithRetry(pool, `INSERT INTO ${table} (id) VALUES ($1)`, [id], quick);
    expect(res.rowCount).toBe(1);
    expect(res.command).toBe('INSERT');
    expect(await rowCount(id)).toBe(1);
  });

  it('does not retry a non-OCC error', async () => {
    const pool = newPool();
    const err = await rejectionOf(execWithRetry(pool, 'SELECT * FROM no_such_table_anywhere', [], quick));
    expect(err).toMatchObject({ code: '42P01' });
  });
});

describe('execWithRetry leaving a transaction open', () => {
  it("'BEGIN' on a plain pg.Pool: the connection is not pooled inside that transaction", async () => {
    const pool = newPool({ max: 1 });
    const id = randomUUID();
    await execWithRetry(pool, 'BEGIN');
    // Pooled inside it, this insert would never commit and vanish with the connection.
    await execWithRetry(pool, `INSERT INTO ${table} (id) VALUES ($1)`, [id]);
    expect(await rowCount(id)).toBe(1);
    const client = await pool.connect();
    expect(client.getTransactionStatus()).toBe('I');
    client.release();
  });
});

describe('execWithRetry under real contention', () => {
  it("a statement that meets a concurrent writer's row lock gets OC000 and is retried to success", async () => {
    const pool = newPool();
    const id = randomUUID();
    await admin().query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
    const holder = await newPool({ max: 1 }).connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`UPDATE ${table} SET n = n + 10 WHERE id = $1`, [id]);
      // A holder idle between statements would be rolled back at once (the DSQL shape: it fails
      // at COMMIT); one running a statement is not, so our statement fails as a conflict (OC000)
      // after the endpoint's short lock timeout. At the first retry the holder's statement is
      // cancelled (its transaction aborts, its lock goes), so a later attempt succeeds.
      const busy = await holdBusy(holder);
      const retries: RetryInfo[] = [];
      let released: Promise<void> | undefined;
      const res = await execWithRetry(pool, `UPDATE ${table} SET n = n + 1 WHERE id = $1`, [id], {
        ...quick,
        maxAttempts: 200,
        onRetry: (info) => {
          retries.push(info);
          released ??= busy.release();
        },
      });
      await released;
      expect(res.rowCount).toBe(1);
      expect(retries.length).toBeGreaterThanOrEqual(1);
      expect(retries.every((r) => r.code === 'OC000')).toBe(true);
      const { rows } = await admin().query(`SELECT n FROM ${table} WHERE id = $1`, [id]);
      expect(rows).toEqual([{ n: 1 }]);
    } finally {
      await holder.query('ROLLBACK').catch(() => {});
      holder.release();
    }
  });
});

describe('on a createPool() pool', () => {
  it('conflicts are retried, a lost COMMIT is outcome-unknown, and connections are accounted for', async () => {
    const pool = createPool({
      host: endpoint.host,
      hostaddr: endpoint.address,
      port: endpoint.port,
      ssl: { ca: endpoint.ca },
      credentials: { ...endpoint.credentials },
      max: 2,
    });
    try {
      const id = randomUUID();
      endpoint.faults.failNextCommits({ count: 2, code: 'OC000' });
      let calls = 0;
      await withRetry(
        pool,
        async (tx) => {
          calls++;
          await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
        },
        quick,
      );
      expect(calls).toBe(3);
      expect(await rowCount(id)).toBe(1);
      expect(pool.totalCount).toBe(1);

      const other = randomUUID();
      endpoint.faults.dropOnNextCommit({ how: 'rst', afterCommit: true });
      const err = await rejectionOf(
        withRetry(
          pool,
          async (tx) => void (await tx.query(`INSERT INTO ${table} (id) VALUES ($1)`, [other])),
          quick,
        ),
      );
      expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
      expect(await rowCount(other)).toBe(1);
      expect(pool.totalCount).toBe(0);
    } finally {
      await pool.end();
    }
  });
});
