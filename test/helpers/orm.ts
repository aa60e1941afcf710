/**
 * For the ORM integration tests: a local endpoint in front of a PostgreSQL database of its own
 * (so fixed table names and the bookkeeping table do not collide with other suites), a pool on
 * it, and a bank-transfer workload checked for its invariants.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { expect } from 'vitest';
import type { LocalDsql, LocalDsqlOptions } from '../../packages/dsql-local/src/index.js';
import { OccRetryExhaustedError } from '../../src/errors.js';
import { pgConfig, signTestToken, startTestEndpoint, testUpstream, upstreamUrlFor } from './endpoint.js';

/** An endpoint on a fresh upstream database, a pool on it, and the way to throw both away. */
export interface OrmEndpoint {
  endpoint: LocalDsql;
  /** The upstream PostgreSQL database behind the endpoint (for a look behind its back). */
  database: string;
  pool: pg.Pool;
  /** Opens another pool on the endpoint (closed by `stop`). */
  newPool(max?: number): pg.Pool;
  stop(): Promise<void>;
}

export async function startOrmEndpoint(prefix: string, options: LocalDsqlOptions = {}): Promise<OrmEndpoint> {
  const database = `${prefix}_${randomUUID().replaceAll('-', '').slice(0, 10)}`;
  const endpoint = await startTestEndpoint({
    ...options,
    upstream: upstreamUrlFor(database),
  });
  const config = pgConfig(endpoint, { password: () => signTestToken(endpoint) });
  const pools: pg.Pool[] = [];
  const newPool = (max = 10) => {
    const pool = new pg.Pool({ ...config, max });
    pool.on('error', () => {});
    pools.push(pool);
    return pool;
  };
  const pool = newPool();
  return {
    endpoint,
    database,
    pool,
    newPool,
    async stop() {
      await Promise.all(pools.map((p) => p.end().catch(() => {})));
      await endpoint.stop();
      const admin = new pg.Client(testUpstream('postgres'));
      await admin.connect();
      try {
        await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      } finally {
        await admin.end();
      }
    },
  };
}

/** Account and transfer tables, created with plain SQL, one DDL statement per transaction. */
export async function createBankTables(pool: pg.Pool, accounts: number, initial: number): Promise<void> {
  await pool.query('CREATE TABLE account (id integer PRIMARY KEY, balance bigint NOT NULL)');
  await pool.query(
    'CREATE TABLE transfer (id uuid PRIMARY KEY, src integer NOT NULL, dst integer NOT NULL, amount integer NOT NULL)',
  );
  await pool.query(
    `INSERT INTO account (id, balance) SELECT g, ${initial} FROM generate_series(1, ${accounts}) g`,
  );
}

/** One transfer of the workload: the same on every attempt (its id is chosen outside the transaction). */
export interface Transfer {
  id: string;
  src: number;
  dst: number;
  amount: number;
}

/** What a workload run reported. */
export interface BankReport {
  /** Transfer id → how many times its retried transaction resolved. */
  committed: Map<string, number>;
  /** Transfers whose transaction rejected. */
  failed: Map<string, unknown>;
  /** Retries reported through onRetry. */
  retries: number;
}

/**
 * Runs `workers` × `perWorker` transfers among `accounts` hot accounts through `transfer`, then
 * checks: money is conserved; every transfer reported committed was reported once and is
 * recorded, nothing else is (a transfer may only fail by giving up: OccRetryExhaustedError); each balance is its initial balance plus the recorded transfers;
 * conflicts happened and were retried; no client is left checked out.
 */
export async function runBank(
  pool: pg.Pool,
  shape: { workers: number; perWorker: number; accounts: number; initial: number },
  transfer: (t: Transfer, onRetry: () => void) => Promise<unknown>,
): Promise<BankReport> {
  const report: BankReport = { committed: new Map(), failed: new Map(), retries: 0 };
  const worker = async (w: number) => {
    for (let i = 0; i < shape.perWorker; i++) {
      const src = 1 + ((w + i) % shape.accounts);
      const dst = 1 + ((src + (i % (shape.accounts - 1))) % shape.accounts);
      const t: Transfer = { id: randomUUID(), src, dst, amount: 1 + ((w * 31 + i * 7) % 50) };
      try {
        await transfer(t, () => report.retries++);
        report.committed.set(t.id, (report.committed.get(t.id) ?? 0) + 1);
      } catch (err) {
        report.failed.set(t.id, err);
      }
    }
  };
  await Promise.all(Array.from({ length: shape.workers }, (_, w) => worker(w)));

  const { rows: balances } = await pool.query<{ id: number; balance: string }>(
    'SELECT id, balance FROM account ORDER BY id',
  );
  const { rows: recorded } = await pool.query<Transfer>('SELECT id, src, dst, amount FROM transfer');
  // A transfer may give up (out of attempts under heavy contention on a busy machine); nothing else may fail.
  for (const err of report.failed.values()) expect(err).toBeInstanceOf(OccRetryExhaustedError);
  expect(report.committed.size).toBeGreaterThan(report.failed.size);
  expect(balances.reduce((sum, r) => sum + Number(r.balance), 0)).toBe(shape.initial * shape.accounts);
  expect([...report.committed.values()].every((n) => n === 1)).toBe(true);
  expect(new Set(recorded.map((r) => r.id))).toEqual(new Set(report.committed.keys()));
  expect(recorded).toHaveLength(report.committed.size);
  const expected = new Map<number, number>();
  for (let a = 1; a <= shape.accounts; a++) expected.set(a, shape.initial);
  for (const r of recorded) {
    expected.set(r.src, (expected.get(r.src) ?? 0) - r.amount);
    expected.set(r.dst, (expected.get(r.dst) ?? 0) + r.amount);
  }
  expect(balances.map((r) => [r.id, Number(r.balance)])).toEqual([...expected.entries()]);
  expect(report.retries).toBeGreaterThan(0);
  expect(pool.waitingCount).toBe(0);
  expect(pool.idleCount).toBe(pool.totalCount);
  return report;
}
