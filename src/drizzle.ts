/**
 * `dsql-lambda/drizzle`: Drizzle on Aurora DSQL with the library's OCC retry and a migration
 * runner DSQL accepts. Only Drizzle users load this module; `drizzle-orm` is an optional peer
 * dependency.
 *
 * - {@link createDrizzle}: Drizzle's `drizzle()` for node-postgres on a pool, remembered so that
 * - {@link retryTransaction} can run a transaction through {@link withRetry} (or
 *   `context.dsql.transaction`) and hand the callback Drizzle's own transaction object: each
 *   attempt gets a Drizzle instance with the same schema, casing, logger and cache, bound to that
 *   attempt's connection, whose BEGIN, COMMIT and ROLLBACK are withRetry's.
 * - {@link migrate}: the SQL migrations drizzle-kit writes (a folder with `meta/_journal.json`)
 *   applied one statement per transaction, resumable.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ExtractTablesWithRelations } from 'drizzle-orm';
import { readMigrationFiles } from 'drizzle-orm/migrator';
import {
  type NodePgDatabase,
  type NodePgQueryResultHKT,
  drizzle as pgDrizzle,
} from 'drizzle-orm/node-postgres';
import type { PgTransaction } from 'drizzle-orm/pg-core';
import type { DrizzleConfig } from 'drizzle-orm/utils';
import type pg from 'pg';
import type { Dsql } from './lambda.js';
import { type MigrateOptions, type MigrateResult, MigrationError, runMigrations } from './migrations.js';
import { type RetryOptions, type TransactionClient, withRetry } from './retry.js';

export type { DsqlMigration, MigrateOptions, MigrateResult, MigrationStatementInfo } from './migrations.js';
export { MigrationError } from './migrations.js';

declare const dsqlDrizzle: unique symbol;

/** A schema record, as Drizzle's `schema` option takes. */
type Schema = Record<string, unknown>;

/**
 * A Drizzle database made by {@link createDrizzle}: what `drizzle({ client: pool, … })` returns,
 * accepted by {@link retryTransaction} and {@link migrate}.
 * @example
 * const db: DsqlDrizzle<typeof schema> = createDrizzle({ client: pool, schema });
 */
export type DsqlDrizzle<TSchema extends Schema = Record<string, never>> = NodePgDatabase<TSchema> & {
  $client: pg.Pool;
  readonly [dsqlDrizzle]: true;
};

/**
 * The transaction object the callback of {@link retryTransaction} receives: the type Drizzle's own
 * `db.transaction()` gives its callback (at run time a `NodePgTransaction`).
 * @example
 * async function debit(tx: DrizzleTransaction<typeof schema>, id: string) { … }
 */
export type DrizzleTransaction<TSchema extends Schema = Record<string, never>> = PgTransaction<
  NodePgQueryResultHKT,
  TSchema,
  ExtractTablesWithRelations<TSchema>
>;

/**
 * Options of {@link createDrizzle}: Drizzle's (`schema`, `casing`, `logger`, `cache`) and the pool.
 * @example
 * const config: DsqlDrizzleConfig<typeof schema> = { client: createPool(), schema, casing: 'snake_case' };
 */
export interface DsqlDrizzleConfig<TSchema extends Schema = Record<string, never>>
  extends DrizzleConfig<TSchema> {
  /** The pool (`createPool()`, `lambdaPool()`, or any `pg.Pool`). */
  client: pg.Pool;
}

const registry = new WeakMap<object, DsqlDrizzleConfig<Schema>>();

/**
 * Creates a Drizzle database on `config.client` with `drizzle-orm/node-postgres`.
 * @param config The pool and Drizzle's options.
 * @returns The database, branded for {@link retryTransaction} and {@link migrate}.
 * @example
 * ```ts
 * import { createPool } from 'dsql-lambda';
 * import { createDrizzle } from 'dsql-lambda/drizzle';
 * import * as schema from './schema.js';
 * const db = createDrizzle({ client: createPool(), schema });
 * ```
 */
export function createDrizzle<TSchema extends Schema = Record<string, never>>(
  config: DsqlDrizzleConfig<TSchema>,
): DsqlDrizzle<TSchema> {
  const db = pgDrizzle<TSchema, pg.Pool>(config);
  registry.set(db, config as DsqlDrizzleConfig<Schema>);
  return db as DsqlDrizzle<TSchema>;
}

function registered(db: object, fn: string): DsqlDrizzleConfig<Schema> {
  const config = registry.get(db);
  if (!config)
    throw new TypeError(
      `${fn}: db must be a Drizzle database made by createDrizzle() of dsql-lambda/drizzle`,
    );
  return config;
}

/**
 * Options of {@link retryTransaction}: withRetry's, and optionally the invocation's `context.dsql`.
 * @example
 * await retryTransaction(db, fn, { dsql: context.dsql, maxAttempts: 5 });
 */
export interface RetryTransactionOptions extends RetryOptions {
  /**
   * Run through `context.dsql.transaction` (its pool, the Lambda deadline, the middleware's retry
   * defaults) instead of `withRetry` on the db's pool. Default: none.
   */
  dsql?: Pick<Dsql, 'transaction'>;
}

const CONTROL = new Set(['begin', 'commit', 'rollback']);

/**
 * The client the attempt's Drizzle instance runs on. Drizzle's node-postgres session only calls
 * `query` on a client that is not a pool, and wraps a transaction in `begin` … `commit` (or
 * `rollback`): those three are answered here without being sent, because withRetry already began
 * the transaction and decides how it ends. Between them every statement goes to the attempt.
 */
