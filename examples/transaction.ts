/**
 * A transaction by hand: BEGIN, statements, COMMIT, and ROLLBACK when something fails, on one
 * checked-out client. This is what `withRetry` does for you (plus retrying on OCC conflicts, see
 * occ-retry.ts); write it by hand only when you need the client between statements.
 *
 *   DSQL_ENDPOINT=<id>.dsql.<region>.on.aws node --import tsx examples/transaction.ts
 */
import { createPool } from 'dsql-lambda';

const pool = createPool();

/** Moves `amount` from one wallet to another in one transaction; throws (and rolls back) if short. */
async function move(from: string, to: string, amount: number): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const debit = await client.query(
      'UPDATE wallets SET balance = balance - $2 WHERE id = $1 AND balance >= $2',
      [from, amount],
    );
    if (debit.rowCount === 0) throw new Error(`${from} cannot pay ${amount}`);
    await client.query('UPDATE wallets SET balance = balance + $2 WHERE id = $1', [to, amount]);
    await client.query('COMMIT'); // DSQL checks for conflicts here: a 40001 error means nothing was written
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {}); // the connection may be the problem: release() below decides
    throw err;
  } finally {
    client.release();
  }
}

try {
  // DSQL: a DDL statement runs in a transaction of its own, never together with DML.
  await pool.query('CREATE TABLE IF NOT EXISTS wallets (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)');
  await pool.query(
    "INSERT INTO wallets (id, balance) VALUES ('ada', 100), ('grace', 0) ON CONFLICT (id) DO UPDATE SET balance = excluded.balance",
  );

  await move('ada', 'grace', 30);
  console.log('committed: ada paid grace 30');
  try {
    await move('grace', 'ada', 1_000);
  } catch (err) {
    console.log(`rolled back: ${(err as Error).message}`);
  }
  const { rows } = await pool.query<{ id: string; balance: string }>(
    'SELECT id, balance FROM wallets ORDER BY id',
  );
  console.log(`balances: ${rows.map((r) => `${r.id}=${r.balance}`).join(', ')}`);
} finally {
  await pool.end();
}
