/**
 * `dsql-lambda/middy`: `context.dsql` as a middy middleware (middy 4–7), over the core `withDsql`
 * uses; only `@middy/core`'s types are imported. middy runs `after` on success and `onError` on
 * failure, but an early response from another middleware skips ours: that middleware can call
 * {@link cleanupDsql}; otherwise the request is ended when the next invocation starts (in a
 * standard Lambda, one invocation at a time) or once it is visibly over (middy ≥ 6 marks it
 * `earlyResponse`; no time left).
 */
import type { MiddlewareObj, Request } from '@middy/core';
import type { Context } from 'aws-lambda';
import { type DsqlContext, type DsqlHandlerOptions, lifecycle } from './lambda.js';

export type { Dsql, DsqlContext, DsqlHandlerOptions, DsqlLifecycleOptions, DsqlLogger } from './lambda.js';

// The end of each request, per request object: `request.internal` is not always per request (middy
// 5 shares one between requests when the plugin option `internal` is set).
const ends = new WeakMap<object, () => unknown>();

/** The middleware `dsql()` returns: `.use()` adds `context.dsql` to the handler's context type. */
export type DsqlMiddleware = MiddlewareObj<unknown, unknown, Error, Context & DsqlContext>;

/**
 * Middleware giving the handler `context.dsql`, exactly as `withDsql` does (same options, pool made
 * on the first invocation, calls bounded by the deadline, leaks taken back with a warning).
 * @param options A connection string, a `DsqlConfig` (+ lifecycle options), or `{ pool }`.
 *   Default: the environment.
 * @returns The middleware; `.use()` it before `.handler()` so the context is typed with `dsql`.
 * @example
 * export const handler = middy().use(dsql()).handler(async (event, context) => context.dsql.query('SELECT 1'));
 */
export function dsql(options?: DsqlHandlerOptions): DsqlMiddleware {
  const begin = lifecycle(options);
  const open = new Set<Request<unknown, unknown, Error, Context & DsqlContext>>(); // not ended yet
  return {
    name: 'dsql-lambda',
    before(request) {
      // In a standard Lambda invocations never overlap: a request still open has finished. Elsewhere
      // (Managed Instances, tests running invocations side by side) only one visibly over is ended.
      const { AWS_LAMBDA_FUNCTION_NAME: fn, AWS_LAMBDA_MAX_CONCURRENCY: most = 1 } = process.env;
      for (const r of open)
        if ((fn && +most <= 1) || 'earlyResponse' in r || (r.context.getRemainingTimeInMillis?.() ?? 1) <= 0)
          cleanupDsql(r);
      const [handle, end] = begin(request.context);
      request.context.dsql = handle;
      open.add(request);
      ends.set(request, () => ends.delete(request) && open.delete(request) && end());
    },
    after: cleanupDsql,
    onError: cleanupDsql,
  };
}

/**
 * Ends the middleware's invocation for `request` now (idempotent; a no-op if it did not run): call
 * it from a middleware that responds early, so clients taken earlier are given back at once.
 * @param request The middy request.
 * @example
 * before: (request) => { if (!authorised(request)) { cleanupDsql(request); return { statusCode: 401 }; } }
 */
export function cleanupDsql(request: { internal: object }): void {
  ends.get(request)?.();
}
