import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { pgConfig, signTestToken, startTestEndpoint } from '../../../test/helpers/endpoint.js';
import type { LocalDsql } from '../src/index.js';

let endpoint: LocalDsql;

beforeAll(async () => {
  endpoint = await startTestEndpoint();
});

afterAll(async () => {
  await endpoint.stop();
});

it('large frames both ways survive the relay intact', async () => {
  const client = new pg.Client(
    pgConfig(endpoint, { password: await signTestToken(endpoint), sslnegotiation: 'direct' }),
  );
  await client.connect();
  try {
    const payload = randomBytes(6 * 1024 * 1024).toString('base64'); // ≈ 8 MiB parameter, client → server
    const echoed = await client.query('SELECT md5($1::text) AS h, length($1::text) AS n', [payload]);
    const { createHash } = await import('node:crypto');
    expect(echoed.rows[0]).toEqual({ h: createHash('md5').update(payload).digest('hex'), n: payload.length });
    const big = await client.query("SELECT repeat('x', 5000000) AS s, generate_series(1, 3) AS i");
    expect(big.rows.map((r) => [r.s.length, r.i])).toEqual([
      [5_000_000, 1],
      [5_000_000, 2],
      [5_000_000, 3],
    ]);
    const many = await client.query('SELECT g FROM generate_series(1, 100000) g');
    expect(many.rowCount).toBe(100_000);
  } finally {
    await client.end();
  }
});

it('a pg Pool with concurrent clients and COPY-free workload', async () => {
  const pool = new pg.Pool({
    ...pgConfig(endpoint, { password: () => signTestToken(endpoint) }),
    max: 20,
  });
  try {
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        pool.query('SELECT $1::int * 2 AS n, pg_backend_pid() AS pid', [i]),
      ),
    );
    expect(results.map((r) => r.rows[0].n)).toEqual(Array.from({ length: 200 }, (_, i) => i * 2));
    expect(new Set(results.map((r) => r.rows[0].pid)).size).toBeGreaterThan(1);
    expect(endpoint.stats().currentSessions).toBeLessThanOrEqual(20);
  } finally {
    await pool.end();
  }
  await expect.poll(() => endpoint.stats().currentSessions).toBe(0);
});

it('errors, notices and a failed transaction relay like PostgreSQL', async () => {
  const client = new pg.Client(pgConfig(endpoint, { password: await signTestToken(endpoint) }));
  await client.connect();
  const notices: string[] = [];
  client.on('notice', (n) => notices.push(n.message ?? ''));
  try {
    await client.query('BEGIN');
    await expect(client.query('SELECT 1/0')).rejects.toMatchObject({ code: '22012' });
    // The client may see the error before the endpoint has relayed ReadyForQuery.
    await expect.poll(() => endpoint.sessions()[0]?.txStatus).toBe('E');
    await expect(client.query('SELECT 1')).rejects.toMatchObject({ code: '25P02' });
    await client.query('ROLLBACK');
    await client.query("DO $$ BEGIN RAISE NOTICE 'hello'; END $$");
    expect(notices).toContain('hello');
    await expect.poll(() => endpoint.sessions()[0]?.txStatus).toBe('I');
  } finally {
    await client.end();
  }
});

it('strictSql refuses what DSQL does not support, keeping transaction state right', async () => {
  const strict = await startTestEndpoint({ strictSql: true });
  const client = new pg.Client(
    pgConfig(strict, { password: await signTestToken(strict), sslnegotiation: 'direct' }),
  );
  await client.connect();
  try {
    await expect(client.query('SET statement_timeout = 1000')).rejects.toMatchObject({
      code: '0A000',
      message: 'setting configuration parameter "statement_timeout" not supported',
    });
    await expect(client.query('  set session "TimeZone" to UTC')).rejects.toMatchObject({
      message: 'setting configuration parameter "timezone" not supported',
    });
    await client.query('BEGIN');
    await expect(
      client.query({ text: 'SAVEPOINT a', queryMode: 'extended' } as pg.QueryConfig),
    ).rejects.toMatchObject({ code: '0A000', message: 'SAVEPOINT not supported' });
    await expect.poll(() => strict.sessions()[0]?.txStatus).toBe('E');
    await client.query('ROLLBACK');
    await expect(client.query('SET TRANSACTION ISOLATION LEVEL SERIALIZABLE')).rejects.toMatchObject({
      code: '0A000',
    });
    await expect(client.query('TRUNCATE foo')).rejects.toMatchObject({ message: 'TRUNCATE not supported' });
    await expect(client.query('CREATE TEMP TABLE t (x int)')).rejects.toMatchObject({ code: '0A000' });
    expect((await client.query("SELECT 'SET x' AS s")).rows).toEqual([{ s: 'SET x' }]);
    expect(strict.stats().unsupportedRejected).toBe(6);
    strict.faults.setStrictSql(false);
    await client.query('SET statement_timeout = 1000');
  } finally {
    await client.end();
    await strict.stop();
  }
});
