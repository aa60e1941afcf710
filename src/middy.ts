/**
 * `dsql-lambda/middy`: `context.dsql` as a middy middleware (middy 4–7), over the same core as
 * `withDsql`. `@middy/core` is an optional peer dependency: only its types are imported.
 *
 * The end of the invocation (taking back unreleased clients) must run on every path. middy runs
 * `after` on success and `onError` on failure, but an early response (a `before` or `after`
 * registered later returning a value) skips the remaining middlewares, ours included. A
 * middleware that responds early can call {@link cleanupDsql}; when it does not, the leftover is
 * swept at the start of the next invocation this middleware handles (in a standard Lambda, one
 * invocation at a time per process, always before any new work), or as soon as the finished
 * request is recognisable (middy ≥ 6 marks it with `earlyResponse`).
 */
import type { MiddlewareObj, Request } from '@middy/core';
import type { Context } from 'aws-lambda';
import { type DsqlContext, type DsqlHandlerOptions, lifecycle } from './lambda.js';

export type { Dsql, DsqlContext, DsqlHandlerOptions, DsqlLifecycleOptions, DsqlLogger } from './lambda.js';

// Also stored in `request.internal`, as Powertools does, for a middleware that reads it directly.
const CLEANUP_KEY = 'dsql-lambda.cleanup';

// Cleanup per request object: `request.internal` is not always per request (middy 5 gives every
// request the same object when the plugin option `internal` is set).
const cleanups = new WeakMap<object, () => void>();

/**
 * The middleware `dsql()` returns: `.use()` adds `context.dsql` to the handler's context type.
 * @example
 * const middleware: DsqlMiddleware = dsql();
 */
export type DsqlMiddleware = MiddlewareObj<unknown, unknown, Error, Context & DsqlContext>;

type AnyRequest = Pick<Request, 'context' | 'internal'> & { earlyResponse?: unknown };

/**
 * Middleware giving the handler `context.dsql` (`query`, `connect`, `transaction`, `pool`), as
 * `withDsql` does: the pool is created on the first invocation unless `{ pool }` is given, every
 * call is bounded by the Lambda deadline minus `deadlineMarginMs`, and clients not released are
 * taken back at the end of the invocation (connection closed), with a warning.
 * @param options A connection string, a `DsqlConfig` (+ `deadlineMarginMs`, `retry`, `logger`),
 *   or `{ pool }`. Default: the environment (`DSQL_ENDPOINT`, `AWS_REGION`, …).
 * @returns The middleware.
 * @example
 * ```ts
 * import middy from '@middy/core';
 * import { dsql } from 'dsql-lambda/middy';
 * // `.use()` before `.handler()`, so the handler's context is typed with `dsql`.
 * export const handler = middy()
 *   .use(dsql())
 *   .handler(async (event: { id: string }, context) =>
 *     (await context.dsql.query('SELECT * FROM orders WHERE id = $1', [event.id])).rows[0]);
 * ```
 */
export function dsql(options?: DsqlHandlerOptions): DsqlMiddleware {
  const begin = lifecycle(options);
  // Requests whose end has not run yet: in flight, or cut short by an early response.
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
      const cleanup = () => {
        open.delete(req);
        cleanups.delete(req);
        invocation.end();
      };
      cleanups.set(req, cleanup);
      (request.internal as Record<string, unknown>)[CLEANUP_KEY] = cleanup;
      open.add(req);
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
 * Ends the `dsql` middleware's invocation for `request` now (idempotent; a no-op when the
 * middleware did not run). Call it from a middleware that returns an early response, so clients
 * checked out earlier are taken back at once instead of at the next invocation.
 * @param request The middy request.
 * @example
 * ```ts
 * const auth = {
 *   before: async (request) => {
 *     if (!request.event.headers?.authorization) {
 *       cleanupDsql(request);
 *       return { statusCode: 401 };
 *     }
 *   },
 * };
 * ```
 */
export function cleanupDsql(request: { internal: object }): void {
  cleanups.get(request)?.();
}
