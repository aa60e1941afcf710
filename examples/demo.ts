/**
 * `npm run demo`: dsql-lambda doing its job on this machine, every number explained.
 *
 * 1. Starts the local DSQL-like endpoint (TLS only, IAM tokens verified as AWS does, OCC errors
 *    at COMMIT) in front of PostgreSQL.
 * 2. A pool: connections opened at once share one signed IAM token; an OCC conflict is retried.
 * 3. The example Lambda handlers, in a separate Lambda-like process configured only by
 *    environment variables, connecting as the least-privilege role the migration creates.
 * 4. A freeze, side by side: a process with dsql-lambda's pool and one with a bare `pg.Pool` are
 *    stopped (SIGSTOP), the server terminates their connections, an invocation is queued, and
 *    they are resumed (SIGCONT). What each one did is printed.
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { createPool, withRetry } from 'dsql-lambda';
import { startLocalDsql } from 'dsql-local';
import type { InvokeMessage, InvokeReply } from './invoke.js';
import { migrate, TABLES } from './lambda/migrate.js';

// Colour only on a terminal (and not when NO_COLOR is set).
const colour = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (code: string) => (text: string) => (colour ? `\u001b[${code}m${text}\u001b[0m` : text);
const [cyan, dim, bold, red, green] = ['36', '2', '1', '31', '32'].map(paint) as [
  (t: string) => string,
  (t: string) => string,
  (t: string) => string,
  (t: string) => string,
  (t: string) => string,
];
const step = (title: string) => console.log(`\n${bold(title)}`);
const log = (message: string) => console.log(`${cyan('▸')} ${message}`);
const why = (message: string) => console.log(`  ${dim(message)}`);
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
/** The upstream without its password: the embedded server or the one DSQL_LOCAL_UPSTREAM names. */
const upstreamName = (url: string) => {
  const u = new URL(url);
  u.password = '';
  return process.env.DSQL_LOCAL_UPSTREAM ? `${u.href}` : `its own embedded PostgreSQL at ${u.host}`;
};

const starting = Date.now();
const endpoint = await startLocalDsql();
step('1. A local DSQL-like endpoint');
log(`listening on ${endpoint.address}:${endpoint.port} as ${endpoint.host} (region ${endpoint.region})`);
why('It speaks TLS only, checks each IAM token the way DSQL does, refuses what DSQL refuses,');
why(`and relays to PostgreSQL: ${upstreamName(endpoint.upstream)} (ready in ${Date.now() - starting} ms).`);

const pool = createPool({
  host: endpoint.host, // signed into the token, sent as SNI, checked against the certificate
  hostaddr: endpoint.address, // where to dial: the cluster name does not resolve on a laptop
  port: endpoint.port,
  credentials: endpoint.credentials,
  ssl: { ca: endpoint.ca }, // full verification stays on; this only names the CA to trust
});

let failures = 0;
try {
  step('2. A pool');
  // A fresh start for the examples' tables (one DDL statement per transaction, as DSQL wants),
  // then the migration: the tables, and the least-privilege role the handlers connect as.
  for (const table of Object.keys(TABLES)) await pool.query(`DROP TABLE IF EXISTS ${table}`);
  await migrate(pool, { role: 'app' });
  await pool.query(
    "INSERT INTO accounts (id, balance) VALUES ('alice', 1000), ('bob', 1000) ON CONFLICT (id) DO UPDATE SET balance = 1000",
  );
  endpoint.resetStats();
  const idle = pool.idleCount;
  const clients = await Promise.all([1, 2, 3].map(() => pool.connect()));
  for (const c of clients) c.release();
  const s = endpoint.stats();
  log(`3 clients checked out at the same time: ${plural(s.auth.ok, 'new connection')} signed in`);
  why(
    `Three clients in use at once need three connections; ${idle === 0 ? 'none was' : idle === 1 ? 'one idle one was' : `${idle} idle ones were`} ` +
      `open before, so ${s.auth.ok === 1 ? 'one was' : `${s.auth.ok} were`} opened now.`,
  );
  log(`the endpoint accepted ${plural(s.distinctTokensAccepted, 'distinct IAM token')} for them`);
  why('Each new connection sends an IAM token as its password. The pool signs one and reuses it');
  why('for every connection until shortly before it expires: signing is not paid per connection.');

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
        log(`  attempt ${attempt}: COMMIT failed with ${code}; retrying in ${Math.round(delayMs)} ms`),
    },
  );
  const balances = (
    await pool.query<{ id: string; balance: string }>('SELECT id, balance FROM accounts ORDER BY id')
  ).rows;
  log(
    `transfer of ${moved} committed at the third attempt: ${balances.map((r) => `${r.id}=${r.balance}`).join(', ')}`,
  );
  why('DSQL never makes a transaction wait for another: the later COMMIT of two that touched the');
  why('same rows fails (OC000, here injected twice). withRetry rolls back, backs off, runs it again.');
} finally {
  await pool.end();
}

