/**
 * What the local endpoint costs: per-query latency (SELECT 1, sequential) and per-connection cost
 * (connect + authenticate + first query) through the endpoint, in both TLS negotiation modes,
 * against plain PostgreSQL on the same machine.
 *
 *   node --import tsx bench/endpoint.ts [--queries 2000] [--connections 100]
 *
 * Writes bench/results/endpoint-<node major>.json and prints a table.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { type LocalDsql, startLocalDsql } from '../packages/dsql-local/src/index.js';
import { pgConfig, signTestToken } from '../test/helpers/endpoint.js';

const { values } = parseArgs({
  options: { queries: { type: 'string', default: '2000' }, connections: { type: 'string', default: '100' } },
});
const QUERIES = Number(values.queries);
const CONNECTIONS = Number(values.connections);
const WARMUP = 200;

interface Summary {
  n: number;
  medianMs: number;
  p99Ms: number;
  meanMs: number;
}

function summarize(samples: number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  const round = (x: number) => Math.round(x * 1000) / 1000;
  return {
    n: sorted.length,
    medianMs: round(at(0.5)),
    p99Ms: round(at(0.99)),
    meanMs: round(sorted.reduce((s, x) => s + x, 0) / sorted.length),
  };
}

type Target = { name: string; config: () => Promise<pg.ClientConfig> };

async function perQuery(config: pg.ClientConfig): Promise<Summary> {
  const client = new pg.Client(config);
  await client.connect();
  try {
    for (let i = 0; i < WARMUP; i++) await client.query('SELECT 1');
    const samples: number[] = [];
    for (let i = 0; i < QUERIES; i++) {
      const t0 = performance.now();
      await client.query('SELECT 1');
      samples.push(performance.now() - t0);
    }
    return summarize(samples);
  } finally {
    await client.end();
  }
}

/** Connection cost, targets interleaved so that background noise hits them alike. */
async function perConnection(targets: Target[]): Promise<Summary[]> {
  const samples: number[][] = targets.map(() => []);
  for (let i = 0; i < CONNECTIONS + 5; i++) {
    for (const [j, target] of targets.entries()) {
      // Token signing is the client's cost, not the endpoint's: sign outside the timed section.
      const config = await target.config();
      const t0 = performance.now();
      const client = new pg.Client(config);
      await client.connect();
      await client.query('SELECT 1');
      const elapsed = performance.now() - t0;
      await client.end();
      if (i >= 5) samples[j]!.push(elapsed);
    }
  }
  return samples.map(summarize);
}

async function main(): Promise<void> {
  let endpoint: LocalDsql | undefined;
  try {
    endpoint = await startLocalDsql();
    const e = endpoint;
    const targets: Target[] = [
      {
        name: 'postgres (direct, plaintext)',
        // The PostgreSQL the endpoint relays to (its embedded one unless DSQL_LOCAL_UPSTREAM names one).
        config: async () => ({ connectionString: e.upstream }),
      },
      {
        name: 'endpoint sslnegotiation=postgres',
        config: async () => pgConfig(e, { password: await signTestToken(e), sslnegotiation: 'postgres' }),
      },
      {
        name: 'endpoint sslnegotiation=direct',
        config: async () => pgConfig(e, { password: await signTestToken(e), sslnegotiation: 'direct' }),
      },
    ];
    const results: Record<string, { query: Summary; connection: Summary }> = {};
    const connection = await perConnection(targets);
    for (const [j, t] of targets.entries()) {
      results[t.name] = { query: await perQuery(await t.config()), connection: connection[j]! };
    }
    const out = {
      node: process.version,
      platform: `${process.platform}-${process.arch}`,
      date: new Date().toISOString(),
      queries: QUERIES,
      connections: CONNECTIONS,
      note: 'per-connection = TCP + TLS + startup + IAM token check + upstream session + SELECT 1; token signed beforehand',
      results,
    };
    const dir = join(dirname(fileURLToPath(import.meta.url)), 'results');
    await mkdir(dir, { recursive: true });
    const file = join(dir, `endpoint-${process.versions.node.split('.')[0]}.json`);
    await writeFile(file, `${JSON.stringify(out, null, 2)}\n`);
    console.log(
      `SELECT 1 x${QUERIES} (sequential) and connect+auth+first query x${CONNECTIONS}, ${process.version}`,
    );
    console.table(
      Object.fromEntries(
        Object.entries(results).map(([name, r]) => [
          name,
          {
            'query median ms': r.query.medianMs,
            'query p99 ms': r.query.p99Ms,
            'connect median ms': r.connection.medianMs,
            'connect p99 ms': r.connection.p99Ms,
          },
        ]),
      ),
    );
    console.log(`written ${file}`);
  } finally {
    await endpoint?.stop();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
