/**
 * Parent side of the freeze tests: forks {@link ./fixtures/runtime.ts} with a handler module and
 * drives it over IPC, and freezes/thaws it with SIGSTOP/SIGCONT the way Lambda does.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { InvokeMessage, ResultMessage } from './fixtures/runtime.js';

const runtimePath = fileURLToPath(new URL('./fixtures/runtime.ts', import.meta.url));
export const handlersPath = fileURLToPath(new URL('./fixtures/handlers.ts', import.meta.url));

export interface LambdaChild {
  readonly process: ChildProcess;
  /** Sends one invocation; resolves with the child's reply. Works while the child is stopped. */
  invoke(
    event: unknown,
    options?: { timeoutMs?: number; concurrent?: boolean; waitMs?: number },
  ): Promise<ResultMessage>;
  /** SIGSTOP: the whole process freezes (timers, sockets, everything). */
  freeze(): void;
  /** SIGCONT. */
  thaw(): void;
  /** Exit code/signal if the child exited, else undefined. */
  readonly exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** Everything the child wrote to stderr (warnings, crash traces). */
  readonly stderr: string;
  /** Kills the child (SIGCONT first, so a stopped child can die) and waits for it. */
  kill(): Promise<void>;
}

export async function startLambdaChild(options: {
  env: Record<string, string | undefined>;
  handlerExport: string;
  handlerModule?: string;
}): Promise<LambdaChild> {
  const child = fork(runtimePath, [], {
    execArgv: ['--import', 'tsx'],
    env: {
      PATH: process.env.PATH,
      ...options.env,
      FREEZE_HANDLER_MODULE: options.handlerModule ?? handlersPath,
      FREEZE_HANDLER_EXPORT: options.handlerExport,
    },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  child.stdout?.on('data', () => {});
  let exit: LambdaChild['exit'];
  const pending = new Map<number, (r: ResultMessage) => void>();
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      for (const [id, settle] of pending) {
        settle({
          kind: 'result',
          id,
          ok: false,
          error: { message: `child exited (${code ?? signal})` },
          ms: 0,
        });
      }
      pending.clear();
      resolve();
    });
  });
  await new Promise<void>((resolve, reject) => {
    const onMessage = (m: { kind?: string }) => {
      if (m.kind === 'ready') {
        child.off('message', onMessage);
        resolve();
      }
    };
    child.on('message', onMessage);
    child.once('exit', (code) => reject(new Error(`handler child exited during init (${code}): ${stderr}`)));
  });
  child.on('message', (m: ResultMessage) => {
    if (m.kind !== 'result') return;
    pending.get(m.id)?.(m);
    pending.delete(m.id);
  });
  let seq = 0;
  return {
    process: child,
    invoke(event, opts = {}) {
      const id = ++seq;
      const msg: InvokeMessage & { concurrent?: boolean } = {
        kind: 'invoke',
        id,
        event,
        ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
        ...(opts.concurrent ? { concurrent: true } : {}),
      };
      return new Promise<ResultMessage>((resolve) => {
        // Like Lambda's function timeout, seen from outside: no answer in time is a failure
        // (the caller decides whether to replace the process). Counted from thaw, not from send,
        // is the caller's business: waitMs should cover the time it keeps the child stopped.
        const timer =
          opts.waitMs === undefined
            ? undefined
            : setTimeout(() => {
                pending.delete(id);
                resolve({
                  kind: 'result',
                  id,
                  ok: false,
                  error: { message: `no reply within ${opts.waitMs} ms` },
                  ms: opts.waitMs ?? 0,
                });
              }, opts.waitMs);
        pending.set(id, (r) => {
          clearTimeout(timer);
          resolve(r);
        });
        child.send(msg);
      });
    },
    freeze() {
      child.kill('SIGSTOP');
    },
    thaw() {
      child.kill('SIGCONT');
    },
    get exit() {
      return exit;
    },
    get stderr() {
      return stderr;
    },
    async kill() {
      if (exit) return;
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await exited;
    },
  };
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
