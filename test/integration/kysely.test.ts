/**
 * dsql-lambda/kysely through the local endpoint: retried transactions in Kysely's own
 * `Transaction<DB>` (bank invariant under real conflicts, withRetry's guarantees), and migrations
 * applied one statement per transaction, resumable.
 */
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CamelCasePlugin,
  type ColumnType,
  Kysely,
  type Migration,
  Migrator,
  PostgresDialect,
  sql,
  type Transaction,
} from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { CommitOutcomeUnknownError, OccRetryExhaustedError } from '../../src/errors.js';
import {
  createKysely,
  MigrationError,
  type MigrationStatementInfo,
  migrate,
  retryTransaction,
} from '../../src/kysely.js';
import { withDsql } from '../../src/lambda.js';
import { testUpstream } from '../helpers/endpoint.js';
import { lambdaContext } from '../helpers/lambda-context.js';
import { createBankTables, type OrmEndpoint, runBank, startOrmEndpoint } from '../helpers/orm.js';

interface Database {
  account: { id: number; balance: ColumnType<string, number, never> };
  transfer: { id: string; src: number; dst: number; amount: number };
  note: { id: number; bodyText: string };
}

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const ACCOUNTS = 3;
const INITIAL = 10_000;
let env: OrmEndpoint;
/** The tables' columns are snake_case, Database's camelCase. */
const camel = [new CamelCasePlugin()];

beforeAll(async () => {
  env = await startOrmEndpoint('orm_kysely');
  await createBankTables(env.pool, ACCOUNTS, INITIAL);
  await env.pool.query('CREATE TABLE note (id integer PRIMARY KEY, body_text text NOT NULL)');
});
afterAll(() => env?.stop());

