// Builds the package (ESM + CJS, one output file per source file so consumers' bundlers
// tree-shake), and, with `--handlers`, bundles the example Lambda handlers the way we
// recommend users bundle theirs (see `lambdaBundleOptions`).
//
//   node esbuild.config.mjs             # dist/esm/**.js, dist/cjs/**.js (+ dist/cjs/package.json),
//                                       # and packages/dsql-local/dist/esm/**.js
//   node esbuild.config.mjs --handlers  # dist/lambda/<name>/index.mjs for every examples/*handler*.ts
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = dirname(fileURLToPath(import.meta.url));

/**
 * esbuild options for a cold-start-optimised Lambda bundle (Node 20+).
 * - ESM output with `mainFields: ['module', 'main']` picks the ESM builds of dependencies, which
 *   tree-shake far better than their CommonJS builds.
 * - `@aws-sdk/*` stays external: the Lambda runtime ships the SDK, and dsql-lambda only loads it
 *   for credential sources a Lambda function rarely needs (profiles, the default chain).
 * - `pg-native` is external: pg requires it only when asked for native bindings.
 * - The banner gives ESM bundles a `require` so CommonJS dependencies that call it keep working.
 * @type {import('esbuild').BuildOptions}
 */
export const lambdaBundleOptions = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  outExtension: { '.js': '.mjs' },
  mainFields: ['module', 'main'],
  minify: true,
  legalComments: 'none',
  treeShaking: true,
  external: ['@aws-sdk/*', 'pg-native'],
  banner: {
    js: "import { createRequire as __dsqlCreateRequire } from 'node:module'; const require = __dsqlCreateRequire(import.meta.url);",
  },
  logLevel: 'warning',
};

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

async function buildHandlers() {
  const examples = join(root, 'examples');
  const handlers = (await readdir(examples)).filter((f) => /handler.*\.ts$/.test(f));
  for (const file of handlers) {
    const name = file.replace(/\.ts$/, '');
    const outdir = join(root, 'dist/lambda', name);
    await mkdir(outdir, { recursive: true });
    await esbuild.build({
      ...lambdaBundleOptions,
      entryPoints: { index: join(examples, file) },
      outdir,
      metafile: false,
    });
  }
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
