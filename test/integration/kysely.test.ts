/**
 * dsql-lambda/kysely through the local endpoint: retried transactions in Kysely's own
 * `Transaction<DB>` (bank invariant under real conflicts, withRetry's guarantees), and migrations
 * applied one statement per transaction, resumable.
 */
import { CamelCasePlugin, type ColumnType, Kysely, PostgresDialect, sql, type Transaction } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CommitOutcomeUnknownError, OccRetryExhaustedError } from '../../src/errors.js';
import { createKysely, retryTransaction } from '../../src/kysely.js';
import { withDsql } from '../../src/lambda.js';
import { lambdaContext } from '../helpers/lambda-context.js';
import { createBankTables, type OrmEndpoint, runBank, startOrmEndpoint } from '../helpers/orm.js';

interface Database {
  account: { id: number; balance: ColumnType<string, number, never> };
  transfer: { id: string; src: number; dst: number; amount: number };
  note: { id: number; bodyText: string };
}

const ACCOUNTS = 3;
const INITIAL = 10_000;
let env: OrmEndpoint;
/** The tables' columns are snake_case, Database's camelCase. */
const camel = [new CamelCasePlugin()];

beforeAll(async () => {
  env = await startOrmEndpoint('orm_kysely', { occFromContention: true });
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
    expect(report.committed.size).toBe(120);
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
    expect(() => retryTransaction(plain, async () => {})).toThrow(/createKysely/);
    const db = createKysely<Database>({ pool: env.pool, plugins: camel });
    expect(() => retryTransaction(db, undefined as never)).toThrow(TypeError);
  });

  it('through context.dsql: the Lambda deadline bounds the transaction', async () => {
    const db = createKysely<Database>({ pool: env.pool, plugins: camel });
    const handler = withDsql(
      async (_event: unknown, context) =>
        retryTransaction(
          db,
          async (trx) => {
            await sql`SELECT pg_sleep(0.4)`.execute(trx);
            return 'done';
          },
          { dsql: context.dsql },
        ),
      { pool: env.pool, deadlineMarginMs: 500 },
    );
    // 600 ms left, 500 kept free: the transaction's deadline is 100 ms away, its statement takes 400.
    const err = await handler({}, lambdaContext(600)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OccRetryExhaustedError);
    expect((err as OccRetryExhaustedError).reason).toBe('deadline');
    // With time to spare the same handler commits.
    await expect(handler({}, lambdaContext(30_000))).resolves.toBe('done');
  });
});
