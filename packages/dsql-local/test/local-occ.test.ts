/**
 * Commit-time optimistic concurrency through the endpoint, with pg against real PostgreSQL: the
 * second writer of a row does not wait and the first fails at COMMIT with 40001 OC000; a
 * statement meeting a newer row version runs again and its transaction fails at COMMIT; a schema
 * change underneath fails COMMIT with OC001; nothing ever sees 40P01; the bank invariant holds
 * under contention with the library's `withRetry`.
 */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  holdBusy,
  pgConfig,
  signTestToken,
  startTestEndpoint,
  testUpstream,
  untilSleeping,
} from '../../../test/helpers/endpoint.js';
import type { LocalDsql } from '../src/index.js';
import { catalogRace } from '../src/occ.js';

const OC000 = { code: '40001', message: 'change conflicts with another transaction (OC000)' };

const clients: pg.Client[] = [];
/** Lock waits can only end by a wound here: a timeout would take longer than the test. */
let patient: LocalDsql;
let dsql: LocalDsql;
let plain: LocalDsql;

async function connect(endpoint: LocalDsql): Promise<pg.Client> {
  const client = new pg.Client(pgConfig(endpoint, { password: await signTestToken(endpoint) }));
  client.on('error', () => {});
  await client.connect();
  clients.push(client);
  return client;
}

async function failure(p: Promise<unknown>): Promise<{ code?: string; message: string }> {
  try {
    await p;
  } catch (err) {
    return err as { code?: string; message: string };
  }
  throw new Error('expected the statement to fail');
}

const suffix = randomUUID().slice(0, 8);
let tables = 0;
const name = (base: string) => `${base}_${suffix}_${++tables}`;

/** A fresh table `(id bigint PRIMARY KEY, v int)` with rows `ids`, all `v = 0`. */
async function table(endpoint: LocalDsql, base: string, ids = [1]): Promise<string> {
  const t = name(base);
  const setup = await connect(endpoint);
  await setup.query(`CREATE TABLE ${t} (id bigint PRIMARY KEY, v int NOT NULL)`);
  await setup.query(`INSERT INTO ${t} SELECT id, 0 FROM unnest($1::bigint[]) id`, [ids]);
  await setup.end();
  clients.splice(clients.indexOf(setup), 1);
  return t;
}

beforeAll(async () => {
  [patient, dsql, plain] = await Promise.all([
    startTestEndpoint({ lockTimeoutMs: 60_000 }),
    startTestEndpoint(),
    startTestEndpoint({ dialect: 'postgres' }),
  ]);
});

// The upstream is shared with other test files: give connections back after each test.
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.end().catch(() => {})));
});

afterAll(async () => {
  await Promise.all([patient.stop(), dsql.stop(), plain.stop()]);
});

