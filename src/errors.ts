/**
 * Every error dsql-lambda throws (with `cause`: the original error; messages name the field and the
 * rule, never a secret), and the one walk over `cause` chains that classifies server and network
 * errors: OCC conflicts, connection refusals, lost connections.
 */
type Cause = { cause?: unknown };
type GiveUp = 'attempts' | 'elapsedMs' | 'reason';

/**
 * Base class of every error this library throws. Each class names itself in a string: a
 * minifying bundler renames classes, and `new.target.name` would then say `N` or `p`.
 */
export class DsqlError extends Error {
  override name = 'DsqlError';
}

/** Invalid configuration or connection string (`field`: the one at fault); thrown before any I/O. */
export class DsqlConfigError extends DsqlError {
  override name = 'DsqlConfigError';
  /** The configuration field at fault, e.g. `"host"`, `"tokenDurationSecs"`. */
  declare readonly field: string;
  constructor(field: string, message: string, options?: Cause) {
    super(`Invalid dsql-lambda configuration: ${field}: ${message}`, options);
    this.field = field;
  }
}

/** Resolving credentials or signing an IAM authentication token failed; `cause` holds the reason. */
export class DsqlTokenError extends DsqlError {
  override name = 'DsqlTokenError';
}

/** An error counting `attempts`: connections tried, or transaction attempts made. */
class Attempted extends DsqlError {
  declare readonly attempts: number;
  constructor(message: string, attempts: number, options?: Cause) {
    super(message, options);
    this.attempts = attempts;
  }
}

/**
 * No connection (refusals outlasted `connectionTimeoutMillis`, host unreachable, pool ended, deadline
 * passed): the message names the host and what was waited for; `cause`: the last refusal or error.
 */
export class DsqlConnectionError extends Attempted {
  override name = 'DsqlConnectionError';
}

/**
 * The OCC retry gave up (`reason`): out of `attempts`, deadline reached, or aborted, `elapsedMs`
 * after the call; `cause` is the last error seen (usually an OCC conflict).
 */
export class OccRetryExhaustedError extends DsqlError {
  override name = 'OccRetryExhaustedError';
  declare readonly attempts: number;
  declare readonly elapsedMs: number;
  declare readonly reason: 'attempts' | 'deadline' | 'aborted';
  constructor(message: string, info: Pick<OccRetryExhaustedError, GiveUp>, options?: Cause) {
    super(message, options);
    Object.assign(this, info);
  }
}

/**
 * The connection was lost or the deadline passed with COMMIT (or an autocommit statement) in flight:
 * it may or may not have committed. Never retried: check (idempotency key, read-back).
 */
export class CommitOutcomeUnknownError extends Attempted {
  override name = 'CommitOutcomeUnknownError';
}

/**
 * The first truthy `test` over `err`, its `cause`s and `AggregateError.errors`: breadth first, ≤ 16,
 * cycle-safe; `code` is `''` when absent, and an object whose getters throw counts as neither.
 */
function walk<T>(err: unknown, test: (code: string, message: string) => T): T | undefined {
  const seen = new Set([err]); // a Set's iterator also visits what is added while iterating
  for (const e of seen) {
    try {
      const { code = '', message = e, cause, errors } = (e ?? {}) as { [k: string]: unknown }; // e: a string
      const found = test(String(code), typeof message === 'string' ? message : '');
      if (found) return found;
      for (const next of [cause, ...(Array.isArray(errors) ? errors : [])])
        if (next !== undefined && seen.size < 16) seen.add(next);
    } catch {
      // A getter or Proxy trap that throws: classifying must not replace the error being classified.
    }
  }
}

/**
 * The first OCC conflict's code in `err`'s chain: `OC000`/`OC001` as `code` or in the message of a
 * `40001` (how DSQL sends it), else `'40001'`; `undefined` if none. Another error's message may
 * quote anything (`invalid input syntax for type integer: "OC000"`): it is never read.
 * @internal
 */
export const occCode = (err: unknown): 'OC000' | 'OC001' | '40001' | undefined =>
  (walk(err, (code, message) =>
    /^OC00[01]$/.test(code) ? code : code === '40001' && (/\bOC00[01]\b/.exec(message)?.[0] ?? code),
  ) as 'OC000') || undefined;

/**
 * True when `err` (or anything in its `cause` chain) is an OCC conflict: SQLSTATE `40001`, or `OC000`
 * (data) / `OC001` (schema) as `code` or in the message. Not `40P01`: DSQL takes no locks.
 * @example
 * try { await tx.query('COMMIT'); } catch (err) { if (isOccError(err)) retry(); else throw err; }
 */
export const isOccError = (err: unknown): boolean => !!occCode(err);

/**
 * True when `err` says the connection itself is gone (socket error, closed by the server, admin
 * shutdown `57P0x`, read timeout), not an error the server returned for a statement (whose
 * message, having a code, is not read: it may quote the statement's data).
 * @internal
 */
export const isConnectionLostError = (err: unknown): boolean =>
  !!walk(err, (code, message) => LOST_CODE.test(code) || (!code && LOST_MESSAGE.test(message)));
const LOST_CODE =
  /^(E(CONNRESET|CONNREFUSED|CONNABORTED|TIMEDOUT|PIPE|HOSTUNREACH|NETUNREACH|AI_AGAIN)|57P0[123]|0800[36])$/;
const LOST_MESSAGE = /Connection terminated|is not queryable|connection timeout|Query read timeout/;

/**
 * Why opening a connection is worth another attempt: DSQL's admission refusals (`53400` rate,
 * `53300` too many connections) or a transient network failure; `undefined` when it is not (token
 * errors and authentication failures `28000`/`28P01` never are).
 * @internal
 */
export function refusalOf(err: unknown): '53400' | '53300' | 'network' | undefined {
  // An authentication failure stops the walk (`true`): a refusal further down does not count.
  const found =
    err instanceof DsqlTokenError || walk(err, (c) => /^28(000|P01)$/.test(c) || (/^53[34]00$/.test(c) && c));
  if (found !== true) return (found as '53400') || (isConnectionLostError(err) ? 'network' : undefined);
}
