/**
 * The demo's freeze subject without dsql-lambda: a bare `pg.Pool`, as many Lambda functions
 * have it, with the AWS SDK's signer giving a token per new connection. It does have an `'error'`
 * listener: without one, an idle connection the server closes crashes the whole process.
 */
import { DsqlSigner } from '@aws-sdk/dsql-signer';
import pg from 'pg';

const host = process.env.DSQL_ENDPOINT!;
const signer = new DsqlSigner({ hostname: host, region: process.env.AWS_REGION! });
const pool = new pg.Pool({
  host: process.env.DSQL_HOSTADDR ?? host, // the local endpoint's address; on AWS, the host itself
  port: Number(process.env.PGPORT ?? 5432),
  user: 'admin',
  database: 'postgres',
  ssl: { servername: host }, // verify-full against the CA in NODE_EXTRA_CA_CERTS
  password: () => signer.getDbConnectAdminAuthToken(),
  max: 4,
});
pool.on('error', () => {}); // a dropped idle connection: pg-pool has removed it already

export const handler = async () => {
  const { rows } = await pool.query<{ backend: number }>('SELECT pg_backend_pid() AS backend');
  return { backend: rows[0]!.backend };
};
