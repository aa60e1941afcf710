/**
 * dsql-lambda/drizzle through the local endpoint: retried transactions in Drizzle's own
 * transaction object (bank invariant under real conflicts, withRetry's guarantees), and
 * drizzle-kit SQL migrations applied one statement per transaction, resumable.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { eq, inArray, sql, TransactionRollbackError } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/node-postgres';
import { migrate as drizzleMigrate } from 'drizzle-orm/node-postgres/migrator';
import { bigint, integer, PgTransaction, pgTable, text, uuid } from 'drizzle-orm/pg-core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  createDrizzle,
  type DrizzleTransaction,
  MigrationError,
  type MigrationStatementInfo,
  migrate,
  retryTransaction,
} from '../../src/drizzle.js';
import { CommitOutcomeUnknownError, OccRetryExhaustedError } from '../../src/errors.js';
import { withDsql } from '../../src/lambda.js';
import { lambdaContext } from '../helpers/lambda-context.js';
import { createBankTables, type OrmEndpoint, runBank, startOrmEndpoint } from '../helpers/orm.js';

const account = pgTable('account', {
  id: integer().primaryKey(),
  balance: bigint({ mode: 'number' }).notNull(),
});
const transfer = pgTable('transfer', {
  id: uuid().primaryKey(),
  src: integer().notNull(),
  dst: integer().notNull(),
  amount: integer().notNull(),
});
// camelCase keys, snake_case columns through the `casing` option.
const note = pgTable('note', { id: integer().primaryKey(), bodyText: text().notNull() });
const schema = { account, transfer, note };

const ACCOUNTS = 3;
const INITIAL = 10_000;
let env: OrmEndpoint;

beforeAll(async () => {
  env = await startOrmEndpoint('orm_drizzle');
  await createBankTables(env.pool, ACCOUNTS, INITIAL);
  await env.pool.query('CREATE TABLE note (id integer PRIMARY KEY, body_text text NOT NULL)');
});
afterAll(() => env?.stop());

const make = (pool = env.pool) => createDrizzle({ client: pool, schema, casing: 'snake_case' });

describe('retryTransaction (Drizzle)', () => {
  it('bank transfers under contention keep the invariant and report every commit once', async () => {
    const pool = env.newPool(8);
    const db = make(pool);
    const report = await runBank(
      pool,
      { workers: 8, perWorker: 15, accounts: ACCOUNTS, initial: INITIAL },
      (t, onRetry) =>
        retryTransaction(
          db,
          async (tx) => {
            await tx
              .select()
              .from(account)
              .where(inArray(account.id, [t.src, t.dst]));
            await tx.execute(sql`SELECT pg_sleep(0.002)`);
            for (const id of [Math.min(t.src, t.dst), Math.max(t.src, t.dst)]) {
              const delta = id === t.src ? -t.amount : t.amount;
              await tx
                .update(account)
                .set({ balance: sql`${account.balance} + ${delta}` })
                .where(eq(account.id, id));
            }
            await tx.insert(transfer).values(t);
          },
          { maxAttempts: 60, baseDelayMs: 2, maxDelayMs: 40, onRetry },
        ),
    );
    expect(report.committed.size + report.failed.size).toBe(120);
  });

  it("hands the callback Drizzle's own transaction, with the db's casing and schema, and returns typed rows", async () => {
    const db = make();
    const rows = await retryTransaction(db, async (tx) => {
      expect(tx).toBeInstanceOf(PgTransaction);
      await tx.insert(note).values({ id: 1, bodyText: 'hello' });
      const viaQuery = await tx.query.note.findFirst({ where: eq(note.id, 1) });
      expect(viaQuery).toEqual({ id: 1, bodyText: 'hello' });
      return tx.select({ id: note.id, bodyText: note.bodyText }).from(note).where(eq(note.id, 1));
    });
    expect(rows).toEqual([{ id: 1, bodyText: 'hello' }]);
    expect((await env.pool.query('SELECT body_text FROM note WHERE id = 1')).rows).toEqual([
      { body_text: 'hello' },
    ]);
  });

  it('retries a conflict at COMMIT on a new attempt and rolls the failed one back', async () => {
    const db = make();
    env.endpoint.faults.failNextCommits({ count: 1, code: 'OC001' });
    let calls = 0;
    const codes: string[] = [];
    const n = await retryTransaction(
      db,
      async (tx) => {
        calls++;
        await tx.insert(note).values({ id: 2, bodyText: `attempt ${calls}` });
        return calls;
      },
      { baseDelayMs: 1, onRetry: ({ code }) => codes.push(code) },
    );
    expect({ n, calls, codes }).toEqual({ n: 2, calls: 2, codes: ['OC001'] });
    expect((await env.pool.query('SELECT body_text FROM note WHERE id = 2')).rows).toEqual([
      { body_text: 'attempt 2' },
    ]);
  });

  it('tx.rollback() rolls back and rejects with TransactionRollbackError, not retried', async () => {
    const db = make();
    let calls = 0;
    const err = await retryTransaction(db, async (tx) => {
      calls++;
      await tx.insert(note).values({ id: 3, bodyText: 'never' });
      tx.rollback();
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransactionRollbackError);
    expect(calls).toBe(1);
    expect((await env.pool.query('SELECT * FROM note WHERE id = 3')).rows).toEqual([]);
  });

  it('never retries a COMMIT whose reply was lost: CommitOutcomeUnknownError, callback run once', async () => {
    const db = make(env.newPool(2));
    env.endpoint.faults.dropOnNextCommit({ how: 'rst', afterCommit: false });
    let calls = 0;
    const err = await retryTransaction(db, async (tx) => {
      calls++;
      await tx.insert(note).values({ id: 4, bodyText: 'lost' });
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
    expect(calls).toBe(1);
    // Dropped before it reached PostgreSQL: it did not commit, but the client could not know.
    expect((await env.pool.query('SELECT * FROM note WHERE id = 4')).rows).toEqual([]);
  });

  it('runs each attempt on one connection: works on a pool of one, every statement on the same session', async () => {
    const pool = env.newPool(1);
    const db = make(pool);
    env.endpoint.faults.failNextCommits({ count: 1 });
    const pids: number[][] = [];
    await retryTransaction(
      db,
      async (tx) => {
        const one = await tx.execute<{ pid: number }>(sql`SELECT pg_backend_pid() AS pid`);
        const two = await tx.select({ pid: sql<number>`pg_backend_pid()` }).from(account).limit(1);
        pids.push([one.rows[0]!.pid, two[0]!.pid]);
      },
      { baseDelayMs: 1 },
    );
    expect(pids).toHaveLength(2);
    for (const [a, b] of pids) expect(a).toBe(b);
    expect(pool.totalCount).toBe(1);
  });

  it('a nested tx.transaction() (a savepoint) is refused by DSQL: rejected, not retried, nothing committed', async () => {
    const db = make();
    let calls = 0;
    const err = await retryTransaction(db, async (tx) => {
      calls++;
      await tx.insert(note).values({ id: 6, bodyText: 'outer' });
      await tx.transaction(async (inner) => {
        await inner.insert(note).values({ id: 7, bodyText: 'inner' });
      });
    }).catch((e: unknown) => e);
    expect(calls).toBe(1);
    const cause = (err as Error).cause ?? err;
    expect(cause).toMatchObject({ code: '0A000' });
    expect((await env.pool.query('SELECT id FROM note WHERE id IN (6, 7)')).rows).toEqual([]);
  });

  it('a transaction kept past its attempt refuses to run anything', async () => {
    const db = make();
    let leaked: DrizzleTransaction<typeof schema> | undefined;
    await retryTransaction(db, async (tx) => {
      leaked = tx;
    });
    // Drizzle wraps the driver's error in its DrizzleQueryError.
    const err = await leaked!
      .select()
      .from(note)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect((err as Error).cause).toBeInstanceOf(Error);
    expect(((err as Error).cause as Error).message).toMatch(/after its attempt ended/);
  });

  it('refuses a database it did not make, and a missing callback', async () => {
    const plain = drizzle({ client: env.pool, schema });
    // @ts-expect-error: only databases made by createDrizzle are accepted (the type says so too)
    await expect(retryTransaction(plain, async () => {})).rejects.toThrow(/createDrizzle/);
    await expect(retryTransaction(make(), undefined as never)).rejects.toThrow(TypeError);
  });

  // An option set to undefined (as a caller forwarding its own options does) must not erase the deadline.
  it.each([{}, { deadline: undefined, signal: undefined }])(
    'through context.dsql: the Lambda deadline bounds the transaction (options %o)',
    async (options) => {
      const db = make();
      const handler = withDsql(
        async (_event: unknown, context) =>
          retryTransaction(
            db,
            async (tx) => {
              await tx.execute(sql`SELECT pg_sleep(0.4)`);
              return 'done';
            },
            { dsql: context.dsql, ...options },
          ),
        { pool: env.pool, deadlineMarginMs: 500 },
      );
      // 600 ms left, 500 kept free: the transaction's deadline is 100 ms away, its statement takes 400.
      const err = await handler({}, lambdaContext(600)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OccRetryExhaustedError);
      expect((err as OccRetryExhaustedError).reason).toBe('deadline');
      await expect(handler({}, lambdaContext(30_000))).resolves.toBe('done');
    },
  );
});

const migrationsFolder = fileURLToPath(new URL('../fixtures/drizzle-migrations', import.meta.url));

describe('migrate (Drizzle)', () => {
  let m: OrmEndpoint;
  beforeEach(async () => {
    m = await startOrmEndpoint('orm_drizzle_migrate');
  });
  afterEach(() => m?.stop());

  const tables = async () =>
    (
      await m.pool.query<{ name: string }>(
        "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
      )
    ).rows.map((r) => r.name);

  it("applies drizzle-kit's SQL (tables, a foreign key, an index) one statement per transaction; a second run does nothing", async () => {
    const db = createDrizzle({ client: m.pool });
    const seen: MigrationStatementInfo[] = [];
    const result = await migrate(db, { migrationsFolder, onStatement: (s) => seen.push(s) });
    expect(result).toEqual({ applied: ['0000_author_book', '0001_book_published'] });
    expect(seen.map((s) => [s.migration, s.index, s.count])).toEqual([
      ['0000_author_book', 0, 4],
      ['0000_author_book', 1, 4],
      ['0000_author_book', 2, 4],
      ['0000_author_book', 3, 4],
      ['0001_book_published', 0, 1],
    ]);
    expect(seen[3]!.sql).toMatch(/^CREATE INDEX ASYNC "book_author_idx"/);
    const job = await m.pool.query('SELECT status FROM sys.jobs WHERE job_id = $1', [seen[3]!.jobId]);
    expect(job.rows).toEqual([{ status: 'completed' }]);
    expect(await tables()).toEqual(['author', 'book', 'dsql_migrations']);
    await expect(
      m.pool.query(
        "INSERT INTO book (id, author_id, title) VALUES (gen_random_uuid(), gen_random_uuid(), 'x')",
      ),
    ).rejects.toMatchObject({ code: '23503' });
    await expect(migrate(db, { migrationsFolder })).resolves.toEqual({ applied: [] });
  });

  it("Drizzle's own migrate() is refused by the endpoint (serial bookkeeping key, one transaction for everything)", async () => {
    const err = await drizzleMigrate(drizzle({ client: m.pool }), { migrationsFolder }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    const cause = (err as Error).cause ?? err;
    expect(cause).toMatchObject({ code: '42704', message: 'type "serial" does not exist' });
    expect(await tables()).toEqual([]);
  });

  it('resumes a half-applied migration from the statement it stopped at', async () => {
    const db = createDrizzle({ client: m.pool });
    const crash = new Error('process died');
    await expect(
      migrate(db, {
        migrationsFolder,
        onStatement: (s) => {
          if (s.index === 1) throw crash;
        },
      }),
    ).rejects.toBe(crash);
    const seen: MigrationStatementInfo[] = [];
    const result = await migrate(db, { migrationsFolder, onStatement: (s) => seen.push(s) });
    expect(result).toEqual({
      applied: ['0000_author_book', '0001_book_published'],
      resumed: { migration: '0000_author_book', statement: 2 },
    });
    expect(seen.map((s) => s.index)).toEqual([2, 3, 0]);
    expect(await tables()).toEqual(['author', 'book', 'dsql_migrations']);
  });
});

describe('retryTransaction (Drizzle): errors of the callback', () => {
  it('rethrows an error of the callback unchanged, not retried, with nothing committed', async () => {
    const db = make();
    const boom = new Error('boom');
    let calls = 0;
    await expect(
      retryTransaction(db, async (tx) => {
        calls++;
        await tx.insert(note).values({ id: 10, bodyText: 'never' });
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(calls).toBe(1);
    expect((await env.pool.query('SELECT * FROM note WHERE id = 10')).rows).toEqual([]);
  });
});

/** A drizzle-kit-shaped folder (journal and one SQL file per tag) in a temporary directory. */
function drizzleFolder(migrations: Record<string, string[]>): string {
  const dir = mkdtempSync(join(tmpdir(), 'drizzle-migrations-'));
  mkdirSync(join(dir, 'meta'));
  const tags = Object.keys(migrations);
  writeFileSync(
    join(dir, 'meta/_journal.json'),
    JSON.stringify({
      version: '7',
      dialect: 'postgresql',
      entries: tags.map((tag, idx) => ({
        idx,
        version: '7',
        when: 1764633600000 + idx,
        tag,
        breakpoints: true,
      })),
    }),
  );
  for (const tag of tags)
    writeFileSync(join(dir, `${tag}.sql`), migrations[tag]!.join('\n--> statement-breakpoint\n'));
  return dir;
}

