/**
 * What `sam build` does with a function whose `Metadata.BuildMethod` is `esbuild`, reproduced
 * without the SAM CLI (aws-lambda-builders' nodejs_npm_esbuild workflow, as read from its source):
 *
 * 1. BuildProperties keys go from PascalCase to snake_case (`MainFields` -> `main_fields`).
 * 2. The CodeUri folder is copied to a scratch folder (without node_modules, .aws-sam, .git) and
 *    `npm install -q --no-audit --no-save --unsafe-perm --production` runs there.
 * 3. esbuild runs in the scratch folder with: the entry points (a list, relative to CodeUri), then
 *    `--bundle --platform=node --outdir=<artifacts>`, `--target=es2020` / `--format=cjs` /
 *    `--minify` when the property is absent, `--minify` / `--sourcemap` when the property is
 *    `true`, `--<name>=<value>` for target, format, main_fields, sources_content (the value as
 *    Python prints it: a YAML list becomes `['module', 'main']`), and one `--<name>:<item>` per
 *    item for external, loader, out_extension, banner (which must be lists).
 * 4. The artifacts folder holds esbuild's output only: named after each entry point, in the
 *    folder layout esbuild gives several entry points (their common ancestor).
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';

const run = promisify(execFile);

const INTRINSICS = [
  'Ref',
  'Condition',
  'Sub',
  'GetAtt',
  'If',
  'Equals',
  'Not',
  'And',
  'Or',
  'Select',
  'Split',
];
const intrinsicKey = (name: string) => (name === 'Ref' || name === 'Condition' ? name : `Fn::${name}`);

/** CloudFormation's short-form tags (`!Ref`, `!Sub`, `!If` …) as their long forms. */
const cfnTags = INTRINSICS.flatMap((name) => [
  {
    tag: `!${name}`,
    resolve: (value: string) => ({ [intrinsicKey(name)]: name === 'GetAtt' ? value.split('.') : value }),
  },
  {
    tag: `!${name}`,
    collection: 'seq' as const,
    resolve: (seq: { toJSON(): unknown }) => ({ [intrinsicKey(name)]: seq.toJSON() }),
  },
]);

/** A parsed SAM template (only what the build looks at is typed). */
export interface SamTemplate {
  Globals?: { Function?: Record<string, unknown> };
  Resources: Record<
    string,
    { Type: string; Properties?: Record<string, unknown>; Metadata?: Record<string, unknown> }
  >;
  [key: string]: unknown;
}

export async function readTemplate(path: string): Promise<SamTemplate> {
  return parse(await readFile(path, 'utf8'), { customTags: cfnTags }) as SamTemplate;
}

/** One AWS::Serverless::Function with the Globals applied (a function's own properties win). */
export interface SamFunction {
  name: string;
  properties: Record<string, unknown>;
  metadata: Record<string, unknown>;
}

export function serverlessFunctions(template: SamTemplate): SamFunction[] {
  const globals = template.Globals?.Function ?? {};
  return Object.entries(template.Resources)
    .filter(([, r]) => r.Type === 'AWS::Serverless::Function')
    .map(([name, r]) => ({ name, properties: { ...globals, ...r.Properties }, metadata: r.Metadata ?? {} }));
}

/** SAM CLI's PascalCase -> snake_case of BuildProperties keys. */
export function normalizeBuildProperties(props: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(props).map(([k, v]) => [k.replace(/(?<!^)(?=[A-Z])/g, '_').toLowerCase(), v]),
  );
}

/** `str(value)` in Python, which is how the builder writes single-value flags. */
export function pythonStr(value: unknown): string {
  if (value === true) return 'True';
  if (value === false) return 'False';
  if (value === null || value === undefined) return 'None';
  if (Array.isArray(value))
    return `[${value.map((v) => (typeof v === 'string' ? `'${v}'` : pythonStr(v))).join(', ')}]`;
  return String(value);
}

const BOOLEAN = ['minify', 'sourcemap'];
const SINGLE = ['target', 'format', 'main_fields', 'sources_content'];
const MULTI = ['external', 'loader', 'out_extension', 'banner'];

