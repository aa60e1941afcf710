/**
 * OCC retry policies under real contention: `node --import tsx bench/occ.ts`.
 *
 * Workload: W workers on one pool (W connections, like W concurrent Lambda invocations) move money
 * between accounts as fast as they can. Each transfer reads both balances, updates both rows and
 * records its id, in one `withRetry` transaction; conflicts are real, not injected: the local
 * endpoint runs with its default DSQL dialect, where nobody waits on a row lock and the loser
 * fails with DSQL's `40001 OC000`, mostly at COMMIT (an idle lock holder is rolled back under its
 * client, a statement meeting a newer row version runs again in a doomed transaction; see
 * packages/dsql-local/src/occ.ts). Per policy it also reports the endpoint's counts: conflicts at
 * COMMIT and at a statement, wounds, and how long requests that waited on a lock took. Two scenarios: `hot` (16 workers, 4 accounts: most
 * transactions conflict; every policy) and `moderate` (12 workers, 64 accounts; the compared
 * policies and the two other jitter schemes), so that a policy tuned for heavy contention is also
 * seen where conflicts are occasional.
 *
 * Policies, all run by the same `withRetry` attempt so only the policy differs: the library's own
 * scheme (decorrelated jitter) by its loop, the other jitter schemes by a loop in this file around
 * single-attempt `withRetry` calls (the library ships one scheme and no seam for others):
 * - dsql-lambda defaults (`DSQL_DEFAULTS.retry`, decorrelated jitter);
 * - the official node-postgres connector: 3 retries, 1 ms base, 100 ms cap, +0–25 % jitter;
 * - the official Go connector: 3 retries, 100 ms initial, ×2, 5 s cap, +0–25 % jitter;
 * - a few alternatives (other jitter schemes and bases, and our backoff with only 4 attempts)
 *   that were the candidates for the defaults.
 * Rounds are interleaved (every policy runs once per round, in rotated order) so that drift of
 * the machine affects all policies alike.
 *
 * Reports goodput (committed transfers/s), latency of committed transfers (p50/p99, from the
 * withRetry call to its return, retries and sleeps included), transfers given up
 * (OccRetryExhaustedError) and attempts per commit; checks that the total balance is unchanged
 * and every committed transfer id is recorded exactly once. Writes bench/results/occ.json.
 *
 * Closed loop: a worker whose transfer gave up starts a new one at once, so giving up early can
 * raise goodput while failing users; read goodput together with "gave up".
 *
 * Options (environment): OCC_ROUNDS (2), OCC_ROUND_MS (2500 hot, 2000 moderate),
 * OCC_LOCK_TIMEOUT_MS (the endpoint's `lockTimeoutMs`, default its own), OCC_DIRECT=1 to run against PostgreSQL at 127.0.0.1:5432 in REPEATABLE READ instead of the
 * local endpoint (conflicts then block on row locks before failing, unlike DSQL).
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { LocalDsqlStats } from '../packages/dsql-local/src/index.js';
import { DSQL_DEFAULTS } from '../src/defaults.js';
import { CommitOutcomeUnknownError, OccRetryExhaustedError } from '../src/errors.js';
import { type RetryOptions, type TransactionClient, withRetry } from '../src/retry.js';

const ROUNDS = Number(process.env.OCC_ROUNDS ?? 2);
const ROUND_MS = process.env.OCC_ROUND_MS ? Number(process.env.OCC_ROUND_MS) : undefined;
const DIRECT = process.env.OCC_DIRECT === '1';
/** The endpoint's `lockTimeoutMs` (its default when unset). */
const LOCK_TIMEOUT_MS = process.env.OCC_LOCK_TIMEOUT_MS ? Number(process.env.OCC_LOCK_TIMEOUT_MS) : undefined;
const INITIAL_BALANCE = 1_000_000;

type Delays = { baseDelayMs: number; maxDelayMs: number };
const exponential = (failures: number, p: Delays) =>
  Math.min(p.maxDelayMs, p.baseDelayMs * 2 ** Math.min(failures - 1, 30));
/**
 * The jitter schemes compared with the library's (decorrelated: min(cap, base + U × (3 × previous
 * − base)), in src/retry.ts): the sleep after the n-th failed attempt.
 */
