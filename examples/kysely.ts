/**
 * Kysely on the library's pool: `createPool()` returns a `pg.Pool`, which is what Kysely's
 * `PostgresDialect` takes. Every connection Kysely opens signs in with a cached IAM token and goes
 * through the pool's freeze-safe checkout.
 *
 *   DSQL_ENDPOINT=<id>.dsql.<region>.on.aws node --import tsx examples/kysely.ts
 *
 * Kysely's `db.transaction()` does not retry OCC conflicts; for that, run the transaction with
 * `withRetry` (or an OCC-aware adapter) instead.
 */
import { createPool } from 'dsql-lambda';
import { type Generated, Kysely, PostgresDialect, sql } from 'kysely';

interface Database {
  books: { id: Generated<string>; title: string; year: number };
}

const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: createPool() }) });

try {
  // DSQL: UUID keys (no sequences); DDL on its own.
  await sql`CREATE TABLE IF NOT EXISTS books (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), title TEXT NOT NULL, year INT NOT NULL)`.execute(
    db,
  );
  const title = `Kysely on DSQL ${Date.now()}`;
  const inserted = await db
    .insertInto('books')
    .values({ title, year: 2026 })
    .returning(['id', 'title'])
    .executeTakeFirstOrThrow();
  const found = await db
    .selectFrom('books')
    .select(['title', 'year'])
    .where('id', '=', inserted.id)
    .executeTakeFirst();
  console.log(`kysely: inserted ${inserted.id}, read back "${found?.title}" (${found?.year})`);
  await db.deleteFrom('books').where('id', '=', inserted.id).execute();
} finally {
  await db.destroy(); // ends the pool
}
