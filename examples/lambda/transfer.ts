/**
 * A transfer between two accounts in one OCC-retried transaction, without middy: `withDsql`
 * wraps a plain handler and gives it the same `context.dsql` as the middleware. A conflict
 * (SQLSTATE 40001, OC000/OC001) re-runs the callback on a healthy connection with jittered
 * backoff, stopping before the Lambda deadline. The callback only touches the database, so running
 * it again is safe; anything with outside effects (an email, a payment API) belongs after it.
 */
import { withDsql } from 'dsql-lambda';

/** Invoke it directly: `{"transferId": "t-1", "from": "alice", "to": "bob", "amount": 5}`. */
interface TransferEvent {
  transferId: string;
  from: string;
  to: string;
  amount: number;
}

export const handler = withDsql(async (event: TransferEvent, context) => {
  const balance = await context.dsql.transaction(async (tx) => {
    // The transfer id makes the effect idempotent even if a caller retries the invocation.
    const seen = await tx.query('SELECT 1 FROM transfers WHERE id = $1', [event.transferId]);
    if (seen.rowCount) return undefined;
    const debit = await tx.query<{ balance: string }>(
      'UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1 RETURNING balance',
      [event.amount, event.from],
    );
    // Throwing rolls back and is not retried (only OCC conflicts are).
    if (debit.rowCount === 0) throw new Error(`account ${event.from} is missing or short of funds`);
    const credit = await tx.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [
      event.amount,
      event.to,
    ]);
    if (credit.rowCount === 0) throw new Error(`account ${event.to} is missing`);
    await tx.query('INSERT INTO transfers (id, src, dst, amount) VALUES ($1, $2, $3, $4)', [
      event.transferId,
      event.from,
      event.to,
      event.amount,
    ]);
    return Number(debit.rows[0]?.balance);
  });
  return { transferId: event.transferId, applied: balance !== undefined, fromBalance: balance };
});
