// Error classes as users see them: in a minified bundle (the README's esbuild options) class
// names are mangled, so each error must carry its name explicitly.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { transformSync } from 'esbuild';
import { afterAll, describe, expect, it } from 'vitest';
import * as errors from '../../src/errors.js';

const NAMES = [
  'DsqlError',
  'DsqlConfigError',
  'DsqlTokenError',
  'DsqlConnectionError',
  'OccRetryExhaustedError',
  'CommitOutcomeUnknownError',
] as const;

const dir = mkdtempSync(join(tmpdir(), 'dsql-errors-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function instances(mod: Record<string, unknown>): Error[] {
  const make = (name: string) => mod[name] as new (...args: unknown[]) => Error;
  return [
    new (make('DsqlError'))('m'),
    new (make('DsqlConfigError'))('host', 'm'),
    new (make('DsqlTokenError'))('m'),
    new (make('DsqlConnectionError'))('m', 1),
    new (make('OccRetryExhaustedError'))('m', { attempts: 1, elapsedMs: 0, reason: 'attempts' }),
    new (make('CommitOutcomeUnknownError'))('m', 1),
  ];
}

describe('error names', () => {
  it('are the class names, also after minification', async () => {
    expect(instances(errors).map((e) => e.name)).toEqual(NAMES);
    const source = readFileSync(new URL('../../src/errors.ts', import.meta.url), 'utf8');
    const { code } = transformSync(source, { loader: 'ts', minify: true, format: 'esm', target: 'node20' });
    const file = join(dir, 'errors.min.mjs');
    writeFileSync(file, code);
    const minified = await import(pathToFileURL(file).href);
    expect(instances(minified).map((e) => e.name)).toEqual(NAMES);
    expect(String(instances(minified)[1])).toMatch(/^DsqlConfigError: /);
  });
});
