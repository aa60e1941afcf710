#!/usr/bin/env node
/**
 * `dsql-local`: runs the local DSQL-like endpoint until Ctrl-C and takes fault commands on stdin.
 *
 *   dsql-local [--port N] [--upstream URL] [--region R] [--dialect dsql|postgres]
 *   dsql-local token [--user U] [--expires S]     a token from the environment the endpoint printed
 *
 * Without --upstream (or DSQL_LOCAL_UPSTREAM) it starts its own PostgreSQL (embedded.ts).
 * Commands (one per line; `help` lists them): `drop all|idle|<pid> fin|rst|fatal|silent`,
 * `occ [count] [OC000|OC001]`, `commit-drop fin|rst|silent [before]`, `age <seconds>`,
 * `rate <perSecond> [burst]`, `max <connections>`, `latency <toServerMs> [toClientMs]`,
 * `token [user]`, `sessions`, `stats`, `reset`, `clear`,
 * `env`, `quit`.
 * @packageDocumentation
 */
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { stopSharedEmbeddedPostgres } from './embedded.js';
import { startLocalDsql } from './server.js';
import type { DropHow, LocalDsql, OccCode } from './types.js';
import { signToken } from './verify.js';

/** Lifetime of the tokens the CLI prints, seconds (DSQL allows up to a week). */
const CLI_TOKEN_SECONDS = 3600;

const HELP = `commands:
  drop all|idle|<pid> [fin|rst|fatal|silent]   drop connections now (default fin)
  occ [count] [OC000|OC001]                    fail the next COMMIT(s) with 40001
  commit-drop [fin|rst|silent] [before]        lose the connection at the next COMMIT
  age <seconds>                                maximum connection age
  rate <perSecond> [burst]                     new-connection rate limit
  max <connections>                            cap on open connections
  latency <toServerMs> [toClientMs]            added delay per direction
  token [user]                                 a fresh IAM token (${CLI_TOKEN_SECONDS / 60} min) for psql
  sessions | stats | reset | clear | env | help | quit`;

function shellQuote(v: string): string {
  return `'${v.replace(/'/g, "'\\''")}'`;
}

function tokenFor(dsql: LocalDsql, user = 'admin'): string {
  return signToken({
    host: dsql.host,
    region: dsql.region,
    credentials: dsql.credentials,
    user,
    expiresIn: CLI_TOKEN_SECONDS,
  });
}

/** `export` lines for a shell: the handler environment plus PGPASSWORD, so plain `psql` works. */
function exportLines(dsql: LocalDsql): string {
  return Object.entries({ ...dsql.env, PGPASSWORD: tokenFor(dsql) })
    .map(([k, v]) => `export ${k}=${shellQuote(v)}`)
    .join('\n');
}

/** Runs one stdin command; returns the text to print. */
function runCommand(dsql: LocalDsql, line: string): string {
  const [cmd, ...args] = line.trim().split(/\s+/);
  const f = dsql.faults;
  switch (cmd) {
    case undefined:
    case '':
      return '';
    case 'drop': {
      const which = args[0] === 'all' || args[0] === 'idle' ? args[0] : Number(args[0] ?? 'NaN');
      if (typeof which === 'number' && !Number.isInteger(which)) return 'usage: drop all|idle|<pid> [how]';
      const how = (args[1] ?? 'fin') as DropHow;
      if (!['fin', 'rst', 'fatal', 'silent'].includes(how)) return 'how: fin|rst|fatal|silent';
      return `dropped ${f.dropConnections({ which, how })}`;
    }
    case 'occ': {
      const count = args[0] && /^\d+$/.test(args[0]) ? Number(args[0]) : 1;
      const code = (args.find((a) => /^OC00[01]$/i.test(a))?.toUpperCase() ?? 'OC000') as OccCode;
      f.failNextCommits({ count, code });
      return `next ${count} COMMIT(s) fail with ${code}`;
    }
    case 'commit-drop': {
      const how = (args[0] ?? 'fin') as 'fin' | 'rst' | 'silent';
      if (!['fin', 'rst', 'silent'].includes(how)) return 'how: fin|rst|silent';
      const afterCommit = args[1] !== 'before';
      f.dropOnNextCommit({ how, afterCommit });
      return `next COMMIT loses its connection (${how}, ${afterCommit ? 'after' : 'before'} committing)`;
    }
    case 'age':
      f.setMaxConnectionAge(Number(args[0] ?? 3600));
      return `max connection age ${Number(args[0] ?? 3600)} s`;
    case 'rate':
      f.setRateLimit({ perSecond: Number(args[0] ?? 100), ...(args[1] ? { burst: Number(args[1]) } : {}) });
      return 'rate limit set';
    case 'max':
      f.setMaxConnections(Number(args[0] ?? 10000));
      return 'connection cap set';
    case 'latency':
      f.setLatency({ toServer: Number(args[0] ?? 0), toClient: Number(args[1] ?? args[0] ?? 0) });
      return 'latency set';
    case 'sessions':
      return JSON.stringify(dsql.sessions(), null, 2);
    case 'stats':
      return JSON.stringify(dsql.stats(), null, 2);
    case 'reset':
      dsql.resetStats();
      return 'stats reset';
    case 'clear':
      f.clear();
      return 'pending faults cleared, latency 0';
    case 'env':
      return exportLines(dsql);
    case 'token':
      return tokenFor(dsql, args[0]);
    case 'help':
      return HELP;
    default:
      return `unknown command ${JSON.stringify(cmd)}; try help`;
  }
}

