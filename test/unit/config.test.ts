import { readFileSync } from 'node:fs';
import { inspect } from 'node:util';
import fc from 'fast-check';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { type DsqlConfig, PACKAGE_VERSION, resolveConfig } from '../../src/config.js';
import { DSQL_DEFAULTS } from '../../src/defaults.js';
import { DsqlConfigError } from '../../src/errors.js';

const ID = 'abcdefghijklmnopqrstuvwxyz'; // 26 characters: a cluster ID
const NO_ENV = {};

function configError(fn: () => unknown): DsqlConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(DsqlConfigError);
    return err as DsqlConfigError;
  }
  throw new Error('expected a DsqlConfigError');
}

describe('connection strings (the Go seed connector examples and more)', () => {
  const cases: Array<[string, Partial<ReturnType<typeof resolveConfig>>]> = [
    [
      'postgres://admin@cluster.dsql.us-east-1.on.aws:5432/postgres?region=us-east-1&profile=dev&tokenDurationSecs=300',
      {
        host: 'cluster.dsql.us-east-1.on.aws',
        region: 'us-east-1',
        user: 'admin',
        database: 'postgres',
        port: 5432,
        tokenDurationSecs: 300,
        action: 'DbConnectAdmin',
      },
    ],
    [
      'dsql://admin@cluster.dsql.us-west-2.on.aws/postgres',
      {
        host: 'cluster.dsql.us-west-2.on.aws',
        region: 'us-west-2',
        user: 'admin',
        port: 5432,
        tokenDurationSecs: 900,
      },
    ],
    [
      'postgresql://myuser@cluster.dsql.eu-west-1.on.aws:5433/mydb?tokenDurationSecs=604800',
      {
        user: 'myuser',
        database: 'mydb',
        port: 5433,
        region: 'eu-west-1',
        action: 'DbConnect',
        tokenDurationSecs: 604800,
      },
    ],
    [
      'dsql://admin@cluster.dsqlbeta.ap-northeast-1.on.aws',
      { region: 'ap-northeast-1', database: 'postgres' },
    ],
    [`dsql://admin@${ID}?region=us-east-2`, { host: `${ID}.dsql.us-east-2.on.aws`, region: 'us-east-2' }],
    ['postgres://reader@db.internal.example.com/postgres?region=eu-central-1', { region: 'eu-central-1' }],
    [
      'postgres://admin@cluster.dsql.us-east-1.on.aws?region=us-west-2',
      { region: 'us-west-2' }, // explicit region wins over the host's
    ],
    ['postgres://my%40user@cluster.dsql.us-east-1.on.aws/my%20db', { user: 'my@user', database: 'my db' }],
    [
      'DSQL://admin@CLUSTER.DSQL.US-EAST-1.ON.AWS',
      { host: 'cluster.dsql.us-east-1.on.aws', region: 'us-east-1' },
    ],
    [
      'postgres://admin@cluster.dsql.us-east-1.on.aws?sslnegotiation=postgres&hostaddr=127.0.0.1&application_name=orders',
      {
        sslNegotiation: 'postgres',
        hostaddr: '127.0.0.1',
        applicationName: `orders:dsql-lambda/${PACKAGE_VERSION}`,
      },
    ],
    [
      'postgres://cluster.dsql.us-east-1.on.aws?user=app&dbname=postgres',
      { user: 'app', action: 'DbConnect' },
    ],
    [
      'postgres://admin@cluster.dsql.us-east-1.on.aws?sslmode=verify-full',
      { connectionTimeoutMillis: 10_000 },
    ],
    [
      'postgres://admin@cluster.dsql.us-east-1.on.aws?application_name=a%2Bb+c',
      { applicationName: `a+b+c:dsql-lambda/${PACKAGE_VERSION}` },
    ],
  ];
  it.each(cases)('%s', (url, expected) => {
    expect(resolveConfig(url, NO_ENV)).toMatchObject(expected);
  });

  it('a connection string sets only what it says: the rest comes from the environment and defaults', () => {
    const env = { PGPORT: '6543', PGUSER: 'envuser', DSQL_ENDPOINT: 'env.dsql.us-east-1.on.aws' };
    expect(
      resolveConfig('dsql://admin@abc.dsql.us-east-1.on.aws/postgres?tokenDurationSecs=300', env),
    ).toMatchObject({
      user: 'admin',
      host: 'abc.dsql.us-east-1.on.aws',
      database: 'postgres',
      tokenDurationSecs: 300,
      port: 6543,
      maxLifetimeSeconds: DSQL_DEFAULTS.maxLifetimeSeconds,
    });
    expect(resolveConfig('postgres://', env)).toEqual(resolveConfig(undefined, env));
  });

  const errors: Array<[string, string]> = [
    ['mysql://admin@cluster.dsql.us-east-1.on.aws', 'connectionString'],
    ['host=cluster.dsql.us-east-1.on.aws user=admin', 'connectionString'],
    ['postgres://admin:hunter2@cluster.dsql.us-east-1.on.aws', 'password'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?password=x', 'connectionString'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?sslrootcert=/x', 'connectionString'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?nope=1', 'connectionString'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?tokenDurationSecs=0', 'tokenDurationSecs'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?tokenDurationSecs=604801', 'tokenDurationSecs'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?tokenDurationSecs=1.5', 'tokenDurationSecs'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?tokenDurationSecs=', 'tokenDurationSecs'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?sslnegotiation=tls', 'sslNegotiation'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?sslmode=disable', 'sslmode'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?region=', 'region'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?region=US_EAST', 'region'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws/a/b', 'database'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws/%E0%A4%A', 'database'],
    ['postgres://%E0%A4%A@cluster.dsql.us-east-1.on.aws', 'user'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws:99999', 'connectionString'],
    ['postgres://admin@[::1]/postgres?region=us-east-1', 'host'],
    ['postgres://admin@127.0.0.1/postgres?region=us-east-1', 'host'],
    ['postgres://admin@db.example.com/postgres', 'region'],
    [`postgres://admin@${ID}`, 'region'],
    ['postgres:///postgres', 'host'],
    ['postgres://admin@cluster.dsql.us-east-1.on.aws?connect_timeout=5', 'connectionString'],
  ];
  it.each(errors)('%s → DsqlConfigError(%s)', (url, field) => {
    expect(configError(() => resolveConfig(url, NO_ENV)).field).toBe(field);
  });

  it('refuses a connectionString that is not a string, whatever it converts to', () => {
    const weird = { connectionString: { toString: 0 } } as unknown as DsqlConfig;
    expect(configError(() => resolveConfig(weird, NO_ENV)).field).toBe('connectionString');
  });

  it('never repeats a password from the string', () => {
    const err = configError(() =>
      resolveConfig('postgres://admin:S3cr3tValue@cluster.dsql.us-east-1.on.aws', NO_ENV),
    );
    expect(err.message).not.toContain('S3cr3tValue');
    expect(err.cause).toBeUndefined();
    // An unparseable URL: the URL parser's own error would carry the whole input.
    const bad = configError(() => resolveConfig('postgres://admin:S3cr3tValue@host:port/x', NO_ENV));
    expect(bad.message).not.toContain('S3cr3tValue');
    expect(bad.cause).toBeUndefined();
  });
});

describe('host and region', () => {
  it('reads the region from endpoint host names', () => {
    const regionOf = (host: string) => resolveConfig({ host }, { AWS_REGION: 'zz-env-1' }).region;
    expect(regionOf('abc.dsql.us-east-1.on.aws')).toBe('us-east-1');
    expect(regionOf('abc.dsql-gamma.eu-west-3.on.aws')).toBe('eu-west-3');
    expect(regionOf('abc.dsql.us-east-1.amazonaws.com')).toBe('zz-env-1');
    expect(regionOf('vpce-1.example.com')).toBe('zz-env-1');
  });

  it('expands a cluster ID with the explicit region, then AWS_REGION, then AWS_DEFAULT_REGION', () => {
    expect(resolveConfig({ host: ID, region: 'us-west-2' }, { AWS_REGION: 'eu-west-1' }).host).toBe(
      `${ID}.dsql.us-west-2.on.aws`,
    );
    expect(resolveConfig({ host: ID }, { AWS_REGION: 'eu-west-1', AWS_DEFAULT_REGION: 'x-1' }).host).toBe(
      `${ID}.dsql.eu-west-1.on.aws`,
    );
    expect(resolveConfig({ host: ID }, { AWS_DEFAULT_REGION: 'ap-south-1' }).region).toBe('ap-south-1');
  });

  it('prefers explicit region, then the host, then the environment', () => {
    const host = 'abc.dsql.us-east-1.on.aws';
    expect(resolveConfig({ host, region: 'eu-west-1' }, { AWS_REGION: 'sa-east-1' }).region).toBe(
      'eu-west-1',
    );
    expect(resolveConfig({ host }, { AWS_REGION: 'sa-east-1' }).region).toBe('us-east-1');
    expect(resolveConfig({ host: 'vpce.example.com' }, { AWS_REGION: 'sa-east-1' }).region).toBe('sa-east-1');
  });

  it('takes host, hostaddr, user, database and port from the environment', () => {
    const env = {
      PGHOST: 'ignored.dsql.us-east-1.on.aws',
      DSQL_ENDPOINT: 'abc.dsql.us-east-1.on.aws',
      DSQL_HOSTADDR: '10.0.0.1',
      PGUSER: 'app',
      PGDATABASE: 'postgres',
      PGPORT: '6543',
    };
    expect(resolveConfig(undefined, env)).toMatchObject({
      host: 'abc.dsql.us-east-1.on.aws',
      hostaddr: '10.0.0.1',
      user: 'app',
      port: 6543,
      action: 'DbConnect',
    });
    expect(resolveConfig(undefined, { PGHOST: 'abc.dsql.us-east-1.on.aws' }).host).toBe(
      'abc.dsql.us-east-1.on.aws',
    );
    expect(resolveConfig({ user: 'admin', port: 5432 }, env)).toMatchObject({ user: 'admin', port: 5432 });
    expect(configError(() => resolveConfig(undefined, { ...env, PGPORT: 'x' })).field).toBe('PGPORT');
  });

  it('requires a host', () => {
    expect(configError(() => resolveConfig(undefined, NO_ENV)).field).toBe('host');
    expect(configError(() => resolveConfig({ host: '' }, NO_ENV)).field).toBe('host');
    expect(configError(() => resolveConfig({ host: 'bad host!' }, NO_ENV)).field).toBe('host');
  });
});

describe('defaults and validation', () => {
  const host = 'abc.dsql.us-east-1.on.aws';

  it('applies every default from DSQL_DEFAULTS', () => {
    const r = resolveConfig({ host }, NO_ENV);
    expect(r).toMatchObject({
      user: DSQL_DEFAULTS.user,
      database: DSQL_DEFAULTS.database,
      port: DSQL_DEFAULTS.port,
      tokenDurationSecs: 900,
      max: 4,
      min: 0,
      maxLifetimeSeconds: 3300,
      idleTimeoutMillis: 300_000,
      connectionTimeoutMillis: 10_000,
      maxIdleMillis: 300_000,
      thawThresholdMillis: 5_000,
      validationTimeoutMillis: 1_000,
      sslNegotiation: 'direct',
      applicationName: `dsql-lambda/${PACKAGE_VERSION}`,
      hostaddr: undefined,
      ca: undefined,
      action: 'DbConnectAdmin',
    });
    expect(r.credentialSource).toEqual({ kind: 'default-chain' });
  });

  it('sizes the pool from AWS_LAMBDA_MAX_CONCURRENCY', () => {
    expect(resolveConfig({ host }, { AWS_LAMBDA_MAX_CONCURRENCY: '32' }).max).toBe(32);
    expect(resolveConfig({ host, max: 2 }, { AWS_LAMBDA_MAX_CONCURRENCY: '32' }).max).toBe(2);
    expect(resolveConfig({ host }, { AWS_LAMBDA_MAX_CONCURRENCY: 'lots' }).max).toBe(4);
    expect(resolveConfig({ host }, { AWS_LAMBDA_MAX_CONCURRENCY: '0' }).max).toBe(4);
  });

  it('reads integers in text as digits only, leading zeros included; anything else sizes nothing', () => {
    // libpq reads PGPORT=05432 as 5432; a query's tokenDurationSecs=0300 as 300.
    expect(resolveConfig({ host }, { PGPORT: '05432' }).port).toBe(5432);
    expect(resolveConfig(`postgres://admin@${host}?tokenDurationSecs=0300`, NO_ENV).tokenDurationSecs).toBe(
      300,
    );
    expect(resolveConfig({ host }, { AWS_LAMBDA_MAX_CONCURRENCY: '08' }).max).toBe(8);
    // Not digits: ignored like 'lots', never a DsqlConfigError at init.
    for (const junk of ['-1', '2.5', 'Infinity', '1e+21', '10000000000'])
      expect(resolveConfig({ host }, { AWS_LAMBDA_MAX_CONCURRENCY: junk }).max).toBe(4);
    for (const junk of ['-5432', '5432.0', '1e3', ' 5432'])
      expect(configError(() => resolveConfig({ host }, { PGPORT: junk })).field).toBe('PGPORT');
  });

  it('an explicit port wins over PGPORT without PGPORT being checked, as libpq ignores it then', () => {
    for (const junk of ['x', '0', '99999', ' 5432']) {
      expect(resolveConfig({ host, port: 5433 }, { PGPORT: junk }).port).toBe(5433);
      expect(resolveConfig(`postgres://admin@${host}:6000/postgres`, { PGPORT: junk }).port).toBe(6000);
      expect(configError(() => resolveConfig({ host, port: undefined }, { PGPORT: junk })).field).toBe(
        'PGPORT',
      );
    }
  });

  it('package version matches package.json', () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
    expect(PACKAGE_VERSION).toBe(pkg.version);
  });

  it('shortens application names to fit 63 bytes, keeping our suffix', () => {
    const r = resolveConfig({ host, applicationName: 'x'.repeat(100) }, NO_ENV);
    expect(r.applicationName.length).toBeLessThanOrEqual(63);
    expect(r.applicationName.endsWith(`:dsql-lambda/${PACKAGE_VERSION}`)).toBe(true);
    // 63 bytes, not characters: PostgreSQL turns every non-ASCII byte into '?' (16+: '\xNN')
    // before truncating, which pushed the suffix out of a name like this.
    for (const name of ['é'.repeat(60), '🙂'.repeat(40), `a\tb${'ü'.repeat(50)}`]) {
      const sent = resolveConfig({ host, applicationName: name }, NO_ENV).applicationName;
      expect(sent).toMatch(/^[ -~]{1,63}$/);
      expect(sent.endsWith(`:dsql-lambda/${PACKAGE_VERSION}`)).toBe(true);
    }
  });

  it("takes pg's spelling application_name too, and refuses a blank name (issue 8, defect 10)", () => {
    // It used to be replaced silently by the default.
    const r = resolveConfig({ host, application_name: 'pgname' }, NO_ENV);
    expect(r.applicationName).toBe(`pgname:dsql-lambda/${PACKAGE_VERSION}`);
    expect(resolveConfig({ host, applicationName: '  orders ' }, NO_ENV).applicationName).toBe(
      `orders:dsql-lambda/${PACKAGE_VERSION}`,
    );
    expect(
      configError(() => resolveConfig({ host, applicationName: 'a', application_name: 'b' }, NO_ENV)).field,
    ).toBe('application_name');
    // A whitespace-only name used to be sent as it is.
    expect(configError(() => resolveConfig({ host, applicationName: '   ' }, NO_ENV)).field).toBe(
      'applicationName',
    );
    expect(
      configError(() => resolveConfig(`postgres://admin@${host}?application_name=%20`, NO_ENV)).field,
    ).toBe('application_name');
  });

  it('passes unknown pg options through and merges a connectionString', () => {
    const r = resolveConfig(
      {
        connectionString: `postgres://app@${host}/postgres`,
        query_timeout: 5000,
        keepAlive: true,
        port: 6000,
      },
      NO_ENV,
    );
    expect(r.pgOptions).toEqual({ query_timeout: 5000, keepAlive: true });
    expect(r).toMatchObject({ user: 'app', port: 6000, host });
  });

  it('accepts extra CAs but never relaxes verification', () => {
    expect(resolveConfig({ host, ssl: { ca: 'PEM' } }, NO_ENV).ca).toBe('PEM');
    expect(resolveConfig({ host, ssl: true }, NO_ENV).ca).toBeUndefined();
    expect(
      resolveConfig({ host, ssl: { rejectUnauthorized: true } } as DsqlConfig, NO_ENV).ca,
    ).toBeUndefined();
    for (const ssl of [
      false,
      { rejectUnauthorized: false },
      { checkServerIdentity: () => undefined },
      'on',
    ]) {
      expect(configError(() => resolveConfig({ host, ssl } as unknown as DsqlConfig, NO_ENV)).field).toBe(
        'ssl',
      );
    }
    expect(
      configError(() => resolveConfig({ host, ssl: { ca: 42 } } as unknown as DsqlConfig, NO_ENV)).field,
    ).toBe('ssl.ca');
  });

  const invalid: Array<[string, Record<string, unknown>]> = [
    ['tokenDurationSecs', { tokenDurationSecs: 0 }],
    ['tokenDurationSecs', { tokenDurationSecs: 604801 }],
    ['tokenDurationSecs', { tokenDurationSecs: 1.5 }],
    ['tokenDurationSecs', { tokenDurationSecs: '900' }],
    ['max', { max: 0 }],
    ['min', { max: 2, min: 3 }],
    ['port', { port: 0 }],
    ['port', { port: 65536 }],
    ['maxLifetimeSeconds', { maxLifetimeSeconds: 0 }],
    ['maxLifetimeSeconds', { maxLifetimeSeconds: 3601 }],
    ['idleTimeoutMillis', { idleTimeoutMillis: -1 }],
    ['connectionTimeoutMillis', { connectionTimeoutMillis: 0 }],
    ['maxIdleMillis', { maxIdleMillis: 0 }],
    ['thawThresholdMillis', { thawThresholdMillis: -5 }],
    ['validationTimeoutMillis', { validationTimeoutMillis: Number.NaN }],
    ['sslNegotiation', { sslNegotiation: 'tls' }],
    ['applicationName', { applicationName: 42 }],
    ['user', { user: '' }],
    ['user', { user: 7 }],
    ['database', { database: '' }],
    ['region', { region: 'Not A Region' }],
    ['hostaddr', { hostaddr: '' }],
    ['password', { password: 'x' }],
    ['password', { password: async () => 'x' }],
    ['Client', { Client: class {} }],
    ['credentials', { credentials: { accessKeyId: 'A' } }],
    ['credentials', { credentials: { accessKeyId: 'A', secretAccessKey: 'S', expiration: 'tomorrow' } }],
    ['credentials', { credentials: 'AKID:SECRET' }],
    ['profile', { profile: 'dev', credentials: { accessKeyId: 'A', secretAccessKey: 'S' } }],
    ['profile', { profile: '' }],
  ];
  it.each(invalid)('%s: %o', (field, extra) => {
    expect(configError(() => resolveConfig({ host, ...extra } as DsqlConfig, NO_ENV)).field).toBe(field);
  });

  it('rejects what is not a configuration', () => {
    expect(configError(() => resolveConfig(42 as unknown as DsqlConfig, NO_ENV)).field).toBe('config');
  });

  it('refuses a URL object or a Map instead of ignoring it for DSQL_ENDPOINT (issue 8, defect 9)', () => {
    const env = { DSQL_ENDPOINT: 'other.dsql.us-east-1.on.aws' };
    for (const input of [new URL(`postgres://admin@${host}`), new Map([['host', host]])]) {
      expect(configError(() => resolveConfig(input as unknown as DsqlConfig, env)).field).toBe('config');
    }
  });

  it('refuses unknown top-level keys, naming them (issue 8, defect 9)', () => {
    const credentials = { accessKeyId: 'AKIDX', secretAccessKey: 'S' };
    const err = configError(() => resolveConfig({ host, credential: credentials } as DsqlConfig, NO_ENV));
    expect(err.field).toBe('credential');
    expect(err.message).not.toContain('AKIDX');
    expect(configError(() => resolveConfig({ host, stream: () => null } as DsqlConfig, NO_ENV)).field).toBe(
      'stream',
    );
  });

  it('refuses a retry policy that is not an object, or has a misspelt key: it would be ignored', () => {
    const retry = (value: unknown) => () => resolveConfig({ host, retry: value } as DsqlConfig, NO_ENV);
    for (const value of ['fast', 5, true, () => 3, [8], { maxAtempts: 3 }, { signal: undefined, max: 2 }])
      expect(configError(retry(value)).field).toBe('retry');
    const trap = new Proxy(
      {},
      {
        ownKeys: () => {
          throw new Error('s3cr3t');
        },
      },
    );
    expect(configError(retry(trap)).message).not.toContain('s3cr3t');
    const policy = { maxAttempts: 3, baseDelayMs: 10, maxDelayMs: undefined, onRetry: () => {} };
    expect(resolveConfig({ host, retry: policy }, NO_ENV).retry).toBe(policy);
    expect(resolveConfig({ host, retry: undefined }, NO_ENV).retry).toBeUndefined();
  });

  it('refuses NUL characters in user and database: they would inject startup parameters (issue 8, defect 9)', () => {
    expect(configError(() => resolveConfig({ host, user: 'admin\0options\0-c x=y' }, NO_ENV)).field).toBe(
      'user',
    );
    expect(configError(() => resolveConfig({ host, database: 'postgres\0x' }, NO_ENV)).field).toBe(
      'database',
    );
    expect(configError(() => resolveConfig(`postgres://admin%00x@${host}`, NO_ENV)).field).toBe('user');
  });

  it('refuses host labels over 63 characters and names over 253 (issue 8, defect 9)', () => {
    expect(
      configError(() => resolveConfig({ host: `${'a'.repeat(64)}.dsql.us-east-1.on.aws` }, NO_ENV)).field,
    ).toBe('host');
    const long = `${Array(50).fill('abcd').join('.')}.dsql.us-east-1.on.aws`;
    expect(configError(() => resolveConfig({ host: long }, NO_ENV)).field).toBe('host');
    expect(resolveConfig({ host: `${'a'.repeat(63)}.dsql.us-east-1.on.aws` }, NO_ENV).region).toBe(
      'us-east-1',
    );
  });

  it('validates hostaddr: an address pg can dial or a DNS name (issue 8, defect 9)', () => {
    for (const hostaddr of ['not an address!', '127.0.0.1:5432', '127.1', '256.0.0.1', '01.2.3.4', '::g']) {
      expect(configError(() => resolveConfig({ host, hostaddr }, NO_ENV)).field, hostaddr).toBe('hostaddr');
    }
    expect(configError(() => resolveConfig({ host }, { DSQL_HOSTADDR: '127.1' })).field).toBe('hostaddr');
    for (const hostaddr of ['127.0.0.1', '10.0.0.255', '::1', 'fe80::1', 'vpce-1.example.com']) {
      expect(resolveConfig({ host, hostaddr }, NO_ENV).hostaddr).toBe(hostaddr);
    }
  });

  it('refuses a password that moved into port and database (issue 8, defect 9)', () => {
    const err = configError(() =>
      resolveConfig('postgres://admin:1234/s3cr3t@cluster.dsql.us-east-1.on.aws', NO_ENV),
    );
    expect(err.field).toBe('password');
    expect(err.message).not.toContain('s3cr3t');
    expect(err.message).not.toContain('1234');
  });

  it('refuses a password whose # moved the rest of it into the fragment', () => {
    // `12#34`: host admin, port 12, fragment `#34@…`: the password would vanish into a host "admin".
    const err = configError(() =>
      resolveConfig('postgres://admin:12#34@cluster.dsql.us-east-1.on.aws', { AWS_REGION: 'us-east-1' }),
    );
    expect(err.field).toBe('password');
    expect(err.message).not.toMatch(/12|34/);
  });

  it("checks the pg options it passes through: pg's types, integers 0…2³¹−1, no NUL", () => {
    const bad: DsqlConfig[] = [
      { log: 'verbose' as never }, // pg-pool would call it: TypeError at the first query and at end()
      { keepAlive: 'false' as never }, // truthy: keep-alive on
      { statement_timeout: Number.POSITIVE_INFINITY }, // sent as 'NaN': the server refuses every connection
      { query_timeout: -1 },
      { maxUses: Number.NaN },
      { types: 'text' as never },
      { options: '-c x=1\0application_name\0evil' }, // a NUL injects a startup parameter
      { client_encoding: 'UTF8\0x' },
      { allowExitOnIdle: 1 as never },
    ];
    for (const extra of bad) {
      const key = Object.keys(extra)[0];
      const err = configError(() => resolveConfig({ host, ...extra }, NO_ENV));
      expect(err.field, key).toBe(key);
    }
    const good: DsqlConfig = { statement_timeout: false, query_timeout: 0, options: '-c x', types: pg.types };
    expect(resolveConfig({ host, ...good }, NO_ENV).pgOptions).toEqual(good);
  });

  it('takes a 26-character all-digit cluster ID (issue 8, defect 10)', () => {
    const digits = '01234567890123456789012345';
    expect(resolveConfig({ host: digits, region: 'us-east-1' }, NO_ENV).host).toBe(
      `${digits}.dsql.us-east-1.on.aws`,
    );
    expect(configError(() => resolveConfig({ host: '10.0.0.1', region: 'us-east-1' }, NO_ENV)).field).toBe(
      'host',
    );
  });

  it('takes a bare host name or cluster ID where a connection string goes', () => {
    expect(resolveConfig(host, NO_ENV)).toMatchObject({ host, region: 'us-east-1', user: 'admin' });
    expect(resolveConfig(ID, { AWS_REGION: 'eu-west-1' }).host).toBe(`${ID}.dsql.eu-west-1.on.aws`);
    expect(resolveConfig({ connectionString: host }, NO_ENV).host).toBe(host);
    expect(configError(() => resolveConfig('not a host!', NO_ENV)).field).toBe('connectionString');
  });

  it('checks connection-string parameters and environment values as it checks the object', () => {
    const field = (input: DsqlConfig | string | undefined, env: Record<string, string> = NO_ENV) =>
      configError(() => resolveConfig(input, env)).field;
    expect(field(`postgres://admin@${host}?user=a%00b`)).toBe('user');
    expect(field(`postgres://admin@${host}?hostaddr=127.1`)).toBe('hostaddr');
    expect(field(`postgres://admin@${host}?profile=%20`)).toBe('profile');
    expect(field(undefined, { DSQL_ENDPOINT: 'bad host!' })).toBe('host');
    expect(field(undefined, { DSQL_ENDPOINT: host, PGDATABASE: 'postgres\0x' })).toBe('database');
    expect(field(undefined, { DSQL_ENDPOINT: host, PGUSER: '   ' })).toBe('user');
    // An empty variable counts as unset, as libpq has it.
    expect(resolveConfig(undefined, { DSQL_ENDPOINT: host, PGUSER: '', PGPORT: '' })).toMatchObject({
      user: 'admin',
      port: 5432,
    });
  });

  it("refuses keys that only exist on Object's prototype", () => {
    for (const key of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
      const input = JSON.parse(`{"host":"${host}","${key}":1}`) as DsqlConfig;
      expect(configError(() => resolveConfig(input, NO_ENV)).field).toBe(key);
    }
  });
});

describe('credential source', () => {
  const host = 'abc.dsql.us-east-1.on.aws';
  const env = { AWS_ACCESS_KEY_ID: 'AKIDENV', AWS_SECRET_ACCESS_KEY: 'envsecret' };

  it('orders explicit → profile → environment → default chain', () => {
    const provider = async () => ({ accessKeyId: 'A', secretAccessKey: 'S' });
    expect(resolveConfig({ host, credentials: provider }, env).credentialSource).toEqual({
      kind: 'explicit',
      value: provider,
    });
    expect(resolveConfig({ host, profile: 'dev' }, env).credentialSource).toEqual({
      kind: 'profile',
      profile: 'dev',
    });
    expect(resolveConfig(`postgres://admin@${host}?profile=dev`, env).credentialSource).toEqual({
      kind: 'profile',
      profile: 'dev',
    });
    expect(resolveConfig({ host }, env).credentialSource).toEqual({ kind: 'environment' });
    expect(resolveConfig({ host }, { AWS_ACCESS_KEY_ID: 'only-half' }).credentialSource).toEqual({
      kind: 'default-chain',
    });
  });

  it('keeps explicit secrets out of JSON and inspect', () => {
    const r = resolveConfig(
      {
        host,
        credentials: { accessKeyId: 'AKIDX', secretAccessKey: 'TopSecretKey', sessionToken: 'SessTok' },
      },
      NO_ENV,
    );
    for (const text of [JSON.stringify(r), inspect(r, { depth: 10 }), String(r)]) {
      expect(text).not.toContain('TopSecretKey');
      expect(text).not.toContain('SessTok');
    }
    expect(r.credentialSource.kind).toBe('explicit');
  });
});

describe('properties', () => {
  it('the parser only ever throws DsqlConfigError', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.webUrl({ withQueryParameters: true, withFragments: true }),
          fc
            .tuple(fc.constantFrom('postgres', 'postgresql', 'dsql', 'DSQL'), fc.string(), fc.string())
            .map(([s, a, b]) => `${s}://${a}@${b}`),
          fc
            .tuple(fc.string(), fc.string(), fc.string())
            .map(([a, b, c]) => `postgres://admin@abc.dsql.us-east-1.on.aws:${a}/${b}?${c}`),
        ),
        (text) => {
          try {
            resolveConfig(text, NO_ENV);
          } catch (err) {
            expect(err).toBeInstanceOf(DsqlConfigError);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('resolveConfig only ever throws DsqlConfigError, whatever the object holds', () => {
    const keys = [
      'host',
      'region',
      'user',
      'database',
      'port',
      'profile',
      'credentials',
      'tokenDurationSecs',
      'max',
      'min',
      'maxLifetimeSeconds',
      'idleTimeoutMillis',
      'connectionTimeoutMillis',
      'maxIdleMillis',
      'thawThresholdMillis',
      'validationTimeoutMillis',
      'applicationName',
      'sslNegotiation',
      'ssl',
      'hostaddr',
      'connectionString',
    ];
    fc.assert(
      fc.property(
        fc.dictionary(
          fc.constantFrom(...keys),
          fc.anything({
            withBoxedValues: true,
            withObjectString: true,
            withNullPrototype: true,
            withMap: true,
            withDate: true,
            withBigInt: true,
            withTypedArray: true,
          }),
        ),
        fc.boolean(),
        (config, withHost) => {
          const input = withHost ? { host: 'abc.dsql.us-east-1.on.aws', ...config } : config;
          try {
            resolveConfig(input as DsqlConfig, { AWS_REGION: 'us-east-1' });
          } catch (err) {
            expect(err).toBeInstanceOf(DsqlConfigError);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('a getter or Proxy trap that throws: DsqlConfigError naming the field, not the foreign message', () => {
    const leak = 'boom AKIDSECRETINMESSAGE';
    const boom = () => {
      throw new Error(leak);
    };
    const base = { host: 'abc.dsql.us-east-1.on.aws' };
    const trap = (name: keyof ProxyHandler<object>, target: object = base) =>
      new Proxy(target, { [name]: boom });
    const cases: Array<[unknown, string]> = [
      [Object.defineProperty({ ...base }, 'region', { enumerable: true, get: boom }), 'region'],
      [
        {
          get host(): string {
            return boom();
          },
        },
        'host',
      ],
      [
        {
          ...base,
          get connectionString(): string {
            return boom();
          },
        },
        'connectionString',
      ],
      [trap('get'), 'host'],
      [trap('ownKeys'), 'config'],
      [trap('getOwnPropertyDescriptor'), 'config'],
      [trap('getPrototypeOf'), 'config'],
    ];
    for (const [input, field] of cases) {
      const err = configError(() => resolveConfig(input as DsqlConfig, NO_ENV));
      expect(err.field).toBe(field);
      expect(err.message).toBe(`Invalid dsql-lambda configuration: ${field}: must be readable`);
      expect(inspect(err, { depth: 10, showHidden: true })).not.toContain('AKIDSECRET');
    }
  });

  it('a throwing getter inside credentials or ssl: DsqlConfigError naming the field, not the foreign message', () => {
    const boom = (): never => {
      throw new Error('boom AKIDSECRET');
    };
    const base = { host: 'abc.dsql.us-east-1.on.aws' };
    const cases: Array<[unknown, string, string]> = [
      [
        {
          ...base,
          credentials: {
            secretAccessKey: 's',
            get accessKeyId(): string {
              return boom();
            },
          },
        },
        'credentials',
        'must be an AWS identity or a provider',
      ],
      [
        {
          ...base,
          ssl: {
            get ca(): string {
              return boom();
            },
          },
        },
        'ssl',
        'must be readable',
      ],
      [
        { ...base, ssl: { ca: Object.defineProperty([], 0, { get: boom, enumerable: true }) } },
        'ssl',
        'must be readable',
      ],
      [{ ...base, ssl: new Proxy({}, { ownKeys: boom }) }, 'ssl', 'must be readable'],
    ];
    for (const [input, field, rule] of cases) {
      const err = configError(() => resolveConfig(input as DsqlConfig, NO_ENV));
      expect(err.field).toBe(field);
      expect(err.message).toBe(`Invalid dsql-lambda configuration: ${field}: ${rule}`);
      expect(inspect(err, { depth: 10, showHidden: true })).not.toContain('AKIDSECRET');
    }
  });

  it("the region read from a host agrees with the official connectors' pattern", () => {
    const pattern = /\.dsql[^.]*\.([^.]+)\.on\.aws$/;
    const label = fc.constantFrom('abc', 'dsql', 'dsqlbeta', 'dsql-gamma', 'us-east-1', 'on', 'aws', 'x.y');
    fc.assert(
      fc.property(fc.array(label, { minLength: 1, maxLength: 7 }), (labels) => {
        const host = labels.join('.');
        const region = resolveConfig({ host }, { AWS_REGION: 'zz-env-1' }).region;
        expect(region).toBe(pattern.exec(host)?.[1] ?? 'zz-env-1');
      }),
      { numRuns: 3000 },
    );
  });

  it('messages never contain the password or the secret key', () => {
    const secret = fc.string({ minLength: 6 }).map((s) => `Zq9${s}`);
    fc.assert(
      fc.property(
        fc.string(),
        secret,
        fc.string(),
        fc.string(),
        fc.boolean(),
        (user, password, hostPart, rest, encode) => {
          const pw = encode ? encodeURIComponent(password) : password;
          const url = `postgres://${encodeURIComponent(user)}:${pw}@${hostPart}${rest}`;
          try {
            resolveConfig(url, NO_ENV);
          } catch (err) {
            expect(err).toBeInstanceOf(DsqlConfigError);
            const e = err as DsqlConfigError;
            expect(e.message).not.toContain(password);
            expect(e.message).not.toContain(pw);
            expect(inspect(e)).not.toContain(pw);
          }
        },
      ),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(secret, fc.anything(), (secretAccessKey, junk) => {
        try {
          resolveConfig(
            {
              host: 'abc.dsql.us-east-1.on.aws',
              credentials: { accessKeyId: junk, secretAccessKey },
            } as DsqlConfig,
            NO_ENV,
          );
        } catch (err) {
          expect((err as Error).message).not.toContain(secretAccessKey);
        }
      }),
    );
  });
});
