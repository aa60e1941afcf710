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
    // DSQL has no DO blocks (PL/pgSQL): notices go through the plain relay.
    const plain = await startTestEndpoint({ dialect: 'postgres' });
    const relayed = new pg.Client(pgConfig(plain, { password: await signTestToken(plain) }));
    await relayed.connect();
    relayed.on('notice', (n) => notices.push(n.message ?? ''));
    await relayed.query("DO $$ BEGIN RAISE NOTICE 'hello'; END $$");
    await relayed.end();
    await plain.stop();
    expect(notices).toContain('hello');
    await expect.poll(() => endpoint.sessions()[0]?.txStatus).toBe('I');
  } finally {
    await client.end();
  }
});

it('refusals keep the transaction state right; the postgres dialect accepts the same statements', async () => {
  const plain = await startTestEndpoint({ dialect: 'postgres' });
  const client = new pg.Client(
    pgConfig(endpoint, { password: await signTestToken(endpoint), sslnegotiation: 'direct' }),
  );
  const relayed = new pg.Client(pgConfig(plain, { password: await signTestToken(plain) }));
  await client.connect();
  await relayed.connect();
  try {
    await expect(client.query('SET statement_timeout = 1000')).rejects.toMatchObject({
      code: '0A000',
      message: 'setting configuration parameter "statement_timeout" not supported',
    });
    await client.query('BEGIN');
    await expect(
      client.query({ text: 'SAVEPOINT a', queryMode: 'extended' } as pg.QueryConfig),
    ).rejects.toMatchObject({ code: '0A000', message: 'unsupported statement: SAVEPOINT' });
    await expect.poll(() => endpoint.sessions().find((s) => s.txStatus !== 'I')?.txStatus).toBe('E');
    await expect(client.query('SELECT 1')).rejects.toMatchObject({ code: '25P02' });
    await client.query('ROLLBACK');
    expect((await client.query("SELECT 'SET x' AS s")).rows).toEqual([{ s: 'SET x' }]);
    await relayed.query('SET statement_timeout = 1000');
    await relayed.query('BEGIN');
    await relayed.query({ text: 'SAVEPOINT a', queryMode: 'extended' } as pg.QueryConfig);
    await relayed.query('ROLLBACK');
  } finally {
    await client.end();
    await relayed.end();
    await plain.stop();
  }
});
