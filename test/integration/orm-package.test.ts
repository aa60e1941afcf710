/**
 * The ORM entry points as published: `dsql-lambda/kysely` and `dsql-lambda/drizzle` resolve by
 * name in ESM and CJS with their declarations, and a handler that imports only the runtime
 * bundles no ORM code (each ORM is loaded only by the users of its entry point). Sizes are
 * deterministic for a given lockfile.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { beforeAll, describe, expect, it } from 'vitest';
import { lambdaBundleOptions } from '../../src/esbuild.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const work = join(root, 'dist/test-bundles-orm');
const HOST = 'abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws';

beforeAll(() => {
  // `npm test` builds before running vitest; a bare `vitest run` builds here.
  if (
    !['esm/kysely.js', 'cjs/drizzle.js', 'types/kysely.d.ts'].every((f) => existsSync(join(root, 'dist', f)))
  )
    execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
  mkdirSync(work, { recursive: true });
}, 120_000);

async function bundle(name: string, contents: string): Promise<string> {
  const outfile = join(work, `${name}.mjs`);
  await esbuild.build({
    ...lambdaBundleOptions,
    stdin: { contents, resolveDir: root, loader: 'js' },
    outfile,
    logLevel: 'error',
  });
  return readFileSync(outfile, 'utf8');
}

describe('ORM entry points', () => {
  it('resolve by name in ESM and CJS, with declarations', () => {
    const esm = execFileSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "const k = await import('dsql-lambda/kysely'); const d = await import('dsql-lambda/drizzle'); console.log(typeof k.createKysely, typeof k.retryTransaction, typeof k.migrate, typeof k.MigrationError, typeof d.createDrizzle, typeof d.retryTransaction, typeof d.migrate)",
      ],
      { cwd: root, encoding: 'utf8' },
    );
    expect(esm.trim()).toBe('function function function function function function function');
    const cjs = execFileSync(
      process.execPath,
      [
        '-e',
        "const k = require('dsql-lambda/kysely'); const d = require('dsql-lambda/drizzle'); console.log(typeof k.createKysely, typeof d.createDrizzle, k.MigrationError === d.MigrationError)",
      ],
      { cwd: root, encoding: 'utf8' },
    );
    expect(cjs.trim()).toBe('function function true');
    for (const sub of ['kysely', 'drizzle'])
      expect(readFileSync(join(root, `dist/types/${sub}.d.ts`), 'utf8')).toMatch(
        /export declare function retryTransaction/,
      );
  });

  it('a handler importing the runtime bundles no ORM code; each ORM entry only its own ORM', async () => {
    const runtime = await bundle(
      'runtime',
      `import { createPool, withRetry } from 'dsql-lambda';\nconst pool = createPool({ host: '${HOST}' });\nexport const handler = () => withRetry(pool, async () => 1);\n`,
    );
    expect(runtime).not.toMatch(/kysely|drizzle|dsql_migrations|wait_for_job/i);
    const kysely = await bundle(
      'kysely',
      `import { createPool } from 'dsql-lambda';\nimport { createKysely, retryTransaction } from 'dsql-lambda/kysely';\nconst db = createKysely({ pool: createPool({ host: '${HOST}' }) });\nexport const handler = () => retryTransaction(db, async (trx) => trx.selectFrom('t').selectAll().execute());\n`,
    );
    expect(kysely).toMatch(/Kysely/);
    expect(kysely).not.toMatch(/drizzle/i);
    const drizzle = await bundle(
      'drizzle',
      `import { createPool } from 'dsql-lambda';\nimport { createDrizzle, retryTransaction } from 'dsql-lambda/drizzle';\nconst db = createDrizzle({ client: createPool({ host: '${HOST}' }) });\nexport const handler = () => retryTransaction(db, async (tx) => tx.execute('select 1'));\n`,
    );
    expect(drizzle).toMatch(/NodePgSession/);
    expect(drizzle).not.toMatch(/kysely/i);
  });
});
