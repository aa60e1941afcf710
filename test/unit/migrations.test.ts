/**
 * The pure parts of the migration runner: the statement DSQL needs (CREATE INDEX → ASYNC) and the
 * checks made before anything is sent.
 */
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { dsqlStatement, MigrationError, runMigrations } from '../../src/migrations.js';

describe('dsqlStatement', () => {
  it.each([
    ['CREATE INDEX "i" ON "t" USING btree ("c");', 'CREATE INDEX ASYNC "i" ON "t" USING btree ("c");'],
    ['create unique index i on t (c)', 'create unique index ASYNC i on t (c)'],
    ['  CREATE INDEX IF NOT EXISTS i ON t (c)\n', 'CREATE INDEX ASYNC IF NOT EXISTS i ON t (c)'],
    ['CREATE\n  INDEX\ti ON t (c)', 'CREATE\n  INDEX ASYNC i ON t (c)'],
    [
      '-- for lookups by owner\nCREATE INDEX i ON t (c)',
      '-- for lookups by owner\nCREATE INDEX ASYNC i ON t (c)',
    ],
    ['/* a\n b */ CREATE INDEX i ON t (c)', '/* a\n b */ CREATE INDEX ASYNC i ON t (c)'],
  ])('%j → %j', (given, sent) => {
    expect(dsqlStatement(given)).toBe(sent);
  });

  it.each([
    'CREATE INDEX ASYNC i ON t (c)',
    'create index async i on t (c)',
    'CREATE TABLE index_log (id int PRIMARY KEY)',
    "INSERT INTO t (s) VALUES ('create index i on t (c)')",
    'DROP INDEX i',
    'CREATE INDEX CONCURRENTLY i ON t (c)',
  ])('leaves %j alone (trimmed)', (given) => {
    expect(dsqlStatement(`  ${given} `)).toBe(given);
  });

  it('drops nothing but surrounding whitespace', () => {
    expect(dsqlStatement('\n\t')).toBe('');
  });
});

describe('runMigrations: checks before any statement', () => {
  // Nothing listens on port 1: any statement sent would fail with ECONNREFUSED, not these errors.
  const unreachable = new pg.Pool({ host: '127.0.0.1', port: 1, max: 1 });
  afterAll(() => unreachable.end());

  it('refuses a bookkeeping table name that is not an identifier', async () => {
    for (const table of ['x; DROP TABLE y', 'a.b.c', '"quoted"', '', '1abc'])
      await expect(runMigrations(unreachable, [], { table })).rejects.toThrow(/table must be an identifier/);
  });

  it('refuses two migrations with one name', async () => {
    const m = { name: '0001', statements: ['SELECT 1'] };
    const err = await runMigrations(unreachable, [m, m]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MigrationError);
    expect(err).toMatchObject({ migration: '0001' });
  });
});
