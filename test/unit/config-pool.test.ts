// What createPool/connect hand to pg, checked without any network.
import { inspect } from 'node:util';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { type DsqlConfig, PACKAGE_VERSION, resolveConfig } from '../../src/config.js';
import { DsqlConfigError } from '../../src/errors.js';
import { connect, createPool, DsqlPool } from '../../src/pool.js';

const HOST = 'abc.dsql.us-east-1.on.aws';
const SECRET = 'PoolUnitTestSecretKey';

/** The settings a pool hands pg-pool, and pg-pool each new client (no environment). */
const pgConfigOf = (config: DsqlConfig) => new DsqlPool(resolveConfig(config, {})).options;

describe('the pg settings of a pool', () => {
  it('verifies TLS fully against the cluster name and dials hostaddr', () => {
    const c = pgConfigOf({ host: HOST, hostaddr: '127.0.0.1', ssl: { ca: 'PEM' } });
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
      allowExitOnIdle: true,
      // pg-pool gets no timers: the checkout bounds the wait (connectionTimeoutMillis) and keeps lifetimes.
      connectionTimeoutMillis: 0,
      maxLifetimeSeconds: 0,
    });
    // No password: the client supplies the token it obtained before dialling.
    expect(c.password).toBeUndefined();
    const plain = pgConfigOf({ host: HOST, sslNegotiation: 'postgres' });
    expect(plain.host).toBe(HOST);
    expect(plain.sslnegotiation).toBe('postgres');
    expect(plain.ssl).toMatchObject({ rejectUnauthorized: true, servername: HOST });
  });

  it('dials a DNS-name hostaddr through a stream factory, keeping host for SNI', () => {
    const c = pgConfigOf({ host: HOST, hostaddr: 'vpce-1.example.com' });
    expect(c.host).toBe(HOST);
    expect(typeof c.stream).toBe('function');
    expect((c.ssl as { servername: string }).servername).toBe(HOST);
    const ipv6 = pgConfigOf({ host: HOST, hostaddr: '::1' });
    expect(ipv6.host).toBe('::1');
    expect(ipv6.stream).toBeUndefined();
  });

  it('passes other pg options through', () => {
    const c = pgConfigOf({ host: HOST, query_timeout: 1234, keepAlive: true });
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

  it('one TLS context serves every connection of a pool (built on first use)', () => {
    const ssl = pgConfigOf({ host: HOST, ssl: { ca: 'PEM-IS-NOT-PARSED-HERE' } }).ssl;
    const noCa = pgConfigOf({ host: HOST }).ssl as { secureContext: unknown };
    // What pg does with `ssl` before tls.connect: Object.assign into the options.
    const first = Object.assign({}, noCa);
    const second = Object.assign({}, noCa);
    expect(first.secureContext).toBeDefined();
    expect(second.secureContext).toBe(first.secureContext);
    expect(Object.getOwnPropertyDescriptor(ssl, 'secureContext')?.get).toBeTypeOf('function');
  });

  it('a pool created and never ended lets a script exit (allowExitOnIdle)', () => {
    expect(createPool({ host: HOST }).options.allowExitOnIdle).toBe(true);
    expect(createPool({ host: HOST, allowExitOnIdle: false }).options.allowExitOnIdle).toBe(false);
  });
});