// ---- 3. The example handlers in a Lambda-like process ---------------------------------------
const invokeScript = fileURLToPath(new URL('./invoke.ts', import.meta.url));
function lambdaProcess(env: Record<string, string>) {
  const child = fork(invokeScript, { env: { ...process.env, ...env }, execArgv: ['--import', 'tsx'] });
  return {
    child,
    async invoke(module: string, event: unknown): Promise<InvokeReply> {
      child.send({ module, event } satisfies InvokeMessage);
      const [reply] = (await once(child, 'message')) as [InvokeReply];
      return reply;
    },
    async stop() {
      child.disconnect();
      await once(child, 'exit');
    },
  };
}
const show = (name: string, reply: InvokeReply, summary: (result: unknown) => string) => {
  if (!reply.ok) failures++;
  log(
    `  ${name} → ${reply.ok ? summary(reply.result) : red(`ERROR ${reply.error}`)} ${dim(`(${reply.ms.toFixed(1)} ms)`)}`,
  );
};

step('3. The example Lambda handlers (examples/lambda/), in a Lambda-like process');
why("Configured only by the environment Lambda would give it (DSQL_ENDPOINT, AWS_REGION, the role's");
why('credentials), and connecting as the database role "app", which can read and write the tables');
why('but not change the schema (on AWS: dsql:DbConnect and an AWS IAM GRANT, see migrate.ts).');
const lambda = lambdaProcess({ ...endpoint.env, PGUSER: 'app' });
const http = (method: string, path: string, body?: unknown, id?: string) => ({
  requestContext: { http: { method, path } },
  pathParameters: id ? { id } : undefined,
  body: body === undefined ? undefined : JSON.stringify(body),
});
const created = await lambda.invoke(
  './lambda/items-api.ts',
  http('POST', '/items', { name: 'the answer', priceCents: 42 }),
);
show(
  'POST /items',
  created,
  (r) => `${(r as { statusCode: number }).statusCode} ${(r as { body: string }).body}`,
);
const item = created.ok ? JSON.parse((created.result as { body: string }).body) : { id: 'none' };
show(
  'GET /items/{id}',
  await lambda.invoke('./lambda/items-api.ts', http('GET', `/items/${item.id}`, undefined, item.id)),
  (r) => String((r as { statusCode: number }).statusCode),
);
show(
  'transfer',
  await lambda.invoke('./lambda/transfer.ts', {
    transferId: `t-${Date.now()}`,
    from: 'alice',
    to: 'bob',
    amount: 5,
  }),
  (r) => JSON.stringify(r),
);
show(
  'SQS batch of 2 (one for an unknown account)',
  await lambda.invoke('./lambda/queue-worker.ts', {
    Records: [
      { messageId: 'm1', body: JSON.stringify({ orderId: `o-${Date.now()}`, account: 'alice', amount: 25 }) },
      {
        messageId: 'm2',
        body: JSON.stringify({ orderId: `o-${Date.now()}-x`, account: 'nobody', amount: 1 }),
      },
    ],
  }),
  (r) => `batchItemFailures ${JSON.stringify((r as { batchItemFailures: unknown }).batchItemFailures)}`,
);
why('Only m2 is reported: SQS redelivers it alone; m1 is done. Each record is its own transaction.');
why('(The "record m2 failed" line is the handler\'s own log, as CloudWatch would show it.)');
await lambda.stop();

// ---- 4. A freeze, side by side --------------------------------------------------------------
step('4. A Lambda freeze: dsql-lambda next to a bare pg.Pool');
const ours = lambdaProcess(endpoint.env);
const bare = lambdaProcess(endpoint.env);
type Stats = Record<string, number>;
const warm = await ours.invoke('./demo/freeze-ours.ts', {});
if (!warm.ok || !(await bare.invoke('./demo/freeze-bare-pg.ts', {})).ok) failures++;
let before = (warm.result as { stats: Stats }).stats;
log('both processes answered one invocation each, and keep their connection open between invocations');
why('Lambda freezes a process between invocations, its timers and sockets with it, while the server');
why('may close idle connections; the next invocation arrives first. Twice, two ways:');

