/**
 * Type-level tests: `.use(dsql())` adds `context.dsql` to the handler's context, with no cast,
 * for middy 7 and middy 5; withDsql types its handler's context the same way.
 */
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import middy5 from 'middy-core-5';
import type pg from 'pg';
import { describe, expectTypeOf, it } from 'vitest';
import { type Dsql, type DsqlContext, withDsql } from '../../src/lambda.js';
import { cleanupDsql, type DsqlMiddleware, dsql } from '../../src/middy.js';
import { createPool } from '../../src/pool.js';
import type { RetryOptions, TransactionClient } from '../../src/retry.js';

describe('dsql() middleware types', () => {
  it('middy 7: .use(dsql()) types context.dsql', () => {
    middy()
      .use(dsql())
      .handler(async (_event, context) => {
        expectTypeOf(context.dsql).toEqualTypeOf<Dsql>();
        expectTypeOf(context.dsql.query).toEqualTypeOf<Dsql['query']>();
        expectTypeOf(context.dsql.query<{ n: number }>).returns.resolves.toEqualTypeOf<
          pg.QueryResult<{ n: number }>
        >();
        expectTypeOf(context.dsql.pool).toEqualTypeOf<pg.Pool>();
        expectTypeOf(context.dsql.connect).returns.resolves.toEqualTypeOf<pg.PoolClient>();
        expectTypeOf(context.getRemainingTimeInMillis).returns.toBeNumber();
        const r = await context.dsql.query<{ id: string }>('SELECT id FROM t WHERE n = $1', [1]);
        expectTypeOf(r).toEqualTypeOf<pg.QueryResult<{ id: string }>>();
        expectTypeOf(r.rows[0]!.id).toBeString();
        const t = await context.dsql.transaction(async (tx) => {
          expectTypeOf(tx).toEqualTypeOf<TransactionClient>();
          return 42;
        });
        expectTypeOf(t).toBeNumber();
        return t;
      });
  });

  it('middy 7: middy(handler).use(dsql()) makes the handler type check', () => {
    const handler = middy(async (_event: { id: string }, context: Context & DsqlContext) => {
      return (await context.dsql.query('SELECT 1')).rowCount;
    }).use(dsql({ deadlineMarginMs: 250 }));
    expectTypeOf(handler).parameter(0).toEqualTypeOf<{ id: string }>();
  });

  it('middy 5: .use(dsql()) types context.dsql', () => {
    middy5()
      .use(dsql('postgres://admin@abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws/postgres'))
      .handler(async (_event, context) => {
        expectTypeOf(context.dsql.query).toEqualTypeOf<Dsql['query']>();
        expectTypeOf(context.dsql.transaction).toEqualTypeOf<Dsql['transaction']>();
        return null;
      });
  });

  it('without .use(dsql()), context has no dsql', () => {
    middy().handler(async (_event, context) => {
      // @ts-expect-error dsql only exists once the middleware is used
      context.dsql;
      return null;
    });
  });

  it('accepts a config, a connection string or { pool }, plus lifecycle options', () => {
    expectTypeOf(dsql()).toEqualTypeOf<DsqlMiddleware>();
    dsql({ host: 'abcdefghijklmnopqrstuvwxyz', region: 'us-east-1', deadlineMarginMs: 100 });
    dsql({ pool: createPool(), logger: console, retry: { maxAttempts: 3 } });
    // @ts-expect-error a pool and connection settings together make no sense
    dsql({ pool: createPool(), host: 'x' });
    cleanupDsql({ internal: {} });
  });

  it('retry options: the policy fields only; the test seams are not part of them', () => {
    const options: RetryOptions = { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: 100, deadline: 0 };
    expectTypeOf(options).toEqualTypeOf<RetryOptions>();
    // @ts-expect-error test seams are internal
    const seams: RetryOptions = { now: () => 0 };
    // @ts-expect-error the jitter scheme is chosen by the library
    const jitter: RetryOptions = { jitter: 'full' };
    dsql({ retry: options, deadlineMarginMs: 250 });
    return [seams, jitter];
  });
});

describe('withDsql types', () => {
  it('adds dsql to the context and keeps event and result types', () => {
    const handler = withDsql(async (event: { n: number }, context: Context & DsqlContext) => {
      expectTypeOf(context.dsql).toEqualTypeOf<Dsql>();
      expectTypeOf(context.awsRequestId).toBeString();
      return event.n * 2;
    });
    expectTypeOf(handler).parameters.toEqualTypeOf<[{ n: number }, Context]>();
    expectTypeOf(handler).returns.resolves.toBeNumber();
  });
});