function attemptClient(tx: TransactionClient): { client: pg.PoolClient; bodyDone(): void } {
  let phase: 'before' | 'body' | 'after' = 'before';
  const query = (config: string | pg.QueryConfig, values?: unknown[]) => {
    const text = typeof config === 'string' ? config : config.text;
    if (phase !== 'body' && CONTROL.has(text)) {
      if (text === 'begin') phase = 'body';
      return Promise.resolve({ command: text.toUpperCase(), rowCount: null, rows: [], fields: [], oid: 0 });
    }
    return tx.query(config, values);
  };
  return {
    // Only `query` is ever called (see above); the type is what drizzle() accepts.
    client: { query } as unknown as pg.PoolClient,
    bodyDone: () => {
      phase = 'after';
    },
  };
}

/**
 * Runs `fn` in a Drizzle transaction that is retried on OCC conflicts, with every guarantee of
 * {@link withRetry}: backoff with jitter, `deadline` and `signal`, a COMMIT whose outcome is
 * unknown never retried (`CommitOutcomeUnknownError`), one pool connection per attempt, a
 * connection whose ROLLBACK failed destroyed. **`fn` may run more than once**: keep side effects
 * outside the database out of it.
 *
 * `tx` is the transaction object Drizzle's `db.transaction()` would give (`tx.rollback()` rolls
 * back and rejects with Drizzle's `TransactionRollbackError`, not retried), bound to the attempt's
 * connection; it stops working when its attempt ends. Not available inside: `tx.transaction()`
 * (savepoints, which DSQL does not have) and `tx.setTransaction()` (DSQL is REPEATABLE READ).
 *
 * @param db A database from {@link createDrizzle}.
 * @param fn The transaction body; what it resolves to is returned after COMMIT.
 * @param options Retry policy ({@link RetryOptions}) and, in a Lambda handler, `dsql: context.dsql`.
 * @returns What `fn` returned, once committed.
 * @example
 * ```ts
 * const [row] = await retryTransaction(db, async (tx) => {
 *   await tx.update(account).set({ balance: sql`${account.balance} - 10` }).where(eq(account.id, from));
 *   await tx.update(account).set({ balance: sql`${account.balance} + 10` }).where(eq(account.id, to));
 *   return tx.select({ balance: account.balance }).from(account).where(eq(account.id, from));
 * }, { dsql: context.dsql });
 * ```
 */
export async function retryTransaction<TSchema extends Schema, T>(
  db: DsqlDrizzle<TSchema>,
  fn: (tx: DrizzleTransaction<TSchema>) => Promise<T>,
  options: RetryTransactionOptions = {},
): Promise<T> {
  const config = registered(db, 'retryTransaction') as DsqlDrizzleConfig<TSchema>;
  if (typeof fn !== 'function') throw new TypeError('retryTransaction: fn must be a function');
  const { dsql, ...retry } = options;
  const attempt = (tx: TransactionClient) => {
    const { client, bodyDone } = attemptClient(tx);
    return pgDrizzle<TSchema, pg.PoolClient>({ ...config, client }).transaction(async (t) => {
      try {
        return await fn(t);
      } finally {
        bodyDone();
      }
    });
  };
  return dsql ? dsql.transaction(attempt, retry) : withRetry(config.client, attempt, retry);
}

/**
 * Options of {@link migrate}: the folder drizzle-kit writes, and the runner's options.
 * @example
 * const options: DrizzleMigrateOptions = { migrationsFolder: './drizzle', deadline: Date.now() + 60_000 };
 */
export interface DrizzleMigrateOptions extends MigrateOptions {
  /** Folder with `meta/_journal.json` and one `<tag>.sql` per migration (drizzle-kit's `out`). */
  migrationsFolder: string;
}

/**
 * Applies drizzle-kit's SQL migrations on DSQL, in journal order, one statement
 * (`--> statement-breakpoint` chunk) per transaction, with bookkeeping in its own transactions,
 * `CREATE INDEX ASYNC` jobs awaited, OCC conflicts retried, and a half-applied migration resumed
 * from the statement it stopped at; see `runMigrations` for the details. Drizzle's own
 * `migrate()` cannot do this on DSQL: its bookkeeping table has a `serial` key and it runs every
 * pending migration and the bookkeeping inserts in one transaction. Migrations are named by
 * their journal tag; a plain `CREATE INDEX` (what drizzle-kit writes) is sent as
 * `CREATE INDEX ASYNC`.
 *
 * @param db A database from {@link createDrizzle} (its pool runs the statements).
 * @param options `migrationsFolder`; bookkeeping table (default `'dsql_migrations'`), progress
 *   callback, retry policy.
 * @returns The migrations applied by this run.
 * @example
 * ```ts
 * await migrate(db, { migrationsFolder: './drizzle' });
 * ```
 */
export async function migrate<TSchema extends Schema>(
  db: DsqlDrizzle<TSchema>,
  options: DrizzleMigrateOptions,
): Promise<MigrateResult> {
  const { client } = registered(db, 'migrate');
  const { migrationsFolder, ...runOptions } = options;
  const files = readMigrationFiles({ migrationsFolder });
  const journal = JSON.parse(readFileSync(join(migrationsFolder, 'meta/_journal.json'), 'utf8')) as {
    entries: { tag: string }[];
  };
  const list = files.map((file, i) => {
    const name = journal.entries[i]?.tag;
    if (name === undefined) throw new MigrationError(`migrate: journal entry ${i} has no tag`, String(i));
    return { name, statements: file.sql };
  });
  return runMigrations(client, list, runOptions);
}
