import pg from 'pg';
import { expect, it } from 'vitest';
import { pgConfig, signTestToken, startTestEndpoint } from '../../../test/helpers/endpoint.js';

it('smoke', async () => {
  const e = await startTestEndpoint({ upstream: 'postgresql://postgres@127.0.0.1:5432/dsql_sql_dev' });
  const c = new pg.Client(pgConfig(e, { password: await signTestToken(e) }));
  await c.connect();
  const q = async (sql: string, params?: unknown[]) => {
    try { const r = await c.query(sql, params); return `${r.command} ${r.rowCount} ${JSON.stringify(r.rows)}`; }
    catch (err) { const x = err as { code: string; message: string }; return `ERR ${x.code} ${x.message}`; }
  };
  const out: string[] = [];
  for (const s of [
    'select current_database(), version()', 'show server_version', 'show timezone',
    'drop table if exists sm', 'create table sm (id bigint primary key, v text)',
    'create table sm2 (id serial primary key)', 'create table sm3 (j jsonb)',
    'begin', 'create table sm4 (id int)', 'insert into sm values (1, $1)', 'rollback',
    "insert into sm values (1, 'a'), (2, 'b')",
    'create index sm_v on sm (v)', 'create index async sm_v on sm (v)', 'select * from sys.jobs',
    'savepoint x', 'truncate sm', 'select * from sm for share', 'select * from sm where id = $1 for share',
    'begin isolation level serializable', 'set statement_timeout = 5', 'set search_path = public',
    'insert into sm select g, null from generate_series(10, 3020) g',
    'select 1; select 2',
  ]) out.push(`${s} -> ${await q(s, s.includes('$1') ? [1] : undefined)}`);
  console.log(out.join('\n'));
  console.log(JSON.stringify(e.stats().sql), e.stats().unsupportedRejected);
  await c.end();
  await e.stop();
});
