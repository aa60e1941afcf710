/**
 * Freeze simulation against plain PostgreSQL (no endpoint): the one drop PostgreSQL itself can
 * produce on demand, `pg_terminate_backend` (FATAL 57P01 then FIN), while the handler process
 * is SIGSTOPped. The pool is a bare pg.Pool with the freeze guard installed.
 */
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { testUpstream } from '../helpers/endpoint.js';
import { type LambdaChild, sleep, startLambdaChild } from './harness.js';

const PG = testUpstream('postgres');
const table = `freeze_pg_${process.pid}`;
let admin: pg.Client;
let child: LambdaChild | undefined;

beforeAll(async () => {
  admin = new pg.Client(PG);
  await admin.connect();
  await admin.query(`CREATE TABLE IF NOT EXISTS ${table} (tag text NOT NULL)`);
});
afterAll(async () => {
  await admin.query(`DROP TABLE IF EXISTS ${table}`);
  await admin.end();
});
afterEach(async () => {
  await child?.kill();
  child = undefined;
});

const env = (config: Record<string, unknown> = {}) => ({
  PGHOST: PG.host,
  PGPORT: String(PG.port),
  PGUSER: PG.user,
  PGDATABASE: PG.database,
  FREEZE_CONFIG: JSON.stringify(config),
});

async function count(tag: string): Promise<number> {
  const r = await admin.query(`SELECT count(*)::int AS n FROM ${table} WHERE tag = $1`, [tag]);
  return r.rows[0].n;
}

describe('freeze with plain PostgreSQL', () => {
  it('FATAL 57P01 (pg_terminate_backend) while frozen: next invocation succeeds, insert applied once', async () => {
    child = await startLambdaChild({ env: env({ thawThresholdMillis: 200 }), handlerExport: 'raw' });
    const warm = await child.invoke({ op: 'select' });
    expect(warm.ok).toBe(true);
    const pid = (warm.value as { pid: number }).pid;

    child.freeze();
    // Invocation queued before the drop: on SIGCONT its message is read ahead of the socket
    // events, the order in which an unguarded pool sends the statement into a dead connection.
    const next = child.invoke({ op: 'insert', table, tag: 'fatal' });
    await sleep(20);
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await sleep(400);
    child.thaw();
    const r = await next;
    expect(r.error).toBeUndefined();
    expect(r.ok).toBe(true);
    expect((r.value as { pid: number }).pid).not.toBe(pid);
    expect(await count('fatal')).toBe(1);
    expect(child.exit).toBeUndefined();
  });

  it('short freeze below the thaw threshold: the pending FATAL is seen before the statement goes out', async () => {
    child = await startLambdaChild({ env: env({ thawThresholdMillis: 60_000 }), handlerExport: 'raw' });
    const warm = await child.invoke({ op: 'select' });
    const pid = (warm.value as { pid: number }).pid;
    child.freeze();
    const next = child.invoke({ op: 'insert', table, tag: 'short' });
    await sleep(20);
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await sleep(100);
    child.thaw();
    const r = await next;
    expect(r.error).toBeUndefined();
    expect(await count('short')).toBe(1);
    const stats = r.value as { guard: { validations: number } };
    expect(stats.guard.validations).toBe(0);
    expect(child.exit).toBeUndefined();
  });

  it('a connection terminated while checked out between statements: no crash, error surfaces, evicted', async () => {
    // A bare pg.Client has no 'error' listener of its own: only the guard's keeps this alive.
    child = await startLambdaChild({ env: env(), handlerExport: 'raw' });
    const warm = await child.invoke({ op: 'select' });
    const pid = (warm.value as { pid: number }).pid;
    const holding = child.invoke({ op: 'hold', ms: 500 });
    await sleep(200);
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    const r = await holding;
    expect(r.ok).toBe(false);
    const next = await child.invoke({ op: 'insert', table, tag: 'after-hold' });
    expect(next.error).toBeUndefined();
    expect(await count('after-hold')).toBe(1);
    expect((next.value as { guard: { evictedOnRelease: number } }).guard.evictedOnRelease).toBe(1);
    expect(child.exit).toBeUndefined();
  });

  it.each([
    ['maxLifetimeSeconds', { maxLifetimeSeconds: 1 }, 'evictedExpired'],
    ['maxIdleMillis', { maxIdleMillis: 1_000 }, 'evictedIdle'],
  ] as const)(
    '%s is enforced by the wall clock at checkout (no pg-pool timer exists)',
    async (_name, config, counter) => {
      child = await startLambdaChild({
        env: env({ ...config, thawThresholdMillis: 60_000 }),
        handlerExport: 'raw',
      });
      const warm = await child.invoke({ op: 'select' });
      const pid = (warm.value as { pid: number }).pid;
      child.freeze();
      const next = child.invoke({ op: 'insert', table, tag: `wall-${counter}` });
      await sleep(1_300);
      child.thaw();
      const r = await next;
      expect(r.error).toBeUndefined();
      const info = r.value as { pid: number; guard: Record<string, number> };
      expect(info.guard[counter]).toBe(1);
      expect(info.guard.validations).toBe(0);
      expect(info.pid).not.toBe(pid);
      expect(await count(`wall-${counter}`)).toBe(1);
      // The old session is gone server-side too: destroyed, not leaked.
      await sleep(100);
      const alive = await admin.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [
        pid,
      ]);
      expect(alive.rows[0].n).toBe(0);
    },
  );
});
