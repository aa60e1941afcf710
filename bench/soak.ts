/**
 * Freeze soak: `npm run soak` (node --import tsx bench/soak.ts [cycles]).
 *
 * One handler process (middy 7 + `dsql()`, the full stack) against the local DSQL-like
 * endpoint, frozen and thawed over and over the way Lambda does it: each cycle SIGSTOPs the
 * process, queues the next invocation (before or after the fault, at random), applies a random
 * fault — none, FIN, RST, FATAL 57P01, silent drop, or the endpoint's max connection age — waits
 * a random pause (half of them shorter than the thaw threshold, half longer), and SIGCONTs it.
 * Every invocation INSERTs a unique tag; at the end each tag must be in the table exactly once.
 *
 * Reports failures (goal: 0), lost or duplicated inserts (goal: 0), crashes (goal: 0) and the
 * added latency of a thawed invocation compared with a warm one, per fault. Writes
 * bench/results/soak.json. A bare pg.Pool under the same cycles, as a baseline, shows the
 * simulation reproduces the problem (its failures are expected).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startTestEndpoint } from '../test/helpers/endpoint.js';
import { type LambdaChild, sleep, startLambdaChild } from '../test/lambda/harness.js';

/**
 * Rows are counted on the upstream PostgreSQL database the endpoint relays to, over a direct
 * connection: the endpoint's faults (drop 'all') must not touch the observer.
 */

type Fault = 'none' | 'fin' | 'rst' | 'fatal' | 'silent' | 'age';
const FAULTS: Fault[] = ['none', 'fin', 'rst', 'fatal', 'silent', 'age'];

const cycles = Number(process.argv[2] ?? 240);
const baselineCycles = Math.min(30, Math.round(cycles / 8));
const THAW_MS = 150;
// Thresholds scaled down with the pauses so a short soak exercises both sides of each.
const config = { thawThresholdMillis: THAW_MS, validationTimeoutMillis: 300, maxIdleMillis: 300_000 };

// Seeded so a failing run can be replayed (SOAK_SEED=...).
let seed = Number(process.env.SOAK_SEED ?? Date.now() % 2 ** 31);
const firstSeed = seed;
function random(): number {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31;
}
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T;

interface CycleResult {
  fault: Fault;
  pauseMs: number;
  queuedFirst: boolean;
  ok: boolean;
  error?: string;
  ms: number;
  thawed: boolean;
}

function summary(values: number[]) {
  const s = [...values].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? Number.NaN;
  const round = (x: number) => Math.round(x * 100) / 100;
  return {
    n: s.length,
    p50: round(q(0.5)),
    p90: round(q(0.9)),
    p99: round(q(0.99)),
    max: round(s.at(-1) ?? Number.NaN),
  };
}