/** The esbuild argument list the builder passes for `config` (normalized build properties). */
export function esbuildArgs(config: Record<string, unknown>, artifactsDir: string): string[] {
  const entryPoints = config.entry_points;
  if (!Array.isArray(entryPoints) || entryPoints.length === 0) {
    throw new Error('entry_points must be a non-empty list');
  }
  const args = entryPoints.map(String);
  args.push('--bundle', '--platform=node', `--outdir=${artifactsDir}`);
  if (!('target' in config)) args.push('--target=es2020');
  if (!('format' in config)) args.push('--format=cjs');
  if (!('minify' in config)) args.push('--minify');
  for (const name of BOOLEAN) if (config[name] === true) args.push(`--${name.replace(/_/g, '-')}`);
  for (const name of SINGLE)
    if (name in config) args.push(`--${name.replace(/_/g, '-')}=${pythonStr(config[name])}`);
  for (const name of MULTI) {
    if (!(name in config)) continue;
    const values = config[name];
    if (!Array.isArray(values)) throw new Error(`Invalid type for property ${name}, must be a list`);
    for (const item of values) args.push(`--${name.replace(/_/g, '-')}:${item}`);
  }
  return args;
}

/** Options of {@link samBuild}. */
export interface SamBuildOptions {
  /** Folder template.yaml is in (CodeUri is relative to it). */
  templateDir: string;
  /** The esbuild binary (SAM takes the one on PATH or in the project's node_modules/.bin). */
  esbuild: string;
  /** Dependency specs to replace before installing, e.g. `{ 'dsql-lambda': 'file:/tmp/x.tgz' }`. */
  overrideDependencies?: Record<string, string>;
}

/** Builds one function as SAM would; returns the artifacts folder and the esbuild arguments. */
export async function samBuild(
  fn: SamFunction,
  options: SamBuildOptions,
): Promise<{ artifacts: string; args: string[] }> {
  if (fn.metadata.BuildMethod !== 'esbuild') throw new Error(`${fn.name}: BuildMethod is not esbuild`);
  const codeUri = join(options.templateDir, String(fn.properties.CodeUri ?? '.'));
  const scratch = await mkdtemp(join(tmpdir(), `sam-scratch-${fn.name}-`));
  const artifacts = await mkdtemp(join(tmpdir(), `sam-artifacts-${fn.name}-`));
  const excluded = new Set(['node_modules', '.aws-sam', '.git']);
  await cp(codeUri, scratch, {
    recursive: true,
    filter: (src) =>
      !src
        .slice(codeUri.length)
        .split(/[\\/]/)
        .some((part) => excluded.has(part)),
  });
  if (options.overrideDependencies) {
    const manifest = join(scratch, 'package.json');
    const pkg = JSON.parse(await readFile(manifest, 'utf8'));
    for (const [name, spec] of Object.entries(options.overrideDependencies)) {
      if (pkg.dependencies?.[name] === undefined)
        throw new Error(`${fn.name}: no dependency ${name} to override`);
      pkg.dependencies[name] = spec;
    }
    await writeFile(manifest, JSON.stringify(pkg, null, 2));
  }
  // The builder's install step (`--prefer-offline` only spares the registry what the cache has).
  await run(
    'npm',
    ['install', '-q', '--no-audit', '--no-save', '--unsafe-perm', '--production', '--prefer-offline'],
    {
      cwd: scratch,
      timeout: 180_000,
    },
  );
  const buildProps = (fn.metadata.BuildProperties ?? {}) as Record<string, unknown>;
  const config = normalizeBuildProperties(buildProps);
  if (!buildProps.EntryPoints && typeof fn.properties.Handler === 'string') {
    config.entry_points = [fn.properties.Handler.split('.')[0]];
  }
  const args = esbuildArgs(config, artifacts);
  await run(options.esbuild, args, { cwd: scratch, timeout: 120_000 });
  return { artifacts, args };
}
