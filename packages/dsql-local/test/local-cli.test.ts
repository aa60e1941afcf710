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
  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  expect(code).toBe(0);
});
