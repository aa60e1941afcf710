/**
 * A pool with concurrent queries: the library's pool is a `pg.Pool`, so `pool.query` runs each
 * statement on whichever connection is free, and queries started together run in parallel on up
 * to `max` connections. Every new connection signs in with an IAM token; the token is signed once
 * and reused until shortly before it expires.
 *
 *   DSQL_ENDPOINT=<id>.dsql.<region>.on.aws node --import tsx examples/pool.ts
 */
import { createPool } from 'dsql-lambda';

// Configuration from the environment (DSQL_ENDPOINT, AWS_REGION, credentials). No I/O here.
const pool = createPool({ max: 4 });

try {
  // Eight queries at once on at most four connections: pg-pool queues the rest.
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      pool.query<{ n: number; backend: number }>('SELECT $1::int AS n, pg_backend_pid() AS backend', [i]),
    ),
  );
  const backends = new Set(results.map((r) => r.rows[0]!.backend));
  console.log(
    `8 queries answered in ${Math.round(performance.now() - started)} ms on ${backends.size} connection(s) ` +
      `(pool max 4; open now: ${pool.totalCount}, idle: ${pool.idleCount})`,
  );
  const { rows } = await pool.query<{ now: Date; version: string }>(
    'SELECT now() AS now, version() AS version',
  );
  console.log(
    `server time ${rows[0]!.now.toISOString()}; ${rows[0]!.version.split(' ').slice(0, 2).join(' ')}`,
  );
} finally {
  // A script ends its pool; a Lambda handler never does (the pool outlives the invocation).
  await pool.end();
}
