/**
 * vitest globalSetup: picks the PostgreSQL every test's local endpoint relays to, once per run,
 * and hands it to the workers (and the processes tests start) as DSQL_LOCAL_UPSTREAM:
 * 1. DSQL_LOCAL_UPSTREAM if already set;
 * 2. else the machine's server on 127.0.0.1:5432 if it answers as `postgres` (CI installs one);
 * 3. else one embedded PostgreSQL for the whole run (a fresh machine with nothing but Node).
 */
import pg from 'pg';
import { type EmbeddedPostgres, startEmbeddedPostgres } from '../../packages/dsql-local/src/embedded.js';

const MACHINE = 'postgresql://postgres@127.0.0.1:5432/dsql_local';

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({
    connectionString: url.replace(/\/dsql_local$/, '/postgres'),
    connectionTimeoutMillis: 3000,
  });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

let embedded: EmbeddedPostgres | undefined;

export async function setup(): Promise<void> {
  if (process.env.DSQL_LOCAL_UPSTREAM) return;
  if (await answers(MACHINE)) {
    process.env.DSQL_LOCAL_UPSTREAM = MACHINE;
    return;
  }
  embedded = await startEmbeddedPostgres();
  process.env.DSQL_LOCAL_UPSTREAM = embedded.url;
  const shown = new URL(embedded.url);
  shown.password = '';
  console.log(`tests use an embedded PostgreSQL at ${shown.href} (nothing answered on 127.0.0.1:5432)`);
}

export async function teardown(): Promise<void> {
  await embedded?.stop();
}
