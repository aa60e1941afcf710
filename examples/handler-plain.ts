/**
 * The smallest handler: a module-scoped pool, nothing else. `lambdaPool()` does no I/O here; the
 * first query opens the first connection, and later invocations reuse it (checked with the wall
 * clock after a freeze, so a connection the server closed while Lambda slept is replaced before
 * your statement is sent).
 */
import { lambdaPool } from 'dsql-lambda';

const pool = lambdaPool();

export const handler = async (): Promise<{ now: string }> => {
  const { rows } = await pool.query<{ now: Date }>('SELECT now() AS now');
  return { now: rows[0]!.now.toISOString() };
};