describe('two writers on one row', () => {
  it.each([
    ['a simple COMMIT', (c: pg.Client) => c.query('COMMIT')],
    ['an extended-protocol COMMIT', (c: pg.Client) => c.query({ name: 'commit_a', text: 'COMMIT' })],
    ['a COMMIT inside a multi-statement query', (c: pg.Client) => c.query('SELECT 1; COMMIT')],
  ])(
    'the second does not wait; the first fails at %s with 40001 OC000, the second commits',
    async (_, commit) => {
      const t = await table(patient, 'two');
      const a = await connect(patient);
      const b = await connect(patient);
      const before = patient.stats().sql.occ;
      await a.query('BEGIN');
      await a.query(`UPDATE ${t} SET v = 1 WHERE id = 1`);
      await b.query('BEGIN');
      // Would wait for a's lock for a minute; a is idle in its transaction, so it is wounded.
      expect((await b.query(`UPDATE ${t} SET v = 2 WHERE id = 1`)).rowCount).toBe(1);
      await b.query('COMMIT');
      // a's client notices nothing until COMMIT: its statements still run.
      expect((await a.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect(await failure(commit(a))).toMatchObject(OC000);
      expect((await a.query(`SELECT v FROM ${t}`)).rows).toEqual([{ v: 2 }]);
      const after = patient.stats().sql.occ;
      expect(after.wounds - before.wounds).toBe(1);
      expect(patient.stats().sql.conflictsByUpstreamCode['55P03']).toBeUndefined();
      // The session goes on: a new transaction commits.
      await a.query('BEGIN');
      await a.query(`UPDATE ${t} SET v = 3 WHERE id = 1`);
      await a.query('COMMIT');
      expect((await b.query(`SELECT v FROM ${t}`)).rows).toEqual([{ v: 3 }]);
    },
  );

  it('a ROLLBACK of a wounded transaction is a plain ROLLBACK', async () => {
    const t = await table(patient, 'rb');
    const a = await connect(patient);
    const b = await connect(patient);
    await a.query('BEGIN');
    await a.query(`UPDATE ${t} SET v = 1 WHERE id = 1`);
    await b.query(`UPDATE ${t} SET v = 2 WHERE id = 1`);
    expect((await a.query('ROLLBACK')).command).toBe('ROLLBACK');
    expect((await a.query(`SELECT v FROM ${t}`)).rows).toEqual([{ v: 2 }]);
  });
});

describe('a statement meeting a newer committed row version', () => {
  it.each([
    ['simple protocol', (c: pg.Client, t: string) => c.query(`UPDATE ${t} SET v = 5 WHERE id = 1`)],
    ['extended protocol', (c: pg.Client, t: string) => c.query(`UPDATE ${t} SET v = $1 WHERE id = 1`, [5])],
  ])('%s: runs, and its transaction fails at COMMIT with 40001 OC000', async (_, update) => {
    const t = await table(dsql, 'newer');
    const a = await connect(dsql);
    const b = await connect(dsql);
    const before = dsql.stats();
    await a.query('BEGIN');
    expect((await a.query(`SELECT v FROM ${t}`)).rows).toEqual([{ v: 0 }]);
    await b.query(`UPDATE ${t} SET v = 7 WHERE id = 1`);
    // PostgreSQL fails this UPDATE at once (40001, concurrent update); DSQL fails the COMMIT.
    expect((await update(a, t)).rowCount).toBe(1);
    expect(await failure(a.query('COMMIT'))).toMatchObject(OC000);
    expect((await a.query(`SELECT v FROM ${t}`)).rows).toEqual([{ v: 7 }]);
    const after = dsql.stats();
    expect(after.sql.occ.reruns - before.sql.occ.reruns).toBe(1);
    expect(after.sql.occ.conflictsAtCommit - before.sql.occ.conflictsAtCommit).toBe(1);
    expect(after.occFromContention - before.occFromContention).toBe(0);
  });
});

describe('requests that cannot run again', () => {
  it("a named statement's first Parse keeps the conflict at the statement; its later Binds run again", async () => {
    const t = await table(dsql, 'named');
    const a = await connect(dsql);
    const b = await connect(dsql);
    const update = { name: `upd_${suffix}`, text: `UPDATE ${t} SET v = $1 WHERE id = 1`, values: [5] };
    const conflict = async () => {
      await a.query('BEGIN');
      await a.query(`SELECT v FROM ${t}`);
      await b.query(`UPDATE ${t} SET v = v + 1 WHERE id = 1`);
    };
    // The batch prepares a named statement: running it again would prepare it twice.
    await conflict();
    expect(await failure(a.query(update))).toMatchObject(OC000);
    await a.query('ROLLBACK');
    // Now it is prepared: the batch is Bind/Execute only, and runs again in a doomed transaction.
    await conflict();
    expect((await a.query(update)).rowCount).toBe(1);
    expect(await failure(a.query('COMMIT'))).toMatchObject(OC000);
    expect((await a.query(`SELECT v FROM ${t}`)).rows).toEqual([{ v: 2 }]);
  });
});

describe("PostgreSQL's 57014 'user request' for a lock wait no client cancelled", () => {
  // With a short lock_timeout PostgreSQL can report a lock wait cut short as "canceling
  // statement due to user request" (the timeout fires as the lock is granted, and the next wait of
  // the same statement clears the timeout's flag): seen under contention as a 57014 reaching the
  // client. A SIGINT while the statement waits on a row lock, sent by nobody through the endpoint,
  // gives the same error deterministically.
  it('is a conflict like a lock timeout: the statement runs again, COMMIT fails with OC000', async () => {
    const t = await table(patient, 'sigint');
    const holder = await connect(patient);
    const waiter = await connect(patient);
    await holder.query('BEGIN');
    await holder.query(`UPDATE ${t} SET v = 1 WHERE id = 1`);
    // Busy: it cannot be wounded, so the waiter waits (lockTimeoutMs is a minute here).
    const busy = await holdBusy(holder);
    const { rows } = await waiter.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    await waiter.query('BEGIN');
    const update = waiter.query(`UPDATE ${t} SET v = 2 WHERE id = 1`);
    const direct = new pg.Client(testUpstream());
    await direct.connect();
    try {
      for (;;) {
        const { rowCount } = await direct.query(
          "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
          [rows[0]!.pid],
        );
        if (rowCount) break;
        await new Promise((r) => setTimeout(r, 5));
      }
      await direct.query('SELECT pg_cancel_backend($1)', [rows[0]!.pid]);
    } finally {
      await direct.end();
    }
    // The rerun waits for the holder, whose sleep is cancelled now (its transaction fails).
    await busy.release();
    expect((await update).rowCount).toBe(1);
    expect(await failure(waiter.query('COMMIT'))).toMatchObject(OC000);
    await holder.query('ROLLBACK');
  });

  it("a client's own CancelRequest still gets 57014", async () => {
    const client = await connect(patient);
    await client.query('BEGIN');
    const sleeping = failure(client.query('SELECT pg_sleep(30)'));
    const { processID, secretKey } = client as unknown as { processID: number; secretKey: number };
    const direct = new pg.Client(testUpstream());
    await direct.connect();
    try {
      await untilSleeping(direct, processID);
    } finally {
      await direct.end();
    }
    const cancel = Buffer.alloc(16);
    cancel.writeInt32BE(16, 0);
    cancel.writeInt32BE(80877102, 4);
    cancel.writeInt32BE(processID, 8);
    cancel.writeInt32BE(secretKey, 12);
    const socket = net.connect(patient.port, patient.address, () => socket.end(cancel));
    socket.on('error', () => {});
    expect(await sleeping).toMatchObject({
      code: '57014',
      message: 'canceling statement due to user request',
    });
    await client.query('ROLLBACK');
  });
});

describe('schema changes', () => {
  it('a schema change underneath fails COMMIT with OC001', async () => {
    const t = await table(patient, 'occ1');
    const a = await connect(patient);
    const b = await connect(patient);
    await a.query('BEGIN');
    await a.query(`SELECT v FROM ${t}`);
    // The ALTER would wait for a's table lock: a is idle, so it is wounded, and its COMMIT
    // reports the schema change (OC001), as DSQL's would.
    await b.query(`ALTER TABLE ${t} ADD COLUMN w int`);
    await a.query(`UPDATE ${t} SET v = 1 WHERE id = 1`);
    expect(await failure(a.query('COMMIT'))).toMatchObject({
      code: '40001',
      message: 'schema has been updated by another transaction, please retry: (OC001)',
    });
    expect((await a.query(`SELECT v FROM ${t}`)).rows).toEqual([{ v: 0 }]);
    // A transaction that began after the change commits.
    await a.query('BEGIN');
    await a.query(`UPDATE ${t} SET v = 2 WHERE id = 1`);
    await a.query('COMMIT');
    expect(patient.stats().sql.schemaConflicts).toBeGreaterThanOrEqual(1);
  });
});

describe('deadlocks', () => {
  it('writers in opposite order: no 40P01, every failure 40001 OC000, at most one commits; PostgreSQL deadlocks', async () => {
    const t = await table(dsql, 'dl', [1, 2]);
    const crossed = async (endpoint: LocalDsql) => {
      const a = await connect(endpoint);
      const b = await connect(endpoint);
      await a.query('BEGIN');
      await b.query('BEGIN');
      await a.query(`UPDATE ${t} SET v = v + 1 WHERE id = 1`);
      await b.query(`UPDATE ${t} SET v = v + 1 WHERE id = 2`);
      const statements = await Promise.allSettled([
        a.query(`UPDATE ${t} SET v = v + 1 WHERE id = 2`),
        b.query(`UPDATE ${t} SET v = v + 1 WHERE id = 1`),
      ]);
      const commits = await Promise.allSettled([a.query('COMMIT'), b.query('COMMIT')]);
      return [...statements, ...commits].map((r) =>
        r.status === 'rejected' ? (r.reason as { code?: string; message: string }) : 'ok',
      );
    };
    const results = await crossed(dsql);
    const failed = results.filter((r) => r !== 'ok');
    expect(failed.length).toBeGreaterThanOrEqual(1);
    for (const f of failed) expect(f).toMatchObject(OC000);
    // Both transactions add 1 to both rows: the rows say how many committed.
    const { rows } = await (await connect(dsql)).query(`SELECT v FROM ${t} ORDER BY id`);
    const committed = rows[0].v as number;
    expect(committed).toBeLessThanOrEqual(1);
    expect(rows).toEqual([{ v: committed }, { v: committed }]);
    expect(dsql.stats().sql.conflictsByUpstreamCode['40P01']).toBeUndefined();
    // Plain PostgreSQL: one waits until the deadlock detector picks a victim.
    const plainResults = await crossed(plain);
    expect(plainResults.filter((r) => r !== 'ok').map((r) => (r as { code?: string }).code)).toEqual([
      '40P01',
    ]);
  });
});

describe('contention', () => {
  it('N workers on a few hot rows with withRetry: money conserved, 0 40P01, every conflict 40001 OC000, mostly at COMMIT', async () => {
    const { withRetry } = await import('../../../src/retry.js');
    const t = name('bank');
    const workers = 6;
    const transfers = 10;
    const accounts = 3;
    const setup = await connect(patient);
    await setup.query(`CREATE TABLE ${t} (id bigint PRIMARY KEY, balance bigint NOT NULL)`);
    await setup.query(`INSERT INTO ${t} SELECT g, 1000 FROM generate_series(1, ${accounts}) g`);
    const pool = new pg.Pool({
      ...pgConfig(patient, { password: () => signTestToken(patient) }),
      max: workers,
    });
    pool.on('error', () => {});
    const seen: Array<{ code?: string; message: string }> = [];
    patient.resetStats();
    try {
      await Promise.all(
        Array.from({ length: workers }, async (_, w) => {
          for (let i = 0; i < transfers; i++) {
            const src = 1 + ((w + i) % accounts);
            const dst = 1 + ((w + 2 * i + 1) % accounts);
            if (src === dst) continue;
            await withRetry(
              pool,
              async (tx) => {
                await tx.query(`SELECT id, balance FROM ${t} WHERE id IN ($1, $2)`, [src, dst]);
                // Lower id first, as the bench does: the lock waits are then the ones DSQL would
                // not have, never a cycle of running statements.
                for (const [id, delta] of src < dst
                  ? [
                      [src, -1],
                      [dst, 1],
                    ]
                  : [
                      [dst, 1],
                      [src, -1],
                    ])
                  await tx.query(`UPDATE ${t} SET balance = balance + $2 WHERE id = $1`, [id, delta]);
              },
              {
                maxAttempts: 100,
                onRetry: ({ error }) => seen.push(error as { code?: string; message: string }),
              },
            );
          }
        }),
      );
      const { rows } = await pool.query(`SELECT sum(balance)::int AS total FROM ${t}`);
      expect(rows).toEqual([{ total: 1000 * accounts }]);
    } finally {
      await pool.end();
    }
    const stats = patient.stats();
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.filter((e) => e.code !== OC000.code || e.message !== OC000.message)).toEqual([]);
    expect(stats.sql.conflictsByUpstreamCode['40P01']).toBeUndefined();
    // Every conflict the clients saw is counted once, at COMMIT or at a statement ...
    expect(stats.sql.occ.conflictsAtCommit + stats.occFromContention).toBe(seen.length);
    // ... and most are at COMMIT, as on DSQL.
    expect(stats.sql.occ.conflictsAtCommit).toBeGreaterThan(stats.occFromContention);
  }, 120_000);
});

describe('concurrent DDL', () => {
  const OC001 = 'schema has been updated by another transaction, please retry: (OC001)';
  it("PostgreSQL's catalog races (two runners creating one table) become DSQL's OC001; other errors stay", () => {
    const asOc001 = { S: 'ERROR', V: 'ERROR', C: '40001', M: OC001 };
    const typeRace = { S: 'ERROR', V: 'ERROR', C: '42710', M: 'type "dsql_migrations" already exists' };
    const indexRace = {
      S: 'ERROR',
      C: '23505',
      M: 'duplicate key value violates unique constraint "pg_type_typname_nsp_index"',
      n: 'pg_type_typname_nsp_index',
    };
    expect(catalogRace(typeRace, OC001)).toEqual(asOc001);
    expect(catalogRace(indexRace, OC001)).toEqual({ ...asOc001, V: 'ERROR' });
    // A user's own duplicate key, and a table that already exists, are what they are.
    expect(catalogRace({ ...indexRace, n: 'accounts_pkey' }, OC001)).toBeUndefined();
    expect(catalogRace({ C: '42P07', M: 'relation "t" already exists' }, OC001)).toBeUndefined();
    expect(catalogRace({ C: '42710', M: 'role "x" already exists' }, OC001)).toBeUndefined();
  });
});