async function main() {
  const started = Date.now();
  const endpoint = await startTestEndpoint();
  // Directly on the PostgreSQL the endpoint relays to (its embedded one unless DSQL_LOCAL_UPSTREAM names one).
  const admin = new pg.Client({ connectionString: endpoint.upstream });
  admin.on('error', () => {});
  await admin.connect();
  const table = `soak_${process.pid}`;
  await admin.query(`CREATE TABLE IF NOT EXISTS ${table} (tag text NOT NULL)`);

  async function run(handlerExport: string, n: number) {
    let child: LambdaChild = await startLambdaChild({
      env: { ...endpoint.env, FREEZE_CONFIG: JSON.stringify(config) },
      handlerExport,
    });
    const results: CycleResult[] = [];
    const warm: number[] = [];
    const tags: Array<{ tag: string; ok: boolean }> = [];
    let crashes = 0;
    let k = 0;
    const invoke = async (tag: string) => {
      // 5 s after the thaw at most (the longest pause is under 0.5 s): a hung invocation is a failure.
      const r = await child.invoke({ op: 'insert', table, tag }, { timeoutMs: 5_000, waitMs: 5_500 });
      tags.push({ tag, ok: r.ok });
      return r;
    };
    await invoke(`${handlerExport}-init`);
    for (let i = 0; i < n; i++) {
      // A warm invocation: the reference latency, and it makes sure a connection is pooled.
      const w = await invoke(`${handlerExport}-w${++k}`);
      if (w.ok) warm.push(w.ms);
      const fault = pick(FAULTS);
      // A silently dropped path (a NAT idle timeout) takes minutes of idleness: it only ever
      // follows a long freeze, which is what validation is for. Shorter freezes get every
      // other fault.
      const short = fault !== 'silent' && random() < 0.5;
      const pauseMs = Math.round(short ? 20 + random() * (THAW_MS - 40) : THAW_MS + 30 + random() * 300);
      const queuedFirst = random() < 0.5;
      const tag = `${handlerExport}-c${++k}`;
      child.freeze();
      let pending: ReturnType<typeof invoke> | undefined;
      if (queuedFirst) {
        pending = invoke(tag);
        await sleep(10);
      }
      if (fault === 'age') endpoint.faults.setMaxConnectionAge(0.001);
      else if (fault !== 'none') endpoint.faults.dropConnections({ which: 'all', how: fault });
      await sleep(pauseMs);
      if (fault === 'age') endpoint.faults.setMaxConnectionAge(3600);
      pending ??= invoke(tag);
      child.thaw();
      const r = await pending;
      results.push({
        fault,
        pauseMs,
        queuedFirst,
        ok: r.ok,
        ms: r.ms,
        thawed: pauseMs > THAW_MS,
        ...(r.ok ? {} : { error: r.error?.message }),
      });
      if (!r.ok) {
        // Keep cycles independent: a failed cycle (a hung statement, for the baseline) must not
        // poison the next ones. Lambda also replaces the environment after a timeout.
        await child.kill();
      }
      if ((i + 1) % 20 === 0) {
        const failed = results.filter((x) => !x.ok).length;
        console.log(`${handlerExport}: ${i + 1}/${n} cycles, ${failed} failed`);
      }
      if (child.exit) {
        if (child.exit.signal !== 'SIGKILL') crashes++;
        child = await startLambdaChild({
          env: { ...endpoint.env, FREEZE_CONFIG: JSON.stringify(config) },
          handlerExport,
        });
      }
    }
    await child.kill();
    return { results, warm, tags, crashes };
  }

  const guarded = await run('middy7', cycles);
  const baseline = await run('bareEndpointPool', baselineCycles);

  // Exactly once: an invocation reported ok has exactly one row; a failed one (its error
  // surfaced) at most one — never two, since no statement is ever sent twice.
  const counts = new Map<string, number>(
    (
      await admin.query<{ tag: string; n: number }>(
        `SELECT tag, count(*)::int AS n FROM ${table} GROUP BY tag`,
      )
    ).rows.map((r) => [r.tag, r.n]),
  );
  const duplicated = guarded.tags.filter((t) => (counts.get(t.tag) ?? 0) > 1).length;
  const lost = guarded.tags.filter((t) => t.ok && (counts.get(t.tag) ?? 0) !== 1).length;
  const okTags = guarded.tags.filter((t) => t.ok).length;
  const guardedFailures = guarded.results.filter((r) => !r.ok);

  const warmP50 = summary(guarded.warm).p50;
  const byFault: Record<string, unknown> = {};
  for (const fault of FAULTS) {
    for (const thawed of [false, true]) {
      const rs = guarded.results.filter((r) => r.fault === fault && r.thawed === thawed);
      if (rs.length === 0) continue;
      const s = summary(rs.filter((r) => r.ok).map((r) => r.ms));
      byFault[`${fault}/${thawed ? 'thawed' : 'short-freeze'}`] = {
        ...s,
        failures: rs.filter((r) => !r.ok).length,
        addedP50Ms: Math.round((s.p50 - warmP50) * 100) / 100,
      };
    }
  }
  const report = {
    date: new Date().toISOString(),
    node: process.version,
    seed: firstSeed,
    settings: { cycles, baselineCycles, ...config },
    guarded: {
      cycles: guarded.results.length,
      failures: guardedFailures.length,
      failureSamples: guardedFailures.slice(0, 10),
      crashes: guarded.crashes,
      duplicatedInserts: duplicated,
      lostInserts: lost,
      okInvocations: okTags,
      warmMs: summary(guarded.warm),
      thawedNoFaultMs: summary(
        guarded.results.filter((r) => r.ok && r.thawed && r.fault === 'none').map((r) => r.ms),
      ),
      addedLatencyThawedVsWarmP50Ms:
        Math.round(
          (summary(guarded.results.filter((r) => r.ok && r.thawed && r.fault === 'none').map((r) => r.ms))
            .p50 -
            warmP50) *
            100,
        ) / 100,
      byFault,
    },
    baselineBarePgPool: {
      note: 'pg.Pool without the freeze guard under the same cycles: failures here show the simulation bites',
      cycles: baseline.results.length,
      failures: baseline.results.filter((r) => !r.ok).length,
      crashes: baseline.crashes,
      failuresByFault: Object.fromEntries(
        FAULTS.map((f) => [f, baseline.results.filter((r) => r.fault === f && !r.ok).length]),
      ),
    },
    wallSeconds: Math.round((Date.now() - started) / 100) / 10,
  };
  await admin.query(`DROP TABLE IF EXISTS ${table}`);
  await admin.end();
  await endpoint.stop();

  const file = join(dirname(fileURLToPath(import.meta.url)), 'results', 'soak.json');
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  console.log(JSON.stringify({ ...report, guarded: { ...report.guarded, byFault: undefined } }, null, 2));
  console.table(byFault);
  console.log(`wrote ${file}`);
  if (
    report.guarded.failures > 0 ||
    report.guarded.crashes > 0 ||
    duplicated > 0 ||
    report.guarded.lostInserts > 0
  ) {
    process.exitCode = 1;
  }
}

await main();
