/**
 * Lambda lifecycle costs: `node --import tsx bench/lambda.ts`. Writes bench/results/lambda.json
 * (bench/results/lambda-node<major>.json on other Node versions than 20).
 *
 * 1. Warm overhead. The same handler (`SELECT 1`) through the local DSQL-like endpoint, invoked
 *    in-process back to back, five ways: a module-scoped bare `pg.Pool` (the reference), the
 *    guarded pool from `createPool()` called directly, `withDsql`, and the middy 7 and middy 5
 *    middleware. Rounds are interleaved so drift hits every variant alike. Reports per-invocation
 *    time and the statements each invocation sent (a validation round trip would show there).
 *    `context.dsql.query` runs the deadline-bounded, OCC-retrying statement path. Goal: no extra
 *    round trip, < 5 % time.
 * 2. Thaw latency, in a child process frozen with SIGSTOP: a warm invocation, one after a freeze
 *    longer than the thaw threshold (one validation round trip on the pooled connection), and one
 *    after a freeze longer than maxIdleMillis (a fresh connection: TLS, token, startup).
 */
import { EventEmitter } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import middy5 from 'middy-core-5';
import pg from 'pg';
import type { DsqlConfig } from '../src/config.js';
import { type DsqlContext, withDsql } from '../src/lambda.js';
import { dsql } from '../src/middy.js';
import { createPool } from '../src/pool.js';
import { pgConfig, signTestToken, startTestEndpoint } from '../test/helpers/endpoint.js';
import { lambdaContext } from '../test/helpers/lambda-context.js';
import { sleep, startLambdaChild } from '../test/lambda/harness.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 60);
const PER_ROUND = Number(process.env.BENCH_PER_ROUND ?? 50);
const THAW_SAMPLES = Number(process.env.BENCH_THAW_SAMPLES ?? 15);

const context = () => lambdaContext(30_000, 'bench');

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(q * (s.length - 1))] ?? Number.NaN;
};
const median = (xs: number[]) => quantile(xs, 0.5);
/** 10th percentile of batch means: the least disturbed batches, for a shared, loaded machine. */
const p10 = (xs: number[]) => quantile(xs, 0.1);
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

/**
 * Statements sent by every pg client of this process (pg.Client#query, which pool.query and the
 * freeze guard's validation both go through): the round trips each variant costs.
 */
let statementsSent = 0;
const clientQuery = pg.Client.prototype.query;
pg.Client.prototype.query = function countedQuery(this: pg.Client, ...args: unknown[]) {
  statementsSent++;
  return (clientQuery as (...a: unknown[]) => unknown).apply(this, args);
} as typeof clientQuery;

/** Per-invocation CPU cost of each layer, with an in-memory pg client (no I/O at all). */
async function cpuOverhead() {
  class MemoryClient extends EventEmitter {
    _queryable = true;
    _ending = false;
    connect(cb: (err?: Error) => void) {
      setImmediate(() => cb());
    }
    getTransactionStatus() {
      return 'I';
    }
    query(_text: unknown, values: unknown, cb?: (err: Error | undefined, res: unknown) => void) {
      const callback = typeof values === 'function' ? (values as typeof cb) : cb;
      const result = { command: 'SELECT', rows: [{ one: 1 }] };
      if (!callback) return Promise.resolve(result);
      queueMicrotask(() => callback(undefined, result));
    }
    end(cb?: () => void) {
      cb?.();
    }
  }
  const bareMem = new pg.Pool({ max: 1, Client: MemoryClient as never });
  // The same kind of pool under every variant: what differs is the layer (context.dsql.query goes
  // through the deadline-bounded, OCC-retrying statement path; pool.query does not).
  const mem = new pg.Pool({ max: 1, Client: MemoryClient as never });
  const q = async (pool: pg.Pool) => (await pool.query('SELECT 1 AS one')).rows[0];
  const dq = async (c: DsqlContext) => (await c.dsql.query('SELECT 1 AS one')).rows[0];
  const m7 = middy<unknown, unknown, Error, Context>().handler(() => q(bareMem));
  const m7d = middy<unknown, unknown, Error, Context>()
    .use(dsql({ pool: mem }))
    .handler((_e, c) => dq(c));
  const m5 = middy5(() => q(bareMem));
  const m5d = middy5((_e: unknown, c: Context & DsqlContext) => dq(c)).use(dsql({ pool: mem }));
  const w = withDsql(async (_e: unknown, c) => dq(c), { pool: mem });
  const fns: Record<string, () => Promise<unknown>> = {
    'bare pg.Pool': () => q(bareMem),
    withDsql: () => w({}, context()),
    'middy 7': () => m7({}, context()),
    'middy 7 + dsql()': () => m7d({}, context()),
    'middy 5': () => m5({}, context()),
    'middy 5 + dsql()': () => m5d({}, context()),
  };
  const out: Record<string, number[]> = {};
  for (const [name, fn] of Object.entries(fns)) {
    out[name] = [];
    for (let i = 0; i < 5_000; i++) await fn();
  }
  for (let r = 0; r < 15; r++) {
    for (const [name, fn] of Object.entries(fns)) {
      const t0 = performance.now();
      for (let i = 0; i < 2_000; i++) await fn();
      out[name]!.push(((performance.now() - t0) / 2_000) * 1000);
    }
  }
  const us = Object.fromEntries(Object.entries(out).map(([k, v]) => [k, round(median(v), 2)]));
  return {
    usPerInvocation: us,
    addedByWithDsqlUs: round(us.withDsql! - us['bare pg.Pool']!, 2),
    addedByDsqlMiddlewareUs: round(us['middy 7 + dsql()']! - us['middy 7']!, 2),
    addedByDsqlMiddlewareOnMiddy5Us: round(us['middy 5 + dsql()']! - us['middy 5']!, 2),
  };
}

