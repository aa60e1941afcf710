/**
 * Type-level tests for dsql-lambda/kysely and dsql-lambda/drizzle: the retried transaction's
 * callback receives the ORM's own transaction type, results keep their row types, no cast is
 * needed (context.dsql included), and only instances made by the library are accepted.
 */

import type { ExtractTablesWithRelations } from 'drizzle-orm';
import { eq } from 'drizzle-orm';
import { drizzle, type NodePgQueryResultHKT } from 'drizzle-orm/node-postgres';
import { integer, type PgTransaction, pgTable, text } from 'drizzle-orm/pg-core';
import { type Generated, Kysely, PostgresDialect, type Transaction } from 'kysely';
import type pg from 'pg';
import { describe, expectTypeOf, it } from 'vitest';
import * as drizzleOrm from '../../src/drizzle.js';
import { createDrizzle, type DrizzleTransaction, type DsqlDrizzle } from '../../src/drizzle.js';
import * as kyselyOrm from '../../src/kysely.js';
import { createKysely, type DsqlKysely, type MigrateResult } from '../../src/kysely.js';
import { withDsql } from '../../src/lambda.js';

declare const pool: pg.Pool;

interface Database {
  person: { id: Generated<number>; name: string; nickname: string | null };
}

const person = pgTable('person', { id: integer().primaryKey(), name: text().notNull(), nickname: text() });
const schema = { person };

describe('dsql-lambda/kysely types', () => {
  const db = createKysely<Database>({ pool });

  it('createKysely gives a Kysely<DB>, branded', () => {
    expectTypeOf(db).toExtend<Kysely<Database>>();
    expectTypeOf(db).toEqualTypeOf<DsqlKysely<Database>>();
  });

  it("the callback receives Kysely's Transaction<DB>; the result keeps its row type", async () => {
    const row = await kyselyOrm.retryTransaction(db, async (trx) => {
      expectTypeOf(trx).toEqualTypeOf<Transaction<Database>>();
      return trx
        .selectFrom('person')
        .select(['id', 'nickname'])
        .where('name', '=', 'a')
        .executeTakeFirstOrThrow();
    });
    expectTypeOf(row).toEqualTypeOf<{ id: number; nickname: string | null }>();
  });

  it('rejects unknown tables and columns inside the callback', () => {
    kyselyOrm.retryTransaction(db, async (trx) => {
      // @ts-expect-error: no such table
      await trx.selectFrom('nope').selectAll().execute();
      // @ts-expect-error: no such column
      await trx.selectFrom('person').select('age').execute();
    });
  });

  it('takes context.dsql and the retry options, and refuses a plain Kysely', () => {
    withDsql(async (_e: unknown, context) => {
      const n = await kyselyOrm.retryTransaction(db, async () => 1, { dsql: context.dsql, maxAttempts: 3 });
      expectTypeOf(n).toBeNumber();
      return n;
    });
    const plain = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
    // @ts-expect-error: only instances from createKysely()
    kyselyOrm.retryTransaction(plain, async () => 1);
    // @ts-expect-error: withSchema() returns a plain Kysely
    kyselyOrm.retryTransaction(db.withSchema('s'), async () => 1);
    // @ts-expect-error: maxAttempts is a number
    kyselyOrm.retryTransaction(db, async () => 1, { maxAttempts: '3' });
  });

  it('migrate returns a MigrateResult', () => {
    expectTypeOf(kyselyOrm.migrate(db, {})).resolves.toEqualTypeOf<MigrateResult>();
  });
});

describe('dsql-lambda/drizzle types', () => {
  const db = createDrizzle({ client: pool, schema });

  it('createDrizzle gives the node-postgres database, branded, with its pool', () => {
    expectTypeOf(db).toEqualTypeOf<DsqlDrizzle<typeof schema>>();
    expectTypeOf(db.$client).toEqualTypeOf<pg.Pool>();
  });

  it("the callback receives the transaction type Drizzle's own db.transaction() gives", async () => {
    type Own = Parameters<Parameters<typeof db.transaction>[0]>[0];
    await drizzleOrm.retryTransaction(db, async (tx) => {
      expectTypeOf(tx).toEqualTypeOf<Own>();
      expectTypeOf(tx).toEqualTypeOf<
        PgTransaction<NodePgQueryResultHKT, typeof schema, ExtractTablesWithRelations<typeof schema>>
      >();
      expectTypeOf(tx).toEqualTypeOf<DrizzleTransaction<typeof schema>>();
    });
  });

  it('results keep their row types (query builder and relational queries)', async () => {
    const rows = await drizzleOrm.retryTransaction(db, async (tx) =>
      tx.select({ id: person.id, nickname: person.nickname }).from(person).where(eq(person.name, 'a')),
    );
    expectTypeOf(rows).toEqualTypeOf<{ id: number; nickname: string | null }[]>();
    const found = await drizzleOrm.retryTransaction(db, async (tx) => tx.query.person.findFirst());
    expectTypeOf(found).toEqualTypeOf<{ id: number; name: string; nickname: string | null } | undefined>();
  });

  it('takes context.dsql and the retry options, and refuses a plain drizzle()', () => {
    withDsql(async (_e: unknown, context) => {
      const n = await drizzleOrm.retryTransaction(db, async () => 'x', { dsql: context.dsql, deadline: 1 });
      expectTypeOf(n).toBeString();
      return n;
    });
    const plain = drizzle({ client: pool, schema });
    // @ts-expect-error: only databases from createDrizzle()
    drizzleOrm.retryTransaction(plain, async () => 1);
    // @ts-expect-error: migrationsFolder is required
    drizzleOrm.migrate(db, {});
  });
});
