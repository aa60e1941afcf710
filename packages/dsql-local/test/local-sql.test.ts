/**
 * DSQL's SQL surface through the endpoint with pg: one test per rule family, each showing DSQL's
 * SQLSTATE and text under the default dialect and the same statements succeeding with
 * `dialect: 'postgres'`.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pgConfig, signTestToken, startTestEndpoint } from '../../../test/helpers/endpoint.js';
import type { LocalDsql, LocalDsqlOptions } from '../src/index.js';

const clients: pg.Client[] = [];
let dsql: LocalDsql;
let plain: LocalDsql;

async function connect(endpoint: LocalDsql): Promise<pg.Client> {
  const client = new pg.Client(pgConfig(endpoint, { password: await signTestToken(endpoint) }));
  client.on('error', () => {});
  await client.connect();
  clients.push(client);
  return client;
}

async function failure(p: Promise<unknown>): Promise<{ code?: string; message: string; detail?: string }> {
  try {
    await p;
  } catch (err) {
    return err as { code?: string; message: string; detail?: string };
  }
  throw new Error('expected the statement to fail');
}

const suffix = randomUUID().slice(0, 8);
const name = (base: string) => `${base}_${suffix}`;

beforeAll(async () => {
  [dsql, plain] = await Promise.all([startTestEndpoint(), startTestEndpoint({ dialect: 'postgres' })]);
});

afterAll(async () => {
  for (const c of clients) await c.end().catch(() => {});
  await Promise.all([dsql.stop(), plain.stop()]);
});

/** Each statement is refused under DSQL's rules and runs (in a rolled-back transaction) on PostgreSQL. */
async function family(setup: string[], cases: Array<[sql: string, code: string, message: string]>) {
  const d = await connect(dsql);
  const p = await connect(plain);
  for (const s of setup) await p.query(s);
  for (const [sql, code, message] of cases) {
    const err = await failure(d.query(sql));
    expect({ sql, code: err.code, message: err.message }).toEqual({ sql, code, message });
    await p.query('BEGIN');
    await p.query(sql);
    await p.query('ROLLBACK');
  }
  // Every refusal was counted, and the session is still usable.
  expect((await d.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
}

describe('unsupported statements and objects', () => {
  it('triggers, PL/pgSQL, extensions, TRUNCATE, temporary tables, SAVEPOINT, LISTEN/NOTIFY, SET, locking clauses', async () => {
    const t = name('unsup');
    const before = dsql.stats().unsupportedRejected;
    await family(
      [`CREATE TABLE IF NOT EXISTS ${t} (id bigint PRIMARY KEY, v text)`],
      [
        [`TRUNCATE ${t}`, '0A000', 'unsupported statement: Truncate'],
        ['CREATE TEMP TABLE scratch (x int)', '0A000', 'unsupported statement: CREATE TEMPORARY TABLE'],
        ['SAVEPOINT a', '0A000', 'unsupported statement: SAVEPOINT'],
        ['LISTEN chan', '0A000', 'unsupported statement: Listen'],
        ["NOTIFY chan, 'x'", '0A000', 'unsupported statement: Notify'],
        ['CREATE EXTENSION IF NOT EXISTS plpgsql', '0A000', 'unsupported statement: CreateExtension'],
        [
          'CREATE FUNCTION f_plpgsql() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$',
          '0A000',
          'unsupported language: plpgsql',
        ],
        ["DO $$ BEGIN RAISE NOTICE 'x'; END $$", '0A000', 'unsupported statement: Do'],
        [
          `CREATE TRIGGER trg BEFORE INSERT ON ${t} FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()`,
          '0A000',
          'unsupported statement: CreateTrig',
        ],
        [
          'SET statement_timeout = 1000',
          '0A000',
          'setting configuration parameter "statement_timeout" not supported',
        ],
        [`SELECT * FROM ${t} FOR SHARE`, '0A000', 'unsupported locking clause: FOR SHARE'],
        [`SELECT * FROM ${t} FOR NO KEY UPDATE`, '0A000', 'unsupported locking clause: FOR NO KEY UPDATE'],
        [`LOCK TABLE ${t}`, '0A000', 'unsupported statement: Lock'],
      ],
    );
    expect(dsql.stats().unsupportedRejected - before).toBe(13);
    // What DSQL does support still runs.
    const d = await connect(dsql);
    await d.query(`SELECT * FROM ${t} FOR UPDATE`);
    await d.query(`SELECT * FROM ${t} FOR KEY SHARE`);
    await d.query('SET search_path = public');
    await d.query("CREATE OR REPLACE FUNCTION add_one(i int) RETURNS int LANGUAGE sql AS 'SELECT i + 1'");
    expect((await d.query('SELECT add_one(1) AS n')).rows).toEqual([{ n: 2 }]);
    // The words in a string, a comment or a quoted name are not statements.
    expect((await d.query("SELECT 'TRUNCATE x' AS s -- SAVEPOINT a")).rows).toEqual([{ s: 'TRUNCATE x' }]);
  });

  it('refused in the extended protocol, with parameters, the Bind still fits', async () => {
    const t = name('unsup_ext');
    const d = await connect(dsql);
    await d.query(`CREATE TABLE IF NOT EXISTS ${t} (id bigint PRIMARY KEY)`);
    const err = await failure(d.query(`SELECT * FROM ${t} WHERE id = $1 FOR SHARE`, [1]));
    expect(err).toMatchObject({ code: '0A000', message: 'unsupported locking clause: FOR SHARE' });
    const named = await failure(
      d.query({ name: 'share', text: `SELECT * FROM ${t} WHERE id = $1 FOR SHARE`, values: [1] }),
    );
    expect(named.code).toBe('0A000');
  });
});

describe('utility commands', () => {
  it('ANALYZE of named tables runs (DSQL: "ANALYZE, relation names only"); VACUUM and other ANALYZE forms are refused', async () => {
    const t = name('analyze');
    const d = await connect(dsql);
    await d.query(`CREATE TABLE IF NOT EXISTS ${t} (id bigint PRIMARY KEY, v text)`);
    await d.query(`INSERT INTO ${t} VALUES (1, 'a'), (2, 'b')`);
    expect((await d.query(`ANALYZE ${t}`)).command).toBe('ANALYZE');
    expect((await d.query(`ANALYZE public.${t}, ${t}`)).command).toBe('ANALYZE');
    // Inside a transaction with a write: ANALYZE is neither DDL nor DML.
    await d.query('BEGIN');
    await d.query(`UPDATE ${t} SET v = 'c' WHERE id = 1`);
    await d.query(`ANALYZE ${t}`);
    await d.query('COMMIT');
    for (const [sql, message] of [
      ['ANALYZE', 'unsupported statement: Analyze'],
      [`ANALYZE VERBOSE ${t}`, 'unsupported statement: Analyze'],
      [`ANALYZE ${t} (v)`, 'unsupported statement: Analyze'],
      [`VACUUM ${t}`, 'unsupported statement: Vacuum'],
      [`VACUUM ANALYZE ${t}`, 'unsupported statement: Vacuum'],
    ] as const) {
      const err = await failure(d.query(sql));
      expect({ sql, code: err.code, message: err.message }).toEqual({ sql, code: '0A000', message });
    }
  });
});

describe('column types', () => {
  it('jsonb, arrays, inet, money, xml are refused as columns; documented types work', async () => {
    await family(
      [],
      [
        ['CREATE TABLE t_jsonb (j jsonb)', '0A000', 'datatype jsonb not supported'],
        ['CREATE TABLE t_arr (a text[])', '0A000', 'datatype text[] not supported'],
        ['CREATE TABLE t_inet (a inet)', '0A000', 'datatype inet not supported'],
        ['CREATE TABLE t_money (a money)', '0A000', 'datatype money not supported'],
        ['CREATE TABLE t_xml (a xml)', '0A000', 'datatype xml not supported'],
      ],
    );
    const d = await connect(dsql);
    const t = name('types');
    await d.query(
      `CREATE TABLE ${t} (id uuid PRIMARY KEY, a smallint, b integer, c bigint, d real, e double precision,
        f numeric(10,2), g char(3), h varchar(10), i text, j boolean, k bytea, l date, m time, n timestamptz,
        o interval, p json)`,
    );
    // Query-time types still work.
    expect((await d.query(`SELECT '{"a":1}'::jsonb ->> 'a' AS v, ARRAY[1,2] AS arr`)).rows).toEqual([
      { v: '1', arr: [1, 2] },
    ]);
  });
});

describe('user-defined types', () => {
  it('CREATE TYPE (enum, composite) is refused', async () => {
    await family(
      [],
      [
        ["CREATE TYPE mood AS ENUM ('sad', 'ok')", '0A000', 'unsupported statement: CreateEnum'],
        ['CREATE TYPE pair AS (a int, b int)', '0A000', 'unsupported statement: CompositeType'],
      ],
    );
    const d = await connect(dsql);
    await d.query(`CREATE DOMAIN ${name('pos')} AS int CHECK (VALUE > 0)`);
  });
});

describe('sequences and identity', () => {
  it('serial refused, sequences and identity need CACHE 1 or ≥ 65536, identity is bigint', async () => {
    const cacheText =
      'CREATE SEQUENCE is not supported without an explicit cache size. please define CACHE greater than or equal to 65536 or equal to 1';
    const identityText =
      'identity column is not supported without an explicit cache size. please define CACHE greater than or equal to 65536 or equal to 1';
    await family(
      [],
      [
        ['CREATE TABLE t_serial (id serial PRIMARY KEY)', '42704', 'type "serial" does not exist'],
        ['CREATE TABLE t_bigserial (id bigserial PRIMARY KEY)', '42704', 'type "bigserial" does not exist'],
        ['CREATE SEQUENCE s_nocache', '0A000', cacheText],
        ['CREATE SEQUENCE s_cache10 CACHE 10', '0A000', cacheText],
        ['CREATE TABLE t_ident (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)', '0A000', identityText],
        [
          'CREATE TABLE t_ident_int (id int GENERATED BY DEFAULT AS IDENTITY (CACHE 1) PRIMARY KEY)',
          '0A000',
          'identity column of type integer not supported, use bigint',
        ],
      ],
    );
    const d = await connect(dsql);
    await d.query(`CREATE SEQUENCE ${name('seq1')} CACHE 1`);
    await d.query(`CREATE SEQUENCE ${name('seq2')} CACHE 65536`);
    const t = name('ident');
    await d.query(
      `CREATE TABLE ${t} (id bigint GENERATED BY DEFAULT AS IDENTITY (CACHE 1) PRIMARY KEY, v text)`,
    );
    await d.query(`INSERT INTO ${t} (v) VALUES ('a')`);
    expect((await d.query(`SELECT id FROM ${t}`)).rows).toEqual([{ id: '1' }]);
  });
});

describe('ALTER TABLE', () => {
  it('ADD COLUMN with a default or constraint, ALTER COLUMN TYPE and validated constraints are refused', async () => {
    const t = name('alter');
    await family(
      [`CREATE TABLE IF NOT EXISTS ${t} (id bigint PRIMARY KEY, v text, n int)`],
      [
        [
          `ALTER TABLE ${t} ADD COLUMN d int DEFAULT 0`,
          '0A000',
          'ALTER TABLE ADD COLUMN with constraint not supported',
        ],
        [
          `ALTER TABLE ${t} ADD COLUMN e int NOT NULL`,
          '0A000',
          'ALTER TABLE ADD COLUMN with constraint not supported',
        ],
        [
          `ALTER TABLE ${t} ALTER COLUMN v TYPE varchar(20)`,
          '0A000',
          'unsupported ALTER TABLE ALTER COLUMN ... SET DATA TYPE statement',
        ],
        [
          `ALTER TABLE ${t} ADD CONSTRAINT pos CHECK (n > 0)`,
          '0A000',
          'unsupported ALTER TABLE ADD CONSTRAINT statement',
        ],
        [`ALTER TABLE ${t} ADD COLUMN arr int[]`, '0A000', 'datatype integer[] not supported'],
      ],
    );
    const d = await connect(dsql);
    await d.query(`ALTER TABLE ${t} ADD COLUMN extra text`);
    await d.query(`ALTER TABLE ${t} ADD CONSTRAINT pos CHECK (n > 0) NOT VALID`);
    await d.query(`ALTER TABLE ${t} DROP COLUMN extra`);
    await d.query(`ALTER TABLE ${t} RENAME COLUMN v TO w`);
  });
});

describe('isolation', () => {
  it('REPEATABLE READ only; SERIALIZABLE and SET TRANSACTION refused', async () => {
    await family(
      [],
      [
        ['BEGIN ISOLATION LEVEL SERIALIZABLE', '0A000', 'unsupported isolation level: SERIALIZABLE'],
        [
          'START TRANSACTION ISOLATION LEVEL READ COMMITTED',
          '0A000',
          'unsupported isolation level: READ COMMITTED',
        ],
        [
          'SET TRANSACTION ISOLATION LEVEL REPEATABLE READ',
          '0A000',
          'unsupported statement: SET TRANSACTION',
        ],
      ],
    );
    const d = await connect(dsql);
    await d.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    expect((await d.query('SHOW transaction_isolation')).rows).toEqual([
      { transaction_isolation: 'repeatable read' },
    ]);
    await d.query('COMMIT');
  });
});

describe('foreign keys (supported by DSQL since 2026-08)', () => {
  it('inline and NOT VALID foreign keys work; a validated ADD CONSTRAINT is refused', async () => {
    const parent = name('parent');
    const child = name('child');
    const d = await connect(dsql);
    await d.query(`CREATE TABLE ${parent} (id bigint PRIMARY KEY)`);
    await d.query(
      `CREATE TABLE ${child} (id bigint PRIMARY KEY, p bigint REFERENCES ${parent}(id) ON DELETE CASCADE)`,
    );
    await d.query(`INSERT INTO ${parent} VALUES (1)`);
    await d.query(`INSERT INTO ${child} VALUES (1, 1)`);
    expect((await failure(d.query(`INSERT INTO ${child} VALUES (2, 99)`))).code).toBe('23503');
    const err = await failure(
      d.query(`ALTER TABLE ${child} ADD CONSTRAINT fk2 FOREIGN KEY (id) REFERENCES ${parent}(id)`),
    );
    expect(err).toMatchObject({ code: '0A000', message: 'unsupported ALTER TABLE ADD CONSTRAINT statement' });
    await d.query(
      `ALTER TABLE ${child} ADD CONSTRAINT fk2 FOREIGN KEY (id) REFERENCES ${parent}(id) NOT VALID`,
    );
  });
});

describe('transaction rules', () => {
  it('one DDL per transaction, no DDL with DML, a multi-statement query is one transaction', async () => {
    const a = name('tx_a');
    const b = name('tx_b');
    const d = await connect(dsql);
    const p = await connect(plain);
    await d.query('BEGIN');
    await d.query(`CREATE TABLE ${a} (id bigint PRIMARY KEY)`);
    expect(await failure(d.query(`CREATE TABLE ${b} (id bigint PRIMARY KEY)`))).toMatchObject({
      code: '0A000',
      message: 'multiple ddl statements not supported in a transaction',
    });
    await d.query('ROLLBACK');
    await d.query(`CREATE TABLE ${a} (id bigint PRIMARY KEY)`);
    await d.query('BEGIN');
    await d.query(`INSERT INTO ${a} VALUES (1)`);
    expect(await failure(d.query(`CREATE TABLE ${b} (id bigint PRIMARY KEY)`))).toMatchObject({
      code: '0A000',
      message: 'ddl and dml are not supported in the same transaction',
    });
    await d.query('ROLLBACK');
    await d.query('BEGIN');
    await d.query(`ALTER TABLE ${a} ADD COLUMN v text`);
    expect(await failure(d.query(`INSERT INTO ${a} VALUES (2)`))).toMatchObject({
      message: 'ddl and dml are not supported in the same transaction',
    });
    await d.query('ROLLBACK');
    // A simple query with several statements is one implicit transaction.
    expect(
      await failure(d.query(`CREATE TABLE ${b} (id bigint PRIMARY KEY); INSERT INTO ${a} VALUES (3)`)),
    ).toMatchObject({
      message: 'ddl and dml are not supported in the same transaction',
    });
    expect((await d.query(`SELECT count(*)::int AS n FROM ${a}`)).rows).toEqual([{ n: 0 }]);
    const ok = (await d.query(`BEGIN; INSERT INTO ${a} VALUES (4); COMMIT`)) as unknown as pg.QueryResult[];
    expect(ok.map((r) => r.command)).toEqual(['BEGIN', 'INSERT', 'COMMIT']);
    // Reads mix with either.
    await d.query('BEGIN');
    await d.query(`SELECT * FROM ${a}`);
    await d.query(`CREATE INDEX ASYNC ON ${a} (id)`);
    await d.query('COMMIT');
    // PostgreSQL itself accepts all of it.
    await p.query('BEGIN');
    await p.query(`CREATE TABLE ${name('tx_p1')} (id int)`);
    await p.query(`CREATE TABLE ${name('tx_p2')} (id int)`);
    await p.query(`INSERT INTO ${a} VALUES (5)`);
    await p.query('ROLLBACK');
  });

  it('rows, bytes, age, columns per table and per key: DSQL errors at configurable limits', async () => {
    const limited = await startTestEndpoint({
      limits: {
        rowsPerTransaction: 5,
        bytesPerTransaction: 4096,
        transactionAgeSeconds: 1,
        columnsPerTable: 3,
        columnsPerIndex: 2,
      },
    } satisfies LocalDsqlOptions);
    try {
      const d = await connect(limited);
      const t = name('limits');
      await d.query(`CREATE TABLE ${t} (id bigint PRIMARY KEY, v text)`);
      // Exactly the limit is fine, one more row is not (autocommit: the statement fails, nothing commits).
      await d.query(`INSERT INTO ${t} SELECT g, 'x' FROM generate_series(1, 5) g`);
      expect(
        await failure(d.query(`INSERT INTO ${t} SELECT g, 'x' FROM generate_series(6, 11) g`)),
      ).toMatchObject({
        code: '54000',
        message: 'transaction row limit exceeded',
      });
      // Counted per transaction, across statements, for updates and deletes too.
      await d.query('BEGIN');
      await d.query(`UPDATE ${t} SET v = 'y' WHERE id <= 3`);
      expect(await failure(d.query(`DELETE FROM ${t} WHERE id > 2`))).toMatchObject({ code: '54000' });
      await d.query('ROLLBACK');
      expect((await d.query(`SELECT count(*)::int AS n FROM ${t} WHERE v = 'x'`)).rows).toEqual([{ n: 5 }]);
      const big = await failure(d.query(`INSERT INTO ${t} VALUES (100, repeat('z', 5000))`));
      expect(big).toMatchObject({
        code: '54000',
        message: 'transaction size limit 1mb exceeded',
        detail: 'Current transaction size 1mb 1mb',
      });
      // Primary-key values larger than the key limit (here the default 1 KiB).
      const keyed = name('keyed');
      await d.query(`CREATE TABLE ${keyed} (k text PRIMARY KEY)`);
      await d.query(`INSERT INTO ${keyed} VALUES (repeat('k', 1000))`);
      expect(await failure(d.query(`INSERT INTO ${keyed} VALUES (repeat('k', 1100))`))).toMatchObject({
        code: '54000',
        message: 'key size too large',
      });
      expect(
        await failure(d.query(`CREATE TABLE ${name('wide')} (a int, b int, c int, d int)`)),
      ).toMatchObject({
        code: '54011',
        message: 'tables can have at most 3 columns',
      });
      expect(
        await failure(d.query(`CREATE TABLE ${name('pk3')} (a int, b int, c int, PRIMARY KEY (a, b, c))`)),
      ).toMatchObject({ code: '54011', message: 'more than 2 column keys in an index are not supported' });
      // Transaction age: the next statement fails, and so does COMMIT.
      await d.query('BEGIN');
      await d.query(`SELECT * FROM ${t}`);
      await new Promise((r) => setTimeout(r, 1200));
      expect(await failure(d.query('SELECT 1'))).toMatchObject({
        code: '54000',
        message: 'transaction age limit of 1s exceeded',
      });
      await d.query('ROLLBACK');
      await d.query('BEGIN');
      await d.query(`UPDATE ${t} SET v = 'aged' WHERE id = 1`);
      await new Promise((r) => setTimeout(r, 1200));
      expect(await failure(d.query('COMMIT'))).toMatchObject({
        code: '54000',
        message: 'transaction age limit of 1s exceeded',
      });
      expect((await d.query(`SELECT v FROM ${t} WHERE id = 1`)).rows).toEqual([{ v: 'x' }]);
    } finally {
      await limited.stop();
    }
  });
});

describe('asynchronous DDL', () => {
  it('CREATE INDEX ASYNC returns a job id, sys.jobs and sys.wait_for_job() work; a synchronous CREATE INDEX on rows is refused', async () => {
    const t = name('idx');
    const d = await connect(dsql);
    const p = await connect(plain);
    await d.query(`CREATE TABLE ${t} (id bigint PRIMARY KEY, v text, w text)`);
    // Empty table: a plain CREATE INDEX is accepted.
    const empty = await d.query(`CREATE INDEX ${t}_w ON ${t} (w)`);
    expect(empty.command).toBe('CREATE');
    expect(empty.rows).toEqual([]);
    await d.query(`INSERT INTO ${t} VALUES (1, 'a', 'b')`);
    expect(await failure(d.query(`CREATE INDEX ${t}_v ON ${t} (v)`))).toMatchObject({
      code: '0A000',
      message: 'CREATE INDEX on a table with rows is not supported, please use CREATE INDEX ASYNC',
    });
    const res = await d.query(`CREATE INDEX ASYNC ${t}_v ON ${t} (v)`);
    expect(res.command).toBe('CREATE');
    expect(res.rows).toHaveLength(1);
    const jobId = res.rows[0].job_id as string;
    expect(jobId).toMatch(/^[a-z2-7]{26}$/);
    // The extended protocol too (unique, unnamed).
    const ext = await d.query({
      text: `CREATE UNIQUE INDEX ASYNC ON ${t} (id, v)`,
      values: [],
    } as pg.QueryConfig);
    expect(ext.rows[0].job_id).toMatch(/^[a-z2-7]{26}$/);
    const jobs = await d.query(
      'SELECT job_id, status, job_type, object_name FROM sys.jobs WHERE job_id = $1',
      [jobId],
    );
    expect(jobs.rows).toEqual([
      { job_id: jobId, status: 'completed', job_type: 'INDEX_BUILD', object_name: `${t}_v` },
    ]);
    expect((await d.query('SELECT sys.wait_for_job($1) AS done', [jobId])).rows).toEqual([{ done: true }]);
    expect(dsql.stats().sql.asyncIndexJobs).toBeGreaterThanOrEqual(2);
    // PostgreSQL accepts the synchronous one and knows no ASYNC.
    await p.query('BEGIN');
    await p.query(`CREATE INDEX ${t}_plain ON ${t} (v)`);
    expect((await failure(p.query(`CREATE INDEX ASYNC x ON ${t} (v)`))).code).toBe('42601');
    await p.query('ROLLBACK');
  });
});

describe('what the session reports', () => {
  it("current_database() is the client's, server_version is DSQL's, TimeZone UTC", async () => {
    const client = new pg.Client(pgConfig(dsql, { password: await signTestToken(dsql) }));
    const params: Record<string, string> = {};
    (client as unknown as { connection: NodeJS.EventEmitter }).connection.on(
      'parameterStatus',
      (m: { parameterName: string; parameterValue: string }) => {
        params[m.parameterName] = m.parameterValue;
      },
    );
    await client.connect();
    clients.push(client);
    expect(params.server_version).toBe('16.15');
    expect(params.TimeZone).toBe('UTC');
    const { rows } = await client.query('SELECT current_database() AS db, version() AS v');
    expect(rows).toEqual([{ db: 'postgres', v: 'PostgreSQL 16' }]);
    const shown = await client.query('SHOW server_version');
    expect([shown.command, shown.rows]).toEqual(['SHOW', [{ server_version: '16.15' }]]);
    const p = await connect(plain);
    expect((await p.query('SELECT current_database() AS db')).rows).toEqual([{ db: 'dsql_local' }]);
  });

  it('stay so after the client sets its own search_path (as migration tools and ORMs do)', async () => {
    const d = await connect(dsql);
    const check = async () =>
      expect((await d.query('SELECT current_database() AS db, version() AS v')).rows).toEqual([
        { db: 'postgres', v: 'PostgreSQL 16' },
      ]);
    for (const set of [
      'SET search_path TO public',
      'SET search_path = "$user", public',
      "SET SESSION search_path TO 'public'",
      'set search_path to public;',
    ]) {
      await d.query(set);
      await check();
      // The client's schemas come first, in its order.
      expect((await d.query('SELECT current_schemas(false)::text[] AS s')).rows[0].s[0]).toBe('public');
    }
    await d.query('BEGIN');
    await d.query('SET LOCAL search_path TO public');
    await check();
    await d.query('COMMIT');
    // pg_catalog named explicitly is the client's choice: PostgreSQL's own functions answer.
    await d.query('SET search_path TO pg_catalog, public');
    expect((await d.query('SELECT current_database() AS db')).rows).not.toEqual([{ db: 'postgres' }]);
    await d.query('RESET search_path');
    await check();
  });
});

// Optimistic concurrency (conflicts, OC000 at COMMIT, OC001, deadlocks): local-occ.test.ts.

describe('a migration tool (Kysely)', () => {
  it('a migration DSQL would refuse is refused; the same migration runs with dialect postgres', async () => {
    const { Kysely, Migrator, PostgresDialect } = await import('kysely');
    const migrate = async (endpoint: LocalDsql, tag: string) => {
      const pool = new pg.Pool({
        ...pgConfig(endpoint, { password: () => signTestToken(endpoint) }),
        max: 2,
      });
      pool.on('error', () => {});
      const db = new Kysely<unknown>({ dialect: new PostgresDialect({ pool }) });
      const table = name(`k_${tag}`);
      const migrator = new Migrator({
        db,
        migrationTableName: name(`kmig_${tag}`),
        migrationLockTableName: name(`kmig_lock_${tag}`),
        provider: {
          getMigrations: async () => ({
            '001_accounts': {
              up: async (k: InstanceType<typeof Kysely<unknown>>) => {
                await k.schema
                  .createTable(table)
                  .addColumn('id', 'bigint', (c) => c.primaryKey())
                  .addColumn('email', 'text')
                  .execute();
                await k.schema.createIndex(`${table}_email`).on(table).column('email').execute();
              },
            },
          }),
        },
      });
      try {
        return await migrator.migrateToLatest();
      } finally {
        await db.destroy();
      }
    };
    // Kysely runs each migration in one transaction and records it there: two DDL, then DML.
    const refused = await migrate(dsql, 'd');
    expect(refused.error).toMatchObject({
      code: '0A000',
      message: 'multiple ddl statements not supported in a transaction',
    });
    expect(refused.results?.[0]).toMatchObject({ migrationName: '001_accounts', status: 'Error' });
    const applied = await migrate(plain, 'p');
    expect(applied.error).toBeUndefined();
    expect(applied.results?.[0]).toMatchObject({ migrationName: '001_accounts', status: 'Success' });
  });
});