/**
 * `dsql-local token`: signs a token from the environment the running endpoint printed
 * (DSQL_ENDPOINT or PGHOST, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
 * AWS_SESSION_TOKEN), e.g. `PGPASSWORD=$(dsql-local token) psql`.
 */
function tokenCommand(args: string[]): void {
  const { values } = parseArgs({ args, options: { user: { type: 'string' }, expires: { type: 'string' } } });
  const env = process.env;
  const host = env.DSQL_ENDPOINT || env.PGHOST;
  const region = env.AWS_REGION || env.AWS_DEFAULT_REGION;
  const missing = [
    host ? undefined : 'DSQL_ENDPOINT',
    region ? undefined : 'AWS_REGION',
    env.AWS_ACCESS_KEY_ID ? undefined : 'AWS_ACCESS_KEY_ID',
    env.AWS_SECRET_ACCESS_KEY ? undefined : 'AWS_SECRET_ACCESS_KEY',
  ].filter(Boolean);
  if (missing.length > 0) {
    throw new Error(
      `dsql-local token: ${missing.join(', ')} not set; paste the export lines dsql-local printed at start-up (or type "token" in its console)`,
    );
  }
  console.log(
    signToken({
      host: host!,
      region: region!,
      credentials: {
        accessKeyId: env.AWS_ACCESS_KEY_ID!,
        secretAccessKey: env.AWS_SECRET_ACCESS_KEY!,
        ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}),
      },
      user: values.user ?? env.PGUSER ?? 'admin',
      expiresIn: values.expires ? Number(values.expires) : CLI_TOKEN_SECONDS,
    }),
  );
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === 'token') {
    tokenCommand(argv.slice(1));
    return;
  }
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string' },
      upstream: { type: 'string' },
      region: { type: 'string' },
      dialect: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(
      'usage: dsql-local [--port N] [--upstream URL] [--region R] [--dialect dsql|postgres]\n' +
        '       dsql-local token [--user U] [--expires SECONDS]\n\n' +
        'Without --upstream (or DSQL_LOCAL_UPSTREAM) a private PostgreSQL is started and stopped with it.\n',
    );
    console.log(HELP);
    return;
  }
  if (!values.upstream && !process.env.DSQL_LOCAL_UPSTREAM) console.log('starting the embedded PostgreSQL …');
  const dsql = await startLocalDsql({
    port: values.port ? Number(values.port) : 0,
    ...(values.upstream ? { upstream: values.upstream } : {}),
    ...(values.region ? { region: values.region } : {}),
    ...(values.dialect ? { dialect: values.dialect as 'dsql' | 'postgres' } : {}),
  });
  console.log(`local DSQL endpoint ${dsql.host} listening on ${dsql.address}:${dsql.port}`);
  console.log(`upstream: ${dsql.upstream.replace(/:[^:@/]*@/, ':***@')}`);
  console.log(`CA file: ${dsql.caFile}`);
  console.log(
    '\n# paste into a shell, then plain `psql` works (the token lasts an hour; `dsql-local token` makes a new one):',
  );
  console.log(exportLines(dsql));
  console.log(
    `\npsql: PGPASSWORD=<token> psql "host=${dsql.host} hostaddr=${dsql.address} port=${dsql.port} sslmode=verify-full sslrootcert=${dsql.caFile} user=admin dbname=postgres"`,
  );
  console.log('\ntype "help" for fault commands; Ctrl-C stops');
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await dsql.stop();
    await stopSharedEmbeddedPostgres();
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const rl = createInterface({ input: process.stdin, terminal: false });
  rl.on('line', (line) => {
    if (/^\s*(quit|exit)\s*$/.test(line)) {
      void stop();
      return;
    }
    let out: string;
    try {
      out = runCommand(dsql, line);
    } catch (err) {
      // A bad argument (`latency 50ms`) must not take the endpoint down.
      out = err instanceof Error ? err.message : String(err);
    }
    if (out) console.log(out);
  });
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
