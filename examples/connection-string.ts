/**
 * Connection strings: `postgres://`, `postgresql://` or `dsql://`, with the user, host, port and
 * database, and the query parameters `region`, `profile`, `tokenDurationSecs` (and
 * `sslnegotiation`, `hostaddr`, `application_name`). There is never a password: DSQL signs in
 * with IAM tokens, which the library signs for every new connection.
 *
 *   DSQL_ENDPOINT=<id>.dsql.<region>.on.aws node --import tsx examples/connection-string.ts
 */
import { connect, createPool, DsqlConfigError } from 'dsql-lambda';

const host = process.env.DSQL_ENDPOINT ?? 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws';
const port = process.env.PGPORT ?? '5432';

// A pool from a URL. The region comes from the host name (or ?region= for other names).
const pool = createPool(`postgres://admin@${host}:${port}/postgres?tokenDurationSecs=3600`);
try {
  const { rows } = await pool.query<{ user: string }>('SELECT current_user AS user');
  console.log(`pool from a postgres:// URL: connected as ${rows[0]!.user}`);
} finally {
  await pool.end();
}

// One client (a pg.Client), from a dsql:// URL.
const client = await connect(`dsql://admin@${host}:${port}/postgres?application_name=example`);
try {
  const { rows } = await client.query<{ app: string }>("SELECT current_setting('application_name') AS app");
  console.log(`client from a dsql:// URL: application_name ${rows[0]!.app}`);
} finally {
  await client.end();
}

// Mistakes are caught when the pool is made, without I/O, naming the field and never echoing a secret.
try {
  createPool(`postgres://admin:secret@${host}/postgres`);
} catch (err) {
  if (!(err instanceof DsqlConfigError)) throw err;
  console.log(`refused: ${err.message}`);
}