const JITTER = {
  /** U × d, d = min(cap, base × 2^(n−1)). */
  full: (n: number, p: Delays) => Math.random() * exponential(n, p),
  /** d/2 + U × d/2. */
  equal: (n: number, p: Delays) => exponential(n, p) * (0.5 + Math.random() / 2),
  /** d × (1 + U × 0.25): the official connectors'. */
  proportional: (n: number, p: Delays) => exponential(n, p) * (1 + Math.random() * 0.25),
};
type Scheme = keyof typeof JITTER;
const jitter = (scheme: Scheme, options: RetryOptions = {}) => ({ ...options, scheme });

/**
 * A transfer under a policy: withRetry itself for the library's scheme; for another, a loop of
 * single-attempt withRetry calls (same checkout, classification and rollback) sleeping its delays.
 */
async function retried(
  pool: pg.Pool,
  fn: (tx: TransactionClient) => Promise<void>,
  { scheme, ...options }: RetryOptions & { scheme?: Scheme },
): Promise<void> {
  if (!scheme) return withRetry(pool, fn, options);
  const { maxAttempts, ...delays } = { ...DSQL_DEFAULTS.retry, ...options };
  for (let n = 1; ; n++) {
    try {
      return await withRetry(pool, fn, { maxAttempts: 1 });
    } catch (err) {
      if (!(err instanceof OccRetryExhaustedError) || n >= maxAttempts) throw err;
      await new Promise((resolve) => setTimeout(resolve, JITTER[scheme](n, delays)));
    }
  }
}

const RETRY_DEFAULTS = { ...DSQL_DEFAULTS.retry, jitter: 'decorrelated' };

interface Policy {
  name: string;
  /** Shown in the table and the JSON: what the policy is. */
  summary: string;
  options: RetryOptions & { scheme?: Scheme };
  /** Part of the comparison the brief asks for, or one of the candidates for our defaults. */
  role: 'compared' | 'candidate';
}

const POLICIES: Policy[] = [
  {
    name: 'dsql-lambda defaults',
    summary: `${RETRY_DEFAULTS.maxAttempts} attempts, ${RETRY_DEFAULTS.baseDelayMs} ms base, ${RETRY_DEFAULTS.maxDelayMs} ms cap, ${RETRY_DEFAULTS.jitter} jitter`,
    options: {},
    role: 'compared',
  },
  {
    name: 'official node connector',
    summary: '4 attempts, 1 ms base, 100 ms cap, +0-25 % jitter',
    options: jitter('proportional', { maxAttempts: 4, baseDelayMs: 1, maxDelayMs: 100 }),
    role: 'compared',
  },
  {
    name: 'official Go connector',
    summary: '4 attempts, 100 ms base, 5 s cap, +0-25 % jitter',
    options: jitter('proportional', { maxAttempts: 4, baseDelayMs: 100, maxDelayMs: 5000 }),
    role: 'compared',
  },
  {
    name: 'defaults, 4 attempts',
    summary: 'our backoff with the official attempt budget',
    options: { maxAttempts: 4 },
    role: 'candidate',
  },
  {
    name: 'full jitter, 10 ms base',
    summary: `${RETRY_DEFAULTS.maxAttempts} attempts, 10 ms base, 1 s cap, full jitter (first draft)`,
    options: jitter('full', { baseDelayMs: 10 }),
    role: 'candidate',
  },
  {
    name: 'full jitter, 20 ms base',
    summary: `${RETRY_DEFAULTS.maxAttempts} attempts, 20 ms base, 1 s cap, full jitter`,
    options: jitter('full', { baseDelayMs: 20 }),
    role: 'candidate',
  },
  {
    name: 'full jitter',
    summary: `${RETRY_DEFAULTS.maxAttempts} attempts, ${RETRY_DEFAULTS.baseDelayMs} ms base, 1 s cap, full jitter`,
    options: jitter('full'),
    role: 'candidate',
  },
  {
    name: 'equal jitter',
    summary: `${RETRY_DEFAULTS.maxAttempts} attempts, ${RETRY_DEFAULTS.baseDelayMs} ms base, 1 s cap, equal jitter`,
    options: jitter('equal'),
    role: 'candidate',
  },
  {
    name: 'decorrelated, 25 ms base',
    summary: `${RETRY_DEFAULTS.maxAttempts} attempts, 25 ms base, 1 s cap, decorrelated`,
    options: { baseDelayMs: 25 },
    role: 'candidate',
  },
];

