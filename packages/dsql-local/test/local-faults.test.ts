import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { pgConfig, signTestToken, startTestEndpoint, testUpstream } from '../../../test/helpers/endpoint.js';
import { Admission } from '../src/admission.js';
import type { Connection } from '../src/connection.js';
import { type LocalDsql, OC000_MESSAGE_NEW } from '../src/index.js';

type PgError = Error & { code?: string };

let endpoint: LocalDsql;
const table = `local_ep_${randomBytes(4).toString('hex')}`;
const open = new Set<pg.Client>();

/** Upstream admin connection (plain PostgreSQL) to check what really got committed. */
async function upstreamQuery(sql: string, values: unknown[] = []) {
  const client = new pg.Client(testUpstream());
  await client.connect();
  try {
    return (await client.query(sql, values)).rows;
  } finally {
    await client.end();
  }
}

async function connect(
  target: LocalDsql = endpoint,
  sslnegotiation: 'postgres' | 'direct' = 'postgres',
): Promise<{ client: pg.Client; pid: number; errors: PgError[]; nextError: Promise<PgError> }> {
  const client = new pg.Client(pgConfig(target, { password: await signTestToken(target), sslnegotiation }));
  const errors: PgError[] = [];
  const nextError = new Promise<PgError>((resolve) =>
    client.on('error', (err: PgError) => {
      errors.push(err);
      resolve(err);
    }),
  );
  await client.connect();
  open.add(client);
  const pid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  return { client, pid, errors, nextError };
}

