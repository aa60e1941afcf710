/**
 * Schema migrations that DSQL accepts, shared by `dsql-lambda/kysely` and `dsql-lambda/drizzle`
 * (each turns its ORM's migrations into lists of statements and calls {@link runMigrations}).
 *
 * DSQL allows one DDL statement per transaction and no DDL with DML, so a migration cannot be
 * applied atomically with its bookkeeping as ORM migrators do. Instead every statement runs in
 * its own transaction ({@link execWithRetry}: OCC conflicts such as OC001 retried), and after each
 * one the bookkeeping row records how many statements of the migration are done, in a
 * transaction of its own ({@link withRetry}). A run that stopped half-way (crash, timeout,
 * deadline) is resumed by the next one from the statement it stopped at.
 */
import { createHash } from 'node:crypto';
import type pg from 'pg';
import { CommitOutcomeUnknownError, DsqlError } from './errors.js';
import { execWithRetry, type RetryOptions, type TransactionClient, withRetry } from './retry.js';

/**
 * A migration as the runner sees it: a unique name and its statements, in order, one DDL (or
 * one DML) statement each.
 * @example
 * const m: DsqlMigration = { name: '0001_init', statements: ['CREATE TABLE t (id uuid PRIMARY KEY)'] };
 */
export interface DsqlMigration {
  /** Unique name; migrations are applied in the order given. */
  readonly name: string;
  /** The statements, each run in its own transaction. */
  readonly statements: readonly string[];
}

/**
 * Options of the migration runners. The retry fields apply to every statement and to every
 * bookkeeping transaction (`deadline` and `signal` thus bound the whole run).
 * @example
 * await migrate(db, { deadline: Date.now() + 60_000, onStatement: (s) => console.log(s.migration, s.index) });
 */
export interface MigrateOptions extends RetryOptions {
  /** Bookkeeping table (an unquoted identifier, optionally `schema.table`). Default `'dsql_migrations'`. */
  table?: string;
  /** Called after each statement has been applied (or found applied by an interrupted run). Default: none. */
  onStatement?: (info: MigrationStatementInfo) => void;
}

/**
 * What {@link MigrateOptions.onStatement} is told.
 * @example
 * const log = (i: MigrationStatementInfo) => console.log(`${i.migration} ${i.index + 1}/${i.count}`);
 */
export interface MigrationStatementInfo {
  /** Name of the migration. */
  migration: string;
  /** Index of the statement in the migration (0-based). */
  index: number;
  /** Number of statements in the migration. */
  count: number;
  /** The statement as sent. */
  sql: string;
  /** Id of the asynchronous job the statement started (`CREATE INDEX ASYNC`), awaited before going on. */
  jobId?: string;
  /** True when an interrupted run had applied it already (see {@link runMigrations}). */
  recovered: boolean;
}

/**
 * What a run did.
 * @example
 * const { applied } = await migrate(db);
 * console.log(applied.length ? `applied ${applied.join(', ')}` : 'up to date');
 */
export interface MigrateResult {
  /** Migrations completed by this run, in order (a resumed one included). */
  applied: string[];
  /** The migration an earlier run had left half-applied, and the statement this run resumed at. */
  resumed?: { migration: string; statement: number };
}

/**
 * A migration could not be applied, or the bookkeeping disagrees with the migrations given.
 * `cause` is the database error when there is one.
 * @example
 * try { await migrate(db); } catch (e) { if (e instanceof MigrationError) console.error(e.migration, e.statement); }
 */