interface Scenario {
  name: string;
  workers: number;
  accounts: number;
  roundMs: number;
  policies: Policy[];
}

const SCENARIOS: Scenario[] = [
  { name: 'hot', workers: 16, accounts: 4, roundMs: ROUND_MS ?? 2500, policies: POLICIES },
  {
    name: 'moderate',
    workers: 12,
    accounts: 64,
    roundMs: ROUND_MS ?? 2000,
    policies: POLICIES.filter(
      (p) => p.role === 'compared' || p.name === 'full jitter' || p.name === 'equal jitter',
    ),
  },
];

/** Where the endpoint reported conflicts, and how long requests waited on locks (its stats). */
interface Conflicts {
  atCommit: number;
  atStatement: number;
  byUpstreamCode: Record<string, number>;
  wounds: number;
  lockWaitsMs: Record<string, number>;
  maxLockWaitMs: number;
}

interface Tally {
  conflicts: Conflicts;
  committed: number;
  gaveUp: number;
  unknown: number;
  otherErrors: number;
  attempts: number;
  elapsedMs: number;
  latencies: number[];
  committedIds: string[];
  firstOtherError?: string;
}

function emptyTally(): Tally {
  return {
    conflicts: {
      atCommit: 0,
      atStatement: 0,
      byUpstreamCode: {},
      wounds: 0,
      lockWaitsMs: {},
      maxLockWaitMs: 0,
    },
    committed: 0,
    gaveUp: 0,
    unknown: 0,
    otherErrors: 0,
    attempts: 0,
    elapsedMs: 0,
    latencies: [],
    committedIds: [],
  };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** The environment the workload runs against: a pg config and how to tear it down. */
interface Target {
  label: string;
  config: pg.PoolConfig;
  close(): Promise<void>;
  /** The endpoint's counters (not for OCC_DIRECT). */
  stats?: () => LocalDsqlStats;
  resetStats?: () => void;
}

function addCounts(into: Record<string, number>, from: Record<string, number>): void {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
}

/** Adds the endpoint's conflict counters since its last reset to `c`. */
function addConflicts(c: Conflicts, stats: LocalDsqlStats): void {
  c.atCommit += stats.sql.occ.conflictsAtCommit;
  c.atStatement += stats.occFromContention;
  addCounts(c.byUpstreamCode, stats.sql.conflictsByUpstreamCode);
  c.wounds += stats.sql.occ.wounds;
  addCounts(c.lockWaitsMs, stats.sql.occ.lockWaitsMs);
  c.maxLockWaitMs = Math.max(c.maxLockWaitMs, stats.sql.occ.maxLockWaitMs);
}

async function openTarget(): Promise<Target> {
  if (DIRECT) {
    return {
      label: 'PostgreSQL 15 direct, REPEATABLE READ (row locks block, then 40001)',
      config: {
        host: '127.0.0.1',
        port: 5432,
        user: 'postgres',
        database: 'postgres',
        options: '-c default_transaction_isolation=repeatable\\ read',
      },
      close: async () => {},
    };
  }
  const helper = await import('../test/helpers/endpoint.js');
  const endpoint = await helper.startTestEndpoint(
    LOCK_TIMEOUT_MS === undefined ? {} : { lockTimeoutMs: LOCK_TIMEOUT_MS },
  );
  const config = helper.pgConfig(endpoint, {
    user: 'admin',
    password: () => helper.signTestToken(endpoint, { user: 'admin' }),
  });
  return {
    label:
      'local DSQL-like endpoint (DSQL dialect: an idle lock holder is rolled back and fails at COMMIT with 40001 OC000; other conflicts fail at the statement with 40001 OC000)',
    config,
    close: () => endpoint.stop(),
    stats: () => endpoint.stats(),
    resetStats: () => endpoint.resetStats(),
  };
}

async function runWorkload(
  target: Target,
  pool: pg.Pool,
  tables: { account: string; transfer: string },
  scenario: Scenario,
  policy: Policy,
  tally: Tally,
): Promise<void> {
  target.resetStats?.();
  const started = performance.now();
  const stopAt = started + scenario.roundMs;
  const worker = async () => {
    while (performance.now() < stopAt) {
      const a = 1 + Math.floor(Math.random() * scenario.accounts);
      let b = 1 + Math.floor(Math.random() * (scenario.accounts - 1));
      if (b >= a) b++;
      const amount = 1 + Math.floor(Math.random() * 100);
      const id = randomUUID();
      const t0 = performance.now();
      let attempts = 0;
      try {
        await retried(
          pool,
          async (tx) => {
            attempts++;
            await tx.query(`SELECT id, balance FROM ${tables.account} WHERE id IN ($1, $2)`, [a, b]);
            // Lower id first: a fixed order keeps PostgreSQL's row locks from deadlocking (40P01),
            // which DSQL, taking no locks, would never do.
            for (const [acct, delta] of a < b
              ? [
                  [a, -amount],
                  [b, amount],
                ]
              : [
                  [b, amount],
                  [a, -amount],
                ]) {
              await tx.query(`UPDATE ${tables.account} SET balance = balance + $2 WHERE id = $1`, [
                acct,
                delta,
              ]);
            }
            await tx.query(`INSERT INTO ${tables.transfer} (id, src, dst, amount) VALUES ($1, $2, $3, $4)`, [
              id,
              a,
              b,
              amount,
            ]);
          },
          policy.options,
        );
        tally.committed++;
        tally.latencies.push(performance.now() - t0);
        tally.committedIds.push(id);
      } catch (err) {
        if (err instanceof OccRetryExhaustedError) tally.gaveUp++;
        else if (err instanceof CommitOutcomeUnknownError) tally.unknown++;
        else {
          tally.otherErrors++;
          tally.firstOtherError ??= err instanceof Error ? err.message : String(err);
        }
      }
      tally.attempts += attempts;
    }
  };
  await Promise.all(Array.from({ length: scenario.workers }, worker));
  tally.elapsedMs += performance.now() - started;
  if (target.stats) addConflicts(tally.conflicts, target.stats());
}

/** Runs every policy of a scenario on its own tables; returns the result rows and invariants. */
async function runScenario(target: Target, pool: pg.Pool, scenario: Scenario) {
  const suffix = randomUUID().slice(0, 8);
  const tables = { account: `occ_bench_account_${suffix}`, transfer: `occ_bench_transfer_${suffix}` };
  const tallies = new Map(scenario.policies.map((p) => [p.name, emptyTally()]));
  try {
    // DSQL allows one DDL per transaction and no DDL mixed with DML: separate statements.
    await pool.query(`CREATE TABLE ${tables.account} (id int PRIMARY KEY, balance bigint NOT NULL)`);
    await pool.query(
      `CREATE TABLE ${tables.transfer} (id uuid PRIMARY KEY, src int NOT NULL, dst int NOT NULL, amount int NOT NULL)`,
    );
    await pool.query(
      `INSERT INTO ${tables.account} (id, balance) SELECT g, ${INITIAL_BALANCE} FROM generate_series(1, ${scenario.accounts}) g`,
    );
    console.log(
      `\n${scenario.name}: ${scenario.workers} workers, ${scenario.accounts} accounts, ${ROUNDS} rounds × ${scenario.policies.length} policies × ${scenario.roundMs} ms`,
    );
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < scenario.policies.length; i++) {
        const policy = scenario.policies[(i + round) % scenario.policies.length]!;
        await runWorkload(target, pool, tables, scenario, policy, tallies.get(policy.name)!);
      }
    }

    // Invariants: money is conserved, and exactly the transfers reported committed are recorded.
    const total = await pool.query<{ sum: string }>(
      `SELECT sum(balance)::text AS sum FROM ${tables.account}`,
    );
    const recorded = await pool.query<{ id: string }>(`SELECT id FROM ${tables.transfer}`);
    const committedIds = [...tallies.values()].flatMap((t) => t.committedIds);
    const unknown = [...tallies.values()].reduce((n, t) => n + t.unknown, 0);
    const recordedIds = new Set(recorded.rows.map((r) => r.id));
    const missing = committedIds.filter((id) => !recordedIds.has(id)).length;
    const invariants = {
      balanceConserved: total.rows[0]?.sum === String(INITIAL_BALANCE * scenario.accounts),
      committedRecordedExactlyOnce: missing === 0 && new Set(committedIds).size === committedIds.length,
      // Transfers whose outcome is unknown may or may not be recorded; nothing else may be.
      unexplainedRecorded: recorded.rowCount! - committedIds.length > unknown,
    };

    const rows = scenario.policies.map((p) => {
      const t = tallies.get(p.name)!;
      const sorted = [...t.latencies].sort((x, y) => x - y);
      const started = t.committed + t.gaveUp + t.unknown + t.otherErrors;
      return {
        policy: p.name,
        role: p.role,
        summary: p.summary,
        options: { ...p.options, jitter: p.options.scheme ?? 'decorrelated', scheme: undefined },
        committed: t.committed,
        goodputPerSec: Math.round((t.committed / t.elapsedMs) * 1000 * 10) / 10,
        p50Ms: Math.round(percentile(sorted, 50) * 10) / 10,
        p99Ms: Math.round(percentile(sorted, 99) * 10) / 10,
        gaveUp: t.gaveUp,
        gaveUpPct: started > 0 ? Math.round((t.gaveUp / started) * 1000) / 10 : 0,
        commitOutcomeUnknown: t.unknown,
        otherErrors: t.otherErrors,
        ...(t.firstOtherError ? { firstOtherError: t.firstOtherError } : {}),
        attemptsPerCommit: t.committed > 0 ? Math.round((t.attempts / t.committed) * 100) / 100 : null,
        seconds: Math.round(t.elapsedMs) / 1000,
        ...(target.stats
          ? {
              conflicts: {
                ...t.conflicts,
                atCommitPct:
                  t.conflicts.atCommit + t.conflicts.atStatement > 0
                    ? Math.round(
                        (t.conflicts.atCommit / (t.conflicts.atCommit + t.conflicts.atStatement)) * 1000,
                      ) / 10
                    : null,
              },
            }
          : {}),
      };
    });

    console.table(
      rows.map((r) => ({
        policy: r.policy,
        'commits/s': r.goodputPerSec,
        'p50 ms': r.p50Ms,
        'p99 ms': r.p99Ms,
        'gave up': `${r.gaveUp} (${r.gaveUpPct} %)`,
        'attempts/commit': r.attemptsPerCommit,
        unknown: r.commitOutcomeUnknown,
        other: r.otherErrors,
        ...(r.conflicts
          ? {
              'at COMMIT %': r.conflicts.atCommitPct,
              'lock wait max ms': r.conflicts.maxLockWaitMs,
            }
          : {}),
      })),
    );
    console.log('invariants:', invariants);
    return {
      scenario: scenario.name,
      workload: {
        workers: scenario.workers,
        accounts: scenario.accounts,
        rounds: ROUNDS,
        roundMs: scenario.roundMs,
      },
      invariants,
      results: rows,
    };
  } finally {
    await pool.query(`DROP TABLE IF EXISTS ${tables.account}`).catch(() => {});
    await pool.query(`DROP TABLE IF EXISTS ${tables.transfer}`).catch(() => {});
  }
}

