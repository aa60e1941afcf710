/**
 * `dsql-lambda/kysely`: Kysely on Aurora DSQL with the library's OCC retry and a migration runner
 * DSQL accepts. Only Kysely users load this module; `kysely` is an optional peer dependency.
 *
 * - {@link createKysely}: a `Kysely<DB>` on a pool (`PostgresDialect`), remembered so that
 * - {@link retryTransaction} can run a transaction through {@link withRetry} (or
 *   `context.dsql.transaction`) and hand the callback a real Kysely `Transaction<DB>`: each attempt
 *   gets a Kysely instance with the same plugins and logging, bound to that attempt's connection,
 *   whose BEGIN, COMMIT and ROLLBACK are withRetry's.
 * - {@link migrate}: Kysely migrations (`up(db)`, a `MigrationProvider` such as
 *   `FileMigrationProvider`) applied one statement per transaction, resumable.
 */
import {
  type CompiledQuery,
  type DatabaseConnection,
  type Dialect,
  type Driver,
  Kysely,
  type KyselyConfig,
  type Migration,
  type MigrationProvider,
  PostgresAdapter,
  PostgresDialect,
  type PostgresDialectConfig,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryResult,
  type Transaction,
} from 'kysely';
import type pg from 'pg';
import type { Dsql } from './lambda.js';
import {
  type DsqlMigration,
  type MigrateOptions,
  type MigrateResult,
  MigrationError,
  runMigrations,
} from './migrations.js';
import { type RetryOptions, type TransactionClient, withRetry } from './retry.js';

export type { DsqlMigration, MigrateOptions, MigrateResult, MigrationStatementInfo } from './migrations.js';
export { MigrationError } from './migrations.js';

declare const dsqlKysely: unique symbol;

/**
 * A `Kysely<DB>` made by {@link createKysely}: usable everywhere a `Kysely<DB>` is, and accepted by
 * {@link retryTransaction} and {@link migrate}. (`withPlugin()`, `withSchema()` … return plain
 * `Kysely` instances, which those two do not accept.)
 * @example
 * const db: DsqlKysely<Database> = createKysely<Database>({ pool });
 */
export type DsqlKysely<DB> = Kysely<DB> & { readonly [dsqlKysely]: true };

/**
 * Options of {@link createKysely}: Kysely's own (`plugins`, `log`) and the `PostgresDialect`
 * options (`cursor`, `onCreateConnection`, `onReserveConnection`), with the pool.
 * @example
 * const config: DsqlKyselyConfig = { pool: createPool(), plugins: [new CamelCasePlugin()] };
 */
export interface DsqlKyselyConfig extends Omit<KyselyConfig, 'dialect'>, Omit<PostgresDialectConfig, 'pool'> {
  /** The pool (`createPool()`, `lambdaPool()`, or any `pg.Pool`). */
  pool: pg.Pool;
}

interface Registered {
  pool: pg.Pool;
  kysely: Omit<KyselyConfig, 'dialect'>;
}
const registry = new WeakMap<object, Registered>();

/**
 * Creates a `Kysely<DB>` on `pool` with Kysely's `PostgresDialect`.
 * @param config The pool, plugins, logging and dialect options.
 * @returns The Kysely instance, branded for {@link retryTransaction} and {@link migrate}.
 * @example
 * ```ts
 * import { createPool } from 'dsql-lambda';
 * import { createKysely } from 'dsql-lambda/kysely';
 * const db = createKysely<Database>({ pool: createPool() });
 * ```
 */
export function createKysely<DB>(config: DsqlKyselyConfig): DsqlKysely<DB> {
  const { pool, plugins, log, cursor, onCreateConnection, onReserveConnection } = config;
  const kysely = { ...(plugins ? { plugins } : {}), ...(log ? { log } : {}) };
  const dialect = new PostgresDialect({ pool, cursor, onCreateConnection, onReserveConnection });
  const db = new Kysely<DB>({ ...kysely, dialect });
  registry.set(db, { pool, kysely });
  return db as DsqlKysely<DB>;
}

function registered(db: object, fn: string): Registered {
  const entry = registry.get(db);
  if (!entry)
    throw new TypeError(`${fn}: db must be a Kysely instance made by createKysely() of dsql-lambda/kysely`);
  return entry;
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

/** A connection that only runs queries: transaction control belongs to withRetry. */
function attemptConnection(tx: TransactionClient): DatabaseConnection {
  return {
    async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
      const { command, rowCount, rows } = await tx.query(compiled.sql, [...compiled.parameters]);
      const affected = ['INSERT', 'UPDATE', 'DELETE', 'MERGE'].includes(command);
      return { rows: rows as R[], ...(affected ? { numAffectedRows: BigInt(rowCount ?? 0) } : {}) };
    },
    // biome-ignore lint/correctness/useYield: refuses before producing anything
    async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
      throw new Error('retryTransaction: stream() is not supported inside a retried transaction');
    },
  };
}

function attemptDialect(connection: DatabaseConnection): Dialect {
  const none = async () => {};
  const driver: Driver = {
    init: none,
    acquireConnection: async () => connection,
    // withRetry sends BEGIN before the callback runs and COMMIT (or ROLLBACK) after it returns.
    beginTransaction: none,
    commitTransaction: none,
    rollbackTransaction: none,
    releaseConnection: none,
    destroy: none,
  };
  return {
    createDriver: () => driver,
    createQueryCompiler: () => new PostgresQueryCompiler(),
    createAdapter: () => new PostgresAdapter(),
    createIntrospector: (db) => new PostgresIntrospector(db),
  };
}

