/**
 * What only the middy middleware has to get right, on a real database (plain PostgreSQL through a
 * pg.Pool passed as `{ pool }`), for middy 5 and 7: the end of the invocation runs on every path
 * middy has (after, onError, early responses from other middlewares, timeoutEarly), and
 * concurrent requests sharing one `request.internal` each end their own. What the wrapper and the
 * middleware share is tested once for both in lifecycle.test.ts.
 */
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import middy5 from 'middy-core-5';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type { DsqlContext } from '../../src/lambda.js';
import { cleanupDsql, dsql } from '../../src/middy.js';
import { testUpstream } from '../helpers/endpoint.js';
import { lambdaContext } from '../helpers/lambda-context.js';

let pool: pg.Pool;
const logger = { warn: vi.fn() };

beforeAll(() => {
  pool = new pg.Pool({ ...testUpstream('postgres'), max: 2 });
});
afterAll(() => pool.end());
beforeEach(() => logger.warn.mockClear());

type UserHandler = (e: unknown, c: Context & DsqlContext) => Promise<unknown>;
// Both flavours are driven through middy 7's type; middy 5's own typing is covered in test/types.
// The Lambda runtime passes a plain Context: context.dsql is what the middleware adds.
type Middyfied = ReturnType<typeof middy<unknown, unknown, Error, Context>>;
type PlainHandler = (e: unknown, c: Context) => Promise<unknown>;
const flavours: Array<{ name: string; make: (h: UserHandler) => Middyfied }> = [
  { name: 'middy 7', make: (h) => middy(h as PlainHandler) },
  { name: 'middy 5', make: (h) => middy5(h as PlainHandler) as unknown as Middyfied },
];

