/**
 * OCC retry. DSQL never blocks one transaction on another: when two change the same row, the
 * first COMMIT wins and the other fails with SQLSTATE 40001 (OC000). `withRetry` runs the
 * callback in BEGIN … COMMIT and, after such a conflict, again in a new transaction with jittered
 * backoff, so the callback must be safe to run more than once (database work only).
 * `execWithRetry` does the same for one statement outside a transaction.
 *
 *   DSQL_ENDPOINT=<id>.dsql.<region>.on.aws node --import tsx examples/occ-retry.ts
 */
import { createPool, execWithRetry, isOccError, OccRetryExhaustedError, withRetry } from 'dsql-lambda';

const pool = createPool({ max: 8 });

try {
  // DDL can meet a concurrent schema change (OC001): retried the same way.
  await execWithRetry(
    pool,
    'CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)',
  );
  await execWithRetry(
    pool,
    "INSERT INTO counters (name, value) VALUES ('visits', 0) ON CONFLICT (name) DO UPDATE SET value = 0",
  );

  // Eight increments of one row at the same time: they conflict, and each is retried until it commits.
  let retries = 0;
  const increments = 8;
  await Promise.all(
    Array.from({ length: increments }, () =>
      withRetry(
        pool,
        async (tx) => {
          const { rows } = await tx.query<{ value: string }>(
            "SELECT value FROM counters WHERE name = 'visits'",
          );
          await new Promise((r) => setTimeout(r, 20)); // widen the window, so that they really overlap
          await tx.query("UPDATE counters SET value = $1 WHERE name = 'visits'", [
            Number(rows[0]!.value) + 1,
          ]);
        },
        { maxAttempts: 20, onRetry: () => void retries++ },
      ),
    ),
  );
  const { rows } = await pool.query<{ value: string }>("SELECT value FROM counters WHERE name = 'visits'");
  console.log(`${increments} concurrent increments -> value ${rows[0]!.value}, after ${retries} OCC retries`);

  // Giving up: with one attempt, a conflict surfaces as OccRetryExhaustedError (its cause is the 40001).
  try {
    await Promise.all(
      [1, 2].map(() =>
        withRetry(
          pool,
          async (tx) => {
            await tx.query("UPDATE counters SET value = value + 1 WHERE name = 'visits'");
            await new Promise((r) => setTimeout(r, 50));
          },
          { maxAttempts: 1 },
        ),
      ),
    );
    console.log('no conflict this time');
  } catch (err) {
    if (!(err instanceof OccRetryExhaustedError)) throw err;
    console.log(`gave up after ${err.attempts} attempt(s): OCC conflict = ${isOccError(err.cause)}`);
  }
} finally {
  await pool.end();
}
