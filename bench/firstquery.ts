/**
 * The first query of a cold process: from creating the pool to the first row, in a fresh `node`
 * process per sample, through the local endpoint with no added delay (local time) and with a
 * delay on each direction (round trips = extra time / RTT).
 *
 *   node --import tsx bench/firstquery.ts [--samples 7] [--delay 20]
 *
 * Variants: bare pg with a token signed before the clock starts (the floor), dsql-lambda with
 * direct TLS and with SSLRequest, and the official `@aws/aurora-dsql-node-postgres-connector`.
 * Samples interleave the variants. Writes bench/results/firstquery-<node major>.json.
 */
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startLocalDsql } from '../packages/dsql-local/src/index.js';
import { signTestToken } from '../test/helpers/endpoint.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const VARIANTS = [
  'pg (token signed beforehand)',
  'dsql-lambda direct',
  'dsql-lambda postgres',
  'official connector',
];

/** Child side: one cold first query, printed as JSON `{ ms }`. */
async function child(variant: string): Promise<void> {
  const env = JSON.parse(process.env.FIRSTQUERY_ENDPOINT as string);
  const net = (await import('node:net')).default;
  const dial = () => {
    const socket = new net.Socket();
    const connect = socket.connect.bind(socket) as (port: number, host: string) => import('node:net').Socket;
    return Object.assign(socket, { connect: (port: number) => connect(port, env.address) });
  };
  const pg = (await import('pg')).default;
  const { createPool } = await import('../src/index.js');
  const { AuroraDSQLPool } = await import('@aws/aurora-dsql-node-postgres-connector');
  const common = { host: env.host, port: env.port, max: 1 };
  const t0 = performance.now();
  let pool: { query(text: string): Promise<unknown>; end(): Promise<void> };
  if (variant.startsWith('pg')) {
    pool = new pg.Pool({
      ...common,
      host: env.address,
      user: 'admin',
      database: 'postgres',
      password: env.token,
      ssl: { ca: env.ca, servername: env.host },
      sslnegotiation: 'direct',
    });
  } else if (variant.startsWith('dsql-lambda')) {
    pool = createPool({
      ...common,
      hostaddr: env.address,
      ssl: { ca: env.ca },
      credentials: env.credentials,
      sslNegotiation: variant.endsWith('direct') ? 'direct' : 'postgres',
    });
  } else {
    pool = new AuroraDSQLPool({
      ...common,
      user: 'admin',
      customCredentialsProvider: env.credentials,
      ssl: { ca: env.ca, servername: env.host, rejectUnauthorized: true },
      stream: dial,
    } as never);
  }
  await pool.query('SELECT 1');
  const ms = performance.now() - t0;
  await pool.end();
  process.stdout.write(JSON.stringify({ ms }));
}

function runChild(variant: string, endpointEnv: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', variant],
      {
        cwd: root,
        env: { ...process.env, FIRSTQUERY_ENDPOINT: endpointEnv },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const timer = setTimeout(() => p.kill('SIGKILL'), 60_000);
    p.once('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`${variant}: child exited ${code}`));
      else resolve(JSON.parse(out).ms);
    });
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      samples: { type: 'string', default: '7' },
      delay: { type: 'string', default: '20' },
      child: { type: 'string' },
    },
  });
  if (values.child) return child(values.child);
  const samples = Number(values.samples);
  const delay = Number(values.delay);
  const endpoint = await startLocalDsql();
  try {
    const token = await signTestToken(endpoint);
    const endpointEnv = JSON.stringify({
      host: endpoint.host,
      address: endpoint.address,
      port: endpoint.port,
      ca: endpoint.ca,
      credentials: endpoint.credentials,
      token,
    });
    const times: Record<string, Record<string, number[]>> = {};
    for (const latency of [0, delay]) {
      endpoint.faults.setLatency({ toClient: latency, toServer: latency });
      for (let i = 0; i < samples; i++) {
        for (const variant of VARIANTS) {
          const ms = await runChild(variant, endpointEnv);
          const byLatency = times[variant] ?? {};
          times[variant] = byLatency;
          byLatency[latency] = [...(byLatency[latency] ?? []), ms];
        }
      }
    }
    const rows = VARIANTS.map((variant) => {
      const local = median(times[variant]?.[0] ?? []);
      const delayed = median(times[variant]?.[delay] ?? []);
      return {
        variant,
        localMs: Math.round(local * 100) / 100,
        delayedMs: Math.round(delayed * 100) / 100,
        roundTrips: Math.round(((delayed - local) / (2 * delay)) * 10) / 10,
      };
    });
    console.table(rows);
    const result = {
      node: process.version,
      date: new Date().toISOString(),
      samples,
      delayEachWayMs: delay,
      method:
        'fresh process per sample; pool created to first row; medians; RTT = (delayed - local) / (2 x delay)',
      rows,
      raw: times,
    };
    await mkdir(join(root, 'bench/results'), { recursive: true });
    await writeFile(
      join(root, `bench/results/firstquery-${process.versions.node.split('.')[0]}.json`),
      `${JSON.stringify(result, null, 2)}\n`,
    );
  } finally {
    await endpoint.stop();
  }
}

await main();
