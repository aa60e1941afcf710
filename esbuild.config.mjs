// Builds the package (ESM + CJS, one output file per source file so consumers' bundlers
// tree-shake), and, with `--handlers`, bundles the example Lambda handlers the way we
// recommend users bundle theirs (`lambdaBundleOptions` from `dsql-lambda/esbuild`, src/esbuild.ts).
//
//   node esbuild.config.mjs             # dist/esm/**.js, dist/cjs/**.js (+ dist/cjs/package.json),
//                                       # and packages/dsql-local/dist/esm/**.js
//   node esbuild.config.mjs --handlers  # dist/lambda/<name>.mjs (+ .map) for every handler in
//                                       # examples/lambda/ (after a build: the preset is read from dist)
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = dirname(fileURLToPath(import.meta.url));

async function listSources(dir) {
  const out = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listSources(path)));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

async function buildPackage() {
  const entryPoints = await listSources(join(root, 'src'));
  await rm(join(root, 'dist'), { recursive: true, force: true });
  const common = {
    entryPoints,
    outbase: join(root, 'src'),
    bundle: false,
    platform: 'node',
    target: 'node20',
    sourcemap: false,
    logLevel: 'warning',
  };
  await esbuild.build({ ...common, format: 'esm', outdir: join(root, 'dist/esm') });
  await esbuild.build({
    ...common,
    format: 'cjs',
    outdir: join(root, 'dist/cjs'),
    // `import.meta.url` has no CommonJS equivalent; give the CJS build a real one.
    define: { 'import.meta.url': '__dsqlImportMetaUrl' },
    banner: { js: "const __dsqlImportMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
  });
  // The CJS files keep their `.js` names (so relative `require('./x.js')` calls resolve);
  // this marker makes Node treat them as CommonJS.
  await writeFile(join(root, 'dist/cjs/package.json'), '{ "type": "commonjs" }\n');
}

/** The local endpoint package (`packages/dsql-local`): a Node development tool, ESM only. */
async function buildLocalPackage() {
  const pkg = join(root, 'packages/dsql-local');
  await rm(join(pkg, 'dist'), { recursive: true, force: true });
  await esbuild.build({
    entryPoints: await listSources(join(pkg, 'src')),
    outbase: join(pkg, 'src'),
    outdir: join(pkg, 'dist/esm'),
    bundle: false,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    logLevel: 'warning',
  });
}

/** The example handlers: every examples/lambda/*.ts that exports `handler`. */
async function buildHandlers() {
  // The preset ships in the package (`dsql-lambda/esbuild`); this script builds that package, so
  // it reads the built file rather than importing it at the top.
  const { lambdaBundleOptions } = await import('./dist/esm/esbuild.js');
  const dir = join(root, 'examples/lambda');
  const handlers = [];
  for (const file of (await readdir(dir)).filter((f) => f.endsWith('.ts'))) {
    if (/export const handler\b/.test(await readFile(join(dir, file), 'utf8')))
      handlers.push(join(dir, file));
  }
  const outdir = join(root, 'dist/lambda');
  await mkdir(outdir, { recursive: true });
  await esbuild.build({ ...lambdaBundleOptions, entryPoints: handlers, outdir, sourcemap: true });
  return handlers;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv.includes('--handlers')) {
    const built = await buildHandlers();
    console.log(`bundled ${built.length} handler(s) into dist/lambda/`);
  } else {
    await buildPackage();
    await buildLocalPackage();
  }
}
