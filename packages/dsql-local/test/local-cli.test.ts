import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { once } from 'node:events';
import { DsqlSigner } from '@aws-sdk/dsql-signer';
import pg from 'pg';
import { afterAll, expect, it } from 'vitest';

let child: ChildProcessWithoutNullStreams | undefined;
let output = '';

/** Resolves once the CLI's output matches `re`. */
async function waitFor(re: RegExp): Promise<RegExpExecArray> {
  for (;;) {
    const m = re.exec(output);
    if (m) return m;
    if (!child || child.exitCode !== null) throw new Error(`cli exited:\n${output}`);
    await once(child.stdout, 'data');
  }
}

afterAll(() => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
});

it('dsql-local prints the env a handler needs, takes fault commands on stdin, stops on SIGTERM', async () => {
  child = spawn(process.execPath, [
    '--import',
    'tsx',
    'packages/dsql-local/src/cli.ts',
    '--port',
    '0',
    '--region',
    'eu-west-1',
  ]);
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    output += d;
  });
  await waitFor(/Ctrl-C stops/);
  const env: Record<string, string> = {};
  for (const m of output.matchAll(/^export (\w+)='([^']*)'$/gm)) env[m[1]!] = m[2]!;
  expect(env.AWS_REGION).toBe('eu-west-1');
  expect(env.DSQL_ENDPOINT).toMatch(/^[a-z0-9]{26}\.dsql\.eu-west-1\.on\.aws$/);

  const token = await new DsqlSigner({
    hostname: env.DSQL_ENDPOINT!,
    region: env.AWS_REGION!,
    credentials: {
      accessKeyId: env.AWS_ACCESS_KEY_ID!,
      secretAccessKey: env.AWS_SECRET_ACCESS_KEY!,
      sessionToken: env.AWS_SESSION_TOKEN!,
    },
  }).getDbConnectAdminAuthToken();
  const { readFileSync } = await import('node:fs');
  const client = new pg.Client({
    host: env.DSQL_HOSTADDR,
    port: Number(env.PGPORT),
    user: 'admin',
    database: 'postgres',
    password: token,
    ssl: { ca: readFileSync(env.NODE_EXTRA_CA_CERTS!, 'utf8'), servername: env.DSQL_ENDPOINT },
  });
  client.on('error', () => {});
  await client.connect();
  child.stdin.write('latency 50ms\n');
  await waitFor(/toServer must be a number/);
  child.stdin.write('occ 1 OC001\n');
  await waitFor(/next 1 COMMIT\(s\) fail with OC001/);
  await client.query('BEGIN');
  await expect(client.query('COMMIT')).rejects.toMatchObject({
    code: '40001',
    message: expect.stringMatching(/OC001/),
  });
  child.stdin.write('stats\n');
  await waitFor(/"OC001": 1/);
  child.stdin.write('drop all fatal\n');
  await waitFor(/dropped 1/);
  await client.end().catch(() => {});

  // The printed exports are enough for a client that reads libpq's variables (as psql does):
  // PGHOST names the cluster (SNI, certificate), PGHOSTADDR is dialled, PGPASSWORD is a token.
  const fromEnv = async (password: string) => {
    const c = new pg.Client({
      host: env.PGHOSTADDR,
      port: Number(env.PGPORT),
      user: env.PGUSER,
      database: env.PGDATABASE,
      password,
      ssl: { ca: readFileSync(env.PGSSLROOTCERT!, 'utf8'), servername: env.PGHOST },
    });
    await c.connect();
    const { rows } = await c.query('SELECT current_user AS u');
    await c.end();
    return rows;
  };
  expect(env.PGSSLMODE).toBe('verify-full');
  expect(await fromEnv(env.PGPASSWORD!)).toEqual([{ u: 'postgres' }]);
  // `token` on stdin, and the `dsql-local token` command run with the printed environment.
  child.stdin.write('token\n');
  const [fromConsole] = await waitFor(/^\S+\.on\.aws\/\?Action=DbConnectAdmin\S+$/m);
  expect(await fromEnv(fromConsole)).toEqual([{ u: 'postgres' }]);
  const { execFileSync } = await import('node:child_process');
  const printed = execFileSync(
    process.execPath,
    ['--import', 'tsx', 'packages/dsql-local/src/cli.ts', 'token'],
    { env: { PATH: process.env.PATH, ...env }, encoding: 'utf8' },
  ).trim();
  expect(await fromEnv(printed)).toEqual([{ u: 'postgres' }]);

  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  expect(code).toBe(0);
});

/** Runs the CLI to its exit; resolves its exit code and everything it printed. */
async function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string }> {
  const cli = spawn(process.execPath, ['--import', 'tsx', 'packages/dsql-local/src/cli.ts', ...args], {
    env,
  });
  let out = '';
  cli.stdout.on('data', (d: Buffer) => (out += d.toString()));
  cli.stderr.on('data', (d: Buffer) => (out += d.toString()));
  cli.stdin.end();
  const [code] = (await once(cli, 'exit')) as [number | null];
  return { code, out };
}

it('says what to do when the upstream is unreachable', async () => {
  const unreachable = await runCli(['--upstream', 'postgresql://postgres:secret@127.0.0.1:1/x'], process.env);
  expect(unreachable.code).toBe(1);
  expect(unreachable.out).toMatch(
    /upstream PostgreSQL postgresql:\/\/postgres:\*\*\*@127\.0\.0\.1:1\/x is not usable .*ECONNREFUSED.*start it or fix the URL, or leave the upstream unset/,
  );
  expect(unreachable.out).not.toContain('secret');
});
