/**
 * Lambda lifecycle costs: `node --import tsx bench/lambda.ts`. Writes bench/results/lambda.json
 * (bench/results/lambda-node<major>.json on other Node versions than 20).
 *
 * 1. Warm overhead. The same handler (`SELECT 1`) through the local DSQL-like endpoint, invoked
 *    in-process back to back, five ways: a module-scoped bare `pg.Pool` (the reference), the
 *    guarded pool from `lambdaPool()` called directly, `withDsql`, and the middy 7 and middy 5
 *    middleware. Rounds are interleaved so drift hits every variant alike. Reports per-invocation
 *    time and the statements each invocation sent (endpoint statistics when available, the freeze
 *    guard's validation counter otherwise). Goal: no extra round trip, < 5 % time.
 * 2. Thaw latency, in a child process frozen with SIGSTOP: a warm invocation, one after a freeze
 *    longer than the thaw threshold (one validation round trip on the pooled connection), and one
 *    after a freeze longer than maxIdleMillis (a fresh connection: TLS, token, startup).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import middy5 from 'middy-core-5';
import pg from 'pg';
import type { DsqlConfig } from '../src/config.js';
import { resolveConfig } from '../src/config.js';
import {
  type DsqlContext,
  endLambdaPools,
  getFreezeGuardStats,
  lambdaPool,
  withDsql,
} from '../src/lambda.js';
import { dsql } from '../src/middy.js';
import { toPgConfig } from '../src/pool.js';
import { tokenCacheFor } from '../src/token.js';
import { startTestEndpoint } from '../test/helpers/endpoint.js';
import { sleep, startLambdaChild } from '../test/lambda/harness.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 15);
const PER_ROUND = Number(process.env.BENCH_PER_ROUND ?? 200);
const THAW_SAMPLES = Number(process.env.BENCH_THAW_SAMPLES ?? 15);

function context(): Context & DsqlContext {
  const deadline = Date.now() + 30_000;
  return {
    dsql: undefined as unknown as DsqlContext['dsql'],
    awsRequestId: 'bench',
    callbackWaitsForEmptyEventLoop: true,
    functionName: 'bench',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:us-east-1:123456789012:function:bench',
    memoryLimitInMB: '128',
    logGroupName: 'g',
    logStreamName: 's',
    getRemainingTimeInMillis: () => deadline - Date.now(),
    done() {},
    fail() {},
    succeed() {},
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
};
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

/** Statements the endpoint has seen, if its statistics count them. */
function statementsSeen(stats: unknown): number | undefined {
  const s = stats as Record<string, unknown>;
  for (const key of ['queries', 'statements', 'queriesRelayed']) {
    if (typeof s?.[key] === 'number') return s[key] as number;
  }
  const nested = s?.queries as Record<string, unknown> | undefined;
  if (nested && typeof nested.total === 'number') return nested.total;
  return undefined;
}

