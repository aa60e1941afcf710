/**
 * A Lambda context for tests and benchmarks: a deadline `remainingMs` from now and a fresh
 * request id. Typed with `dsql` because middy types the wrapped handler's context as what the
 * handler sees (`.use(dsql())` adds `dsql`); the middleware or wrapper sets it on every invocation.
 */
import type { Context } from 'aws-lambda';
import type { DsqlContext } from '../../src/lambda.js';

let sequence = 0;

export function lambdaContext(remainingMs = 30_000, functionName = 'test'): Context & DsqlContext {
  const deadline = Date.now() + remainingMs;
  return {
    dsql: undefined as unknown as DsqlContext['dsql'],
    awsRequestId: `req-${++sequence}`,
    callbackWaitsForEmptyEventLoop: true,
    functionName,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:us-east-1:123456789012:function:${functionName}`,
    memoryLimitInMB: '128',
    logGroupName: `/aws/lambda/${functionName}`,
    logStreamName: 'test',
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    done() {},
    fail() {},
    succeed() {},
  };
}