describe('retryTransaction (Kysely)', () => {
  it('bank transfers under contention keep the invariant and report every commit once', async () => {
    const pool = env.newPool(8);
    const db = createKysely<Database>({ pool, plugins: camel });
    const report = await runBank(
      pool,
      { workers: 8, perWorker: 15, accounts: ACCOUNTS, initial: INITIAL },
      (t, onRetry) =>
        retryTransaction(
          db,
          async (trx) => {
            await trx
              .selectFrom('account')
              .select(['id', 'balance'])
              .where('id', 'in', [t.src, t.dst])
              .execute();
            await sql`SELECT pg_sleep(0.002)`.execute(trx);
            for (const id of [Math.min(t.src, t.dst), Math.max(t.src, t.dst)]) {
              const delta = id === t.src ? -t.amount : t.amount;
              await trx
                .updateTable('account')
                .set({ balance: sql`balance + ${delta}` })
                .where('id', '=', id)
                .execute();
            }
            await trx.insertInto('transfer').values(t).execute();
          },
          { maxAttempts: 60, baseDelayMs: 2, maxDelayMs: 40, onRetry },
        ),
    );
    expect(report.committed.size + report.failed.size).toBe(120);
  });

  it("hands the callback Kysely's own Transaction, with the db's plugins, and returns its typed result", async () => {
    const db = createKysely<Database>({ pool: env.pool, plugins: camel });
    const row = await retryTransaction(db, async (trx) => {
      expect(trx.isTransaction).toBe(true);
      await trx.insertInto('note').values({ id: 1, bodyText: 'hello' }).execute();
      return trx.selectFrom('note').select(['id', 'bodyText']).where('id', '=', 1).executeTakeFirstOrThrow();
    });
    expect(row).toEqual({ id: 1, bodyText: 'hello' });
    expect((await env.pool.query('SELECT body_text FROM note WHERE id = 1')).rows).toEqual([
      { body_text: 'hello' },
    ]);
  });

  it('retries a conflict at COMMIT on a new attempt and rolls the failed one back', async () => {
    const db = createKysely<Database>({ pool: env.pool, plugins: camel });
    env.endpoint.faults.failNextCommits({ count: 1, code: 'OC000' });
    let calls = 0;
    const codes: string[] = [];
    const id = await retryTransaction(
      db,
      async (trx) => {
        calls++;
        await trx
          .insertInto('note')
          .values({ id: 2, bodyText: `attempt ${calls}` })
          .execute();
        return calls;
      },
      { baseDelayMs: 1, onRetry: ({ code }) => codes.push(code) },
    );
    expect({ id, calls, codes }).toEqual({ id: 2, calls: 2, codes: ['OC000'] });
    expect((await env.pool.query('SELECT body_text FROM note WHERE id = 2')).rows).toEqual([
      { body_text: 'attempt 2' },
    ]);
  });

  it('rethrows an error of the callback unchanged, not retried, with nothing committed', async () => {
    const db = createKysely<Database>({ pool: env.pool, plugins: camel });
    const boom = new Error('boom');
    let calls = 0;
    await expect(
      retryTransaction(db, async (trx) => {
        calls++;
        await trx.insertInto('note').values({ id: 3, bodyText: 'never' }).execute();
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(calls).toBe(1);
    expect((await env.pool.query('SELECT * FROM note WHERE id = 3')).rows).toEqual([]);
  });

  it('never retries a COMMIT whose reply was lost: CommitOutcomeUnknownError, callback run once', async () => {
    const pool = env.newPool(2);
    const db = createKysely<Database>({ pool, plugins: camel });
    env.endpoint.faults.dropOnNextCommit({ how: 'fin', afterCommit: true });
    let calls = 0;
    const err = await retryTransaction(db, async (trx) => {
      calls++;
      await trx.insertInto('note').values({ id: 4, bodyText: 'maybe' }).execute();
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommitOutcomeUnknownError);
    expect(calls).toBe(1);
    // The endpoint let the COMMIT through before dropping the connection: it did commit.
    expect((await env.pool.query('SELECT body_text FROM note WHERE id = 4')).rows).toEqual([
      { body_text: 'maybe' },
    ]);
  });

  it('runs each attempt on one connection: works on a pool of one, every statement on the same session', async () => {
    const pool = env.newPool(1);
    const db = createKysely<Database>({ pool, plugins: camel });
    env.endpoint.faults.failNextCommits({ count: 1 });
    const pids: number[][] = [];
    await retryTransaction(
      db,
      async (trx) => {
        const one = await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(trx);
        const two = await trx
          .selectFrom('account')
          .select(sql<number>`pg_backend_pid()`.as('pid'))
          .limit(1)
          .execute();
        pids.push([one.rows[0]!.pid, two[0]!.pid]);
      },
      { baseDelayMs: 1 },
    );
    expect(pids).toHaveLength(2);
    for (const [a, b] of pids) expect(a).toBe(b);
    expect(pool.totalCount).toBe(1);
  });

  it('an abort while a statement is in flight abandons the attempt, destroys its connection, no retry', async () => {
    const pool = env.newPool(2);
    const db = createKysely<Database>({ pool, plugins: camel });
    const controller = new AbortController();
    let calls = 0;
    const err = await retryTransaction(
      db,
      async (trx) => {
        calls++;
        await trx.insertInto('note').values({ id: 5, bodyText: 'aborted' }).execute();
        const slow = sql`SELECT pg_sleep(5)`.execute(trx);
        controller.abort(new Error('caller gave up'));
        await slow;
      },
      { signal: controller.signal },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    expect((err as OccRetryExhaustedError).reason).toBe('aborted');
    expect(calls).toBe(1);
    expect(pool.totalCount).toBe(0);
    expect((await env.pool.query('SELECT * FROM note WHERE id = 5')).rows).toEqual([]);
  });

  it('a Transaction kept past its attempt refuses to run anything', async () => {
    const db = createKysely<Database>({ pool: env.pool, plugins: camel });
    let leaked: Transaction<Database> | undefined;
    await retryTransaction(db, async (trx) => {
      leaked = trx;
    });
    await expect(leaked!.selectFrom('note').selectAll().execute()).rejects.toThrow();
  });

  it('refuses a Kysely instance it did not make, and a missing callback', async () => {
    const plain = new Kysely<Database>({ dialect: new PostgresDialect({ pool: env.pool }) });
    // @ts-expect-error: only instances made by createKysely are accepted (the type says so too)
    await expect(retryTransaction(plain, async () => {})).rejects.toThrow(/createKysely/);
    const db = createKysely<Database>({ pool: env.pool, plugins: camel });
    await expect(retryTransaction(db, undefined as never)).rejects.toThrow(TypeError);
  });

  // An option set to undefined (as a caller forwarding its own options does) must not erase the deadline.
  it.each([{}, { deadline: undefined, maxAttempts: undefined }])(
    'through context.dsql: the Lambda deadline bounds the transaction (options %o)',
    async (options) => {
      const db = createKysely<Database>({ pool: env.pool, plugins: camel });
      const handler = withDsql(
        async (_event: unknown, context) =>
          retryTransaction(
            db,
            async (trx) => {
              await sql`SELECT pg_sleep(0.4)`.execute(trx);
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
      // With time to spare the same handler commits.
      await expect(handler({}, lambdaContext(30_000))).resolves.toBe('done');
    },
  );
});

/** A small schema: two tables, a foreign key, an index, a later column. */
const schemaMigrations: Record<string, Migration> = {
  '0001_author': {
    async up(db) {
      await db.schema
        .createTable('author')
        .addColumn('id', 'uuid', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .execute();
    },
  },
  '0002_book': {
    async up(db) {
      await db.schema
        .createTable('book')
        .addColumn('id', 'uuid', (c) => c.primaryKey())
        .addColumn('author_id', 'uuid', (c) => c.notNull().references('author.id'))
        .addColumn('title', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('book_author_idx').on('book').column('author_id').execute();
    },
  },
  '0003_book_year': {
    async up(db) {
      await db.schema.alterTable('book').addColumn('published', 'integer').execute();
    },
  },
};

describe('migrate (Kysely)', () => {
  let m: OrmEndpoint;
  beforeEach(async () => {
    m = await startOrmEndpoint('orm_kysely_migrate');
  });
  afterEach(() => m?.stop());

  const tables = async () =>
    (
      await m.pool.query<{ name: string }>(
        "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
      )
    ).rows.map((r) => r.name);

  it('applies tables, a foreign key and an async index, one statement per transaction; a second run does nothing', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    const seen: MigrationStatementInfo[] = [];
    const result = await migrate(db, schemaMigrations, { onStatement: (s) => seen.push(s) });
    expect(result).toEqual({ applied: ['0001_author', '0002_book', '0003_book_year'] });
    expect(seen.map((s) => [s.migration, s.index, s.count])).toEqual([
      ['0001_author', 0, 1],
      ['0002_book', 0, 2],
      ['0002_book', 1, 2],
      ['0003_book_year', 0, 1],
    ]);
    // The index went out as CREATE INDEX ASYNC, and its job was awaited.
    const index = seen[2]!;
    expect(index.sql).toMatch(/^create index async "book_author_idx"/i);
    expect(index.jobId).toEqual(expect.any(String));
    const job = await m.pool.query('SELECT status FROM sys.jobs WHERE job_id = $1', [index.jobId]);
    expect(job.rows).toEqual([{ status: 'completed' }]);
    expect(await tables()).toEqual(['author', 'book', 'dsql_migrations']);
    const idx = await m.pool.query("SELECT indexname FROM pg_indexes WHERE tablename = 'book' ORDER BY 1");
    expect(idx.rows.map((r) => r.indexname)).toContain('book_author_idx');
    // The foreign key holds.
    await expect(
      m.pool.query(
        "INSERT INTO book (id, author_id, title) VALUES (gen_random_uuid(), gen_random_uuid(), 'x')",
      ),
    ).rejects.toMatchObject({ code: '23503' });
    const book = await m.pool.query(
      "SELECT column_name FROM information_schema.columns WHERE table_name = 'book' ORDER BY ordinal_position",
    );
    expect(book.rows.map((r) => r.column_name)).toEqual(['id', 'author_id', 'title', 'published']);
    const rows = await m.pool.query(
      'SELECT name, statements, done, job_id FROM dsql_migrations ORDER BY name',
    );
    expect(rows.rows).toEqual([
      { name: '0001_author', statements: 1, done: 1, job_id: null },
      { name: '0002_book', statements: 2, done: 2, job_id: null },
      { name: '0003_book_year', statements: 1, done: 1, job_id: null },
    ]);

    await expect(migrate(db, schemaMigrations)).resolves.toEqual({ applied: [] });
  });

  it("Kysely's own Migrator is refused by the endpoint (DDL with its bookkeeping in one transaction)", async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    const { error, results } = await new Migrator({
      db,
      provider: { getMigrations: async () => schemaMigrations },
    }).migrateToLatest();
    expect(error).toMatchObject({ code: '0A000', message: expect.stringMatching(/ddl and dml/i) });
    expect(results?.find((r) => r.status === 'Success')).toBeUndefined();
    expect(await tables()).not.toContain('book');
  });

  it('resumes a half-applied migration from the statement it stopped at', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    const crash = new Error('process died');
    const first = migrate(db, schemaMigrations, {
      onStatement: (s) => {
        if (s.migration === '0002_book' && s.index === 0) throw crash;
      },
    });
    await expect(first).rejects.toBe(crash);
    const state = await m.pool.query("SELECT done, statements FROM dsql_migrations WHERE name = '0002_book'");
    expect(state.rows).toEqual([{ done: 1, statements: 2 }]);

    const seen: MigrationStatementInfo[] = [];
    const result = await migrate(db, schemaMigrations, { onStatement: (s) => seen.push(s) });
    expect(result).toEqual({
      applied: ['0002_book', '0003_book_year'],
      resumed: { migration: '0002_book', statement: 1 },
    });
    expect(seen.map((s) => [s.migration, s.index, s.recovered])).toEqual([
      ['0002_book', 1, false],
      ['0003_book_year', 0, false],
    ]);
  });

  it('a statement that committed before its bookkeeping did is found applied on resume', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    // After the table of 0002_book, lose the next bookkeeping COMMIT (the one recording the index's job).
    const first = migrate(db, schemaMigrations, {
      onStatement: (s) => {
        if (s.migration === '0002_book' && s.index === 0)
          m.endpoint.faults.dropOnNextCommit({ how: 'fin', afterCommit: false });
      },
    });
    await expect(first).rejects.toBeInstanceOf(CommitOutcomeUnknownError);
    const seen: MigrationStatementInfo[] = [];
    const result = await migrate(db, schemaMigrations, { onStatement: (s) => seen.push(s) });
    expect(result.resumed).toEqual({ migration: '0002_book', statement: 1 });
    expect(seen.map((s) => [s.migration, s.index, s.recovered])).toEqual([
      ['0002_book', 1, true],
      ['0003_book_year', 0, false],
    ]);
  });

  it('a resumed run waits for the index job recorded before the crash instead of re-running the statement', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    // The COMMIT recording the index's job id goes through, its reply is lost.
    const first = migrate(db, schemaMigrations, {
      onStatement: (s) => {
        if (s.migration === '0002_book' && s.index === 0)
          m.endpoint.faults.dropOnNextCommit({ how: 'fin', afterCommit: true });
      },
    });
    await expect(first).rejects.toBeInstanceOf(CommitOutcomeUnknownError);
    const state = await m.pool.query("SELECT done, job_id FROM dsql_migrations WHERE name = '0002_book'");
    expect(state.rows).toEqual([{ done: 1, job_id: expect.any(String) }]);
    const jobId = state.rows[0].job_id as string;

    // Behind the endpoint's back, the job failed: the resumed run must say so, not re-create the index.
    const upstream = new pg.Client(testUpstream(m.database));
    await upstream.connect();
    try {
      await upstream.query("UPDATE sys.jobs SET status = 'failed' WHERE job_id = $1", [jobId]);
      const err = await migrate(db, schemaMigrations).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(MigrationError);
      expect(err).toMatchObject({ migration: '0002_book', statement: 1 });
      expect((err as Error).message).toContain(`job ${jobId} failed`);
      await upstream.query("UPDATE sys.jobs SET status = 'completed' WHERE job_id = $1", [jobId]);
    } finally {
      await upstream.end();
    }

    const seen: MigrationStatementInfo[] = [];
    await migrate(db, schemaMigrations, { onStatement: (s) => seen.push(s) });
    expect(seen.map((s) => [s.migration, s.index, s.recovered, s.jobId])).toEqual([
      ['0002_book', 1, true, jobId],
      ['0003_book_year', 0, false, undefined],
    ]);
  });

  it('a failing statement stops the run with MigrationError; once fixed, the run continues from it', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    const broken: Record<string, Migration> = {
      ...schemaMigrations,
      '0003_book_year': {
        async up(db) {
          await db.schema.alterTable('book').addColumn('published', 'integer').execute();
          await sql`ALTER TABLE book ADD COLUMN year integer CHECK (year > 0)`.execute(db);
        },
      },
    };
    const err = await migrate(db, broken).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect(err).toMatchObject({ migration: '0003_book_year', statement: 1, cause: { code: '0A000' } });
    const fixed: Record<string, Migration> = {
      ...broken,
      '0003_book_year': {
        async up(db) {
          await db.schema.alterTable('book').addColumn('published', 'integer').execute();
          await db.schema.alterTable('book').addColumn('year', 'integer').execute();
        },
      },
    };
    await expect(migrate(db, fixed)).resolves.toEqual({
      applied: ['0003_book_year'],
      resumed: { migration: '0003_book_year', statement: 1 },
    });
  });

  it('refuses when applied statements changed, or an applied migration is missing', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    await migrate(db, schemaMigrations);
    const changed = {
      ...schemaMigrations,
      '0001_author': {
        async up(db: Kysely<unknown>) {
          await db.schema
            .createTable('author')
            .addColumn('id', 'uuid', (c) => c.primaryKey())
            .execute();
        },
      },
    };
    await expect(migrate(db, changed)).rejects.toThrow(/applied statements of 0001_author changed/);
    const { '0001_author': _, ...missing } = schemaMigrations;
    await expect(migrate(db, missing)).rejects.toThrow(/0001_author is not in the list/);
  });
});

describe('migrate (Kysely): misuse', () => {
  let m: OrmEndpoint;
  beforeEach(async () => {
    m = await startOrmEndpoint('orm_kysely_misuse');
  });
  afterEach(() => m?.stop());

  const table = (name: string): Migration => ({
    async up(db) {
      await db.schema
        .createTable(name)
        .addColumn('id', 'uuid', (c) => c.primaryKey())
        .execute();
    },
  });

  it('refuses to apply a migration before one already recorded', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    await migrate(db, { '0001_a': table('a'), '0003_c': table('c') });
    await expect(
      migrate(db, { '0001_a': table('a'), '0002_b': table('b'), '0003_c': table('c') }),
    ).rejects.toThrow(/0003_c is recorded but 0002_b, before it, is not complete/);
  });

  it('refuses statements with parameters (DDL takes none), before running anything', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    const err = await migrate(db, {
      '0001_seed': {
        async up(db) {
          await sql`INSERT INTO nowhere VALUES (${1})`.execute(db);
        },
      },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect((err as Error).message).toMatch(/parameters/);
    expect(
      (
        await m.pool.query('SELECT count(*)::int AS n FROM pg_tables WHERE tablename = $1', [
          'dsql_migrations',
        ])
      ).rows,
    ).toEqual([{ n: 0 }]);
  });

  it('two runs at once: every failure is a MigrationError, and the schema ends up applied once', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    await migrate(db, {}); // the bookkeeping table exists
    const runs = await Promise.allSettled([migrate(db, schemaMigrations), migrate(db, schemaMigrations)]);
    for (const r of runs) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(MigrationError);
    // Whatever the interleaving, a further run completes the schema and the next has nothing to do.
    await migrate(db, schemaMigrations);
    await expect(migrate(db, schemaMigrations)).resolves.toEqual({ applied: [] });
    const rows = await m.pool.query('SELECT name, done, statements FROM dsql_migrations ORDER BY name');
    expect(rows.rows).toEqual([
      { name: '0001_author', done: 1, statements: 1 },
      { name: '0002_book', done: 2, statements: 2 },
      { name: '0003_book_year', done: 1, statements: 1 },
    ]);
  });
});

describe('migrate (Kysely): crashes, data statements and concurrent runners', () => {
  let m: OrmEndpoint;
  beforeEach(async () => {
    m = await startOrmEndpoint('orm_kysely_attack');
  });
  afterEach(() => m?.stop());

  const seeded: Record<string, Migration> = {
    '0001_counter': {
      async up(db) {
        await sql`CREATE TABLE counter (id integer PRIMARY KEY, n integer NOT NULL)`.execute(db);
      },
    },
    '0002_seed': {
      async up(db) {
        await sql`INSERT INTO counter (id, n) VALUES (1, 1)`.execute(db);
        await sql`UPDATE counter SET n = n + 10 WHERE id = 1`.execute(db);
      },
    },
  };

  it('a data statement whose bookkeeping was lost is not applied twice on resume', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    // After the INSERT is recorded, lose the next COMMIT: the one of the UPDATE's step, before it reaches PostgreSQL.
    const first = await migrate(db, seeded, {
      onStatement: (s) => {
        if (s.migration === '0002_seed' && s.index === 0)
          m.endpoint.faults.dropOnNextCommit({ how: 'fin', afterCommit: false });
      },
    }).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(Error);
    await migrate(db, seeded);
    expect((await m.pool.query('SELECT n FROM counter')).rows).toEqual([{ n: 11 }]);
  });

  it('a data statement whose COMMIT went through but whose reply was lost is found applied, once', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    const first = await migrate(db, seeded, {
      onStatement: (s) => {
        if (s.migration === '0002_seed' && s.index === 0)
          m.endpoint.faults.dropOnNextCommit({ how: 'fin', afterCommit: true });
      },
    }).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(Error);
    await expect(migrate(db, seeded)).resolves.toMatchObject({ applied: expect.any(Array) });
    expect((await m.pool.query('SELECT n FROM counter')).rows).toEqual([{ n: 11 }]);
    await expect(migrate(db, seeded)).resolves.toEqual({ applied: [] });
  });

  it('two runners at once on an empty database: every failure is a MigrationError, the schema applied once', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    const runs = await Promise.allSettled([migrate(db, seeded), migrate(db, seeded), migrate(db, seeded)]);
    for (const r of runs) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(MigrationError);
    await migrate(db, seeded);
    await expect(migrate(db, seeded)).resolves.toEqual({ applied: [] });
    expect((await m.pool.query('SELECT n FROM counter')).rows).toEqual([{ n: 11 }]);
  });

  it('a migration whose first statement fails leaves no record: renamed or removed, the next run applies the rest', async () => {
    const db = createKysely<unknown>({ pool: m.pool });
    const bad: Record<string, Migration> = {
      ...seeded,
      '0003_bad': {
        async up(db) {
          await sql`CREATE TABLE bad (id serial PRIMARY KEY)`.execute(db);
        },
      },
    };
    const err = await migrate(db, bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect(err).toMatchObject({ migration: '0003_bad', statement: 0, cause: { code: '42704' } });
    expect((err as Error).message).toMatch(/0003_bad, statement 1 \(CREATE TABLE bad .*\): type "serial"/);
    const names = await m.pool.query('SELECT name FROM dsql_migrations ORDER BY name');
    expect(names.rows.map((r) => r.name)).toEqual(['0001_counter', '0002_seed']);
    await expect(migrate(db, seeded)).resolves.toEqual({ applied: [] });
  });

  it('resumes after the process is killed (SIGKILL) between statements, at every point', async () => {
    const script = `
      import { sql } from 'kysely';
      import { createPool } from './src/index.ts';
      import { createKysely, migrate } from './src/kysely.ts';
      const killAt = process.argv[1];
      const pool = createPool();
      const db = createKysely({ pool });
      const migrations = {
        '0001_a': { async up(db) {
          await db.schema.createTable('a').addColumn('id', 'uuid', (c) => c.primaryKey()).addColumn('n', 'integer').execute();
          await db.schema.createIndex('a_n').on('a').column('n').execute();
          await sql\`INSERT INTO a (id, n) VALUES (gen_random_uuid(), 1)\`.execute(db);
          await sql\`ALTER TABLE a ADD COLUMN m integer\`.execute(db);
        } },
        '0002_b': { async up(db) { await db.schema.createTable('b').addColumn('id', 'uuid', (c) => c.primaryKey()).execute(); } },
      };
      const result = await migrate(db, migrations, { onStatement: (s) => {
        if (s.migration + ':' + s.index === killAt) process.kill(process.pid, 'SIGKILL');
      } });
      console.log(JSON.stringify(result));
      await pool.end();
    `;
    const node = (killAt: string) =>
      new Promise<{ signal: NodeJS.Signals | null; stdout: string }>((resolve, reject) =>
        execFile(
          process.execPath,
          ['--import', 'tsx', '--input-type=module', '-e', script, killAt],
          { cwd: root, env: { ...process.env, ...m.endpoint.env }, timeout: 60_000 },
          (err, stdout) => {
            if (err && err.signal !== 'SIGKILL') reject(err);
            else resolve({ signal: err?.signal ?? null, stdout });
          },
        ),
      );
    for (const at of ['0001_a:0', '0001_a:1', '0001_a:2'])
      expect((await node(at)).signal, `killed at ${at}`).toBe('SIGKILL');
    const last = await node('none');
    expect(JSON.parse(last.stdout.trim())).toEqual({
      applied: ['0001_a', '0002_b'],
      resumed: { migration: '0001_a', statement: 3 },
    });
    expect((await m.pool.query('SELECT count(*)::int AS n FROM a')).rows).toEqual([{ n: 1 }]);
    const cols = await m.pool.query(
      "SELECT column_name FROM information_schema.columns WHERE table_name = 'a' ORDER BY ordinal_position",
    );
    expect(cols.rows.map((r) => r.column_name)).toEqual(['id', 'n', 'm']);
    const rows = await m.pool.query('SELECT name, done, statements FROM dsql_migrations ORDER BY name');
    expect(rows.rows).toEqual([
      { name: '0001_a', done: 4, statements: 4 },
      { name: '0002_b', done: 1, statements: 1 },
    ]);
  });
});

