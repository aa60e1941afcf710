/**
 * The ORM examples run as a user would run them, in child processes with the local endpoint's
 * environment (DSQL_ENDPOINT, AWS credentials, NODE_EXTRA_CA_CERTS …): the migration scripts
 * create their schema, and the transfer handlers move money once per transfer id.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type OrmEndpoint, startOrmEndpoint } from '../helpers/orm.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const run = promisify(execFile);

/** Invokes `handler` of an example module with `event` and a Lambda-like context; prints the result. */
const INVOKE = `
const [file, event] = process.argv.slice(1);
const { handler } = await import(file);
const context = { awsRequestId: 'r1', functionName: 'f', getRemainingTimeInMillis: () => 30000 };
console.log(JSON.stringify(await handler(JSON.parse(event), context)));
process.exit(0);
`;

// One database per test: each example set keeps its own bookkeeping.
let env: OrmEndpoint;
beforeEach(async () => {
  env = await startOrmEndpoint('orm_examples');
});
afterEach(() => env?.stop());

async function node(args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', ...args], {
    cwd: root,
    env: { ...process.env, ...env.endpoint.env },
    timeout: 60_000,
  });
  return stdout;
}

const invoke = async (example: string, event: object) =>
  JSON.parse(
    (
      await node([
        '--input-type=module',
        '-e',
        INVOKE,
        join(root, 'examples', example),
        JSON.stringify(event),
      ])
    ).trim(),
  );

describe('ORM examples', () => {
  it('kysely-migrate.ts creates the schema; kysely-transfer.ts applies a transfer once', async () => {
    expect(await node([join(root, 'examples/kysely-migrate.ts')])).toMatch(
      /applied: 0001_accounts, 0002_transfers/,
    );
    expect(await node([join(root, 'examples/kysely-migrate.ts')])).toMatch(/up to date/);
    await env.pool.query(
      "INSERT INTO accounts (id, owner, balance) VALUES ('a', 'ann', 100), ('b', 'bob', 0)",
    );
    const event = { transferId: randomUUID(), from: 'a', to: 'b', amount: 10 };
    expect(await invoke('kysely-transfer.ts', event)).toEqual({
      transferId: event.transferId,
      applied: true,
      fromBalance: 90,
    });
    expect(await invoke('kysely-transfer.ts', event)).toEqual({
      transferId: event.transferId,
      applied: false,
    });
    const { rows } = await env.pool.query('SELECT id, balance::int AS balance FROM accounts ORDER BY id');
    expect(rows).toEqual([
      { id: 'a', balance: 90 },
      { id: 'b', balance: 10 },
    ]);
  }, 120_000);

  it('drizzle-migrate.ts applies a drizzle-kit folder; drizzle-transfer.ts (middy) applies a transfer once', async () => {
    const folder = join(root, 'test/fixtures/drizzle-migrations');
    expect(await node([join(root, 'examples/drizzle-migrate.ts'), folder])).toMatch(
      /applied: 0000_author_book, 0001_book_published/,
    );
    await env.pool.query(
      'CREATE TABLE accounts (id text PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL)',
    );
    await env.pool.query(
      'CREATE TABLE transfers (id uuid PRIMARY KEY, src text NOT NULL, dst text NOT NULL, amount integer NOT NULL)',
    );
    await env.pool.query(
      "INSERT INTO accounts (id, owner, balance) VALUES ('a', 'ann', 100), ('b', 'bob', 0)",
    );
    const event = { transferId: randomUUID(), from: 'a', to: 'b', amount: 25 };
    expect(await invoke('drizzle-transfer.ts', event)).toEqual({
      transferId: event.transferId,
      applied: true,
      fromBalance: 75,
    });
    expect(await invoke('drizzle-transfer.ts', event)).toEqual({
      transferId: event.transferId,
      applied: false,
    });
  });
});
