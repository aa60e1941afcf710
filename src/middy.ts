/**
 * `dsql-lambda/middy`: `context.dsql` as a middy middleware (middy 4–7), over the core `withDsql`
 * uses. `@middy/core` is an optional peer dependency: only its types are imported.
 *
 * The invocation's end must run on every path: middy runs `after` on success and `onError` on
 * failure, but an early response (a later `before` or `after` returning a value) skips ours. Such a
 * middleware can call {@link cleanupDsql}; otherwise the leftover is swept when the next invocation
 * starts (in a standard Lambda, one invocation at a time, always before any new work), or as soon
 * as the request is visibly finished (middy ≥ 6 marks it `earlyResponse`).
 */
import type { MiddlewareObj, Request } from '@middy/core';
import type { Context } from 'aws-lambda';
import { type DsqlContext, type DsqlHandlerOptions, lifecycle } from './lambda.js';

export type { Dsql, DsqlContext, DsqlHandlerOptions, DsqlLifecycleOptions, DsqlLogger } from './lambda.js';

// The end of each request, per request object: `request.internal` is not always per request (middy
// 5 shares one between requests when the plugin option `internal` is set).
const cleanups = new WeakMap<object, () => void>();

/**
 * The middleware `dsql()` returns: `.use()` adds `context.dsql` to the handler's context type.
 * @example
 * const middleware: DsqlMiddleware = dsql();
 */
export type DsqlMiddleware = MiddlewareObj<unknown, unknown, Error, Context & DsqlContext>;

type AnyRequest = Pick<Request, 'context' | 'internal'> & { earlyResponse?: unknown };

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
  const open = new Set<AnyRequest>();
  const end = (request: AnyRequest) => cleanups.get(request)?.();

  const sweep = (current: AnyRequest) => {
    // In a standard Lambda (no AWS_LAMBDA_MAX_CONCURRENCY) invocations never overlap, so a request
    // still open when the next one starts has finished. Elsewhere (Managed Instances, tests running
    // invocations side by side) only a request visibly finished is swept.
    const env = process.env;
    const oneAtATime =
      env.AWS_LAMBDA_FUNCTION_NAME !== undefined && Number(env.AWS_LAMBDA_MAX_CONCURRENCY ?? '1') <= 1;
    for (const request of open) {
      const finished =
        oneAtATime || 'earlyResponse' in request || (request.context.getRemainingTimeInMillis?.() ?? 1) <= 0;
      if (request !== current && finished) end(request);
    }
  };

  return {
    name: 'dsql-lambda',
    before: function dsqlMiddlewareBefore(request) {
      const req = request as unknown as AnyRequest;
      if (open.size > 0) sweep(req);
      const invocation = begin(request.context);
      (request.context as Context & DsqlContext).dsql = invocation.dsql;
      cleanups.set(req, () => {
        open.delete(req);
        cleanups.delete(req);
        invocation.end();
      });
      open.add(req); // until its end runs: in flight, or cut short by an early response
    },
    after: function dsqlMiddlewareAfter(request) {
      end(request as unknown as AnyRequest);
    },
    onError: function dsqlMiddlewareOnError(request) {
      end(request as unknown as AnyRequest);
    },
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
  cleanups.get(request)?.();
}