export class MigrationError extends DsqlError {
  override readonly name: string = 'MigrationError';
  constructor(
    message: string,
    /** The migration concerned. */
    readonly migration: string,
    /** Index of the failing statement, when one failed. */
    readonly statement?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const DUPLICATE = new Set(['42P07', '42710', '42701', '42P06', '42723']);
const UNDEFINED = new Set(['42P01', '42703', '42704', '3F000']);

/**
 * The statement DSQL needs: it has no synchronous `CREATE INDEX`, only `CREATE INDEX ASYNC`.
 * @example
 * dsqlStatement('CREATE INDEX i ON t (c)'); // 'CREATE INDEX ASYNC i ON t (c)'
 */
export function dsqlStatement(sql: string): string {
  // Leading `--` and `/* */` comments are skipped; ASYNC goes right after INDEX. CONCURRENTLY is
  // left for DSQL to refuse with its own words.
  return sql
    .trim()
    .replace(
      /^((?:--[^\n]*\n\s*|\/\*[\s\S]*?\*\/\s*)*create\s+(?:unique\s+)?index)\s+(?!async\b|concurrently\b)/i,
      '$1 ASYNC ',
    );
}

/** Whether `err`, raised by re-running `sql`, says an interrupted run had applied it. */
function alreadyApplied(sql: string, err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return false;
  return /^\s*drop\b|\bdrop\s+(column|constraint)\b/i.test(sql) ? UNDEFINED.has(code) : DUPLICATE.has(code);
}

/**
 * Whether `sql` changes or reads rows (DML, a query) rather than the schema. DSQL lets DML share a
 * transaction with other DML, so such a statement commits together with its bookkeeping row:
 * exactly once, even when a run is interrupted (re-running it could not tell it was applied).
 */
function isDml(sql: string): boolean {
  return /^(?:--[^\n]*\n\s*|\/\*[\s\S]*?\*\/\s*|\(\s*)*(?:insert|update|delete|merge|with|select|values|table)\b/i.test(
    sql,
  );
}

/** Hash of the statements a row says are applied: a half-applied migration may still change after them. */
function checksum(statements: readonly string[]): string {
  return createHash('sha256').update(JSON.stringify(statements)).digest('hex');
}

function quoteTable(table: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$/.test(table))
    throw new TypeError(
      `migrate: table must be an identifier or schema.identifier, got ${JSON.stringify(table)}`,
    );
  return table
    .split('.')
    .map((p) => `"${p}"`)
    .join('.');
}

interface Row {
  name: string;
  checksum: string;
  statements: number;
  done: number;
  job_id: string | null;
}

/**
 * Applies `migrations` in order on `target` (a pool: each statement and each bookkeeping
 * transaction gets a healthy connection of its own), skipping those recorded as done.
 *
 * - Each statement runs alone, autocommit, OCC conflicts retried ({@link execWithRetry}). A
 *   `CREATE [UNIQUE] INDEX` without `ASYNC` is sent as `CREATE [UNIQUE] INDEX ASYNC`; a statement
 *   that returns a `job_id` (asynchronous DDL) is awaited with `sys.wait_for_job` before the next
 *   one, and its job id is recorded first, so a resumed run waits for it instead of re-running it.
 * - After each statement, the bookkeeping row is advanced in its own transaction, conditionally
 *   (a concurrent runner makes this one fail with {@link MigrationError} rather than apply twice).
 *   A DML statement (INSERT, UPDATE, DELETE, WITH, SELECT) shares its transaction with that
 *   advance instead: it is applied exactly once, even across an interrupted run.
 * - A first statement that fails for sure (not an unknown COMMIT outcome) removes the row this
 *   run inserted for its migration, so a failed migration may be fixed, renamed or removed.
 * - Resuming: the statement after the last one recorded may have been applied by the interrupted
 *   run (its commit and the bookkeeping cannot be one transaction on DSQL). If re-running it fails
 *   because its object already exists (or, for a DROP, no longer exists), it is taken as applied.
 *   An index whose job id had not been recorded yet is then not awaited.
 * - A migration already recorded whose statements changed, a recorded migration missing from the
 *   list, or one applied out of order: {@link MigrationError}, nothing run.
 *
 * @param target The pool to run on.
 * @param migrations In the order to apply them.
 * @param options Bookkeeping table, progress callback and retry policy.
 * @returns The migrations this run completed.
 * @example
 * await runMigrations(pool, [{ name: '0001', statements: ['CREATE TABLE a (id uuid PRIMARY KEY)'] }]);
 */
export async function runMigrations(
  target: pg.Pool,
  migrations: readonly DsqlMigration[],
  options: MigrateOptions = {},
): Promise<MigrateResult> {
  const { table = 'dsql_migrations', onStatement, ...retry } = options;
  const t = quoteTable(table);
  const names = new Set<string>();
  for (const m of migrations) {
    if (names.has(m.name)) throw new MigrationError(`migrate: two migrations are named ${m.name}`, m.name);
    names.add(m.name);
  }
  await execWithRetry(
    target,
    `CREATE TABLE IF NOT EXISTS ${t} (name text PRIMARY KEY, checksum text NOT NULL, statements integer NOT NULL, done integer NOT NULL, job_id text, started_at timestamptz NOT NULL, finished_at timestamptz)`,
    [],
    retry,
  ).catch((err: unknown) => {
    // Another run created it at the same moment: PostgreSQL's IF NOT EXISTS does not cover a
    // concurrent creation (23505 on its catalog, or 42P07). The table is there either way.
    const code = (err as { code?: unknown } | null)?.code;
    if (code !== '23505' && code !== '42P07') throw err;
  });
  const { rows } = await execWithRetry<Row>(
    target,
    `SELECT name, checksum, statements, done, job_id FROM ${t}`,
    [],
    retry,
  );
  const recorded = new Map(rows.map((r) => [r.name, r]));
  for (const name of recorded.keys())
    if (!names.has(name))
      throw new MigrationError(`migrate: recorded migration ${name} is not in the list`, name);
  const prepared = migrations.map((m) => ({
    name: m.name,
    statements: m.statements.map(dsqlStatement).filter((s) => s !== ''),
  }));
  let pending: string | undefined;
  for (const m of prepared) {
    const row = recorded.get(m.name);
    if (row && pending !== undefined)
      throw new MigrationError(
        `migrate: ${m.name} is recorded but ${pending}, before it, is not complete`,
        m.name,
      );
    const complete = row !== undefined && row.done >= row.statements;
    if (
      row &&
      (row.checksum !== checksum(m.statements.slice(0, row.done)) ||
        (complete && m.statements.length !== row.done))
    )
      throw new MigrationError(
        `migrate: the applied statements of ${m.name} changed since they were applied`,
        m.name,
      );
    if (!complete) pending ??= m.name;
  }

  const result: MigrateResult = { applied: [] };
  const elsewhere = (name: string, from: number) =>
    new MigrationError(
      `migrate: ${name} was advanced by another run; run migrations from one place`,
      name,
      from,
    );
  const update = async (
    tx: TransactionClient,
    name: string,
    from: number,
    set: string,
    values: unknown[],
  ) => {
    const res = await tx.query(`UPDATE ${t} SET ${set} WHERE name = $1 AND done = $2`, [
      name,
      from,
      ...values,
    ]);
    if (res.rowCount !== 1) throw elsewhere(name, from);
  };
  const advance = (name: string, from: number, set: string, values: unknown[]) =>
    withRetry(target, (tx) => update(tx, name, from, set, values), retry);
  /** The bookkeeping of statement `i` done: its SET clause and values (after name and from). */
  const doneSet = (statements: readonly string[], i: number): [string, unknown[]] => [
    `done = $3, checksum = $4, statements = $5, job_id = NULL${i + 1 === statements.length ? ', finished_at = now()' : ''}`,
    [i + 1, checksum(statements.slice(0, i + 1)), statements.length],
  ];
  for (const { name, statements } of prepared) {
    const row = recorded.get(name);
    if (row && row.done >= row.statements) continue;
    const start = row?.done ?? 0;
    if (row) {
      result.resumed = { migration: name, statement: start };
    } else {
      await withRetry(
        target,
        (tx) =>
          tx.query(
            `INSERT INTO ${t} (name, checksum, statements, done, started_at) VALUES ($1, $2, $3, 0, now())`,
            [name, checksum([]), statements.length],
          ),
        retry,
      ).catch((err: unknown) => {
        if ((err as { code?: unknown } | null)?.code !== '23505') throw err;
        throw new MigrationError(
          `migrate: ${name} was started by another run; run migrations from one place`,
          name,
          0,
          {
            cause: err,
          },
        );
      });
    }
    for (let i = start; i < statements.length; i++) {
      const sql = statements[i] as string;
      let jobId = row && i === start ? (row.job_id ?? undefined) : undefined;
      let recovered = jobId !== undefined;
      if (jobId === undefined && isDml(sql)) {
        // The statement and its bookkeeping in one transaction: applied once, or not at all.
        const [set, values] = doneSet(statements, i);
        try {
          await withRetry(
            target,
            async (tx) => {
              await tx.query(sql);
              await update(tx, name, i, set, values);
            },
            retry,
          );
        } catch (err) {
          if (err instanceof MigrationError) throw err;
          if (!row && i === 0) await forget(name, err);
          throw failed(name, i, sql, err);
        }
        onStatement?.({ migration: name, index: i, count: statements.length, sql, recovered: false });
        continue;
      }
      if (jobId === undefined) {
        let res: pg.QueryResult | undefined;
        try {
          res = await execWithRetry(target, sql, [], retry);
        } catch (err) {
          if (!(row && i === start && alreadyApplied(sql, err))) {
            if (!row && i === 0) await forget(name, err);
            throw failed(name, i, sql, err);
          }
          recovered = true;
        }
        const job = res?.rows[0]?.job_id;
        if (job !== undefined && job !== null) {
          jobId = String(job);
          await advance(name, i, 'job_id = $3', [jobId]);
        }
      }
      if (jobId !== undefined) {
        let ok: unknown;
        try {
          ok = (await execWithRetry(target, 'SELECT sys.wait_for_job($1) AS ok', [jobId], retry)).rows[0]?.ok;
        } catch (err) {
          throw failed(name, i, sql, err, `job ${jobId}`);
        }
        if (ok === false) throw failed(name, i, sql, undefined, `job ${jobId} failed (see sys.jobs)`);
      }
      await advance(name, i, ...doneSet(statements, i));
      onStatement?.({
        migration: name,
        index: i,
        count: statements.length,
        sql,
        recovered,
        ...(jobId ? { jobId } : {}),
      });
    }
    result.applied.push(name);
  }
  return result;

  /**
   * A run's first statement of a migration failed and surely did not commit: the row this run
   * inserted records nothing, so it goes (the migration may then be fixed, renamed or removed).
   * Best effort; a row left behind only means the next run starts that migration from the top.
   */
  async function forget(name: string, err: unknown): Promise<void> {
    if (err instanceof CommitOutcomeUnknownError) return; // it may have committed: keep the row
    await withRetry(
      target,
      (tx) => tx.query(`DELETE FROM ${t} WHERE name = $1 AND done = 0 AND job_id IS NULL`, [name]),
      retry,
    ).catch(() => {});
  }
}

function failed(
  migration: string,
  index: number,
  sql: string,
  cause: unknown,
  what?: string,
): MigrationError {
  const why = what ?? (cause instanceof Error ? cause.message : String(cause));
  const text = sql.replace(/\s+/g, ' ');
  const excerpt = text.length > 80 ? `${text.slice(0, 77)}...` : text;
  return new MigrationError(
    `migrate: ${migration}, statement ${index + 1} (${excerpt}): ${why}`,
    migration,
    index,
    { cause },
  );
}