/**
 * Runs `fn` in a Kysely transaction that is retried on OCC conflicts, with every guarantee of
 * {@link withRetry}: backoff with jitter, `deadline` and `signal`, a COMMIT whose outcome is
 * unknown never retried (`CommitOutcomeUnknownError`), one pool connection per attempt, a
 * connection whose ROLLBACK failed destroyed. **`fn` may run more than once**: keep side effects
 * outside the database out of it.
 *
 * `trx` is a Kysely `Transaction<DB>` bound to the attempt's connection, with the db's plugins and
 * logging; it stops working when its attempt ends. Not available inside: nested transactions
 * (Kysely refuses them; DSQL has no savepoints), `setIsolationLevel` (DSQL is REPEATABLE READ),
 * and `stream()`.
 *
 * @param db A Kysely instance from {@link createKysely}.
 * @param fn The transaction body; what it resolves to is returned after COMMIT.
 * @param options Retry policy ({@link RetryOptions}) and, in a Lambda handler, `dsql: context.dsql`.
 * @returns What `fn` returned, once committed.
 * @example
 * ```ts
 * const balance = await retryTransaction(db, async (trx) => {
 *   await trx.updateTable('account').set((eb) => ({ balance: eb('balance', '-', 10) })).where('id', '=', from).execute();
 *   await trx.updateTable('account').set((eb) => ({ balance: eb('balance', '+', 10) })).where('id', '=', to).execute();
 *   return trx.selectFrom('account').select('balance').where('id', '=', from).executeTakeFirstOrThrow();
 * }, { dsql: context.dsql });
 * ```
 */
export async function retryTransaction<DB, T>(
  db: DsqlKysely<DB>,
  fn: (trx: Transaction<DB>) => Promise<T>,
  options: RetryTransactionOptions = {},
): Promise<T> {
  const { pool, kysely } = registered(db, 'retryTransaction');
  if (typeof fn !== 'function') throw new TypeError('retryTransaction: fn must be a function');
  const { dsql, ...retry } = options;
  const attempt = (tx: TransactionClient) =>
    new Kysely<DB>({ ...kysely, dialect: attemptDialect(attemptConnection(tx)) }).transaction().execute(fn);
  return dsql ? dsql.transaction(attempt, retry) : withRetry(pool, attempt, retry);
}

/** A dialect that records each compiled statement instead of running it. */
function recordingDialect(statements: string[], migration: string): Dialect {
  const connection: DatabaseConnection = {
    async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
      if (compiled.parameters.length > 0)
        throw new MigrationError(
          `migrate: ${migration} sends a statement with parameters; inline the values (sql.lit) in DDL`,
          migration,
          statements.length,
        );
      statements.push(compiled.sql);
      return { rows: [] };
    },
    // biome-ignore lint/correctness/useYield: refuses before producing anything
    async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
      throw new MigrationError('migrate: a migration cannot stream', migration);
    },
  };
  return attemptDialect(connection);
}

/**
 * Applies Kysely migrations on DSQL, in name order (Kysely's own order), one statement per
 * transaction, with bookkeeping in its own transactions, `CREATE INDEX ASYNC` jobs awaited, OCC
 * conflicts retried, and a half-applied migration resumed from the statement it stopped at; see
 * `runMigrations` for the details. Kysely's `Migrator` cannot do this on DSQL: it runs a
 * migration and its bookkeeping in one transaction and locks with `pg_advisory_xact_lock`.
 *
 * Each `up(db)` is first **recorded, not run**: the `db` it receives collects the statements
 * (every query answers no rows), then they are applied. So `up` must not depend on what its
 * queries return (and `db.transaction()` inside it groups nothing: each statement is applied alone). `db.schema.createIndex(…)` is sent as
 * `CREATE INDEX ASYNC`. `down` is not used.
 *
 * @param db A Kysely instance from {@link createKysely} (its pool runs the statements, its
 *   plugins compile them).
 * @param migrations A Kysely `MigrationProvider` (e.g. `FileMigrationProvider`) or a record of
 *   migrations by name.
 * @param options Bookkeeping table (default `'dsql_migrations'`), progress callback, retry policy.
 * @returns The migrations applied by this run.
 * @example
 * ```ts
 * await migrate(db, {
 *   '0001_account': {
 *     async up(db) {
 *       await db.schema.createTable('account').addColumn('id', 'uuid', (c) => c.primaryKey()).execute();
 *       await db.schema.createIndex('account_owner').on('account').column('owner').execute();
 *     },
 *   },
 * });
 * ```
 */
export async function migrate<DB>(
  db: DsqlKysely<DB>,
  migrations: MigrationProvider | Record<string, Migration>,
  options: MigrateOptions = {},
): Promise<MigrateResult> {
  const { pool, kysely } = registered(db, 'migrate');
  const all =
    typeof migrations.getMigrations === 'function'
      ? await (migrations as MigrationProvider).getMigrations()
      : (migrations as Record<string, Migration>);
  const list: DsqlMigration[] = [];
  for (const name of Object.keys(all).sort()) {
    const statements: string[] = [];
    // The db's plugins shape the SQL; its logger stays out (nothing runs yet).
    const recorder = new Kysely<unknown>({
      plugins: kysely.plugins ?? [],
      dialect: recordingDialect(statements, name),
    });
    try {
      await (all[name] as Migration).up(recorder);
    } catch (err) {
      if (err instanceof MigrationError) throw err;
      throw new MigrationError(
        `migrate: up() of ${name} failed: ${(err as Error)?.message}`,
        name,
        undefined,
        {
          cause: err,
        },
      );
    }
    list.push({ name, statements });
  }
  return runMigrations(pool, list, options);
}