/** Ends a client without waiting on a server that may never answer. */
function discard(client: pg.Client): void {
  open.delete(client);
  (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
}

function failure(p: Promise<unknown>): Promise<PgError> {
  return p.then(
    () => {
      throw new Error('expected a failure');
    },
    (err: PgError) => err,
  );
}

beforeAll(async () => {
  endpoint = await startTestEndpoint();
  await upstreamQuery(`CREATE TABLE ${table} (id int PRIMARY KEY, v int NOT NULL)`);
});

afterEach(() => {
  endpoint.faults.clear();
  for (const c of open) discard(c);
});

afterAll(async () => {
  await endpoint.stop();
  await upstreamQuery(`DROP TABLE IF EXISTS ${table}`);
});

describe('dropConnections', () => {
  it('fin: pg sees "Connection terminated unexpectedly"', async () => {
    const { pid, nextError } = await connect();
    expect(endpoint.faults.dropConnections({ which: pid, how: 'fin' })).toBe(1);
    expect((await nextError).message).toMatch(/Connection terminated unexpectedly/);
    expect(endpoint.stats().dropped.fin).toBeGreaterThanOrEqual(1);
  });

  it('rst: pg sees ECONNRESET', async () => {
    const { pid, nextError } = await connect(endpoint, 'direct');
    expect(endpoint.faults.dropConnections({ which: pid, how: 'rst' })).toBe(1);
    expect(await nextError).toMatchObject({ code: 'ECONNRESET' });
  });

  it('fatal: pg sees 57P01', async () => {
    const { pid, nextError } = await connect();
    endpoint.faults.dropConnections({ which: pid, how: 'fatal' });
    const err = await nextError;
    expect(err.code).toBe('57P01');
    expect(err.message).toBe('terminating connection due to administrator command');
  });

  it('silent: the next query hangs until query_timeout; upstream session is gone', async () => {
    const { client, pid } = await connect();
    endpoint.faults.dropConnections({ which: pid, how: 'silent' });
    const err = await failure(client.query({ text: 'SELECT 1', query_timeout: 300 } as pg.QueryConfig));
    expect(err.message).toMatch(/Query read timeout/);
    expect(endpoint.sessions().some((s) => s.id === pid)).toBe(false);
    const alive = await upstreamQuery('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1', [
      pid,
    ]);
    expect(alive[0].n).toBe(0);
    discard(client);
  });

  it('stop() also closes half-open (silent) connections', async () => {
    const other = await startTestEndpoint();
    const { client, pid, nextError } = await connect(other);
    other.faults.dropConnections({ which: pid, how: 'silent' });
    await other.stop();
    expect((await nextError).message).toMatch(/Connection terminated/);
    open.delete(client);
  });

  it("'idle' spares sessions inside a transaction", async () => {
    const busy = await connect();
    const idle = await connect();
    await busy.client.query('BEGIN');
    await busy.client.query('SELECT 1');
    const before = endpoint.sessions().filter((s) => s.id === busy.pid || s.id === idle.pid);
    expect(before).toHaveLength(2);
    // Other sessions of this endpoint may exist; only ours matter.
    endpoint.faults.dropConnections({ which: 'idle', how: 'fin' });
    await idle.nextError;
    expect((await busy.client.query('SELECT 2 AS n')).rows).toEqual([{ n: 2 }]);
    await busy.client.query('ROLLBACK');
  });
});

describe('failNextCommits', () => {
  it('simple-protocol COMMIT fails with 40001 OC000; rolled back; connection still usable', async () => {
    const { client } = await connect();
    endpoint.faults.failNextCommits({ code: 'OC000' });
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} VALUES (1, 1)`);
    const err = await failure(client.query('COMMIT'));
    expect(err.code).toBe('40001');
    expect(err.message).toBe('change conflicts with another transaction (OC000)');
    expect((await client.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
    expect(await upstreamQuery(`SELECT * FROM ${table} WHERE id = 1`)).toEqual([]);
    expect(endpoint.stats().occInjected.OC000).toBeGreaterThanOrEqual(1);
  });

  it('extended-protocol COMMIT fails with OC001; count applies to consecutive commits', async () => {
    const { client } = await connect(endpoint, 'direct');
    endpoint.faults.failNextCommits({ code: 'OC001', count: 2 });
    for (let i = 0; i < 2; i++) {
      await client.query('BEGIN');
      await client.query({ text: `INSERT INTO ${table} VALUES ($1, 2)`, values: [2] });
      const err = await failure(client.query({ text: 'COMMIT', queryMode: 'extended' } as pg.QueryConfig));
      expect(err.code).toBe('40001');
      expect(err.message).toMatch(/\(OC001\)$/);
    }
    await client.query('BEGIN');
    await client.query({ text: `INSERT INTO ${table} VALUES ($1, 2)`, values: [2] });
    await client.query({ text: 'COMMIT', queryMode: 'extended' } as pg.QueryConfig);
    expect(await upstreamQuery(`SELECT v FROM ${table} WHERE id = 2`)).toEqual([{ v: 2 }]);
  });

  it('named prepared COMMIT: detected on Bind when pg skips the Parse; the statement stays usable', async () => {
    const { client } = await connect();
    const commit = { name: 'local_ep_commit', text: 'COMMIT' };
    const commitsBefore = endpoint.stats().commits;
    await client.query('BEGIN');
    await client.query(commit); // Parse + Bind + Execute: one COMMIT
    expect(endpoint.stats().commits).toBe(commitsBefore + 1);
    endpoint.faults.failNextCommits({ code: 'OC000' });
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} VALUES (3, 3)`);
    expect((await failure(client.query(commit))).message).toMatch(/OC000/); // Bind + Execute only
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} VALUES (4, 4)`);
    await client.query(commit);
    expect(await upstreamQuery(`SELECT id FROM ${table} WHERE id IN (3, 4) ORDER BY id`)).toEqual([
      { id: 4 },
    ]);
    expect(endpoint.stats().commits).toBe(commitsBefore + 3);
  });

  it('occMessages swaps in the newer OC000 text', async () => {
    const other = await startTestEndpoint({ occMessages: { OC000: OC000_MESSAGE_NEW } });
    try {
      const { client } = await connect(other);
      other.faults.failNextCommits();
      await client.query('BEGIN');
      expect(await failure(client.query('COMMIT'))).toMatchObject({
        code: '40001',
        message: 'mutation conflicts with another transaction, retry as needed (OC000)',
      });
    } finally {
      await other.stop();
    }
  });

  it('session filter and COMMIT outside a transaction are left alone', async () => {
    const a = await connect();
    const b = await connect();
    endpoint.faults.failNextCommits({ session: b.pid });
    await a.client.query('COMMIT'); // not in a transaction: a warning upstream, no fault consumed
    await a.client.query('BEGIN');
    await a.client.query('COMMIT');
    await b.client.query('BEGIN');
    expect((await failure(b.client.query('COMMIT'))).code).toBe('40001');
  });
});

describe('dropOnNextCommit', () => {
  it('afterCommit + fin: committed upstream, client sees a lost connection', async () => {
    const { client } = await connect();
    endpoint.faults.dropOnNextCommit({ how: 'fin', afterCommit: true });
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} VALUES (10, 10)`);
    const err = await failure(client.query('COMMIT'));
    expect(err.message).toMatch(/Connection terminated unexpectedly/);
    expect(await upstreamQuery(`SELECT v FROM ${table} WHERE id = 10`)).toEqual([{ v: 10 }]);
  });

  it('before commit + rst: not committed, ECONNRESET', async () => {
    const { client } = await connect(endpoint, 'direct');
    endpoint.faults.dropOnNextCommit({ how: 'rst', afterCommit: false });
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} VALUES (11, 11)`);
    const err = await failure(client.query({ text: 'COMMIT', queryMode: 'extended' } as pg.QueryConfig));
    expect(err.code).toBe('ECONNRESET');
    // The upstream backend rolls back as it notices the closed socket.
    await expect.poll(() => upstreamQuery(`SELECT v FROM ${table} WHERE id = 11`)).toEqual([]);
  });

  it('afterCommit + silent: committed, COMMIT hangs until query_timeout', async () => {
    const { client } = await connect();
    endpoint.faults.dropOnNextCommit({ how: 'silent' });
    await client.query('BEGIN');
    await client.query(`INSERT INTO ${table} VALUES (12, 12)`);
    const err = await failure(client.query({ text: 'COMMIT', query_timeout: 300 } as pg.QueryConfig));
    expect(err.message).toMatch(/Query read timeout/);
    expect(await upstreamQuery(`SELECT v FROM ${table} WHERE id = 12`)).toEqual([{ v: 12 }]);
    discard(client);
  });
});

describe("conflicts under DSQL's rules (the default)", () => {
  it('two transactions updating one row: nobody waits, the loser gets 40001 OC000 at COMMIT', async () => {
    // A lock wait can only end by the holder being rolled back here, never by the timeout.
    const contended = await startTestEndpoint({ lockTimeoutMs: 60_000 });
    try {
      await upstreamQuery(`INSERT INTO ${table} VALUES (20, 0)`);
      const a = await connect(contended);
      const b = await connect(contended);
      await a.client.query('BEGIN');
      await b.client.query('BEGIN');
      await b.client.query(`SELECT v FROM ${table} WHERE id = 20`);
      await a.client.query(`UPDATE ${table} SET v = v + 1 WHERE id = 20`);
      // Row locked by a, idle in its transaction: b does not queue, a is rolled back underneath.
      expect((await b.client.query(`UPDATE ${table} SET v = v + 1 WHERE id = 20`)).rowCount).toBe(1);
      await b.client.query('COMMIT');
      expect(await failure(a.client.query('COMMIT'))).toMatchObject({
        code: '40001',
        message: 'change conflicts with another transaction (OC000)',
      });
      // Snapshot conflict (a newer committed version; PostgreSQL fails the UPDATE): at COMMIT too.
      await b.client.query('BEGIN');
      await b.client.query(`SELECT v FROM ${table} WHERE id = 20`);
      await a.client.query(`UPDATE ${table} SET v = v + 1 WHERE id = 20`);
      expect((await b.client.query(`UPDATE ${table} SET v = v + 1 WHERE id = 20`)).rowCount).toBe(1);
      expect(await failure(b.client.query('COMMIT'))).toMatchObject({
        code: '40001',
        message: 'change conflicts with another transaction (OC000)',
      });
      const stats = contended.stats();
      expect([stats.sql.occ.conflictsAtCommit, stats.occFromContention]).toEqual([2, 0]);
      expect(await upstreamQuery(`SELECT v FROM ${table} WHERE id = 20`)).toEqual([{ v: 2 }]);
    } finally {
      await contended.stop();
    }
  });
});

describe('admission, age and latency', () => {
  let limited: LocalDsql;
  beforeAll(async () => {
    limited = await startTestEndpoint();
  });
  afterAll(async () => {
    await limited.stop();
  });

  it('the rate limit refills from where it was after the clock steps back (no debt of the gap)', () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const start = Date.now();
      const admission = new Admission({ perSecond: 10, burst: 1 }, 100, 100);
      const conn = () => ({}) as Connection;
      expect(admission.admit(conn())).toBeUndefined();
      vi.setSystemTime(start - 3_600_000); // an hour back (NTP step, a test's fake clock)
      expect(admission.admit(conn())).toBe('53400'); // the bucket is still empty
      vi.setSystemTime(start - 3_600_000 + 1_000); // a second later: refilled by one second's worth
      expect(admission.admit(conn())).toBeUndefined();
    } finally {
      vi.useRealTimers();
    }
  });

  it('rate limit → 53400, connection cap → 53300', async () => {
    limited.faults.setRateLimit({ perSecond: 0, burst: 1 });
    const first = await connect(limited);
    const refused = await failure(connect(limited));
    expect(refused.code).toBe('53400');
    expect(refused.message).toBe('Unable to accept connection, rate exceeded.');
    limited.faults.setRateLimit({ perSecond: 100, burst: 1000 });
    limited.faults.setMaxConnections(1);
    const capped = await failure(connect(limited));
    expect(capped.code).toBe('53300');
    expect(capped.message).toBe('Unable to accept connection, too many open connections.');
    await first.client.end();
    open.delete(first.client);
    await expect.poll(() => limited.stats().currentSessions).toBe(0);
    const again = await connect(limited);
    expect(again.pid).toBeGreaterThan(0);
    limited.faults.setMaxConnections(10000);
    expect(limited.stats().admissionRefused).toEqual({ '53300': 1, '53400': 1 });
  });

  it('max connection age closes the connection with a FATAL 57P01', async () => {
    const { nextError } = await connect(limited);
    limited.faults.setMaxConnectionAge(0.3);
    try {
      const err = await nextError;
      expect(err.code).toBe('57P01');
      expect(err.message).toMatch(/maximum connection duration/);
      expect(limited.stats().maxAgeClosed).toBeGreaterThanOrEqual(1);
    } finally {
      limited.faults.setMaxConnectionAge(3600);
    }
  });

  it('latency is added per direction', async () => {
    const { client } = await connect(limited);
    limited.faults.setLatency({ toServer: 40, toClient: 40 });
    const started = performance.now();
    for (const n of [1, 2, 3]) expect((await client.query('SELECT $1::int AS n', [n])).rows).toEqual([{ n }]);
    // Three round trips, each delayed 40 ms both ways: a lower bound only, never an upper one.
    expect(performance.now() - started).toBeGreaterThanOrEqual(200);
    limited.faults.setLatency({ toServer: 0, toClient: 0 });
  });
});

describe('upstream events', () => {
  it('a backend terminated upstream reaches the client as 57P01; the session is gone at once after a drop', async () => {
    const { pid, nextError } = await connect();
    await upstreamQuery('SELECT pg_terminate_backend($1)', [pid]);
    expect(await nextError).toMatchObject({ code: '57P01' });
    await expect.poll(() => endpoint.sessions().some((s) => s.id === pid)).toBe(false);

    const other = await connect();
    expect(endpoint.faults.dropConnections({ which: other.pid, how: 'fin' })).toBe(1);
    // Dropped sessions stop counting immediately and cannot be dropped twice.
    expect(endpoint.sessions().some((s) => s.id === other.pid)).toBe(false);
    expect(endpoint.faults.dropConnections({ which: other.pid, how: 'fin' })).toBe(0);
    await other.nextError;
  });
});

describe('fault settings', () => {
  it('refuses a value that is not a number, instead of stalling or closing every connection', async () => {
    const { client } = await connect();
    // NaN latency queued every write forever; NaN age closed every connection at once; NaN caps
    // admitted everything.
    expect(() => endpoint.faults.setLatency({ toServer: Number.NaN })).toThrow(RangeError);
    expect(() => endpoint.faults.setLatency({ toClient: -1 })).toThrow(RangeError);
    expect(() => endpoint.faults.setMaxConnectionAge(Number.NaN)).toThrow(RangeError);
    expect(() => endpoint.faults.setRateLimit({ perSecond: Number.NaN })).toThrow(RangeError);
    expect(() => endpoint.faults.setMaxConnections(Number.NaN)).toThrow(RangeError);
    expect((await client.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
  });
});