async function main() {
  const endpoint = await startTestEndpoint();
  const config: DsqlConfig = {
    host: endpoint.host,
    hostaddr: endpoint.address,
    port: endpoint.port,
    region: endpoint.region,
    credentials: endpoint.credentials,
    ssl: { ca: endpoint.ca },
    max: 1,
  };

  // Reference: what most handlers do today, a bare module-scoped pg.Pool (same TLS and token).
  const resolved = resolveConfig(config);
  const tokens = tokenCacheFor(resolved);
  const bare = new pg.Pool(toPgConfig(resolved, () => tokens.get()));
  bare.on('error', () => {});
  const guardedPool = lambdaPool(config);
  // `{ pool }` so every variant uses one connection and measures only its own layer.
  const wrapped = withDsql(async (_e: unknown, c) => (await c.dsql.query('SELECT 1 AS one')).rows[0], {
    pool: guardedPool,
  });
  const middy7 = middy<unknown, unknown, Error, Context>()
    .use(dsql({ pool: guardedPool }))
    .handler(async (_e, c) => (await c.dsql.query('SELECT 1 AS one')).rows[0]);
  const middy5Handler = middy5(
    async (_e: unknown, c: Context & DsqlContext) => (await c.dsql.query('SELECT 1 AS one')).rows[0],
  ).use(dsql({ pool: guardedPool }));
  const variants: Record<string, (ctx: Context & DsqlContext) => Promise<unknown>> = {
    'bare pg.Pool': async () => (await bare.query('SELECT 1 AS one')).rows[0],
    'lambdaPool (freeze guard)': async () => (await guardedPool.query('SELECT 1 AS one')).rows[0],
    withDsql: (ctx) => wrapped({}, ctx),
    'middy 7 + dsql()': (ctx) => middy7({}, ctx),
    'middy 5 + dsql()': (ctx) => middy5Handler({}, ctx),
  };
  const names = Object.keys(variants);
  const times = new Map<string, number[]>(names.map((n) => [n, []]));
  const statements = new Map<string, number[]>(names.map((n) => [n, []]));
  const validations = new Map<string, number>(names.map((n) => [n, 0]));

  // Warm up: connections open, JIT settled.
  for (const name of names) for (let i = 0; i < 300; i++) await variants[name]!(context());

  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? names : [...names].reverse();
    for (const name of order) {
      const fn = variants[name]!;
      const v0 = getFreezeGuardStats(guardedPool)?.validations ?? 0;
      const s0 = statementsSeen(endpoint.stats());
      const t0 = performance.now();
      for (let i = 0; i < PER_ROUND; i++) await fn(context());
      const t1 = performance.now();
      const s1 = statementsSeen(endpoint.stats());
      times.get(name)!.push(((t1 - t0) / PER_ROUND) * 1000);
      if (s0 !== undefined && s1 !== undefined) statements.get(name)!.push((s1 - s0) / PER_ROUND);
      validations.set(
        name,
        validations.get(name)! + (getFreezeGuardStats(guardedPool)?.validations ?? 0) - v0,
      );
    }
  }
  const reference = median(times.get('bare pg.Pool')!);
  const warm = names.map((name) => {
    const us = median(times.get(name)!);
    const st = statements.get(name)!;
    return {
      variant: name,
      usPerInvocation: round(us),
      overheadPct: round(((us - reference) / reference) * 100, 2),
      statementsPerInvocation: st.length > 0 ? round(median(st), 3) : null,
      validationRoundTrips: validations.get(name),
    };
  });
  console.table(warm);
  await bare.end();
  await endLambdaPools();

  // Thaw latency in a frozen child.
  const child = await startLambdaChild({
    env: {
      ...endpoint.env,
      FREEZE_CONFIG: JSON.stringify({ thawThresholdMillis: 200, maxIdleMillis: 1_000, max: 1 }),
    },
    handlerExport: 'middy7',
  });
  const warmMs: number[] = [];
  const thawedMs: number[] = [];
  const freshMs: number[] = [];
  const firstMs = (await child.invoke({ op: 'select' })).ms; // cold: token, TLS, startup
  for (let i = 0; i < THAW_SAMPLES; i++) {
    await child.invoke({ op: 'select' });
    warmMs.push((await child.invoke({ op: 'select' })).ms);
    child.freeze();
    await sleep(400);
    child.thaw();
    thawedMs.push((await child.invoke({ op: 'select' })).ms);
    child.freeze();
    await sleep(1_200);
    child.thaw();
    freshMs.push((await child.invoke({ op: 'select' })).ms);
  }
  const stats = (await child.invoke({ op: 'stats' })).value;
  await child.kill();
  const thaw = {
    firstInvocationMs: round(firstMs, 2),
    warmP50Ms: round(median(warmMs), 3),
    thawedValidatedP50Ms: round(median(thawedMs), 3),
    freshConnectionP50Ms: round(median(freshMs), 3),
    addedByValidationP50Ms: round(median(thawedMs) - median(warmMs), 3),
    savedVsFreshConnectionP50Ms: round(median(freshMs) - median(thawedMs), 3),
    samples: THAW_SAMPLES,
    childPoolStats: stats,
  };
  console.table([thaw]);

  await endpoint.stop();
  const major = Number(process.versions.node.split('.')[0]);
  const file = join(
    dirname(fileURLToPath(import.meta.url)),
    'results',
    major === 20 ? 'lambda.json' : `lambda-node${major}.json`,
  );
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(
    file,
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        node: process.version,
        settings: { rounds: ROUNDS, perRound: PER_ROUND, thawSamples: THAW_SAMPLES },
        warm,
        thaw,
      },
      null,
      2,
    )}\n`,
  );
  console.log(`wrote ${file}`);
}

await main();