async function main() {
  const cpu = await cpuOverhead();
  console.table([cpu.usPerInvocation]);
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
  const bare = new pg.Pool({
    ...pgConfig(endpoint, { sslnegotiation: 'direct', password: () => signTestToken(endpoint) }),
    max: 1,
  });
  bare.on('error', () => {});
  const guardedPool = createPool(config);
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
  // middy's own cost, to tell it apart from the middleware's.
  const middy7Bare = middy<unknown, unknown, Error, Context>().handler(
    async () => (await bare.query('SELECT 1 AS one')).rows[0],
  );
  const middy5Bare = middy5(async () => (await bare.query('SELECT 1 AS one')).rows[0]);
  const variants: Record<string, (ctx: Context & DsqlContext) => Promise<unknown>> = {
    'bare pg.Pool': async () => (await bare.query('SELECT 1 AS one')).rows[0],
    'middy 7 + bare pg.Pool': (ctx) => middy7Bare({}, ctx),
    'middy 5 + bare pg.Pool': (ctx) => middy5Bare({}, ctx),
    'createPool (freeze guard)': async () => (await guardedPool.query('SELECT 1 AS one')).rows[0],
    withDsql: (ctx) => wrapped({}, ctx),
    'middy 7 + dsql()': (ctx) => middy7({}, ctx),
    'middy 5 + dsql()': (ctx) => middy5Handler({}, ctx),
  };
  const names = Object.keys(variants);
  const times = new Map<string, number[]>(names.map((n) => [n, []]));
  const statements = new Map<string, number[]>(names.map((n) => [n, []]));

  // Warm up: connections open, JIT settled.
  for (const name of names) for (let i = 0; i < 300; i++) await variants[name]!(context());

  for (let r = 0; r < ROUNDS; r++) {
    // Interleaved, in a fresh random order each round: load from other processes hits all alike.
    const order = [...names].sort(() => Math.random() - 0.5);
    for (const name of order) {
      const fn = variants[name]!;
      const s0 = statementsSent;
      const t0 = performance.now();
      for (let i = 0; i < PER_ROUND; i++) await fn(context());
      const t1 = performance.now();
      times.get(name)!.push(((t1 - t0) / PER_ROUND) * 1000);
      statements.get(name)!.push((statementsSent - s0) / PER_ROUND);
    }
  }
  const reference = median(times.get('bare pg.Pool')!);
  // The middleware against middy with the same handler on a bare pool; the rest against the bare pool.
  const baseOf = (name: string) =>
    name.startsWith('middy 7 + dsql')
      ? 'middy 7 + bare pg.Pool'
      : name.startsWith('middy 5 + dsql')
        ? 'middy 5 + bare pg.Pool'
        : 'bare pg.Pool';
  const warm = names.map((name) => {
    const us = median(times.get(name)!);
    const fast = p10(times.get(name)!);
    const st = statements.get(name)!;
    const base = median(times.get(baseOf(name))!);
    const baseFast = p10(times.get(baseOf(name))!);
    return {
      variant: name,
      usPerInvocation: round(us),
      usP10: round(fast),
      overheadVsBarePoolPct: round(((us - reference) / reference) * 100, 2),
      comparedWith: baseOf(name),
      overheadPct: round(((us - base) / base) * 100, 2),
      overheadP10Pct: round(((fast - baseFast) / baseFast) * 100, 2),
      statementsPerInvocation: round(st.reduce((a, b) => a + b, 0) / st.length, 3),
    };
  });
  console.table(warm);
  await bare.end();
  await guardedPool.end();

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
        cpu,
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
