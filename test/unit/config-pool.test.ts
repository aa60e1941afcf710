// What createPool/connect hand to pg, checked without any network.
import { inspect } from 'node:util';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { PACKAGE_VERSION, resolveConfig } from '../../src/config.js';
import { DsqlConfigError } from '../../src/errors.js';
import { connect, createPool, DsqlClient, toPgConfig } from '../../src/pool.js';

const HOST = 'abc.dsql.us-east-1.on.aws';
const SECRET = 'PoolUnitTestSecretKey';

describe('toPgConfig', () => {
  it('verifies TLS fully against the cluster name and dials hostaddr', () => {
    const password = async () => 'token';
    const c = toPgConfig(
      resolveConfig({ host: HOST, hostaddr: '127.0.0.1', ssl: { ca: 'PEM' } }, {}),
      password,
    );
    expect(c).toMatchObject({
      host: '127.0.0.1',
      port: 5432,
      user: 'admin',
      database: 'postgres',
      sslnegotiation: 'direct',
      ssl: { rejectUnauthorized: true, servername: HOST, ca: 'PEM' },
      application_name: `dsql-lambda/${PACKAGE_VERSION}`,
      max: 4,
      min: 0,
      idleTimeoutMillis: 300_000,
      connectionTimeoutMillis: 10_000,
      maxLifetimeSeconds: 3300,
    });
    expect(c.password).toBe(password);
    const plain = toPgConfig(resolveConfig({ host: HOST, sslNegotiation: 'postgres' }, {}), password);
    expect(plain.host).toBe(HOST);
    expect(plain.sslnegotiation).toBe('postgres');
    expect(plain.ssl).toEqual({ rejectUnauthorized: true, servername: HOST });
  });

  it('dials a DNS-name hostaddr through a stream factory, keeping host for SNI', () => {
    const c = toPgConfig(resolveConfig({ host: HOST, hostaddr: 'vpce-1.example.com' }, {}), async () => 't');
    expect(c.host).toBe(HOST);
    expect(typeof c.stream).toBe('function');
    expect((c.ssl as { servername: string }).servername).toBe(HOST);
    const ipv6 = toPgConfig(resolveConfig({ host: HOST, hostaddr: '::1' }, {}), async () => 't');
    expect(ipv6.host).toBe('::1');
    expect(ipv6.stream).toBeUndefined();
  });

  it('passes other pg options through', () => {
    const c = toPgConfig(
      resolveConfig({ host: HOST, query_timeout: 1234, keepAlive: true }, {}),
      async () => 't',
    );
    expect(c).toMatchObject({ query_timeout: 1234, keepAlive: true });
  });
});

describe('createPool', () => {
  it('returns a real pg.Pool and does no I/O', async () => {
    let calls = 0;
    const pool = createPool({
      host: HOST,
      credentials: async () => {
        calls++;
        return { accessKeyId: 'AKID', secretAccessKey: SECRET };
      },
    });
    expect(pool).toBeInstanceOf(pg.Pool);
    expect(pool.totalCount).toBe(0);
    expect(calls).toBe(0);
    expect(pool.listenerCount('error')).toBeGreaterThan(0);
    expect(inspect(pool, { depth: 6 })).not.toContain(SECRET);
    expect(JSON.stringify(pool.options)).not.toContain(SECRET);
    await pool.end();
  });

  it('throws DsqlConfigError synchronously', () => {
    expect(() => createPool({ host: HOST, ssl: { rejectUnauthorized: false } as never })).toThrow(
      DsqlConfigError,
    );
  });

  it('connect rejects a bad configuration without I/O', async () => {
    await expect(connect({ host: 'db.example.com' })).rejects.toBeInstanceOf(DsqlConfigError);
  });

  it('DsqlClient never lets an error event crash the process', () => {
    const client = new DsqlClient({ host: '127.0.0.1' });
    expect(() => client.emit('error', new Error('server closed the connection'))).not.toThrow();
  });
});
