/**
 * Warm overhead on a link with real latency: `node --import tsx bench/warm-latency.ts`. Writes
 * bench/results/warm-latency-node<major>.json.
 *
 * On loopback a round trip takes ≈ 0.2 ms, so a few microseconds of our own work read as several
 * percent and the machine's noise is of the same order: a 5 % goal cannot be judged there. The
 * local endpoint's latency injection delays every frame by a fixed time in each direction; at
 * 1 ms each way (≈ 2 ms round trip, a Lambda and its cluster in one region) and 5 ms each way
 * (≈ 10 ms, across regions) the same handler (`SELECT 1`, one statement per invocation) runs,
 * in-process and back to back, four ways:
 *   - `bare pg.Pool`: the reference, a module-scoped pg pool with a fixed token;
 *   - `createPool`: `pool.query` on the library's pool (the freeze-safe checkout);
 *   - `withDsql`: the plain-handler wrapper, `context.dsql.query`;
 *   - `middy + dsql()`: the middleware on middy 7.
 * Variants run interleaved, one invocation each in turn, so drift hits them alike; the overhead of
 * a variant is the median over rounds of (its median / the bare pool's median in the same round) - 1. Statements sent
 * per invocation are counted too: warm invocations must send exactly one (no validation round trip);
 * and the process CPU per invocation, whose difference from the bare pool's is what a variant adds
 * (less noisy than wall time on a shared machine: added CPU / round trip is the overhead to expect).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import middy from '@middy/core';
import pg from 'pg';
import { createPool, withDsql } from '../src/index.js';
import { dsql } from '../src/middy.js';
import { signTestToken, startTestEndpoint } from '../test/helpers/endpoint.js';
import { lambdaContext } from '../test/helpers/lambda-context.js';

const LATENCIES_MS = (process.env.BENCH_LATENCIES ?? '1,5').split(',').map(Number);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 20);
const PER_ROUND = Number(process.env.BENCH_PER_ROUND ?? 25);

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(q * (s.length - 1))] ?? Number.NaN;
};
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

// Every statement a pg client of this process sends goes through Client#query; only those sent
// to the endpoint count (the in-process endpoint's own upstream queries, such as its lock probes
// on long requests, go elsewhere).
let statements = 0;
let endpointPort: number | undefined;
const originalQuery = pg.Client.prototype.query;
pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  if (this.port === endpointPort) statements++;
  return (originalQuery as (...a: unknown[]) => unknown).apply(this, args);
} as typeof pg.Client.prototype.query;

const endpoint = await startTestEndpoint();
endpointPort = endpoint.port;
const config = {
  host: endpoint.host,
  hostaddr: endpoint.address,
  port: endpoint.port,
  credentials: endpoint.credentials,
  ssl: { ca: endpoint.ca },
  max: 1,
};
const bare = new pg.Pool({
  host: endpoint.address,
  port: endpoint.port,
  user: 'admin',
  database: 'postgres',
  password: await signTestToken(endpoint),
  ssl: { ca: endpoint.ca, servername: endpoint.host },
  sslnegotiation: 'direct',
  max: 1,
});
bare.on('error', () => {});
const pool = createPool(config);
const viaWithDsql = withDsql(async (_event: unknown, context) => context.dsql.query('SELECT 1'), {
  ...config,
});
const viaMiddy = middy()
  .use(dsql({ ...config }))
  .handler(async (_event: unknown, context) => context.dsql.query('SELECT 1'));

const variants: Record<string, () => Promise<unknown>> = {
  'bare pg.Pool': () => bare.query('SELECT 1'),
  createPool: () => pool.query('SELECT 1'),
  withDsql: () => viaWithDsql({}, lambdaContext(30_000, 'bench')),
  'middy + dsql()': () => viaMiddy({}, lambdaContext(30_000, 'bench')),
};

interface VariantResult {
  medianMs: number;
  p90Ms: number;
  overheadPct: number;
  overheadP25Pct: number;
  overheadP75Pct: number;
  statementsPerInvocation: number;
  /** Process CPU per invocation, µs; minus the bare pool's: what the variant adds. */
  cpuUsPerInvocation: number;
  addedCpuUs: number;
}
const results: { latencyMsEachWay: number; roundTripMs: number; variants: Record<string, VariantResult> }[] =
  [];

