/**
 * A connection storm: many cold sandboxes (one pool each, as after a deploy or a traffic spike)
 * run their first query at once against the local endpoint's new-connection rate limit. Are all
 * admitted within the budget, how long does it take, and how many TCP+TLS handshakes does each
 * admitted sandbox cost? dsql-lambda against the official connector (which does not retry).
 *
 *   node --import tsx bench/storm.ts [--pools 60] [--rate 10] [--burst 10] [--runs 2]
 *
 * The defaults are the storm (300 sandboxes against 50/s: 6 s of admissions at the
 * limit) scaled down five times: on a shared 2-core machine 300 concurrent TLS handshakes are
 * CPU-bound (≈ 40/s), so the rate limit would never be what refuses them.
 *
 * The endpoint caps open connections at 80 (its PostgreSQL has 100); each sandbox closes its
 * connection once its query is answered. Writes bench/results/storm-<node major>.json.
 */
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { AuroraDSQLPool } from '@aws/aurora-dsql-node-postgres-connector';
import { startLocalDsql } from '../packages/dsql-local/src/index.js';
import { DSQL_DEFAULTS } from '../src/defaults.js';
import { createPool } from '../src/pool.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    pools: { type: 'string', default: '60' },
    rate: { type: 'string', default: '10' },
    burst: { type: 'string', default: '10' },
    runs: { type: 'string', default: '2' },
    sandboxes: { type: 'string' },
  },
});
const POOLS = Number(values.pools);
const RATE = Number(values.rate);
const BURST = Number(values.burst);
const RUNS = Number(values.runs);

/** Child side: the sandboxes, in their own process so the endpoint does not share their CPU. */
async function sandboxes(name: string): Promise<void> {
  const e = JSON.parse(process.env.STORM_ENDPOINT as string);
  const dial = () => {
    const socket = new net.Socket();
    const connect = socket.connect.bind(socket) as (port: number, host: string) => net.Socket;
    return Object.assign(socket, { connect: (port: number) => connect(port, e.address) });
  };
  type Pool = { query(text: string): Promise<unknown>; end(): Promise<void> };
  const make = (): Pool =>
    name === 'dsql-lambda'
      ? createPool({
          host: e.host,
          hostaddr: e.address,
          port: e.port,
          ssl: { ca: e.ca },
          credentials: e.credentials,
          max: 1,
        })
      : (new AuroraDSQLPool({
          host: e.host,
          port: e.port,
          user: 'admin',
          max: 1,
          connectionTimeoutMillis: 10_000,
          customCredentialsProvider: e.credentials,
          ssl: { ca: e.ca, servername: e.host, rejectUnauthorized: true },
          stream: dial,
        } as never) as Pool);
  const pools = Array.from({ length: POOLS }, make);
  const t0 = performance.now();
  const admittedAt: number[] = [];
  const errors: Record<string, number> = {};
  await Promise.all(
    pools.map((p) =>
      p
        .query('SELECT 1')
        .then(
          () => admittedAt.push(performance.now() - t0),
          (err: Error) => {
            const key = `${err.name}: ${err.message.replace(e.host, '<host>').slice(0, 70)}`;
            errors[key] = (errors[key] ?? 0) + 1;
          },
        )
        // The sandbox's invocation is over: its connection closes (the upstream PostgreSQL
        // behind the endpoint has 100 connections, fewer than the sandboxes).
        .then(() => p.end().catch(() => {})),
    ),
  );
  admittedAt.sort((a, b) => a - b);
  process.stdout.write(
    JSON.stringify({
      admitted: admittedAt.length,
      of: POOLS,
      timeToAdmitAllMs: Math.round(admittedAt.at(-1) ?? NaN),
      medianAdmitMs: Math.round(admittedAt[Math.floor(admittedAt.length / 2)] ?? NaN),
      errors,
    }),
  );
}

if (values.sandboxes) {
  await sandboxes(values.sandboxes);
  process.exit(0);
}

const endpoint = await startLocalDsql({ rateLimit: { perSecond: RATE, burst: BURST } });
// Below the upstream PostgreSQL's max_connections, so the endpoint's 53300 comes before PostgreSQL's.
endpoint.faults.setMaxConnections(80);
const endpointEnv = JSON.stringify({
  host: endpoint.host,
  address: endpoint.address,
  port: endpoint.port,
  ca: endpoint.ca,
  credentials: endpoint.credentials,
});

async function storm(name: string) {
  endpoint.faults.setRateLimit({ perSecond: RATE, burst: BURST });
  await new Promise((r) => setTimeout(r, 1000 * (BURST / RATE) + 100)); // bucket full again
  endpoint.resetStats();
  const out = await new Promise<string>((resolve, reject) => {
    const p = spawn(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(import.meta.url), '--sandboxes', name, '--pools', String(POOLS)],
      {
        env: { ...process.env, STORM_ENDPOINT: endpointEnv },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let text = '';
    p.stdout.on('data', (d: Buffer) => {
      text += d.toString();
    });
    const timer = setTimeout(() => p.kill('SIGKILL'), 120_000);
    p.once('exit', (code) => {
      clearTimeout(timer);
      code === 0 ? resolve(text) : reject(new Error(`${name}: sandboxes exited ${code}`));
    });
  });
  const r = JSON.parse(out);
  const stats = endpoint.stats();
  return {
    ...r,
    handshakes: stats.connections.total,
    handshakesPerAdmitted: Math.round((stats.connections.total / Math.max(1, r.admitted)) * 100) / 100,
    refused: stats.admissionRefused,
  };
}

const results: Record<string, unknown[]> = {};
try {
  for (let run = 0; run < RUNS; run++) {
    for (const name of ['dsql-lambda', 'official connector']) {
      const r = await storm(name);
      results[name] = [...(results[name] ?? []), r];
      console.log(name, JSON.stringify(r));
    }
  }
} finally {
  await endpoint.stop();
}
await mkdir(join(root, 'bench/results'), { recursive: true });
await writeFile(
  join(root, `bench/results/storm-${process.versions.node.split('.')[0]}.json`),
  `${JSON.stringify(
    {
      node: process.version,
      date: new Date().toISOString(),
      pools: POOLS,
      rateLimit: { perSecond: RATE, burst: BURST },
      budgetMs: DSQL_DEFAULTS.connectionTimeoutMillis,
      // The first backoff window after a refusal: what the handshakes per admitted sandbox depend on.
      admissionRetryWindowMillis: DSQL_DEFAULTS.admissionRetryWindowMillis,
      results,
    },
    null,
    2,
  )}\n`,
);
process.exit(0);