describe('retryTransaction (Kysely): late and nested', () => {
  it('a deadline reached while waiting for a connection: fn is never called, not even once the connection frees up', async () => {
    const pool = env.newPool(1);
    const db = createKysely<Database>({ pool, plugins: camel });
    const held = await pool.connect();
    let calls = 0;
    const err = await retryTransaction(
      db,
      async () => {
        calls++;
      },
      { deadline: Date.now() + 150 },
    ).catch((e: unknown) => e);
    expect((err as Error).name).toBe('DsqlConnectionError');
    held.release();
    // The checkout granted after the deadline is handed back unused.
    await expect.poll(() => pool.idleCount, { timeout: 20_000 }).toBe(1);
    await (await pool.connect()).release();
    expect(calls).toBe(0);
  });

  it('a nested trx.transaction() is refused before anything is sent; rejected once, nothing committed', async () => {
    const db = createKysely<Database>({ pool: env.pool, plugins: camel });
    let calls = 0;
    const err = await retryTransaction(db, async (trx) => {
      calls++;
      await trx.insertInto('note').values({ id: 20, bodyText: 'outer' }).execute();
      await (trx as unknown as Kysely<Database>).transaction().execute(async () => {});
    }).catch((e: unknown) => e);
    expect(calls).toBe(1);
    expect((err as Error).message).toMatch(/transaction/i);
    expect((await env.pool.query('SELECT id FROM note WHERE id = 20')).rows).toEqual([]);
  });
});
