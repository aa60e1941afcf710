#!/usr/bin/env node
/**
 * `dsql-local`: runs the local DSQL-like endpoint until Ctrl-C and takes fault commands on stdin.
 *
 *   dsql-local [--port N] [--upstream URL] [--region R] [--occ-from-contention] [--strict-sql]
 *
 * Commands (one per line; `help` lists them): `drop all|idle|<pid> fin|rst|fatal|silent`,
 * `occ [count] [OC000|OC001]`, `commit-drop fin|rst|silent [before]`, `age <seconds>`,
 * `rate <perSecond> [burst]`, `max <connections>`, `latency <toServerMs> [toClientMs]`,
 * `contention on|off`, `strict on|off`, `sessions`, `stats`, `reset`, `clear`, `env`, `quit`.
 * @packageDocumentation
 */
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { startLocalDsql } from './server.js';
import type { DropHow, LocalDsql, OccCode } from './types.js';

const HELP = `commands:
  drop all|idle|<pid> [fin|rst|fatal|silent]   drop connections now (default fin)
  occ [count] [OC000|OC001]                    fail the next COMMIT(s) with 40001
  commit-drop [fin|rst|silent] [before]        lose the connection at the next COMMIT
  age <seconds>                                maximum connection age
  rate <perSecond> [burst]                     new-connection rate limit
  max <connections>                            cap on open connections
  latency <toServerMs> [toClientMs]            added delay per direction
  sessions | stats | reset | clear | env | help | quit`;

function exportLines(dsql: LocalDsql): string {
  return Object.entries(dsql.env)
    .map(([k, v]) => `export ${k}='${v.replace(/'/g, "'\\''")}'`)
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
    case 'help':
      return HELP;
    default:
      return `unknown command ${JSON.stringify(cmd)}; try help`;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      upstream: { type: 'string' },
      region: { type: 'string' },
      dialect: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log('usage: dsql-local [--port N] [--upstream URL] [--region R] [--dialect dsql|postgres]\n');
    console.log(HELP);
    return;
  }
  const dsql = await startLocalDsql({
    port: values.port ? Number(values.port) : 0,
    ...(values.upstream ? { upstream: values.upstream } : {}),
    ...(values.region ? { region: values.region } : {}),
    ...(values.dialect ? { dialect: values.dialect as 'dsql' | 'postgres' } : {}),
  });
  console.log(`local DSQL endpoint ${dsql.host} listening on ${dsql.address}:${dsql.port}`);
  console.log(`CA file: ${dsql.caFile}`);
  console.log(
    `psql: PGPASSWORD=<token> psql "host=${dsql.host} hostaddr=${dsql.address} port=${dsql.port} sslmode=verify-full sslrootcert=${dsql.caFile} user=admin dbname=postgres"`,
  );
  console.log('\n# environment for a Lambda handler:');
  console.log(exportLines(dsql));
  console.log('\ntype "help" for fault commands; Ctrl-C stops');

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await dsql.stop();
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
