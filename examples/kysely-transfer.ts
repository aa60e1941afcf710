/**
 * Kysely in a Lambda handler: a transfer in one OCC-retried Kysely transaction. The callback gets
 * Kysely's own `Transaction<Database>`; a conflict (40001, OC000/OC001) re-runs it on a new
 * connection with backoff, and `dsql: context.dsql` stops retrying before the Lambda deadline.
 * The Kysely instance is made once per process, on the pool `context.dsql` uses.
 */
import { withDsql } from 'dsql-lambda';
import { createKysely, type DsqlKysely, retryTransaction } from 'dsql-lambda/kysely';
import { sql } from 'kysely';

interface Database {
  accounts: { id: string; balance: string };
  transfers: { id: string; src: string; dst: string; amount: number };
}

interface TransferEvent {
  transferId: string;
  from: string;
  to: string;
  amount: number;
}

let db: DsqlKysely<Database> | undefined;

export const handler = withDsql(async (event: TransferEvent, context) => {
  db ??= createKysely<Database>({ pool: context.dsql.pool });
  const fromBalance = await retryTransaction(
    db,
    async (trx) => {
      // The transfer id makes the effect idempotent even if a caller retries the invocation.
      const seen = await trx
        .selectFrom('transfers')
        .select('id')
        .where('id', '=', event.transferId)
        .executeTakeFirst();
      if (seen) return undefined;
      const debit = await trx
        .updateTable('accounts')
        .set({ balance: sql`balance - ${event.amount}` })
        .where('id', '=', event.from)
        .returning('balance')
        .executeTakeFirstOrThrow();
      await trx
        .updateTable('accounts')
        .set({ balance: sql`balance + ${event.amount}` })
        .where('id', '=', event.to)
        .execute();
      await trx
        .insertInto('transfers')
        .values({ id: event.transferId, src: event.from, dst: event.to, amount: event.amount })
        .execute();
      return Number(debit.balance);
    },
    { dsql: context.dsql },
  );
  // Side effects (a receipt email, an event) go here, after the commit: the callback may run twice.
  return { transferId: event.transferId, applied: fromBalance !== undefined, fromBalance };
});