for (const latency of LATENCIES_MS) {
  endpoint.faults.setLatency({ toServer: latency, toClient: latency });
  for (const run of Object.values(variants)) for (let i = 0; i < 5; i++) await run(); // connect and warm up
  const names = Object.keys(variants);
  const samples = Object.fromEntries(names.map((n) => [n, [] as number[]]));
  const roundMedians = Object.fromEntries(names.map((n) => [n, [] as number[]]));
  const sent: Record<string, number> = {};
  // CPU of this whole process (the endpoint relaying included, the same for every variant).
  const cpuUs: Record<string, number> = {};
  for (let r = 0; r < ROUNDS; r++) {
    // One invocation of each variant in turn (the order rotates each round), so that load and
    // drift on this shared machine hit every variant alike; a round's figure is its median.
    const order = [...names.slice(r % names.length), ...names.slice(0, r % names.length)];
    const round: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, [] as number[]]));
    for (let i = 0; i < PER_ROUND; i++) {
      for (const name of order) {
        const before = statements;
        const cpu0 = process.cpuUsage();
        const t0 = performance.now();
        await variants[name]!();
        const ms = performance.now() - t0;
        const cpu = process.cpuUsage(cpu0);
        cpuUs[name] = (cpuUs[name] ?? 0) + cpu.user + cpu.system;
        sent[name] = (sent[name] ?? 0) + (statements - before);
        samples[name]!.push(ms);
        round[name]!.push(ms);
      }
    }
    for (const name of names) roundMedians[name]!.push(quantile(round[name]!, 0.5));
  }
  const reference = roundMedians['bare pg.Pool']!;
  const out: Record<string, VariantResult> = {};
  for (const name of Object.keys(variants)) {
    const ratios = roundMedians[name]!.map((m, i) => (m / reference[i]! - 1) * 100);
    out[name] = {
      medianMs: round(quantile(samples[name]!, 0.5), 3),
      p90Ms: round(quantile(samples[name]!, 0.9), 3),
      overheadPct: round(quantile(ratios, 0.5)),
      overheadP25Pct: round(quantile(ratios, 0.25)),
      overheadP75Pct: round(quantile(ratios, 0.75)),
      statementsPerInvocation: round(sent[name]! / (ROUNDS * PER_ROUND), 3),
      cpuUsPerInvocation: round(cpuUs[name]! / (ROUNDS * PER_ROUND), 1),
      addedCpuUs: round((cpuUs[name]! - cpuUs['bare pg.Pool']!) / (ROUNDS * PER_ROUND), 1),
    };
  }
  const roundTripMs = out['bare pg.Pool']!.medianMs;
  results.push({ latencyMsEachWay: latency, roundTripMs, variants: out });
  console.log(`\nlatency ${latency} ms each way (bare round trip ${roundTripMs} ms)`);
  for (const [name, v] of Object.entries(out)) {
    console.log(
      `  ${name.padEnd(16)} median ${v.medianMs.toFixed(3)} ms  overhead ${v.overheadPct.toFixed(2)} % ` +
        `(IQR ${v.overheadP25Pct.toFixed(2)} … ${v.overheadP75Pct.toFixed(2)})  statements/invocation ${v.statementsPerInvocation}  ` +
        `CPU +${v.addedCpuUs} µs`,
    );
  }
}

await Promise.all([bare.end(), pool.end()]);
await endpoint.stop();

const major = process.versions.node.split('.')[0];
const file = join(dirname(fileURLToPath(import.meta.url)), 'results', `warm-latency-node${major}.json`);
mkdirSync(dirname(file), { recursive: true });
writeFileSync(
  file,
  `${JSON.stringify(
    {
      description:
        'Warm invocation (SELECT 1) through the local endpoint with injected latency each way; overhead = median over rounds of (variant median / bare pg.Pool median in that round) - 1. Goal: < 5 %.',
      node: process.version,
      rounds: ROUNDS,
      perRound: PER_ROUND,
      measuredAt: new Date().toISOString(),
      results,
    },
    null,
    2,
  )}\n`,
);
console.log(`\nwrote ${file}`);
process.exit(0);
