/**
 * `context.dsql` against the local DSQL-like endpoint (TLS, IAM tokens), one body for each
 * adapter (the withDsql wrapper, the middy 7 and middy 5 middleware): the pool made on the first
 * invocation and kept, no I/O before a statement, every call bounded by the invocation's
 * deadline (a late write reported as outcome unknown, a busy pool or an unreachable endpoint
 * named), statements retried on OCC conflicts, a double release that cannot free another
 * invocation's client, leak cleanup, and 64 concurrent invocations within the pool's limit.
 * Assertions are on outcomes, counts and messages, never on durations.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import middy5 from 'middy-core-5';
import type pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type { DsqlConfig } from '../../src/config.js';
import {
  CommitOutcomeUnknownError,
  DsqlConfigError,
  DsqlConnectionError,
  DsqlError,
  OccRetryExhaustedError,
} from '../../src/errors.js';
import { type DsqlContext, type DsqlHandlerOptions, withDsql } from '../../src/lambda.js';
import { dsql } from '../../src/middy.js';
import { createPool } from '../../src/pool.js';
import { holdBusy, startTestEndpoint } from '../helpers/endpoint.js';
import { lambdaContext } from '../helpers/lambda-context.js';

type Endpoint = Awaited<ReturnType<typeof startTestEndpoint>>;
type UserHandler<E> = (event: E, context: Context & DsqlContext) => Promise<unknown>;
type Handler<E> = (event: E, context: Context) => Promise<unknown>;

let endpoint: Endpoint;
const pools = new Set<pg.Pool>();
const logger = { warn: vi.fn() };
const table = `lifecycle_${randomUUID().slice(0, 8)}`;

beforeAll(async () => {
  endpoint = await startTestEndpoint();
  await adapters[0]!.make(async (_e, c) => c.dsql.query(`CREATE TABLE ${table} (id text PRIMARY KEY)`), {
    ...configFor(),
    logger,
  })({}, lambdaContext());
});
beforeEach(() => {
  logger.warn.mockClear();
  endpoint.faults.clear();
});
afterAll(async () => {
  await Promise.allSettled([...pools].map((p) => p.end()));
  await endpoint?.stop();
});

function configFor(extra: Partial<DsqlConfig> = {}): DsqlConfig {
  return {
    host: endpoint.host,
    hostaddr: endpoint.address,
    port: endpoint.port,
    region: endpoint.region,
    credentials: endpoint.credentials,
    ssl: { ca: endpoint.ca },
    ...extra,
  };
}

/** Remembers every pool a handler used, to end them after the file. */
function seen<E>(handler: UserHandler<E>): UserHandler<E> {
  return (event, context) => {
    pools.add(context.dsql.pool);
    return handler(event, context);
  };
}

const adapters = [
  {
    type: 'wrapper',
    make: <E>(h: UserHandler<E>, o?: DsqlHandlerOptions): Handler<E> => withDsql(seen(h), o),
  },
  {
    type: 'middy 7',
    make: <E>(h: UserHandler<E>, o?: DsqlHandlerOptions): Handler<E> =>
      middy(seen(h) as unknown as Handler<E>).use(dsql(o)) as unknown as Handler<E>,
  },
  {
    type: 'middy 5',
    make: <E>(h: UserHandler<E>, o?: DsqlHandlerOptions): Handler<E> =>
      middy5(seen(h) as unknown as Handler<E>).use(dsql(o)) as unknown as Handler<E>,
  },
];

