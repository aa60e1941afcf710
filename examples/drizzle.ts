/**
 * Drizzle on the library's pool: `drizzle({ client: pool })` with the `pg.Pool` from
 * `createPool()`. Every connection signs in with a cached IAM token and goes through the pool's
 * freeze-safe checkout.
 *
 *   DSQL_ENDPOINT=<id>.dsql.<region>.on.aws node --import tsx examples/drizzle.ts
 *
 * Drizzle's `db.transaction()` does not retry OCC conflicts; for that, run the transaction with
 * `withRetry` (or an OCC-aware adapter) instead.
 */

import { eq, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/node-postgres';
import { integer, pgTable, text, uuid } from 'drizzle-orm/pg-core';
import { createPool } from 'dsql-lambda';

const notes = pgTable('notes', {
  id: uuid('id').primaryKey().defaultRandom(), // DSQL: UUID keys, no serial
  body: text('body').notNull(),
  stars: integer('stars').notNull().default(0),
});

const pool = createPool();
const db = drizzle({ client: pool });

try {
  await db.execute(
    sql`CREATE TABLE IF NOT EXISTS notes (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), body TEXT NOT NULL, stars INT NOT NULL DEFAULT 0)`,
  );
  const [note] = await db
    .insert(notes)
    .values({ body: `Drizzle on DSQL ${Date.now()}` })
    .returning();
  await db
    .update(notes)
    .set({ stars: sql`${notes.stars} + 1` })
    .where(eq(notes.id, note!.id));
  const [read] = await db.select().from(notes).where(eq(notes.id, note!.id));
  console.log(`drizzle: inserted ${note!.id}, read back "${read?.body}" with ${read?.stars} star(s)`);
  await db.delete(notes).where(eq(notes.id, note!.id));
} finally {
  await pool.end();
}