describe('migrate (Drizzle): data statements and concurrent runners', () => {
  let m: OrmEndpoint;
  beforeEach(async () => {
    m = await startOrmEndpoint('orm_drizzle_attack');
  });
  afterEach(() => m?.stop());

  const folder = () =>
    drizzleFolder({
      '0000_counter': ['CREATE TABLE "counter" ("id" integer PRIMARY KEY, "n" integer NOT NULL);'],
      '0001_seed': [
        'INSERT INTO "counter" ("id", "n") VALUES (1, 1);',
        'UPDATE "counter" SET "n" = "n" + 10 WHERE "id" = 1;',
        'CREATE INDEX "counter_n_idx" ON "counter" USING btree ("n");',
      ],
    });

  it('a data statement whose bookkeeping was lost is not applied twice on resume', async () => {
    const db = createDrizzle({ client: m.pool });
    const migrationsFolder = folder();
    const first = await migrate(db, {
      migrationsFolder,
      onStatement: (s) => {
        if (s.migration === '0001_seed' && s.index === 0)
          m.endpoint.faults.dropOnNextCommit({ how: 'fin', afterCommit: false });
      },
    }).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(Error);
    const seen: MigrationStatementInfo[] = [];
    await migrate(db, { migrationsFolder, onStatement: (s) => seen.push(s) });
    expect(seen.map((s) => [s.migration, s.index])).toEqual([
      ['0001_seed', 1],
      ['0001_seed', 2],
    ]);
    expect(seen[1]!.sql).toMatch(/^CREATE INDEX ASYNC "counter_n_idx"/);
    expect((await m.pool.query('SELECT n FROM counter')).rows).toEqual([{ n: 11 }]);
  });

  it('two runners at once on an empty database: every failure is a MigrationError, the schema applied once', async () => {
    const db = createDrizzle({ client: m.pool });
    const migrationsFolder = folder();
    const runs = await Promise.allSettled([
      migrate(db, { migrationsFolder }),
      migrate(db, { migrationsFolder }),
      migrate(db, { migrationsFolder }),
    ]);
    for (const r of runs) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(MigrationError);
    await migrate(db, { migrationsFolder });
    await expect(migrate(db, { migrationsFolder })).resolves.toEqual({ applied: [] });
    expect((await m.pool.query('SELECT n FROM counter')).rows).toEqual([{ n: 11 }]);
  });
});
