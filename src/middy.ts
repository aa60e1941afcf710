/**
 * `dsql-lambda/middy`: the per-invocation `context.dsql` handle as a middy middleware (middy 4–7).
 *
 * `@middy/core` is an optional peer dependency: this module imports its types only, never code.
 *
 * Cleanup (releasing clients the handler forgot) must run on every path. middy runs `after` on
 * success and `onError` on failure, but an early response — a `before` (or `after`) registered
 * later returning a value — skips the remaining middlewares, ours included. So, like Powertools,
 * the cleanup function is stored in `request.internal` under {@link DSQL_CLEANUP_KEY}: a
 * middleware that responds early can call {@link cleanupDsql}. When it does not, the leftover is
 * swept at the start of the next invocation handled by the same middleware — in a standard
 * Lambda (one invocation at a time per process) that is always before any new work — or as soon
 * as the finished request is recognisable (middy ≥ 6 marks it with `earlyResponse`).
 */
import type { MiddlewareObj, Request } from '@middy/core';
import type { Context } from 'aws-lambda';
import type pg from 'pg';
import {
  createDsqlContext,
  type DsqlContext,
  type DsqlHandlerOptions,
  type DsqlInvocation,
  splitHandlerOptions,
} from './lambda.js';

export type {
  Dsql,
  DsqlContext,
  DsqlHandlerOptions,
  DsqlLifecycleOptions,
  DsqlLogger,
} from './lambda.js';

/**
 * Key in `request.internal` holding this middleware's cleanup function (a function of no
 * arguments, idempotent). Prefer {@link cleanupDsql}: when `request.internal` is shared between
 * requests (middy 5 with the plugin option `internal`), the key holds the latest request's.
 * @example
 * ```ts
 * (request.internal[DSQL_CLEANUP_KEY] as (() => void) | undefined)?.();
 * ```
 */
export const DSQL_CLEANUP_KEY = 'dsql-lambda.cleanup';

// Cleanup per request object. `request.internal` is not always per request: middy 5 gives every
// request the same object when the plugin option `internal` is set, so under concurrent
// invocations the key there holds only the latest request's cleanup. This map is what
// `after`/`onError`/`cleanupDsql` read; the key stays for code that reads it directly.
const cleanups = new WeakMap<object, () => void>();

/**
 * The middleware `dsql()` returns: `.use()` adds `context.dsql` to the handler's context type.
 * @example
 * ```ts
 * const middleware: DsqlMiddleware = dsql();
 * ```
 */
export type DsqlMiddleware = MiddlewareObj<unknown, unknown, Error, Context & DsqlContext>;

type AnyRequest = Pick<Request, 'context' | 'internal' | 'response'> & { earlyResponse?: unknown };

/**
 * Middleware giving the handler `context.dsql` (`query`, `connect`, `transaction`, `pool`). The
 * pool is the process-wide {@link lambdaPool} for the configuration (resolved on the first
 * invocation, so importing the handler needs no DSQL settings) unless `{ pool }` is given. No
 * connection is opened unless a statement runs. `transaction()` retries OCC conflicts until the
 * Lambda deadline minus `deadlineMarginMs`. Clients checked out with `context.dsql.connect()` and
 * not released are taken back at the end of the invocation (connection closed), with a warning.
 *
 * @param options - connection string, config (+ lifecycle options), or `{ pool }`;
 *   `deadlineMarginMs` default 500, `retry` default `withRetry`'s, `logger` default `console`.
 *   Default: configuration from the environment (`DSQL_ENDPOINT`, `AWS_REGION`, …).
 * @example
 * ```ts
 * import middy from '@middy/core';
 * import { dsql } from 'dsql-lambda/middy';
 *
 * // `.use()` before `.handler()`, so the handler's context is typed with `dsql`.
 * export const handler = middy()
 *   .use(dsql())
 *   .handler(async (event: { id: string }, context) => {
 *     const { rows } = await context.dsql.query('SELECT * FROM orders WHERE id = $1', [event.id]);
 *     return rows[0];
 *   });
 * ```
 */
export function dsql(options?: DsqlHandlerOptions): DsqlMiddleware {
  const { getPool, lifecycle } = splitHandlerOptions(options);
  let pool: pg.Pool | undefined;
  // Requests whose cleanup has not run yet. Only references to requests that are in flight or
  // were cut short by an early response; the state itself lives in each request.
  const open = new Set<AnyRequest>();

  const sweep = (current: AnyRequest) => {
    // Inside a standard Lambda (no AWS_LAMBDA_MAX_CONCURRENCY) invocations never overlap, so a
    // request still open when the next one starts has finished. Anywhere else (Managed Instances,
    // tests running invocations side by side) only a request visibly finished is swept.
    const env = process.env;
    const oneAtATime =
      env.AWS_LAMBDA_FUNCTION_NAME !== undefined && Number(env.AWS_LAMBDA_MAX_CONCURRENCY ?? '1') <= 1;
    for (const request of open) {
      if (request === current) continue;
      const finished =
        oneAtATime || 'earlyResponse' in request || (request.context.getRemainingTimeInMillis?.() ?? 1) <= 0;
      if (finished) runCleanup(request);
    }
  };

  const runCleanup = (request: AnyRequest) => {
    open.delete(request);
    cleanups.get(request)?.();
  };

  return {
    name: 'dsql-lambda',
    before: function dsqlMiddlewareBefore(request) {
      const req = request as unknown as AnyRequest;
      if (open.size > 0) sweep(req);
      pool ??= getPool();
      const invocation: DsqlInvocation = createDsqlContext(pool, request.context, lifecycle);
      (request.context as Context & DsqlContext).dsql = invocation.dsql;
      let done = false;
      const cleanup = () => {
        if (done) return;
        done = true;
        open.delete(req);
        cleanups.delete(req);
        invocation.cleanup();
      };
      cleanups.set(req, cleanup);
      (request.internal as Record<string, unknown>)[DSQL_CLEANUP_KEY] = cleanup;
      open.add(req);
    },
    after: function dsqlMiddlewareAfter(request) {
      runCleanup(request as unknown as AnyRequest);
    },
    onError: function dsqlMiddlewareOnError(request) {
      runCleanup(request as unknown as AnyRequest);
    },
  };
}

/**
 * Runs the `dsql` middleware's cleanup for `request` now (idempotent; a no-op when the middleware
 * did not run). Call it from a middleware that returns an early response, so clients checked
 * out earlier in the invocation are released right away instead of at the next invocation.
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