/** Freezes both processes, drops their connections `how`, queues an invocation, thaws them. */
async function freeze(how: 'fatal' | 'silent', what: string) {
  process.kill(ours.child.pid!, 'SIGSTOP');
  process.kill(bare.child.pid!, 'SIGSTOP');
  const dropped = endpoint.faults.dropConnections({ which: 'all', how });
  log(`both frozen (SIGSTOP); meanwhile ${plural(dropped, 'connection')}: ${what}`);
  const pendingOurs = ours.invoke('./demo/freeze-ours.ts', {});
  const pendingBare = bare.invoke('./demo/freeze-bare-pg.ts', {});
  await new Promise((r) => setTimeout(r, 6000)); // a pause longer than the pool's thaw threshold (5 s)
  process.kill(ours.child.pid!, 'SIGCONT');
  process.kill(bare.child.pid!, 'SIGCONT');
  log('resumed both (SIGCONT), an invocation waiting for each');
  const patience = 5000; // the bare pool has no timeout of its own: stop watching after this
  const late = new Promise<undefined>((r) => setTimeout(() => r(undefined), patience).unref());
  const [afterOurs, afterBare] = await Promise.all([pendingOurs, Promise.race([pendingBare, late])]);

  if (afterOurs.ok) {
    const now = (afterOurs.result as { stats: Stats; backend: number }).stats;
    const prev = before;
    const d = (key: string) => (now[key] ?? 0) - (prev[key] ?? 0);
    before = now;
    log(green(`dsql-lambda: answered in ${Math.round(afterOurs.ms)} ms after the thaw, on a new connection`));
    why('What the pool did (from pool.checkoutStats()):');
    const did = [
      d('idleErrors') &&
        `${plural(d('idleErrors'), 'termination notice')} from the server on an idle connection absorbed (no crash; the connection left the pool)`,
      d('validations') &&
        `${plural(d('validations'), 'reused connection')} checked with a round trip first, because it had been idle longer than 5 s (a thaw)`,
      d('evictedDead') &&
        `${plural(d('evictedDead'), 'connection')} found dead at checkout (no answer within 1 s) and evicted before the statement went out`,
      d('evictedIdle') + d('evictedExpired') &&
        `${plural(d('evictedIdle') + d('evictedExpired'), 'connection')} too old or idle too long, evicted`,
    ].filter(Boolean);
    for (const line of did.length > 0 ? did : ['nothing to repair: its connection was still alive'])
      why(`- ${line};`);
    why('- then it opened a new connection, and sent the statement once, on it.');
  } else {
    failures++;
    log(red(`dsql-lambda: ERROR ${afterOurs.error}`));
  }
  if (afterBare === undefined) {
    log(red(`bare pg.Pool: still waiting ${patience / 1000} s after the thaw`));
    why('It sent the statement on a connection nobody answers any more, and has no timeout: on');
    why('Lambda the invocation runs until the function times out. (We stop it here.)');
    bare.child.kill('SIGKILL');
  } else if (afterBare.ok) {
    log('bare pg.Pool: answered this time: the notice reached the pool before the statement did');
    why(
      'Which comes first after a thaw is a race: in bench/soak.ts a bare pg.Pool failed about half the cycles.',
    );
  } else {
    log(red(`bare pg.Pool: the invocation failed: ${afterBare.error}`));
    why('It sent the statement on the connection the server had closed: the invocation fails,');
    why('and Lambda (or your caller) has to retry it.');
  }
}

await freeze(
  'fatal',
  'the server terminated them (FATAL 57P01, as when it restarts or ends an idle session)',
);
console.log('');
await freeze('silent', 'their network path went silent (no FIN, no RST: a NAT gateway forgetting them)');
await ours.stop();
if (bare.child.exitCode === null && bare.child.signalCode === null) await bare.stop();

// ---- What the endpoint saw overall ------------------------------------------------------------
const final = endpoint.stats();
step('What the endpoint counted since step 2');
log(
  `${plural(final.auth.ok, 'authenticated connection')} with ${plural(final.distinctTokensAccepted, 'distinct token')}`,
);
why('A token is signed per process (each has its own cache) and per user: this process (admin),');
why("the handlers' process (app), and the two freeze processes; the bare pg.Pool signs a token for");
why('every connection it opens. Nothing is shared across processes, as on Lambda.');
log(`${plural(final.occInjected.OC000 ?? 0, 'injected OC000 conflict')}, all retried`);
await endpoint.stop();
if (failures > 0) {
  console.error(red(`${failures} step(s) failed`));
  process.exit(1);
}
log('done');
