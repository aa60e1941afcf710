/**
 * Drizzle in a middy handler: a transfer in one OCC-retried Drizzle transaction. The callback gets
 * the transaction object Drizzle's own `db.transaction()` would give; a conflict (40001,
 * OC000/OC001) re-runs it on a new connection with backoff, and `dsql: context.dsql` stops
 * retrying before the Lambda deadline. The database is made once per process, on the pool
 * `context.dsql` uses.
 */
import middy from '@middy/core';
import { eq, sql } from 'drizzle-orm';
import { bigint, integer, pgTable, text, uuid } from 'drizzle-orm/pg-core';
import { createDrizzle, type DsqlDrizzle, retryTransaction } from 'dsql-lambda/drizzle';
import { dsql } from 'dsql-lambda/middy';

const accounts = pgTable('accounts', {
  id: text().primaryKey(),
  owner: text().notNull(),
  balance: bigint({ mode: 'number' }).notNull(),
});
const transfers = pgTable('transfers', {
  id: uuid().primaryKey(),
  src: text().notNull(),
  dst: text().notNull(),
  amount: integer().notNull(),
});
const schema = { accounts, transfers };

interface TransferEvent {
  transferId: string;
  from: string;
  to: string;
  amount: number;
}

let db: DsqlDrizzle<typeof schema> | undefined;

export const handler = middy<TransferEvent>()
  .use(dsql())
  .handler(async (event, context) => {
    db ??= createDrizzle({ client: context.dsql.pool, schema });
    const fromBalance = await retryTransaction(
      db,
      async (tx) => {
        // The transfer id makes the effect idempotent even if a caller retries the invocation.
        if (await tx.query.transfers.findFirst({ where: eq(transfers.id, event.transferId) }))
          return undefined;
        const [debit] = await tx
          .update(accounts)
          .set({ balance: sql`${accounts.balance} - ${event.amount}` })
          .where(eq(accounts.id, event.from))
          .returning({ balance: accounts.balance });
        await tx
          .update(accounts)
          .set({ balance: sql`${accounts.balance} + ${event.amount}` })
          .where(eq(accounts.id, event.to));
        await tx
          .insert(transfers)
          .values({ id: event.transferId, src: event.from, dst: event.to, amount: event.amount });
        return debit?.balance;
      },
      { dsql: context.dsql },
    );
    // Side effects (a receipt email, an event) go here, after the commit: the callback may run twice.
    return { transferId: event.transferId, applied: fromBalance !== undefined, fromBalance };
  });
