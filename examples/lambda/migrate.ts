/**
 * The schema the example functions use, and the least-privilege database role they connect as.
 * Run it once, as `admin`, from a workstation (not from a function: the functions only have
 * `dsql:DbConnect`):
 *
 *   DSQL_ENDPOINT=<id>.dsql.<region>.on.aws AWS_REGION=<region> \
 *     node --import tsx examples/lambda/migrate.ts --role app \
 *       --iam-role <ItemsApiFunctionRoleArn> --iam-role <QueueWorkerFunctionRoleArn> --iam-role <TransferFunctionRoleArn>
 *
 * (the role ARNs are outputs of the SAM stack). Every statement runs on its own, outside an
 * explicit transaction: DSQL allows one DDL statement per transaction and no DDL mixed with DML.
 * Each is retried on OCC conflicts (OC001: a concurrent schema change), and the whole script can
 * run again: tables use IF NOT EXISTS, an existing role is kept.
 *
 * What it does, in SQL:
 *   CREATE TABLE IF NOT EXISTS items (…), accounts (…), transfers (…), orders (…)
 *   CREATE ROLE app WITH LOGIN
 *   AWS IAM GRANT app TO 'arn:aws:iam::<account>:role/<function role>'   -- per function role
 *   GRANT USAGE ON SCHEMA public TO app
 *   GRANT SELECT, INSERT, UPDATE, DELETE ON items, accounts, transfers, orders TO app
 */
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createPool, execWithRetry } from 'dsql-lambda';
import type pg from 'pg';

/** Tables of the examples: UUID or text keys (DSQL has no sequences), no foreign keys. */
export const TABLES: Readonly<Record<string, string>> = {
  items: `CREATE TABLE IF NOT EXISTS items (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name TEXT NOT NULL,
    price_cents BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
  )`,
  accounts: `CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    balance BIGINT NOT NULL
  )`,
  transfers: `CREATE TABLE IF NOT EXISTS transfers (
    id TEXT PRIMARY KEY,
    src TEXT NOT NULL,
    dst TEXT NOT NULL,
    amount BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
  )`,
  orders: `CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
  )`,
};

/** Options of {@link migrate}. */
export interface MigrateOptions {
  /** Database role the functions connect as (`PGUSER` in template.yaml). Default: none (tables only). */
  role?: string;
  /**
   * IAM role ARNs allowed to sign in as `role` (`AWS IAM GRANT`). Default: none, which is right for
   * the local endpoint (it maps every user to a role of the same name by itself).
   */
  iamRoles?: string[];
}

const ROLE_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
const IAM_ROLE_ARN = /^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@/-]{1,512}$/;

/** Creates the tables and, when `role` is given, the role with its grants. Returns the statements run. */
export async function migrate(pool: pg.Pool, options: MigrateOptions = {}): Promise<string[]> {
  const { role, iamRoles = [] } = options;
  // Identifiers and literals cannot be bind parameters in DDL: validate, then quote.
  if (role !== undefined && !ROLE_NAME.test(role)) {
    throw new Error(`role: ${JSON.stringify(role)} is not a lower-case SQL name (a-z, 0-9, _)`);
  }
  for (const arn of iamRoles) {
    if (!IAM_ROLE_ARN.test(arn)) throw new Error(`iamRoles: ${JSON.stringify(arn)} is not an IAM role ARN`);
  }
  if (iamRoles.length > 0 && role === undefined) throw new Error('iamRoles: given without a role to grant');
  const run: string[] = [];
  const exec = async (sql: string) => {
    await execWithRetry(pool, sql);
    run.push(sql.replace(/\s+/g, ' '));
  };
  for (const ddl of Object.values(TABLES)) await exec(ddl);
  if (role === undefined) return run;

  try {
    await exec(`CREATE ROLE "${role}" WITH LOGIN`);
  } catch (err) {
    if ((err as { code?: string }).code !== '42710') throw err; // duplicate_object: it exists already
  }
  for (const arn of iamRoles) await exec(`AWS IAM GRANT "${role}" TO '${arn}'`);
  await exec(`GRANT USAGE ON SCHEMA public TO "${role}"`);
  await exec(`GRANT SELECT, INSERT, UPDATE, DELETE ON ${Object.keys(TABLES).join(', ')} TO "${role}"`);
  return run;
}

// As a script: the configuration comes from the environment, as an admin connection.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values } = parseArgs({
    options: { role: { type: 'string' }, 'iam-role': { type: 'string', multiple: true } },
  });
  const pool = createPool({ user: 'admin' });
  try {
    const run = await migrate(pool, { role: values.role, iamRoles: values['iam-role'] ?? [] });
    for (const sql of run) console.log(`ok  ${sql}`);
  } finally {
    await pool.end();
  }
}
