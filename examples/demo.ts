/**
 * `npm run demo`: dsql-lambda doing its main job, on this machine.
 *
 * 1. Starts the local DSQL-like endpoint (TLS only, IAM tokens verified like AWS does, OCC errors
 *    at COMMIT) in front of its own embedded PostgreSQL (or DSQL_LOCAL_UPSTREAM, if set).
 * 2. A pool from `createPool`: several connections share one cached IAM token; an injected OCC
 *    conflict is retried by `withRetry`; connections dropped by the server are replaced.
 * 3. Runs the example Lambda handlers in a separate process configured only by environment
 *    variables, as Lambda would: a middy handler and a transfer with OCC retry, across a
 *    simulated freeze (SIGSTOP, server drops every connection, SIGCONT).
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { createPool, withRetry } from 'dsql-lambda';
import { startLocalDsql } from 'dsql-local';

const log = (message: string) => console.log(`\u001b[36m▸\u001b[0m ${message}`);

const endpoint = await startLocalDsql();
log(
  `local DSQL endpoint ${endpoint.host} on ${endpoint.address}:${endpoint.port} (region ${endpoint.region})`,
);

const pool = createPool({
  host: endpoint.host, // signed into the token, sent as SNI, checked against the certificate
  hostaddr: endpoint.address, // where to dial: the name does not resolve on a laptop
  port: endpoint.port,
  credentials: endpoint.credentials,
  ssl: { ca: endpoint.ca }, // full verification stays on; this only adds a CA to trust
});

try {
  await pool.query('CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, name TEXT NOT NULL)');
  await pool.query('CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)');
  await pool.query(
    'CREATE TABLE IF NOT EXISTS transfers (id TEXT PRIMARY KEY, src TEXT, dst TEXT, amount BIGINT)',
  );
  await pool.query("INSERT INTO items VALUES ('42', 'the answer') ON CONFLICT (id) DO NOTHING");
  await pool.query(
    "INSERT INTO accounts VALUES ('alice', 1000), ('bob', 1000) ON CONFLICT (id) DO UPDATE SET balance = 1000",
  );

  // Several connections at once: pg asks for a password per connection, the cache signs once.
  endpoint.resetStats();
  const clients = await Promise.all([1, 2, 3].map(() => pool.connect()));
  const pids = await Promise.all(
    clients.map(async (c) => (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid),
  );
  for (const c of clients) c.release();
  const stats = endpoint.stats();
  log(
    `${pids.length} clients at once (backends ${pids.join(', ')}): ${stats.auth.ok} new connection(s) signed in with ` +
      `${stats.distinctTokensAccepted} IAM token ` +
      `(direct TLS negotiation: ${stats.connections.byNegotiation.direct})`,
  );

  // OCC: the next two COMMITs fail with DSQL's OC000 error; withRetry backs off and runs again.
  endpoint.faults.failNextCommits({ count: 2, code: 'OC000' });
  const moved = await withRetry(
    pool,
    async (tx) => {
      await tx.query("UPDATE accounts SET balance = balance - 10 WHERE id = 'alice'");
      await tx.query("UPDATE accounts SET balance = balance + 10 WHERE id = 'bob'");
      return 10;
    },
    {
      onRetry: ({ attempt, delayMs, code }) =>
        log(`  attempt ${attempt} hit ${code}; retrying in ${Math.round(delayMs)} ms`),
    },
  );
  const balances = (await pool.query('SELECT id, balance FROM accounts ORDER BY id')).rows;
  log(`transferred ${moved} after OCC retries: ${balances.map((r) => `${r.id}=${r.balance}`).join(', ')}`);

  // The server drops every idle connection (RST); the pool notices and opens a new one.
  const dropped = endpoint.faults.dropConnections({ which: 'all', how: 'rst' });
  await new Promise((r) => setTimeout(r, 100)); // the reset reaches the client while it is idle
  const { rows } = await pool.query('SELECT count(*)::int AS n FROM items');
  log(`server reset ${dropped} connection(s); next query still answered (${rows[0].n} item)`);
} finally {
  await pool.end();
}

// A Lambda-like process configured only by the environment Lambda would give it.
log('invoking the example handlers in a Lambda-like process (config from environment only)');
const child = fork(fileURLToPath(new URL('./invoke.ts', import.meta.url)), {
  env: { ...process.env, ...endpoint.env },
  execArgv: ['--import', 'tsx'],
  stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
});
const call = async (name: string, event: unknown) => {
  child.send({ name, event });
  const [reply] = (await once(child, 'message')) as [
    { ok: boolean; result?: unknown; error?: string; ms: number },
  ];
  log(
    `  ${name}(${JSON.stringify(event)}) → ${reply.ok ? JSON.stringify(reply.result) : `ERROR ${reply.error}`} in ${reply.ms.toFixed(1)} ms`,
  );
  return reply;
};

let failures = 0;
failures += (await call('middy', { pathParameters: { id: '42' } })).ok ? 0 : 1;
failures += (await call('transfer', { transferId: `t-${Date.now()}`, from: 'alice', to: 'bob', amount: 5 }))
  .ok
  ? 0
  : 1;

// A freeze: the process stops, the server drops its connections, the next invocation is queued.
process.kill(child.pid!, 'SIGSTOP');
const frozen = endpoint.faults.dropConnections({ which: 'all', how: 'fatal' });
log(`froze the handler process; the server terminated its ${frozen} connection(s) (57P01) while it slept`);
const pending = call('middy', { pathParameters: { id: '42' } });
await new Promise((r) => setTimeout(r, 6000)); // longer than the pool's thaw threshold (5 s)
process.kill(child.pid!, 'SIGCONT');
failures += (await pending).ok ? 0 : 1;

child.disconnect();
await once(child, 'exit');
const final = endpoint.stats();
log(
  `endpoint saw ${final.auth.ok} authenticated connection(s), ${final.distinctTokensAccepted} distinct token(s), ` +
    `${final.occInjected.OC000 ?? 0} injected OC000 conflict(s)`,
);
await endpoint.stop();
if (failures > 0) {
  console.error(`${failures} invocation(s) failed`);
  process.exit(1);
}
log('done');