describe.each(flavours)('dsql() with $name', ({ make }) => {
  it('gives the handler query, transaction and pool', async () => {
    const handler = make(async (_event, context) => {
      const { rows } = await context.dsql.query<{ two: number }>('SELECT 1 + 1 AS two');
      const inTx = await context.dsql.transaction(
        async (tx) => (await tx.query('SELECT 3 AS three')).rows[0],
      );
      return { two: rows[0]?.two, inTx, same: context.dsql.pool === pool };
    }).use(dsql({ pool, logger }));
    expect(await handler({}, lambdaContext())).toEqual({ two: 2, inTx: { three: 3 }, same: true });
    expect(logger.warn).not.toHaveBeenCalled();
  });

  it('a before registered earlier returning early: nothing is opened, nothing to clean', async () => {
    const handler = make(async (_event, context) => context.dsql.query('SELECT 1'))
      .use({ before: async () => ({ statusCode: 401 }) })
      .use(dsql({ pool, logger }));
    const total = pool.totalCount;
    expect(await handler({}, lambdaContext())).toEqual({ statusCode: 401 });
    expect(pool.totalCount).toBe(total);
    expect(logger.warn).not.toHaveBeenCalled();
  });

  it('a later before returning early after taking a client: cleanupDsql releases it at once', async () => {
    let handlerRan = false;
    const handler = make(async () => {
      handlerRan = true;
    })
      .use(dsql({ pool, logger }))
      .use({
        before: async (request) => {
          const ctx = request.context as Context & DsqlContext;
          await ctx.dsql.connect(); // e.g. an authoriser that forgot release()
          cleanupDsql(request);
          return { statusCode: 403 };
        },
      });
    expect(await handler({}, lambdaContext())).toEqual({ statusCode: 403 });
    expect(handlerRan).toBe(false);
    expect(logger.warn).toHaveBeenCalledOnce();
    expect(pool.idleCount).toBe(pool.totalCount);
  });

  it('a later before returning early without cooperating: swept before the next invocation does anything', async () => {
    const prev = process.env.AWS_LAMBDA_FUNCTION_NAME;
    process.env.AWS_LAMBDA_FUNCTION_NAME = 'test'; // a standard Lambda: one invocation at a time
    try {
      let early = true;
      const handler = make(async (_event, context) => (await context.dsql.query('SELECT 1 AS one')).rows[0])
        .use(dsql({ pool, logger }))
        .use({
          before: async (request) => {
            if (!early) return;
            await (request.context as Context & DsqlContext).dsql.connect();
            return { statusCode: 429 };
          },
        });
      expect(await handler({}, lambdaContext())).toEqual({ statusCode: 429 });
      expect(pool.totalCount - pool.idleCount).toBe(1); // still held: middy skipped our after
      early = false;
      expect(await handler({}, lambdaContext())).toEqual({ one: 1 });
      expect(logger.warn).toHaveBeenCalledOnce();
      expect(pool.idleCount).toBe(pool.totalCount);
    } finally {
      if (prev === undefined) delete process.env.AWS_LAMBDA_FUNCTION_NAME;
      else process.env.AWS_LAMBDA_FUNCTION_NAME = prev;
    }
  });

  it('timeoutEarly: cleanup runs when middy answers before the handler ends; the late handler cannot check out again', async () => {
    let held: pg.PoolClient | undefined;
    let finish!: () => void;
    const handlerMayFinish = new Promise<void>((resolve) => {
      finish = resolve;
    });
    let late: unknown;
    let handlerEnded!: () => void;
    const ended = new Promise<void>((resolve) => {
      handlerEnded = resolve;
    });
    const handler = make(async (_event, context) => {
      held = await context.dsql.connect();
      await handlerMayFinish; // still running when middy's timeoutEarly fires
      held.release(); // a late release of the client cleanup took back: harmless
      late = await context.dsql.connect().catch((e: Error) => e.message);
      handlerEnded();
      return 'too late';
    }).use(dsql({ pool, logger, deadlineMarginMs: 0 })); // the default 500 ms would put the deadline past
    // middy's default timeoutEarlyInMillis (5) rejects with a TimeoutError ~295 ms in.
    const err = await handler({}, lambdaContext(300)).catch((e: Error) => e);
    expect((err as Error).name).toBe('TimeoutError');
    expect(logger.warn).toHaveBeenCalledOnce();
    expect((held as unknown as { _ending: boolean })._ending).toBe(true);
    expect(pool.totalCount - pool.idleCount).toBe(0);
    finish();
    await ended;
    expect(late).toMatch(/after the invocation ended/);
    expect(pool.totalCount - pool.idleCount).toBe(0);
  });

  describe('middy 7 specifics', () => {
    it('sweeps a request cut short by an early response even when invocations may overlap', async () => {
      let early = true;
      const handler = middy<unknown, unknown, Error, Context>()
        .use(dsql({ pool, logger }))
        .use({
          before: async (request) => {
            if (!early) return;
            await (request.context as Context & DsqlContext).dsql.connect();
            return { statusCode: 429 };
          },
        })
        .handler(async (_event, context) => (await context.dsql.query('SELECT 1 AS one')).rows[0]);
      await handler({}, lambdaContext());
      early = false;
      expect(await handler({}, lambdaContext())).toEqual({ one: 1 });
      expect(logger.warn).toHaveBeenCalledOnce();
      expect(pool.idleCount).toBe(pool.totalCount);
    });
  });

  describe('middy 5 specifics', () => {
    it('concurrent requests sharing one request.internal (plugin.internal) each clean up their own clients', async () => {
      // middy 5 hands every request the same object when the plugin option `internal` is set.
      let aDone!: () => void;
      const aFinished = new Promise<void>((resolve) => {
        aDone = resolve;
      });
      let bChecked!: () => void;
      const bCheckedOut = new Promise<void>((resolve) => {
        bChecked = resolve;
      });
      const handler = middy5(
        async (event: { name: string }, context: Context & DsqlContext) => {
          if (event.name === 'a') {
            await bCheckedOut;
            return 'a';
          }
          const client = await context.dsql.connect();
          try {
            bChecked();
            await aFinished; // request a ends (and cleans up) while b holds its client
            return (await client.query('SELECT 1 AS one')).rows[0].one;
          } finally {
            client.release();
          }
        },
        { internal: {} },
      ).use(dsql({ pool, logger }));
      const a = handler({ name: 'a' }, lambdaContext()).then((r: unknown) => {
        aDone();
        return r;
      });
      const b = handler({ name: 'b' }, lambdaContext());
      expect(await a).toBe('a');
      expect(await b).toBe(1);
      expect(logger.warn).not.toHaveBeenCalled();
      expect(pool.idleCount).toBe(pool.totalCount);
    });
  });
});
