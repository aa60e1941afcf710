/**
 * Every example in examples/ runs against the local endpoint, configured only by the environment
 * the endpoint prints (as a user would run it): the four scripts of the seed (pool, transaction,
 * OCC retry, connection strings), Kysely and Drizzle on the library's pool, and the Lambda
 * handlers template.yaml deploys, each in a Lambda-like process, connecting as the
 * least-privilege role the migration creates, from their sources and bundled with the preset.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { LocalDsql } from '../../packages/dsql-local/src/index.js';
import { createPool } from '../../src/index.js';
import { startTestEndpoint } from '../helpers/endpoint.js';
import {
  dropRoles,
  type HandlerProcess,
  root,
  runExample,
  scratchDatabase,
  startHandlerProcess,
} from '../helpers/examples.js';

// Child processes, npm and esbuild: slow on a loaded 2-core machine, so generous per-test time.
vi.setConfig({ testTimeout: 120_000 });

const run = promisify(execFile);

let endpoint: LocalDsql;
let database: Awaited<ReturnType<typeof scratchDatabase>>;
const role = `app_${Math.random().toString(36).slice(2, 8)}`;

beforeAll(async () => {
  database = await scratchDatabase('dsql_examples');
  endpoint = await startTestEndpoint({ upstream: database.url });
}, 60_000);

afterAll(async () => {
  await endpoint?.stop();
  await database?.drop();
  await dropRoles(role);
});

/** An admin pool on the endpoint, for checking what the examples left in the database. */
function adminPool(): pg.Pool {
  return createPool({
    host: endpoint.host,
    hostaddr: endpoint.address,
    port: endpoint.port,
    credentials: endpoint.credentials,
    ssl: { ca: endpoint.ca },
    user: 'admin',
  });
}

describe('the seed examples, as scripts', () => {
  it('pool.ts: eight concurrent queries on at most four connections', async () => {
    endpoint.resetStats();
    const out = await runExample('pool.ts', endpoint.env);
    const match = out.match(/8 queries answered in \d+ ms on (\d) connection\(s\)/);
    expect(match, out).not.toBeNull();
    const connections = Number(match![1]);
    expect(connections).toBeGreaterThanOrEqual(1);
    expect(connections).toBeLessThanOrEqual(4);
    // Every connection signed in, all with the one cached token.
    const stats = endpoint.stats();
    expect(stats.auth.ok).toBe(connections);
    expect(stats.distinctTokensAccepted).toBe(1);
    expect(out).toMatch(/server time \d{4}-/);
  });

  it('transaction.ts: one transfer committed, one rolled back', async () => {
    const out = await runExample('transaction.ts', endpoint.env);
    expect(out).toContain('committed: ada paid grace 30');
    expect(out).toContain('rolled back: grace cannot pay 1000');
    expect(out).toContain('balances: ada=70, grace=30');
  });

  it('occ-retry.ts: eight conflicting increments all land, through OCC retries', async () => {
    const out = await runExample('occ-retry.ts', endpoint.env);
    const match = out.match(/8 concurrent increments -> value (\d+), after (\d+) OCC retries/);
    expect(match, out).not.toBeNull();
    expect(Number(match![1])).toBe(8); // no lost update, however many of them conflicted
    expect(out).toMatch(/gave up after 1 attempt\(s\): OCC conflict = true|no conflict this time/);
  });

  it('connection-string.ts: postgres:// and dsql:// URLs, and a refused password', async () => {
    const out = await runExample('connection-string.ts', endpoint.env);
    expect(out).toMatch(/pool from a postgres:\/\/ URL: connected as (admin|postgres)/); // admin, or the upstream user it maps to
    expect(out).toMatch(/client from a dsql:\/\/ URL: application_name example/);
    expect(out).toMatch(/refused: .*password/i);
    expect(out).not.toContain('secret');
  });
});

describe('ORMs on the library pool', () => {
  it('kysely.ts', async () => {
    const out = await runExample('kysely.ts', endpoint.env);
    expect(out).toMatch(/kysely: inserted [0-9a-f-]{36}, read back "Kysely on DSQL \d+" \(2026\)/);
  });

  it('drizzle.ts', async () => {
    const out = await runExample('drizzle.ts', endpoint.env);
    expect(out).toMatch(/drizzle: inserted [0-9a-f-]{36}, read back "Drizzle on DSQL \d+" with 1 star\(s\)/);
  });
});

