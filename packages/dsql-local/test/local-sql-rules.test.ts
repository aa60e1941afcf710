/** The SQL layer's pure parts: parsing (with ASYNC), classification and the transaction rules. */
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS, resolveLimits } from '../src/sql/limits.js';
import { loadParser, type ParsedStatement, parseSql } from '../src/sql/parser.js';
import { statementKind, statementRefusal } from '../src/sql/rules.js';
import { refusalSql } from '../src/sql/session.js';
import { TransactionRules } from '../src/sql/transaction.js';

beforeAll(() => loadParser());

function one(sql: string): ParsedStatement {
  const r = parseSql(sql);
  if (!r.ok) throw new Error(r.message);
  expect(r.statements).toHaveLength(1);
  return r.statements[0]!;
}

describe('parser', () => {
  it('finds ASYNC only as the keyword after CREATE [UNIQUE] INDEX, by token', () => {
    expect(one('CREATE INDEX ASYNC i ON t (a)')).toMatchObject({ type: 'IndexStmt', async: true });
    expect(one('create unique index async if not exists i on t (a)')).toMatchObject({ async: true });
    expect(one('CREATE INDEX /* ASYNC */ i ON t (a)').async).toBe(false);
    expect(one('CREATE INDEX "async" ON t (a)')).toMatchObject({ async: false, node: { idxname: 'async' } });
    expect(one("SELECT 'CREATE INDEX ASYNC'").async).toBe(false);
    // The keyword is blanked out, so the statement text is plain PostgreSQL.
    expect(one('CREATE INDEX ASYNC i ON t (a)').text).toBe('CREATE INDEX       i ON t (a)');
  });

  it('splits statements by byte offsets, multi-byte text included', () => {
    const r = parseSql("SELECT 'é€'; CREATE INDEX ASYNC ON t (a); SELECT 2");
    expect(r.ok && r.statements.map((s) => [s.type, s.text, s.async])).toEqual([
      ['SelectStmt', "SELECT 'é€'", false],
      ['IndexStmt', 'CREATE INDEX       ON t (a)', true],
      ['SelectStmt', 'SELECT 2', false],
    ]);
  });

  it('syntax errors are left to PostgreSQL; results are cached by text', () => {
    expect(parseSql('SELEC 1')).toMatchObject({ ok: false });
    expect(parseSql('SELECT 1')).toBe(parseSql('SELECT 1'));
  });
});

