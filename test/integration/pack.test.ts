/**
 * The package stands alone: packed with `npm pack`, installed into an empty project with only
 * what the README's "Getting started" says to install, it type-checks a strict handler (types
 * resolve, none silently `any`), bundles with the preset from `dsql-lambda/esbuild`, and the
 * bundle loads. The tarball carries the LICENSE and metadata npm shows, and nothing of the repo's
 * tests or scratch builds.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { packPackage } from '../helpers/pack.js';

// Child processes, npm and esbuild: slow on a loaded 2-core machine, so generous per-test time.
vi.setConfig({ testTimeout: 120_000 });

const run = promisify(execFile);
const npmQuiet = ['--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'];

let packed: Awaited<ReturnType<typeof packPackage>>;
let project: string;

const handlerSource = `import middy from '@middy/core';
import type { APIGatewayProxyEventV2, Context, SQSEvent, SQSBatchResponse } from 'aws-lambda';
import {
  createPool,
  DSQL_DEFAULTS,
  DsqlConfigError,
  isOccError,
  OccRetryExhaustedError,
  withDsql,
  withRetry,
} from 'dsql-lambda';
import { dsql } from 'dsql-lambda/middy';

const pool = createPool();

// If the package's types were missing, everything would be \`any\` and these would compile.
// @ts-expect-error: a pool is not a string
const notAString: string = pool;
void notAString;
// Never called: only type-checked.
// @ts-expect-error: withRetry needs a callback
export const typeCheckOnly = () => withRetry(pool);
export const pgTypesResolve = async () => {
  const result = await pool.query('SELECT 1');
  // @ts-expect-error: a pg QueryResult has no such field (with pg's types missing, it would be any)
  return result.noSuchField;
};

export const queue = async (event: SQSEvent, context: Context): Promise<SQSBatchResponse> => {
  const batchItemFailures: { itemIdentifier: string }[] = [];
  for (const record of event.Records) {
    try {
      await withRetry(pool, async (tx) => {
        const { rows } = await tx.query<{ n: number }>('SELECT $1::int AS n', [record.body.length]);
        const n: number = rows[0]!.n;
        return n;
      }, { deadline: Date.now() + context.getRemainingTimeInMillis() - 500 });
    } catch (err) {
      if (err instanceof OccRetryExhaustedError || isOccError(err) || err instanceof DsqlConfigError) {
        batchItemFailures.push({ itemIdentifier: record.messageId });
      } else throw err;
    }
  }
  return { batchItemFailures };
};

export const plain = withDsql(async (event: { id: string }, context) => {
  const { rows } = await context.dsql.query<{ id: string }>('SELECT $1::text AS id', [event.id]);
  return rows[0]?.id ?? String(DSQL_DEFAULTS);
});

export const handler = middy<APIGatewayProxyEventV2>()
  .use(dsql())
  .handler(async (event, context) => {
    const { rows } = await context.dsql.query<{ now: Date }>('SELECT now() AS now');
    return { statusCode: 200, body: JSON.stringify({ path: event.rawPath, now: rows[0]?.now.toISOString() }) };
  });
`;

const buildScript = `import * as esbuild from 'esbuild';
import { lambdaBundleOptions } from 'dsql-lambda/esbuild';

await esbuild.build({ ...lambdaBundleOptions, entryPoints: ['handler.ts'], outdir: 'out', sourcemap: true });
`;

beforeAll(async () => {
  packed = await packPackage();
  project = await mkdtemp(join(tmpdir(), 'dsql-lambda-user-'));
  await writeFile(
    join(project, 'package.json'),
    JSON.stringify({ name: 'user-app', private: true, type: 'module' }),
  );
  // "Getting started" in the README: the package, middy for the middleware; the dev tools.
  await run('npm', ['install', ...npmQuiet, packed.tarball, '@middy/core'], {
    cwd: project,
    timeout: 300_000,
  });
  await run('npm', ['install', ...npmQuiet, '-D', 'typescript@~5.9', '@types/aws-lambda', 'esbuild'], {
    cwd: project,
    timeout: 300_000,
  });
}, 600_000);

describe('the packed tarball', () => {
  it('holds the builds, types, README and LICENSE, and nothing from tests or scratch builds', () => {
    const { files } = packed;
    expect(files).toEqual(expect.arrayContaining(['LICENSE', 'README.md', 'package.json']));
    for (const entry of ['index', 'middy', 'esbuild']) {
      expect(files).toEqual(
        expect.arrayContaining([`dist/esm/${entry}.js`, `dist/cjs/${entry}.js`, `dist/types/${entry}.d.ts`]),
      );
    }
    expect(
      files.filter((f) => !/^(dist\/(esm|cjs|types)\/|LICENSE$|README\.md$|package\.json$)/.test(f)),
    ).toEqual([]);
  });

  it('package.json says where it comes from, and declares the types its declarations import', async () => {
    const pkg = JSON.parse(await readFile(join(project, 'node_modules/dsql-lambda/package.json'), 'utf8'));
    expect(pkg.license).toBe('Apache-2.0');
    expect(pkg.repository?.url).toMatch(/^git\+https:\/\//);
    expect(pkg.homepage).toMatch(/^https:\/\//);
    expect(pkg.bugs?.url).toMatch(/^https:\/\//);
    expect(Object.keys(pkg.dependencies).sort()).toEqual(['@types/pg', 'pg']);
    expect(pkg.exports['./esbuild']).toBeDefined();
    const license = await readFile(join(project, 'node_modules/dsql-lambda/LICENSE'), 'utf8');
    expect(license).toMatch(/Apache License\s+Version 2\.0/);
  });

  it("the README's links work on npm: absolute, or anchors within the page", async () => {
    const readme = await readFile(join(project, 'node_modules/dsql-lambda/README.md'), 'utf8');
    const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]!);
    expect(links.length).toBeGreaterThan(0);
    expect(links.filter((l) => !/^(https:\/\/|#)/.test(l))).toEqual([]);
  });
});

describe('a user project with only the README dependencies', () => {
  it('type-checks a strict handler against the package types', async () => {
    await writeFile(join(project, 'handler.ts'), handlerSource);
    await writeFile(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          noUncheckedIndexedAccess: true,
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          target: 'ES2022',
          noEmit: true,
          skipLibCheck: true,
        },
        files: ['handler.ts'],
      }),
    );
    const res = await run(join(project, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.json'], {
      cwd: project,
    }).catch((err: { stdout: string; code: number }) => err);
    expect('code' in res ? res.stdout : '').toBe('');
  });

  it('bundles it with the dsql-lambda/esbuild preset, and the bundle loads and exports the handlers', async () => {
    await writeFile(join(project, 'handler.ts'), handlerSource);
    await writeFile(join(project, 'build.mjs'), buildScript);
    await run(process.execPath, ['build.mjs'], { cwd: project });
    const { stdout } = await run(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "const m = await import('./out/handler.mjs'); console.log([typeof m.handler, typeof m.queue, typeof m.plain].join(' '))",
      ],
      {
        cwd: project,
        env: { ...process.env, DSQL_ENDPOINT: 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws' },
      },
    );
    expect(stdout.trim()).toBe('function function function');
    const cjs = await run(
      process.execPath,
      ['-e', "console.log(require('dsql-lambda/esbuild').lambdaBundleOptions.format)"],
      {
        cwd: project,
      },
    );
    expect(cjs.stdout.trim()).toBe('esm');
  });
});

describe('a CommonJS user project (package.json without "type": "module")', () => {
  const cjsHandler = `import { createPool, OccRetryExhaustedError, withDsql, withRetry } from 'dsql-lambda';
import { dsql } from 'dsql-lambda/middy';
import { lambdaBundleOptions } from 'dsql-lambda/esbuild';

const pool = createPool();
// @ts-expect-error: a pool is not a string (with the types missing, pool would be any)
const notAString: string = pool;
void notAString;
void dsql;
void lambdaBundleOptions;
export const handler = withDsql(async (event: { id: string }, context) => {
  try {
    return await withRetry(pool, async (tx) => (await tx.query<{ id: string }>('SELECT $1::text AS id', [event.id])).rows[0]?.id);
  } catch (err) {
    if (err instanceof OccRetryExhaustedError) return context.dsql.query('SELECT 1');
    throw err;
  }
});
`;

  for (const [module, moduleResolution] of [
    ['Node16', 'Node16'],
    ['NodeNext', 'NodeNext'],
    ['CommonJS', 'Node10'], // no exports map: the subpaths come from typesVersions
  ] as const) {
    it(`type-checks a strict handler that imports the package (module ${module}, moduleResolution ${moduleResolution}): CommonJS types`, async () => {
      const dir = join(project, `cjs-${module}`);
      await mkdir(dir, { recursive: true });
      // A CommonJS package inside the user's project: its node_modules are the project's.
      await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'cjs-app', private: true }));
      await writeFile(join(dir, 'handler.ts'), cjsHandler);
      await writeFile(
        join(dir, 'tsconfig.json'),
        JSON.stringify({
          compilerOptions: {
            strict: true,
            module,
            moduleResolution,
            target: 'ES2022',
            noEmit: true,
            skipLibCheck: true,
          },
          files: ['handler.ts'],
        }),
      );
      const res = await run(join(project, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.json'], {
        cwd: dir,
      }).catch((err: { stdout: string; code: number }) => err);
      expect('code' in res ? res.stdout : '').toBe('');
    });
  }
});

describe('a user project that also installs Kysely', () => {
  const kyselyHandler = `import { createPool, withDsql } from 'dsql-lambda';
import { createKysely, type DsqlKysely, migrate, retryTransaction } from 'dsql-lambda/kysely';
import { type Generated, sql } from 'kysely';

interface Database {
  account: { id: Generated<number>; owner: string; balance: number };
}
let db: DsqlKysely<Database> | undefined;

export const handler = withDsql(async (event: { id: number; amount: number }, context) => {
  db ??= createKysely<Database>({ pool: context.dsql.pool });
  const row = await retryTransaction(
    db,
    async (trx) => {
      await trx.updateTable('account').set({ balance: sql\`balance - \${event.amount}\` }).where('id', '=', event.id).execute();
      // @ts-expect-error: no such table (with the types missing, trx would be any and this would compile)
      await trx.selectFrom('nope').selectAll().execute();
      return trx.selectFrom('account').select(['id', 'balance']).where('id', '=', event.id).executeTakeFirstOrThrow();
    },
    { dsql: context.dsql },
  );
  const balance: number = row.balance;
  // @ts-expect-error: owner was not selected
  const owner: string = row.owner;
  return { balance, owner };
});

export const migrateAll = () => migrate(createKysely<unknown>({ pool: createPool() }), {});
`;

  beforeAll(async () => {
    await run('npm', ['install', ...npmQuiet, 'kysely@^0.28'], { cwd: project, timeout: 300_000 });
  }, 600_000);

  for (const [module, moduleResolution] of [
    ['NodeNext', 'NodeNext'],
    ['ESNext', 'Bundler'],
    ['Node16', 'Node16'],
  ])
    it(`type-checks a strict handler on dsql-lambda/kysely (module ${module}, moduleResolution ${moduleResolution})`, async () => {
      await writeFile(join(project, 'kysely-handler.ts'), kyselyHandler);
      const tsconfig = `tsconfig.kysely-${moduleResolution}.json`;
      await writeFile(
        join(project, tsconfig),
        JSON.stringify({
          compilerOptions: {
            strict: true,
            noUncheckedIndexedAccess: true,
            module,
            moduleResolution,
            target: 'ES2022',
            noEmit: true,
            skipLibCheck: true,
          },
          files: ['kysely-handler.ts'],
        }),
      );
      const res = await run(join(project, 'node_modules/.bin/tsc'), ['-p', tsconfig], { cwd: project }).catch(
        (err: { stdout: string; code: number }) => err,
      );
      expect('code' in res ? res.stdout : '').toBe('');
    });

  it('bundles it; the bundle carries Kysely and loads; CommonJS require() finds the ORM entry points', async () => {
    await writeFile(join(project, 'kysely-handler.ts'), kyselyHandler);
    await writeFile(
      join(project, 'build-kysely.mjs'),
      buildScript.replace("entryPoints: ['handler.ts']", "entryPoints: ['kysely-handler.ts']"),
    );
    await run(process.execPath, ['build-kysely.mjs'], { cwd: project });
    const bundle = await readFile(join(project, 'out/kysely-handler.mjs'), 'utf8');
    expect(bundle).toMatch(/Kysely/);
    const { stdout } = await run(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "const m = await import('./out/kysely-handler.mjs'); console.log(typeof m.handler, typeof m.migrateAll)",
      ],
      {
        cwd: project,
        env: { ...process.env, DSQL_ENDPOINT: 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws' },
      },
    );
    expect(stdout.trim()).toBe('function function');
    const cjs = await run(
      process.execPath,
      [
        '-e',
        "const k = require('dsql-lambda/kysely'); const e = require('dsql-lambda/esbuild'); console.log(typeof k.retryTransaction, typeof k.migrate, e.lambdaBundleOptions.format)",
      ],
      { cwd: project },
    );
    expect(cjs.stdout.trim()).toBe('function function esm');
  });
});
