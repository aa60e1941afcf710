/**
 * What the embedded PostgreSQL costs: time from `startEmbeddedPostgres()` to a server that
 * answers (first query done, `dsql_local` present) on a fresh data directory (initdb runs) and on
 * a reused one, and the size of the binaries on disk.
 *
 *   node --import tsx bench/embedded.ts [--fresh 3] [--reused 5]
 *
 * Writes bench/results/embedded-<node major>.json and prints the medians.
 */
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import {
  cacheDir,
  EMBEDDED_POSTGRES_VERSION,
  startEmbeddedPostgres,
} from '../packages/dsql-local/src/embedded.js';

const { values } = parseArgs({
  options: { fresh: { type: 'string', default: '3' }, reused: { type: 'string', default: '5' } },
});

async function timedStart(dir: string): Promise<{ ms: number; fresh: boolean }> {
  const t0 = performance.now();
  const e = await startEmbeddedPostgres({ dir });
  const client = new pg.Client(e.url);
  await client.connect();
  await client.query('SELECT 1');
  const ms = performance.now() - t0;
  await client.end();
  await e.stop();
  return { ms, fresh: e.fresh };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const dir = join(cacheDir(), 'bench');
const fresh: number[] = [];
for (let i = 0; i < Number(values.fresh); i++) {
  rmSync(dir, { recursive: true, force: true });
  const r = await timedStart(dir);
  if (!r.fresh) throw new Error('expected a fresh data directory');
  fresh.push(r.ms);
}
const reused: number[] = [];
for (let i = 0; i < Number(values.reused); i++) reused.push((await timedStart(dir)).ms);
rmSync(dir, { recursive: true, force: true });

const entry = createRequire(import.meta.url).resolve(
  `@embedded-postgres/${process.platform}-${process.arch}`,
);
const packageDir = resolve(dirname(entry), '..');
const bytes = Number(execFileSync('du', ['-sb', packageDir], { encoding: 'utf8' }).split('\t')[0]);

const result = {
  date: new Date().toISOString(),
  node: process.version,
  platform: `${process.platform}-${process.arch}`,
  postgres: EMBEDDED_POSTGRES_VERSION,
  loadAverage1m: loadavg()[0] ?? 0,
  freshStartMs: { median: Math.round(median(fresh)), samples: fresh.map(Math.round) },
  reusedStartMs: { median: Math.round(median(reused)), samples: reused.map(Math.round) },
  binariesBytes: bytes,
  note: 'start = startEmbeddedPostgres() until a first query answered (includes the watchdog process); fresh = initdb ran',
};
const out = join(
  dirname(fileURLToPath(import.meta.url)),
  'results',
  `embedded-${process.versions.node.split('.')[0]}.json`,
);
await mkdir(dirname(out), { recursive: true });
await writeFile(out, `${JSON.stringify(result, null, 2)}\n`);
console.log(
  `fresh ${result.freshStartMs.median} ms, reused ${result.reusedStartMs.median} ms, binaries ${(bytes / 1e6).toFixed(1)} MB (load ${(result.loadAverage1m ?? 0).toFixed(1)})`,
);
