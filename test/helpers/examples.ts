/**
 * Running the examples as a user would: scripts with `node --import tsx`, handlers in a
 * Lambda-like child process (examples/invoke.ts), both configured only by environment variables.
 * And a scratch upstream database per test file, so examples' tables never meet other tests'.
 */
import { type ChildProcess, execFile, fork } from 'node:child_process';
import { once } from 'node:events';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import type { InvokeMessage, InvokeReply } from '../../examples/invoke.js';
import { upstreamUrlFor } from './endpoint.js';

export const root = join(dirname(fileURLToPath(import.meta.url)), '../..');

/** A fresh upstream database (and its URL for `startLocalDsql({ upstream })`); `drop()` removes it. */
export async function scratchDatabase(
  prefix: string,
): Promise<{ name: string; url: string; drop(): Promise<void> }> {
  const name = `${prefix}_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
  const admin = new pg.Client({ connectionString: upstreamUrlFor('postgres') });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  return {
    name,
    url: upstreamUrlFor(name),
    async drop() {
      const c = new pg.Client({ connectionString: upstreamUrlFor('postgres') });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/** Drops upstream roles (after their database is gone, nothing depends on them). */
export async function dropRoles(...roles: string[]): Promise<void> {
  const c = new pg.Client({ connectionString: upstreamUrlFor('postgres') });
  await c.connect();
  try {
    for (const role of roles) await c.query(`DROP ROLE IF EXISTS "${role}"`);
  } finally {
    await c.end();
  }
}

/** Runs `examples/<file>` with tsx and the given environment; resolves with its output, rejects on failure. */
export async function runExample(
  file: string,
  env: Record<string, string>,
  args: string[] = [],
): Promise<string> {
  const script = join(root, 'examples', file);
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', script, ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    timeout: 60_000,
  });
  return stdout;
}

/** A Lambda-like process running handler modules from examples/ (see examples/invoke.ts). */
export interface HandlerProcess {
  invoke(module: string, event: unknown, timeoutMs?: number): Promise<InvokeReply>;
  readonly child: ChildProcess;
  close(): Promise<void>;
}

/** Starts examples/invoke.ts with `env` (on top of this process's environment). */
export function startHandlerProcess(env: Record<string, string>): HandlerProcess {
  const child = fork(join(root, 'examples/invoke.ts'), {
    cwd: root,
    env: { ...process.env, ...env },
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let queue: Promise<unknown> = Promise.resolve();
  return {
    child,
    invoke(module, event, timeoutMs) {
      const next = queue.then(async () => {
        child.send({ module, event, timeoutMs } satisfies InvokeMessage);
        const [reply] = (await once(child, 'message')) as [InvokeReply];
        return reply;
      });
      queue = next.catch(() => {});
      return next;
    },
    async close() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.disconnect();
      await exited;
    },
  };
}