describe('migrate.ts refuses what it would have to paste into SQL, before connecting', () => {
  // Identifiers and literals cannot be bind parameters in DDL: anything odd must never reach the server.
  it.each([
    [
      'a role that is not a plain name',
      ['--role', 'app"; DROP TABLE items; --'],
      /role: .* is not a lower-case SQL name/,
    ],
    ['an upper-case role', ['--role', 'App'], /role: "App"/],
    [
      'an ARN with a quote',
      ['--role', 'app', '--iam-role', "arn:aws:iam::123456789012:role/x' OR '1"],
      /iamRoles: .* is not an IAM role ARN/,
    ],
    ['a user ARN', ['--role', 'app', '--iam-role', 'arn:aws:iam::123456789012:user/alice'], /iamRoles:/],
  ])('%s', async (_label, args, message) => {
    const before = endpoint.stats().connections.total;
    const failure = await runExample('lambda/migrate.ts', endpoint.env, args).then(
      () => undefined,
      (err: { stderr: string }) => err,
    );
    expect(failure?.stderr).toMatch(message);
    expect(endpoint.stats().connections.total).toBe(before);
  });
});

describe('the Lambda handlers, as the least-privilege role', () => {
  let lambda: HandlerProcess;
  let admin: pg.Pool;

  beforeAll(async () => {
    // Twice: the migration can run again (tables exist, the role exists).
    for (let i = 0; i < 2; i++) {
      const out = await runExample('lambda/migrate.ts', endpoint.env, ['--role', role]);
      expect(out).toContain('ok  CREATE TABLE IF NOT EXISTS items');
      expect(out).toContain(
        `ok  GRANT SELECT, INSERT, UPDATE, DELETE ON items, accounts, transfers, orders TO "${role}"`,
      );
    }
    admin = adminPool();
    await admin.query("INSERT INTO accounts (id, balance) VALUES ('alice', 1000), ('bob', 0)");
    lambda = startHandlerProcess({ ...endpoint.env, PGUSER: role });
  }, 120_000);

  afterAll(async () => {
    await lambda?.close();
    await admin?.end();
  });

  const http = (method: string, path: string, body?: unknown) => ({
    version: '2.0',
    routeKey: `${method} ${path}`,
    rawPath: path,
    requestContext: { http: { method, path } },
    pathParameters: path.match(/^\/items\/(.+)$/) ? { id: path.split('/')[2] } : undefined,
    body: body === undefined ? undefined : JSON.stringify(body),
    isBase64Encoded: false,
  });
  type Reply = { statusCode: number; body: string };
  const call = async (method: string, path: string, body?: unknown) => {
    const reply = await lambda.invoke('./lambda/items-api.ts', http(method, path, body));
    expect(reply.ok, reply.error).toBe(true);
    const result = reply.result as Reply;
    return { status: result.statusCode, json: result.body ? JSON.parse(result.body) : undefined };
  };

  it('items-api.ts: create, read, list, update, delete', async () => {
    const created = await call('POST', '/items', { name: 'lamp', priceCents: 1999 });
    expect(created.status).toBe(201);
    expect(created.json).toMatchObject({ name: 'lamp', priceCents: 1999 });
    const id = created.json.id as string;

    expect(await call('GET', `/items/${id}`)).toMatchObject({ status: 200, json: { id, name: 'lamp' } });
    const list = await call('GET', '/items');
    expect(list.json.items.map((i: { id: string }) => i.id)).toContain(id);
    expect(await call('PUT', `/items/${id}`, { priceCents: 1500 })).toMatchObject({
      status: 200,
      json: { name: 'lamp', priceCents: 1500 },
    });
    expect((await call('DELETE', `/items/${id}`)).status).toBe(204);
    expect((await call('GET', `/items/${id}`)).status).toBe(404);
    expect((await call('DELETE', `/items/${id}`)).status).toBe(404);
  });

  it('items-api.ts: malformed requests get a 4xx, not a failed invocation', async () => {
    expect(await call('POST', '/items', { priceCents: 5 })).toMatchObject({ status: 400 });
    expect(await call('POST', '/items', { name: 'x', priceCents: -1 })).toMatchObject({ status: 400 });
    expect(await call('POST', '/items', 'not an object')).toMatchObject({ status: 400 });
    const reply = await lambda.invoke('./lambda/items-api.ts', { ...http('POST', '/items'), body: '{oops' });
    expect((reply.result as Reply).statusCode).toBe(400);
    expect((await call('GET', '/items/not-a-uuid')).status).toBe(404);
    expect((await call('PATCH', '/items')).status).toBe(405);
  });

  it('queue-worker.ts: one transaction per record, failures reported per record, redelivery harmless', async () => {
    const record = (messageId: string, body: unknown) => ({
      messageId,
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    const orderA = `o-${Date.now()}-a`;
    const event = {
      Records: [
        record('m1', { orderId: orderA, account: 'alice', amount: 100 }),
        record('m2', '{not json'),
        record('m3', { orderId: `${orderA}-big`, account: 'alice', amount: 1_000_000 }), // short of funds
        record('m4', { orderId: `${orderA}-ghost`, account: 'nobody', amount: 1 }),
        record('m5', { orderId: `${orderA}-b`, account: 'alice', amount: 50 }),
      ],
    };
    const reply = await lambda.invoke('./lambda/queue-worker.ts', event);
    expect(reply.ok, reply.error).toBe(true);
    expect(reply.result).toEqual({
      batchItemFailures: [{ itemIdentifier: 'm2' }, { itemIdentifier: 'm3' }, { itemIdentifier: 'm4' }],
    });
    const balance = async () =>
      Number((await admin.query("SELECT balance FROM accounts WHERE id = 'alice'")).rows[0].balance);
    expect(await balance()).toBe(850);
    // The failed orders left nothing behind (their transactions rolled back).
    const orders = await admin.query('SELECT id FROM orders WHERE id LIKE $1 ORDER BY id', [`${orderA}%`]);
    expect(orders.rows.map((r) => r.id)).toEqual([orderA, `${orderA}-b`]);

    // SQS delivers at least once: the same batch again changes nothing.
    const again = await lambda.invoke('./lambda/queue-worker.ts', event);
    expect((again.result as { batchItemFailures: unknown[] }).batchItemFailures).toHaveLength(3);
    expect(await balance()).toBe(850);
  });

  it('queue-worker.ts: an OCC conflict at COMMIT is retried inside the record, not reported', async () => {
    endpoint.faults.failNextCommits({ count: 2, code: 'OC000' });
    const orderId = `o-${Date.now()}-occ`;
    const reply = await lambda.invoke('./lambda/queue-worker.ts', {
      Records: [{ messageId: 'm-occ', body: JSON.stringify({ orderId, account: 'alice', amount: 1 }) }],
    });
    expect(reply.result).toEqual({ batchItemFailures: [] });
    expect(endpoint.stats().occInjected.OC000).toBeGreaterThanOrEqual(2);
    const { rowCount } = await admin.query('SELECT 1 FROM orders WHERE id = $1', [orderId]);
    expect(rowCount).toBe(1);
  });

  it('transfer.ts (withDsql, no middy): applied once, idempotent by transfer id, refused when short', async () => {
    const transferId = `t-${Date.now()}`;
    const event = { transferId, from: 'alice', to: 'bob', amount: 5 };
    const first = await lambda.invoke('./lambda/transfer.ts', event);
    expect(first.result).toMatchObject({ transferId, applied: true });
    const second = await lambda.invoke('./lambda/transfer.ts', event);
    expect(second.result).toMatchObject({ transferId, applied: false });
    const short = await lambda.invoke('./lambda/transfer.ts', {
      ...event,
      transferId: `${transferId}-x`,
      amount: 10 ** 9,
    });
    expect(short).toMatchObject({ ok: false, error: expect.stringMatching(/short of funds/) });
    const bob = await admin.query("SELECT balance FROM accounts WHERE id = 'bob'");
    expect(Number(bob.rows[0].balance)).toBe(5);
  });

  it('the functions connect as the application role, which cannot change the schema', async () => {
    const sessions = endpoint.sessions().filter((s) => s.user === role);
    expect(sessions.length).toBeGreaterThan(0);
    expect(endpoint.stats().tokensByUser[role]).toBeGreaterThan(0);
    const app = createPool({
      host: endpoint.host,
      hostaddr: endpoint.address,
      port: endpoint.port,
      credentials: endpoint.credentials,
      ssl: { ca: endpoint.ca },
      user: role,
    });
    try {
      await expect(app.query('SELECT count(*) FROM items')).resolves.toBeDefined();
      await expect(app.query('DROP TABLE items')).rejects.toMatchObject({ code: '42501' });
    } finally {
      await app.end();
    }
  });

  it("bundled with the preset (`node esbuild.config.mjs --handlers`), they answer the same and hold nothing of pg's native client", async () => {
    // `npm test` builds before running vitest; a bare `vitest run` builds here (the preset is read from dist).
    if (!existsSync(join(root, 'dist/esm/esbuild.js')))
      await run(process.execPath, [join(root, 'esbuild.config.mjs')], { cwd: root });
    await run(process.execPath, [join(root, 'esbuild.config.mjs'), '--handlers'], { cwd: root });
    const bundled = (name: string) => join(root, 'dist/lambda', `${name}.mjs`);
    for (const name of ['items-api', 'queue-worker', 'transfer'])
      expect(readFileSync(bundled(name), 'utf8'), name).not.toContain('pg-native');

    const post = await lambda.invoke(
      bundled('items-api'),
      http('POST', '/items', { name: 'bundled', priceCents: 3 }),
    );
    expect(post.ok, post.error).toBe(true);
    const id = JSON.parse((post.result as Reply).body).id as string;
    const get = await lambda.invoke(bundled('items-api'), http('GET', `/items/${id}`));
    expect(JSON.parse((get.result as Reply).body)).toMatchObject({ id, name: 'bundled', priceCents: 3 });
    expect((await lambda.invoke(bundled('items-api'), http('DELETE', `/items/${id}`))).result).toMatchObject({
      statusCode: 204,
    });
    const transferId = `t-${Date.now()}-bundled`;
    const transfer = await lambda.invoke(bundled('transfer'), {
      transferId,
      from: 'alice',
      to: 'bob',
      amount: 1,
    });
    expect(transfer.result).toMatchObject({ transferId, applied: true });
  });
});