describe('classification', () => {
  it('kinds for the transaction rules', () => {
    const kinds = [
      'BEGIN',
      'START TRANSACTION',
      'COMMIT',
      'END',
      'ROLLBACK',
      'CREATE TABLE t (a int)',
      'DROP TABLE t',
      'CREATE INDEX ON t (a)',
      'INSERT INTO t VALUES (1)',
      'UPDATE t SET a = 1',
      'DELETE FROM t',
      'WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x',
      'SELECT 1',
      'SHOW search_path',
      'EXPLAIN INSERT INTO t VALUES (1)',
      'EXPLAIN ANALYZE INSERT INTO t VALUES (1)',
      'EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1',
      'EXPLAIN (ANALYZE false) DELETE FROM t',
      'EXPLAIN (ANALYZE 0) DELETE FROM t',
      'EXPLAIN (ANALYZE 1) DELETE FROM t',
      'EXPLAIN ANALYZE SELECT 1',
    ].map((sql) => statementKind(one(sql)));
    expect(kinds).toEqual([
      'begin',
      'begin',
      'commit',
      'commit',
      'rollback',
      'ddl',
      'ddl',
      'ddl',
      'dml',
      'dml',
      'dml',
      'dml',
      'read',
      'other',
      'read',
      // EXPLAIN ANALYZE runs the statement: it writes.
      'dml',
      'dml',
      'read',
      'read',
      'dml',
      'read',
    ]);
  });

  it('refusals carry DSQL codes; what DSQL runs is not refused', () => {
    const refusal = (sql: string) => statementRefusal(one(sql), DEFAULT_LIMITS);
    expect(refusal('SET TimeZone = UTC')).toBeUndefined();
    expect(refusal('SET LOCAL work_mem = 1')).toEqual({
      code: '0A000',
      message: 'setting configuration parameter "work_mem" not supported',
    });
    expect(refusal('CREATE TABLE t (a public.my_domain)')).toBeUndefined();
    expect(refusal('CREATE TABLE t (a int4[])')?.message).toBe('datatype integer[] not supported');
    expect(refusal('CREATE TABLE t (a bigint GENERATED ALWAYS AS IDENTITY (CACHE 65536))')).toBeUndefined();
    expect(refusal('ALTER SEQUENCE s RESTART')).toBeUndefined();
    expect(refusal('ALTER SEQUENCE s CACHE 2')?.code).toBe('0A000');
    expect(refusal('SELECT * FROM t FOR UPDATE SKIP LOCKED')?.message).toBe(
      'unsupported locking clause: SKIP LOCKED',
    );
    expect(refusal('SELECT * FROM (SELECT * FROM t FOR SHARE) s')?.message).toBe(
      'unsupported locking clause: FOR SHARE',
    );
    // EXPLAIN [ANALYZE] is judged by the statement it explains (ANALYZE runs it).
    expect(refusal('EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1')?.code).toBe('0A000');
    expect(refusal('EXPLAIN SELECT * FROM t FOR SHARE')?.message).toBe(
      'unsupported locking clause: FOR SHARE',
    );
    expect(refusal('EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE')).toBeUndefined();
    expect(refusal('COPY t FROM STDIN')).toBeUndefined();
    expect(refusal("COPY t FROM '/etc/passwd'")?.code).toBe('0A000');
    expect(refusal('CREATE TABLE t (a int) PARTITION BY RANGE (a)')?.message).toBe(
      'unsupported CREATE TABLE PARTITION BY',
    );
  });

  it('limits come from the options and must be positive', () => {
    const limits = resolveLimits({ columnsPerTable: 2 });
    expect(statementRefusal(one('CREATE TABLE t (a int, b int, c int)'), limits)).toEqual({
      code: '54011',
      message: 'tables can have at most 2 columns',
    });
    expect(() => resolveLimits({ rowsPerTransaction: 0 })).toThrow(
      'limits.rowsPerTransaction must be a number > 0',
    );
    expect(() => resolveLimits({ transactionAgeSeconds: Number.NaN })).toThrow(RangeError);
  });

  it('refusal SQL keeps the parameters a Bind will send, and quotes the text', () => {
    expect(refusalSql({ code: '0A000', message: "it's" }, 2)).toBe(
      "SELECT dsql_local.refuse('0A000', 'it''s', NULL, $1::text, $2::text)",
    );
  });
});

describe('transaction rules', () => {
  it('one DDL, no DDL with DML, implicit transactions end with their batch', () => {
    const tx = new TransactionRules(() => 300);
    expect(tx.statement('ddl', 0)).toBeUndefined();
    expect(tx.statement('ddl', 0)?.message).toBe('multiple ddl statements not supported in a transaction');
    tx.endBatch();
    expect(tx.statement('dml', 0)).toBeUndefined();
    expect(tx.statement('ddl', 0)?.message).toBe('ddl and dml are not supported in the same transaction');
    tx.endBatch();
    expect(tx.statement('begin', 0)).toBeUndefined();
    expect(tx.statement('ddl', 0)).toBeUndefined();
    tx.endBatch(); // an explicit transaction outlives its batch
    expect(tx.statement('read', 0)).toBeUndefined();
    expect(tx.statement('dml', 0)?.message).toBe('ddl and dml are not supported in the same transaction');
    expect(tx.statement('commit', 0)).toBeUndefined();
    expect(tx.statement('dml', 0)).toBeUndefined();
  });

  it('age is measured from BEGIN; a failed transaction is left to PostgreSQL (25P02)', () => {
    const tx = new TransactionRules(() => 1);
    tx.statement('begin', 1000);
    expect(tx.statement('read', 1900)).toBeUndefined();
    expect(tx.statement('read', 2001)).toEqual({
      code: '54000',
      message: 'transaction age limit of 1s exceeded',
    });
    tx.status('E');
    expect(tx.statement('ddl', 2002)).toBeUndefined();
    tx.status('I');
    expect(tx.explicit).toBe(false);
    expect(tx.tooOld(10_000)).toBe(false);
  });
});
