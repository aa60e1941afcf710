/**
 * The published shape of the package: the built ESM and CJS entry points load and export the
 * same API, the `dsql-local` bin starts, a minimal Lambda handler bundled with esbuild stays
 * within the cold-start budget (≤ 1.2× the bytes of a bare `pg` handler), and the preset's bundle
 * leaves pg's native client out and still answers a query against the local endpoint. Bundle sizes are
 * deterministic for a given lockfile, so they are checked here; timings live in bench/.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import * as esbuild from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LocalDsql } from '../../packages/dsql-local/src/index.js';
import { lambdaBundleOptions } from '../../src/esbuild.js';
import { startTestEndpoint } from '../helpers/endpoint.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const work = join(root, 'dist/test-bundles');
const HOST = 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws';

beforeAll(() => {
  // `npm test` builds before running vitest; a bare `vitest run` builds here.
  if (!existsSync(join(root, 'dist/esm/index.js')) || !existsSync(join(root, 'dist/cjs/index.js'))) {
    execFileSync(process.execPath, [join(root, 'esbuild.config.mjs')], { cwd: root, stdio: 'inherit' });
  }
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
}, 120_000);

describe('built entry points', () => {
  it('ESM and CJS builds export the same runtime API', async () => {
    const esm = await import(pathToFileURL(join(root, 'dist/esm/index.js')).href);
    const cjs = createRequire(import.meta.url)(join(root, 'dist/cjs/index.js'));
    const names = Object.keys(esm).sort();
    expect(names).toEqual(expect.arrayContaining(['createPool', 'connect', 'withRetry', 'execWithRetry']));
    expect(names).toEqual(
      expect.arrayContaining(['isOccError', 'withDsql', 'DsqlConfigError', 'DSQL_DEFAULTS']),
    );
    // One obvious way for each job: at most 20 values, no internals.
    expect(names.length).toBeLessThanOrEqual(20);
    for (const internal of ['lambdaPool', 'toPgConfig', 'TokenCache', 'DsqlClient', 'resolveConfig']) {
      expect(names).not.toContain(internal);
    }
    expect(Object.isFrozen(esm.DSQL_DEFAULTS)).toBe(true);
    expect(Object.keys(cjs).sort()).toEqual(names);
    // The same class in both builds behaves the same.
    expect(() => cjs.createPool({ host: 'not a host' })).toThrow(cjs.DsqlConfigError);
    expect(() => esm.createPool({ host: 'not a host' })).toThrow(esm.DsqlConfigError);
  });

  it('the middy entry point loads in both formats; the local endpoint is its own package', async () => {
    const require = createRequire(import.meta.url);
    for (const sub of ['middy']) {
      const esm = await import(pathToFileURL(join(root, `dist/esm/${sub}.js`)).href);
      const cjs = require(join(root, `dist/cjs/${sub}.js`));
      expect(Object.keys(cjs).sort()).toEqual(Object.keys(esm).sort());
    }
    const middy = await import(pathToFileURL(join(root, 'dist/esm/middy.js')).href);
    expect(typeof middy.dsql).toBe('function');
    expect(existsSync(join(root, 'dist/esm/local'))).toBe(false);
    const local = await import(pathToFileURL(join(root, 'packages/dsql-local/dist/esm/index.js')).href);
    expect(typeof local.startLocalDsql).toBe('function');
  });

  it('the package resolves by name through its exports map', () => {
    const out = execFileSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "const m = await import('dsql-lambda'); const y = await import('dsql-lambda/middy'); console.log(typeof m.createPool, typeof y.dsql)",
      ],
      { cwd: root, encoding: 'utf8' },
    );
    expect(out.trim()).toBe('function function');
    const cjs = execFileSync(
      process.execPath,
      [
        '-e',
        "const m = require('dsql-lambda'); console.log(typeof m.withRetry, typeof require('dsql-lambda/middy').dsql)",
      ],
      { cwd: root, encoding: 'utf8' },
    );
    expect(cjs.trim()).toBe('function function');
  });

  it('the dsql-local bin prints its usage', () => {
    const res = spawnSync(process.execPath, [join(root, 'packages/dsql-local/dist/esm/cli.js'), '--help'], {
      cwd: root,
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(res.status).toBe(0);
    expect(res.stdout + res.stderr).toMatch(/--port/);
  });
});

async function bundle(
  name: string,
  source: string,
  options: esbuild.BuildOptions,
  kind: 'esm' | 'cjs' = 'esm',
): Promise<string> {
  const entry = join(work, `${name}.entry.${kind === 'esm' ? 'mjs' : 'cjs'}`);
  writeFileSync(entry, source);
  const outfile = join(work, `${name}.${options.format === 'esm' ? 'mjs' : 'cjs'}`);
  await esbuild.build({
    ...options,
    outExtension: undefined,
    // Not the repository's tsconfig, whose `paths` map 'dsql-lambda' to src/: the package resolves
    // through its own exports map to its built files, as in a user's project.
    tsconfigRaw: '{}',
    entryPoints: [entry],
    outfile,
    logLevel: 'error',
  });
  return readFileSync(outfile, 'utf8');
}

describe('cold-start budget of a bundled handler', () => {
  const pgHandler = `import pg from 'pg';\nconst pool = new pg.Pool({ host: '${HOST}', ssl: true });\nexport const handler = async () => { void pool; };\n`;
  const ourHandler = (entry: string) =>
    `import { createPool } from ${JSON.stringify(entry)};\nconst pool = createPool({ host: '${HOST}' });\nexport const handler = async () => { void pool; };\n`;
  const builds: Record<string, esbuild.BuildOptions> = {
    'esbuild defaults (CJS)': { bundle: true, platform: 'node', minify: true, format: 'cjs' },
    lambdaBundleOptions,
  };
  const budgets: Record<string, number> = { 'esbuild defaults (CJS)': 1.17, lambdaBundleOptions: 1.19 };

  const requireHandler = `const { createPool } = require('dsql-lambda');\nconst pool = createPool({ host: '${HOST}' });\nexports.handler = async () => { void pool; };\n`;
  const pgRequireHandler = `const pg = require('pg');\nconst pool = new pg.Pool({ host: '${HOST}', ssl: true });\nexports.handler = async () => { void pool; };\n`;

  // Regression guards at what the runtime reaches today (import 1.169×, require 1.264× of bare pg;
  // import 1.187× under lambdaBundleOptions, whose plugin takes the same 8.5 KB of pg's native
  // client out of both bundles: our ≈ 14.6 KB on top of pg is unchanged, the ratio's denominator
  // smaller). The last defect fixes (end() during a dial, refused sockets, late context.dsql calls,
  // a retry policy's keys, fn ending its transaction) cost ≈ 0.7 KB of require. The goal is 1.12×
  // for import and 1.20× for require: not met, so these bounds only stop growth; lower them as the
  // runtime shrinks.
  it('require: within 1.27× the bytes of bare pg under esbuild defaults (CJS)', async () => {
    const options = builds['esbuild defaults (CJS)'] as esbuild.BuildOptions;
    const pg = await bundle('pg-require', pgRequireHandler, options, 'cjs');
    const ours = await bundle('ours-require', requireHandler, options, 'cjs');
    const ratio = Buffer.byteLength(ours) / Buffer.byteLength(pg);
    expect(ratio, `${Buffer.byteLength(ours)} bytes vs pg ${Buffer.byteLength(pg)}`).toBeLessThanOrEqual(
      1.27,
    );
    expect(ours).not.toMatch(/SignatureV4|fromNodeProviderChain\s*=|@smithy\/|dsql-signer/);
  });

  for (const [label, options] of Object.entries(builds)) {
    const budget = budgets[label]!;
    it(`import: within ${budget}× the bytes of bare pg under ${label}`, async () => {
      const tag = label.replace(/\W+/g, '-');
      const pg = await bundle(`pg-${tag}`, pgHandler, options);
      // What a user writes: `import { createPool } from 'dsql-lambda'`. esbuild takes the
      // `import` condition (the ESM build) whatever the output format.
      for (const [i, entry] of ['dsql-lambda', join(root, 'dist/esm/index.js')].entries()) {
        const ours = await bundle(`ours-${tag}-${i}`, ourHandler(entry), options);
        const ratio = Buffer.byteLength(ours) / Buffer.byteLength(pg);
        expect(
          ratio,
          `${entry}: ${Buffer.byteLength(ours)} bytes vs pg ${Buffer.byteLength(pg)}`,
        ).toBeLessThanOrEqual(budget);
        // Nothing of the AWS SDK is bundled: credentials providers load lazily at run time only.
        expect(ours).not.toMatch(/SignatureV4|fromNodeProviderChain\s*=|@smithy\/|dsql-signer/);
      }
    });
  }

  it('the middleware entry adds little on top of the runtime', async () => {
    const options = lambdaBundleOptions;
    const base = await bundle('runtime-only', ourHandler(join(root, 'dist/esm/index.js')), options);
    const withMiddy = await bundle(
      'with-middy',
      `import { dsql } from ${JSON.stringify(join(root, 'dist/esm/middy.js'))};\nexport const m = dsql();\n`,
      options,
    );
    // middy itself is not bundled by the middleware (type-only import).
    expect(withMiddy).not.toMatch(/@middy\/core/);
    expect(Buffer.byteLength(withMiddy) - Buffer.byteLength(base)).toBeLessThan(12_000);
  });
});

describe("the preset leaves pg's native client out", () => {
  // Only pg/lib/native/client.js requires 'pg-native' (pg/lib/index.js requires './native').
  const NATIVE_CLIENT = 'pg-native';
  const withoutPlugin: esbuild.BuildOptions = { ...lambdaBundleOptions, plugins: [] };

  it('bundles of bare pg and of createPool hold none of it, and are smaller by its size', async () => {
    const handlers = {
      pg: `import pg from 'pg';\nconst pool = new pg.Pool({ host: '${HOST}', ssl: true });\nexport const handler = async () => { void pool; };\n`,
      ours: `import { createPool } from 'dsql-lambda';\nconst pool = createPool({ host: '${HOST}' });\nexport const handler = async () => { void pool; };\n`,
    };
    for (const [name, source] of Object.entries(handlers)) {
      const preset = await bundle(`native-${name}`, source, lambdaBundleOptions);
      const before = await bundle(`native-${name}-unplugged`, source, withoutPlugin);
      expect(before, name).toContain(NATIVE_CLIENT);
      expect(preset, name).not.toContain(NATIVE_CLIENT);
      // The rest of pg's require('./native') stays: a call that fails at run time.
      expect(preset, name).toMatch(/\("\.\/native"\)/);
      // ≈ 8.5 KB with pg 8.23 (native/client.js, query.js, index.js, minified).
      expect(Buffer.byteLength(before) - Buffer.byteLength(preset), name).toBeGreaterThan(5_000);
    }
  });

  describe('a preset bundle at run time', () => {
    let endpoint: LocalDsql;
    beforeAll(async () => {
      endpoint = await startTestEndpoint();
    }, 60_000);
    afterAll(async () => {
      await endpoint?.stop();
    });

    it('runs a query against the local endpoint; pg.native is null, as without pg-native', async () => {
      const source = `import pg from 'pg';\nimport { createPool } from 'dsql-lambda';\nconst pool = createPool();\nexport const handler = async () => {\n  const { rows } = await pool.query('SELECT 40 + 2 AS n');\n  await pool.end();\n  return { n: rows[0].n, native: pg.native };\n};\n`;
      await bundle('native-run', source, lambdaBundleOptions);
      const script = `const m = await import(${JSON.stringify(pathToFileURL(join(work, 'native-run.mjs')).href)}); process.stdout.write(JSON.stringify(await m.handler()));`;
      const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
        cwd: work,
        env: { ...process.env, ...endpoint.env },
        timeout: 30_000,
      });
      expect(JSON.parse(stdout)).toEqual({ n: 42, native: null });
    });
  });
});