async function main(): Promise<void> {
  const loadAtStart = loadavg();
  const target = await openTarget();
  const pool = new pg.Pool({ ...target.config, max: Math.max(...SCENARIOS.map((s) => s.workers)) });
  pool.on('error', () => {}); // idle connections dropped by the endpoint: nothing to do in a bench
  try {
    console.log(`OCC bench: ${target.label}`);
    const scenarios = [];
    for (const scenario of SCENARIOS) scenarios.push(await runScenario(target, pool, scenario));
    const out = {
      benchmark: 'occ',
      date: new Date().toISOString(),
      node: process.version,
      target: target.label,
      lockTimeoutMs: DIRECT ? null : (LOCK_TIMEOUT_MS ?? 'default (10)'),
      // Everything (bench, endpoint, PostgreSQL) shares these CPUs: other load makes runs noisy.
      machine: { cpus: cpus().length, loadAverageAtStart: loadAtStart, loadAverageAtEnd: loadavg() },
      defaults: RETRY_DEFAULTS,
      scenarios,
    };
    const file = join(dirname(fileURLToPath(import.meta.url)), 'results', 'occ.json');
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
    console.log(`\nwrote ${file}`);
    const broken = scenarios.some(
      (s) =>
        !s.invariants.balanceConserved ||
        !s.invariants.committedRecordedExactlyOnce ||
        s.invariants.unexplainedRecorded,
    );
    if (broken) process.exitCode = 1;
  } finally {
    await pool.end();
    await target.close();
  }
}

await main();