async function rowCount(id: string): Promise<number> {
  const pool = [...pools][0]!;
  const { rows } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table} WHERE id = $1`, [
    id,
  ]);
  return rows[0]!.n;
}

const openSessions = () => endpoint.sessions().length;

describe.each(adapters)('$type', ({ make }) => {
  it('creates its pool on the first invocation, keeps it, and opens no connection until a statement runs', async () => {
    const sessions = openSessions();
    const opened = endpoint.stats().connections.total;
    const used: pg.Pool[] = [];
    const handler = make(
      async (event: { query: boolean }, context) => {
        used.push(context.dsql.pool);
        return event.query ? (await context.dsql.query('SELECT 1 AS one')).rows[0] : 'nothing';
      },
      { ...configFor(), logger },
    );
    expect(await handler({ query: false }, lambdaContext())).toBe('nothing');
    expect(openSessions()).toBe(sessions);
    expect(endpoint.stats().connections.total).toBe(opened);
    expect(used[0]!.totalCount).toBe(0);
    expect(await handler({ query: true }, lambdaContext())).toEqual({ one: 1 });
    expect(used[1]).toBe(used[0]);
    expect(used[0]!.totalCount).toBe(1);
  });

  it('a write whose reply comes after the deadline: CommitOutcomeUnknownError (it did commit), never "Query read timeout"', async () => {
    const id = randomUUID();
    const handler = make(
      async (event: { warm: boolean }, context) => {
        if (event.warm) return context.dsql.query('SELECT 1'); // connects: what follows is only the statement
        // The statement commits after 3 s of server time; the deadline is 1.5 s away.
        return context.dsql.query(`INSERT INTO ${table} (id) SELECT $1 FROM pg_sleep(3)`, [id]);
      },
      { ...configFor({ max: 1 }), logger, deadlineMarginMs: 500 },
    );
    await handler({ warm: true }, lambdaContext());
    const err = await handler({ warm: false }, lambdaContext(2_000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
    expect((err as Error).message).toMatch(/may or may not have committed/);
    await vi.waitFor(async () => expect(await rowCount(id)).toBe(1), { timeout: 10_000 });
  });

  it('a statement lost on a silently dropped connection: outcome unknown by the deadline; the next invocation recovers', async () => {
    let pool: pg.Pool | undefined;
    const handler = make(
      async (_e: unknown, context) => {
        pool = context.dsql.pool;
        return (await context.dsql.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      },
      { ...configFor({ max: 1 }), logger, deadlineMarginMs: 200 },
    );
    const pid = (await handler({}, lambdaContext())) as number;
    // The path goes dead without a FIN or RST, right after use: no thaw, so no validation.
    expect(endpoint.faults.dropConnections({ which: pid, how: 'silent' })).toBe(1);
    const err = await handler({}, lambdaContext(2_000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
    // The abandoned connection was destroyed, not pooled: with max 1 the next invocation gets a new one.
    expect(await handler({}, lambdaContext())).not.toBe(pid);
    expect(pool!.totalCount).toBe(1);
  });

  it('query, connect and transaction wait for a busy pool only until the deadline, and say so', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let pool: pg.Pool | undefined;
    const handler = make(
      async (event: { hold?: boolean; call?: 'query' | 'connect' | 'transaction' }, context) => {
        pool = context.dsql.pool;
        if (event.hold) {
          const client = await context.dsql.connect();
          await held;
          client.release();
          return 'held';
        }
        if (event.call === 'query') return context.dsql.query('SELECT 1');
        if (event.call === 'connect') return context.dsql.connect();
        return context.dsql.transaction(async (tx) => tx.query('SELECT 1'));
      },
      { ...configFor({ max: 1 }), logger, deadlineMarginMs: 200 },
    );
    const holder = handler({ hold: true }, lambdaContext());
    await vi.waitFor(() => expect(pool?.idleCount === 0 && pool.totalCount === 1).toBe(true));
    for (const call of ['query', 'connect', 'transaction'] as const) {
      const err = await handler({ call }, lambdaContext(700)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DsqlConnectionError);
      expect((err as Error).message).toMatch(/Could not connect to .* within \d+ ms \(deadline reached\)/);
      expect((err as Error).message).toMatch(/all 1 pool connections in use/);
    }
    release();
    expect(await holder).toBe('held');
    // The checkouts granted after the callers gave up were handed straight back.
    await vi.waitFor(() => expect(pool!.idleCount).toBe(1));
    expect(pool!.waitingCount).toBe(0);
  });

  it('an unreachable endpoint: the deadline error names the host, not "gave up after 0 attempts"', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as { port: number }).port;
    await new Promise((resolve) => closed.close(resolve)); // nothing listens there any more
    const handler = make(
      async (_e: unknown, context) => context.dsql.transaction(async (tx) => tx.query('SELECT 1')),
      { ...configFor({ port }), logger, deadlineMarginMs: 200 },
    );
    const err = await handler({}, lambdaContext(800)).catch((e: unknown) => e);
    // Whichever gives up first, the deadline or the connect path, the error names the cluster.
    expect(err).toBeInstanceOf(DsqlConnectionError);
    expect((err as Error).message).toMatch(
      new RegExp(`Could not (get a connection|connect) to ${endpoint.host}`),
    );
    expect((err as Error).message).not.toMatch(/0 attempts/);
  });

  it('a second release() of a connect() client is ignored with a warning: it cannot free the next invocation’s checkout', async () => {
    let pool: pg.Pool | undefined;
    let first: pg.PoolClient | undefined;
    let secondHeld!: () => void;
    const held = new Promise<void>((resolve) => {
      secondHeld = resolve;
    });
    let finish!: () => void;
    const mayFinish = new Promise<void>((resolve) => {
      finish = resolve;
    });
    const handler = make(
      async (event: { n: number }, context) => {
        pool = context.dsql.pool;
        const client = await context.dsql.connect();
        if (event.n === 1) {
          first = client;
          client.release();
          return 'first';
        }
        secondHeld();
        await mayFinish;
        const { rows } = await client.query('SELECT 1 AS one');
        client.release();
        return rows[0].one;
      },
      { pool: createPool(configFor({ max: 1 })), logger },
    );
    expect(await handler({ n: 1 }, lambdaContext())).toBe('first');
    const second = handler({ n: 2 }, lambdaContext());
    await held; // the second invocation now holds the pool's only connection
    first!.release(); // the first invocation releases its client again
    expect(pool!.idleCount).toBe(0); // still checked out by the second invocation
    expect(logger.warn).toHaveBeenCalledOnce();
    expect(String(logger.warn.mock.calls[0]?.[0])).toMatch(/release\(\) called again/);
    await expect(first!.query('SELECT 1')).rejects.toThrow(DsqlError);
    finish();
    expect(await second).toBe(1);
    expect(pool!.idleCount).toBe(1);
  });

  it('takes back a leaked client when the invocation ends, closes it, and warns naming where it was taken', async () => {
    let leaked: pg.PoolClient | undefined;
    let pool: pg.Pool | undefined;
    const handler = make(
      async (_e: unknown, context) => {
        pool = context.dsql.pool;
        leaked = await context.dsql.connect();
        await leaked.query('BEGIN');
        await leaked.query('SELECT 1');
        return 'leaked';
      },
      { ...configFor(), logger },
    );
    const context = lambdaContext();
    expect(await handler({}, context)).toBe('leaked');
    expect(logger.warn).toHaveBeenCalledOnce();
    expect(String(logger.warn.mock.calls[0]?.[0])).toContain(context.awsRequestId);
    expect(String(logger.warn.mock.calls[0]?.[1])).toContain('lifecycle.test.ts');
    // Closed, not pooled: the next user cannot land inside that transaction.
    expect(pool!.totalCount).toBe(0);
    await expect(leaked!.query('SELECT 1')).rejects.toThrow();
    expect(() => leaked!.release()).not.toThrow(); // a late release is harmless
    expect(logger.warn).toHaveBeenCalledOnce(); // and not warned about twice
  });

  it('a logger that throws: leaked clients are still taken back and the handler’s result still returned', async () => {
    let pool: pg.Pool | undefined;
    const failing = {
      warn: vi.fn(() => {
        throw new Error('log stream closed');
      }),
    };
    const handler = make(
      async (event: { twice?: boolean }, context) => {
        pool = context.dsql.pool;
        const a = await context.dsql.connect();
        await context.dsql.connect();
        if (event.twice) {
          a.release();
          a.release(); // warned about: the logger throws into this finally-style call
        }
        return 'result';
      },
      { ...configFor({ max: 2 }), logger: failing },
    );
    expect(await handler({}, lambdaContext())).toBe('result');
    expect(await handler({ twice: true }, lambdaContext())).toBe('result');
    expect(failing.warn).toHaveBeenCalledTimes(4); // two leaks, a second release, a leak
    // Every leaked client was taken back (closed): none holds a pool slot.
    expect(pool!.totalCount - pool!.idleCount).toBe(0);
  });

  it('a callback-style query on a released connect() client: the callback gets the error, nothing unhandled', async () => {
    const unhandled: unknown[] = [];
    const note = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', note);
    const handler = make(
      async (_e: unknown, context) => {
        const client = await context.dsql.connect();
        client.release();
        return new Promise((resolve) => client.query('SELECT 1', (err: Error) => resolve(err)));
      },
      { ...configFor(), logger },
    );
    const err = await handler({}, lambdaContext());
    await new Promise((r) => setImmediate(r));
    process.off('unhandledRejection', note);
    expect(err).toBeInstanceOf(DsqlError);
    expect((err as Error).message).toMatch(/query\(\) after release/);
    expect(unhandled).toEqual([]);
  });

  it('lifecycle options of the wrong type are refused at the first invocation, naming the field', async () => {
    for (const [field, bad] of [
      ['deadlineMarginMs', { deadlineMarginMs: Number.NaN }], // connect() was unbounded, query() blamed "deadline"
      ['deadlineMarginMs', { deadlineMarginMs: -5_000 }], // calls would outlive the invocation
      ['deadlineMarginMs', { deadlineMarginMs: '500' }],
      ['logger', { logger: {} }],
      ['retry', { retry: { maxAtempts: 3 } }], // a misspelt key of the handler's policy was ignored
      ['retry', { retry: 'fast' }],
    ] as const) {
      let ran = false;
      const handler = make(
        async () => {
          ran = true;
        },
        { ...configFor(), ...(bad as object) } as DsqlHandlerOptions,
      );
      const err = await handler({}, lambdaContext()).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DsqlConfigError);
      expect((err as DsqlConfigError).field).toBe(field);
      expect(ran).toBe(false);
    }
  });

  it('a context whose getRemainingTimeInMillis does not return a number is refused, naming it', async () => {
    // NaN left connect() unbounded and had query() blame "deadline"; '1500' concatenated into no deadline.
    for (const bad of [() => Number.NaN, () => '1500', 5]) {
      let ran = false;
      const handler = make(
        async (_e: unknown, context) => {
          ran = true;
          return context.dsql.query('SELECT 1');
        },
        { ...configFor(), logger },
      );
      const context = { ...lambdaContext(), getRemainingTimeInMillis: bad as () => number };
      const err = await handler({}, context).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DsqlConfigError);
      expect((err as DsqlConfigError).field).toBe('getRemainingTimeInMillis');
      expect(ran).toBe(false);
    }
  });

  it('a deadline already passed: connect() is refused even with an idle pooled client, which stays pooled', async () => {
    let pool: pg.Pool | undefined;
    const handler = make(
      async (event: { warm?: boolean }, context) => {
        pool = context.dsql.pool;
        if (event.warm) return context.dsql.query('SELECT 1');
        const client = await context.dsql.connect();
        client.release();
        return 'connected';
      },
      // Warm: the deadline is 10 s away. Then Lambda's is 10 s away and ours 10 s past.
      { ...configFor({ max: 1 }), logger, deadlineMarginMs: 20_000 },
    );
    await handler({ warm: true }, lambdaContext());
    expect(pool!.idleCount).toBe(1);
    const err = await handler({}, lambdaContext(10_000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DsqlConnectionError);
    expect((err as Error).message).toMatch(/deadline reached/);
    await vi.waitFor(() => expect(pool!.idleCount).toBe(1));
    expect(pool!.totalCount).toBe(1);
  });

  it('query() and transaction() after the invocation ended are refused, as connect() is: nothing is written', async () => {
    const id = randomUUID();
    let late: DsqlContext['dsql'] | undefined;
    const handler = make(
      async (_e: unknown, context) => {
        late = context.dsql; // kept by, say, a promise the handler did not await
        return 'done';
      },
      { ...configFor(), logger },
    );
    expect(await handler({}, lambdaContext())).toBe('done');
    const insert = `INSERT INTO ${table} (id) VALUES ($1)`;
    for (const call of [
      () => late!.query(insert, [id]),
      () => late!.transaction((tx) => tx.query(insert, [id])),
      () => late!.connect(),
    ]) {
      const err = await call().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DsqlError);
      expect((err as Error).message).toMatch(/after the invocation ended/);
    }
    expect(await rowCount(id)).toBe(0);
  });

  it('cleans up on the error path, and the error reaches the caller', async () => {
    let pool: pg.Pool | undefined;
    const handler = make(
      async (_e: unknown, context) => {
        pool = context.dsql.pool;
        await context.dsql.connect();
        throw new Error('boom');
      },
      { ...configFor(), logger },
    );
    await expect(handler({}, lambdaContext())).rejects.toThrow('boom');
    expect(logger.warn).toHaveBeenCalledOnce();
    expect(pool!.idleCount).toBe(pool!.totalCount);
  });

  it('transaction() stops retrying at the Lambda deadline minus deadlineMarginMs', async () => {
    let calls = 0;
    const handler = make(
      async (_e: unknown, context) =>
        context.dsql.transaction(async (tx) => {
          calls++;
          await tx.query('SELECT 1');
          throw Object.assign(new Error('change conflicts with another transaction (OC000)'), {
            code: '40001',
          });
        }),
      // Lambda's deadline is 60 s away (beyond the test's timeout), ours 1 s: only the margin can end it.
      { ...configFor(), logger, deadlineMarginMs: 59_000, retry: { maxAttempts: 1_000_000, maxDelayMs: 20 } },
    );
    const err = await handler({}, lambdaContext(60_000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    expect(err).toMatchObject({ reason: 'deadline' });
    // Every attempt counted; the last may have been stopped in its BEGIN, before fn ran.
    const { attempts } = err as OccRetryExhaustedError;
    expect(calls).toBeGreaterThan(1);
    expect([calls, calls + 1]).toContain(attempts);
  });

  it('a per-call deadline can shorten the invocation’s deadline, never remove or extend it', async () => {
    const handler = make(
      async (event: { deadline?: number; unset?: boolean }, context) => {
        let calls = 0;
        const err = await context.dsql
          .transaction(
            async (tx) => {
              calls++;
              await tx.query('SELECT 1');
              throw Object.assign(new Error('conflict'), { code: 'OC000' });
            },
            {
              ...(event.unset ? { deadline: undefined } : { deadline: event.deadline }),
              maxAttempts: 1_000_000,
            },
          )
          .catch((e: unknown) => e);
        return { calls, reason: (err as OccRetryExhaustedError).reason };
      },
      // The invocation's deadline is 1 s away (60 s minus the margin): only it can end these calls.
      { ...configFor(), logger, deadlineMarginMs: 59_000, retry: { baseDelayMs: 1, maxDelayMs: 20 } },
    );
    // Without the fix, both ran until the test's timeout: `deadline: undefined` erased the
    // invocation's deadline, and a later one replaced it.
    expect(await handler({ unset: true }, lambdaContext(60_000))).toMatchObject({ reason: 'deadline' });
    expect(await handler({ deadline: Date.now() + 3_600_000 }, lambdaContext(60_000))).toMatchObject({
      reason: 'deadline',
    });
    // An earlier one wins: it is past, so not even one attempt starts.
    expect(await handler({ deadline: Date.now() - 1 }, lambdaContext(60_000))).toEqual({
      calls: 0,
      reason: 'deadline',
    });
  });

  it('a per-call option set to undefined keeps the handler’s value', async () => {
    const handler = make(
      async (_e: unknown, context) => {
        let calls = 0;
        await context.dsql
          .transaction(
            async () => {
              calls++;
              throw Object.assign(new Error('conflict'), { code: 'OC000' });
            },
            { maxAttempts: undefined, baseDelayMs: undefined },
          )
          .catch(() => {});
        return calls;
      },
      { ...configFor(), logger, retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 1 } },
    );
    // Without the fix: 8 (DSQL_DEFAULTS.retry.maxAttempts), the handler's 3 erased.
    expect(await handler({}, lambdaContext())).toBe(3);
  });

  it('retry policy: per call over the handler options over the pool’s', async () => {
    const handler = make(
      async (event: { perCall?: number }, context) => {
        (context.dsql.pool as { retry?: unknown }).retry = { maxAttempts: 5, baseDelayMs: 1, maxDelayMs: 1 };
        let calls = 0;
        const err = await context.dsql
          .transaction(
            async () => {
              calls++;
              throw Object.assign(new Error('conflict'), { code: 'OC000' });
            },
            event.perCall ? { maxAttempts: event.perCall } : undefined,
          )
          .catch((e: unknown) => e);
        return { calls, exhausted: err instanceof OccRetryExhaustedError };
      },
      { ...configFor(), logger, retry: { maxAttempts: 3 } },
    );
    expect(await handler({}, lambdaContext())).toEqual({ calls: 3, exhausted: true });
    expect(await handler({ perCall: 2 }, lambdaContext())).toEqual({ calls: 2, exhausted: true });
    const poolOnly = make(
      async (_e: unknown, context) => {
        (context.dsql.pool as { retry?: unknown }).retry = { maxAttempts: 4, baseDelayMs: 1, maxDelayMs: 1 };
        let calls = 0;
        await context.dsql
          .transaction(async () => {
            calls++;
            throw Object.assign(new Error('conflict'), { code: 'OC001' });
          })
          .catch(() => {});
        return calls;
      },
      { ...configFor(), logger },
    );
    expect(await poolOnly({}, lambdaContext())).toBe(4);
  });
});

describe('context.dsql.query retries OCC conflicts', () => {
  it('an autocommit UPDATE refused with OC000 (it cannot have committed) is sent again and commits once', async () => {
    const id = randomUUID();
    const retried: string[] = [];
    let blocker: pg.PoolClient | undefined;
    let committing: Promise<unknown> | undefined;
    let busy: { release(): Promise<void> } | undefined;
    const handler = adapters[0]!.make(
      async (_e: unknown, context) => {
        await context.dsql.query(`INSERT INTO ${table} (id) VALUES ($1)`, [id]);
        blocker = await context.dsql.connect();
        await blocker.query('BEGIN');
        await blocker.query(`UPDATE ${table} SET id = id WHERE id = $1`, [id]);
        // The row is written by an open transaction that is running a statement (an idle one
        // would be rolled back instead): ours fails with OC000 rather than waiting. At the first
        // retry the blocker's statement is cancelled (its transaction aborts), so a later attempt
        // commits.
        busy = await holdBusy(blocker);
        const rowCount = (
          await context.dsql.query(`UPDATE ${table} SET id = $2 WHERE id = $1`, [id, `${id}-x`])
        ).rowCount;
        await committing;
        await blocker.query('ROLLBACK');
        blocker.release();
        return rowCount;
      },
      {
        ...configFor({ max: 3 }),
        logger,
        retry: {
          baseDelayMs: 50,
          maxDelayMs: 200,
          maxAttempts: 20,
          onRetry: (i) => {
            retried.push(i.code);
            committing ??= busy?.release();
          },
        },
      },
    );
    expect(await handler({}, lambdaContext())).toBe(1);
    expect(retried[0]).toBe('OC000');
    expect(await rowCount(`${id}-x`)).toBe(1);
  });
});

describe('64 concurrent invocations (a Managed Instance)', () => {
  it('share one pool: all succeed, the pool never exceeds max, nothing is left checked out', async () => {
    const max = 8;
    let peak = 0;
    let pool: pg.Pool | undefined;
    const handler = adapters[1]!.make(
      async (event: { i: number }, context) => {
        pool = context.dsql.pool;
        const { rows } = await context.dsql.query<{ i: number }>('SELECT $1::int AS i', [event.i]);
        const client = await context.dsql.connect();
        try {
          await client.query('SELECT pg_sleep(0.01)');
          peak = Math.max(peak, pool.totalCount);
        } finally {
          client.release();
        }
        const t = await context.dsql.transaction(
          async (tx) => (await tx.query('SELECT 2 AS two')).rows[0].two,
        );
        return rows[0]!.i + t;
      },
      { ...configFor({ max }), logger },
    );
    const results = await Promise.all(Array.from({ length: 64 }, (_, i) => handler({ i }, lambdaContext())));
    expect(results).toEqual(Array.from({ length: 64 }, (_, i) => i + 2));
    expect(peak).toBeLessThanOrEqual(max);
    expect(pool!.totalCount).toBeLessThanOrEqual(max);
    expect(pool!.waitingCount).toBe(0);
    expect(pool!.idleCount).toBe(pool!.totalCount);
    expect(logger.warn).not.toHaveBeenCalled();
  });
});
