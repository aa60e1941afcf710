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

describe('classification', () => {
  const { isOccError, isConnectionLostError, occCode } = errors;

  it("reads a message only where the code allows: a server error quoting OC000 or pg's texts is neither OCC nor lost", () => {
    for (const quoted of [
      'OC000',
      'OC001',
      'Connection terminated',
      'is not queryable',
      'Query read timeout',
    ]) {
      // PostgreSQL quotes the value: `SELECT $1::int` with this parameter fails so.
      const err = Object.assign(new Error(`invalid input syntax for type integer: "${quoted}"`), {
        code: '22P02',
      });
      expect([quoted, isOccError(err), isConnectionLostError(err)]).toEqual([quoted, false, false]);
      expect(isOccError(new Error('wrapped', { cause: err }))).toBe(false);
    }
    // What DSQL and pg send still counts: OC001 in a 40001's message, pg's own texts (no code).
    const conflict = Object.assign(new Error('schema has been updated by another transaction (OC001)'), {
      code: '40001',
    });
    expect(occCode(new Error('wrapped', { cause: conflict }))).toBe('OC001');
    expect(isConnectionLostError(new Error('Connection terminated unexpectedly'))).toBe(true);
    expect(isConnectionLostError(new AggregateError([new Error('Query read timeout')]))).toBe(true);
  });

  it('never throws: getters that throw, Proxies, null-prototype codes and cycles classify as nothing', () => {
    const trap = new Proxy(
      {},
      {
        get: () => {
          throw new Error('trap');
        },
      },
    );
    const getter = {
      get code(): string {
        throw new Error('getter');
      },
    };
    const cyclic: { code: string; cause?: unknown } = { code: '22P02' };
    cyclic.cause = cyclic;
    const odd = [trap, getter, { code: Object.create(null) }, cyclic, Symbol('s'), 42, null, undefined];
    for (const err of odd) {
      expect(isOccError(err)).toBe(false);
      expect(isConnectionLostError(err)).toBe(false);
    }
    // And what follows an unreadable link is still seen.
    expect(isOccError(new AggregateError([trap, { code: 'OC000' }]))).toBe(true);
  });
});
