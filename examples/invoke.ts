/**
 * A tiny stand-in for the Lambda runtime, used by the demo: it imports the example handlers and
 * runs one invocation per IPC message, with a Lambda-like context (deadline included).
 */
import type { Context } from 'aws-lambda';

const handlers: Record<string, () => Promise<(event: unknown, context: Context) => Promise<unknown>>> = {
  middy: async () => (await import('./handler-middy.js')).handler as never,
  transfer: async () => (await import('./handler-transfer.js')).handler as never,
  plain: async () => (await import('./handler-plain.js')).handler as never,
};

function lambdaContext(timeoutMs: number): Context {
  const deadline = Date.now() + timeoutMs;
  return {
    callbackWaitsForEmptyEventLoop: false,
    functionName: 'demo',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:us-east-1:000000000000:function:demo',
    memoryLimitInMB: '512',
    awsRequestId: crypto.randomUUID(),
    logGroupName: '/aws/lambda/demo',
    logStreamName: 'demo',
    getRemainingTimeInMillis: () => deadline - Date.now(),
    done: () => {},
    fail: () => {},
    succeed: () => {},
  };
}

process.on('message', async (message: { name: string; event: unknown }) => {
  const started = performance.now();
  try {
    const handler = await handlers[message.name]!();
    const result = await handler(message.event, lambdaContext(10_000));
    process.send!({ ok: true, result, ms: performance.now() - started });
  } catch (err) {
    process.send!({ ok: false, error: String((err as Error).message), ms: performance.now() - started });
  }
});

// The demo disconnects when it is done; the pool would otherwise keep this process alive.
process.on('disconnect', () => process.exit(0));
