/**
 * The module-scoped pool and the per-invocation handle against the local DSQL-like endpoint
 * (TLS, IAM tokens): no I/O until a statement runs, one pool per configuration, and many
 * concurrent invocations (a Lambda Managed Instance) sharing one pool within its limit.
 */
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DsqlConfig } from '../../src/config.js';
import { endLambdaPools, getFreezeGuardStats, lambdaPool, withDsql } from '../../src/lambda.js';
import { dsql } from '../../src/middy.js';
import { startTestEndpoint } from '../helpers/endpoint.js';
import { lambdaContext } from '../helpers/lambda-context.js';

type Endpoint = Awaited<ReturnType<typeof startTestEndpoint>>;
let endpoint: Endpoint;

beforeAll(async () => {
  endpoint = await startTestEndpoint();
});
afterAll(async () => {
  await endLambdaPools();
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

const connectionsOpened = () => endpoint.stats().connections.total;
const openSessions = () => endpoint.sessions().length;

describe('lambdaPool', () => {
  it('returns one pool per configuration, and creating it does no I/O', async () => {
    const before = openSessions();
    const statsBefore = JSON.stringify(endpoint.stats());
    const a = lambdaPool(configFor({ applicationName: 'memo' }));
    const b = lambdaPool(configFor({ applicationName: 'memo' }));
    const c = lambdaPool(configFor({ applicationName: 'other' }));
    expect(b).toBe(a);
    expect(c).not.toBe(a);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(openSessions()).toBe(before);
    expect(JSON.stringify(endpoint.stats())).toBe(statsBefore);
    expect(a.totalCount).toBe(0);
    await a.query('SELECT 1');
    expect(a.totalCount).toBe(1);
  });

  it('a pool that was ended is replaced on the next call', async () => {
    const a = lambdaPool(configFor({ applicationName: 'ended' }));
    await a.end();
    const b = lambdaPool(configFor({ applicationName: 'ended' }));
    expect(b).not.toBe(a);
    expect((await b.query('SELECT 1 AS one')).rows[0].one).toBe(1);
  });
});

describe('invocations', () => {
  it('an invocation that runs no statement opens no connection', async () => {
    const config = configFor({ applicationName: 'noop' });
    const handler = middy<unknown, unknown, Error, Context>()
      .use(dsql(config))
      .handler(async (_event, context) => ({ hasDsql: typeof context.dsql.query === 'function' }));
    const wrapped = withDsql(async () => 'nothing', config);
    const before = openSessions();
    const statsBefore = connectionsOpened();
    expect(await handler({}, lambdaContext())).toEqual({ hasDsql: true });
    expect(await wrapped({}, lambdaContext())).toBe('nothing');
    expect(openSessions()).toBe(before);
    expect(connectionsOpened()).toBe(statsBefore);
    expect(lambdaPool(config).totalCount).toBe(0);
  });

  it('a statement lost on a silently dropped connection fails before the deadline; the next invocation recovers', async () => {
    const config = configFor({ applicationName: 'half-open', max: 1 });
    const handler = withDsql(
      async (_event: unknown, context) =>
        (await context.dsql.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid,
      { ...config, deadlineMarginMs: 200 },
    );
    const pid = await handler({}, lambdaContext());
    // The path goes dead without a FIN or RST, right after use: no thaw, so no validation.
    expect(endpoint.faults.dropConnections({ which: pid, how: 'silent' })).toBe(1);
    const err = await handler({}, lambdaContext(1_500)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/Query read timeout/);
    // The dead connection was destroyed, not pooled: with max 1 the next invocation gets a new one.
    const next = await handler({}, lambdaContext());
    expect(next).not.toBe(pid);
    expect(lambdaPool(config).totalCount).toBe(1);
  });

  it('a query_timeout of the statement or the pool wins over the deadline', async () => {
    const config = configFor({ applicationName: 'own-timeout', query_timeout: 60_000 });
    let seen: unknown;
    const handler = withDsql(async (_event: unknown, context) => {
      const pool = context.dsql.pool;
      const original = pool.query.bind(pool);
      (pool as { query: unknown }).query = (text: unknown, values: unknown) => {
        seen = text;
        return original(text as string, values as unknown[]);
      };
      try {
        return (await context.dsql.query('SELECT 1 AS one')).rows[0].one;
      } finally {
        (pool as { query: unknown }).query = original;
      }
    }, config);
    expect(await handler({}, lambdaContext(2_000))).toBe(1);
    expect(seen).toBe('SELECT 1 AS one');
  });

  it('64 concurrent invocations share one pool: all succeed, the pool never exceeds max', async () => {
    const max = 8;
    const config = configFor({ applicationName: 'concurrent', max });
    const pool = lambdaPool(config);
    let peak = 0;
    let peakSessions = 0;
    pool.on('acquire', () => {
      peak = Math.max(peak, pool.totalCount);
    });
    const handler = middy<{ i: number }, unknown, Error, Context>()
      .use(dsql(config))
      .handler(async (event, context) => {
        const { rows } = await context.dsql.query<{ i: number }>('SELECT $1::int AS i', [event.i]);
        const client = await context.dsql.connect();
        try {
          await client.query('SELECT pg_sleep(0.01)');
          peakSessions = Math.max(peakSessions, openSessions());
        } finally {
          client.release();
        }
        const t = await context.dsql.transaction(
          async (tx) => (await tx.query('SELECT 2 AS two')).rows[0].two,
        );
        return rows[0]!.i + t;
      });
    const baseline = openSessions();
    const results = await Promise.all(Array.from({ length: 64 }, (_, i) => handler({ i }, lambdaContext())));
    expect(results).toEqual(Array.from({ length: 64 }, (_, i) => i + 2));
    expect(peak).toBeLessThanOrEqual(max);
    expect(peak).toBeGreaterThan(1);
    expect(pool.totalCount).toBeLessThanOrEqual(max);
    expect(pool.waitingCount).toBe(0);
    expect(pool.idleCount).toBe(pool.totalCount);
    expect(peakSessions - baseline).toBeLessThanOrEqual(max);
    expect(getFreezeGuardStats(pool)?.evictedDead).toBe(0);
  });
});
