/**
 * The demo's freeze subject, with dsql-lambda: a module-scoped pool and one statement per
 * invocation. It returns the pool's checkout counters, so the demo can tell what the pool did.
 */
import { createPool } from 'dsql-lambda';

const pool = createPool();

export const handler = async () => {
  const { rows } = await pool.query<{ backend: number }>('SELECT pg_backend_pid() AS backend');
  return { backend: rows[0]!.backend, stats: pool.checkoutStats() };
};
