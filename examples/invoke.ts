/**
 * A tiny stand-in for the Lambda runtime, used by the demo and the tests: a child process that
 * imports handler modules and runs one invocation per IPC message, with a Lambda-like context
 * (deadline included). Module state (the pool) lives on between invocations, as in a warm
 * execution environment; its configuration is this process's environment, as in Lambda.
 *
 *   child.send({ module: './lambda/items-api.ts', event, timeoutMs: 10_000 })
 *   -> { ok: true, result, ms } or { ok: false, error, ms }
 */
import type { Context } from 'aws-lambda';

type Handler = (event: unknown, context: Context) => Promise<unknown>;

/** One invocation request. */
export interface InvokeMessage {
  /** Handler module, relative to this folder (or absolute). */
  module: string;
  event: unknown;
  /** The function's timeout. Default 10 s. */
  timeoutMs?: number;
}

/** The reply to an {@link InvokeMessage}. */
export interface InvokeReply {
  ok: boolean;
  result?: unknown;
  error?: string;
  ms: number;
}

const loaded = new Map<string, Promise<Handler>>();

function lambdaContext(timeoutMs: number): Context {
  const deadline = Date.now() + timeoutMs;
  return {
    callbackWaitsForEmptyEventLoop: false,
    functionName: 'example',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:us-east-1:000000000000:function:example',
    memoryLimitInMB: '512',
    awsRequestId: crypto.randomUUID(),
    logGroupName: '/aws/lambda/example',
    logStreamName: 'example',
    getRemainingTimeInMillis: () => deadline - Date.now(),
    done: () => {},
    fail: () => {},
    succeed: () => {},
  };
}

process.on('message', async (message: InvokeMessage) => {
  const started = performance.now();
  let reply: InvokeReply;
  try {
    const url = new URL(message.module, import.meta.url).href;
    if (!loaded.has(url))
      loaded.set(
        url,
        import(url).then((m: { handler: Handler }) => m.handler),
      );
    const handler = await loaded.get(url)!;
    const result = await handler(message.event, lambdaContext(message.timeoutMs ?? 10_000));
    reply = { ok: true, result, ms: performance.now() - started };
  } catch (err) {
    reply = { ok: false, error: String((err as Error).message), ms: performance.now() - started };
  }
  process.send!(reply);
});

// The parent disconnects when it is done; the pool would otherwise keep this process alive.
process.on('disconnect', () => process.exit(0));
