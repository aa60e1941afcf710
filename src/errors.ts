/**
 * Every error dsql-lambda throws, and the one place that classifies errors coming from the
 * server or the network (OCC conflicts, retryable connection refusals, lost connections).
 *
 * Errors carry `cause` (the original error) and never contain a token, a secret access key or a
 * session token: messages name the field and the rule, not the value, when the value is secret.
 */

/**
 * Base class of every error this library throws. Each class names itself in a string: a
 * minifying bundler renames classes, and `new.target.name` would then say `N` or `p`.
 */
export class DsqlError extends Error {
  override name = 'DsqlError';
}

/** Invalid configuration or connection string; thrown synchronously, before any I/O. */
export class DsqlConfigError extends DsqlError {
  override name = 'DsqlConfigError';
  /** The configuration field at fault, e.g. `"host"`, `"tokenDurationSecs"`. */
  readonly field: string;
  constructor(field: string, message: string, options?: { cause?: unknown }) {
    super(`Invalid dsql-lambda configuration: ${field}: ${message}`, options);
    this.field = field;
  }
}

/** Resolving credentials or signing an IAM authentication token failed; `cause` holds the reason. */
export class DsqlTokenError extends DsqlError {
  override name = 'DsqlTokenError';
}

/**
 * Opening a connection failed for good: refusals outlasted `connectionTimeoutMillis`, the host
 * was unreachable, or the pool was ended meanwhile. The message names the host and the budget;
 * `cause` is the last refusal or network error.
 */
export class DsqlConnectionError extends DsqlError {
  override name = 'DsqlConnectionError';
  /** Number of connection attempts made. */
  readonly attempts: number;
  constructor(message: string, attempts: number, options?: { cause?: unknown }) {
    super(message, options);
    this.attempts = attempts;
  }
}

/**
 * The OCC retry wrapper gave up: attempts exhausted, deadline reached or aborted.
 * `cause` is the last error seen (usually an OCC conflict).
 */
export class OccRetryExhaustedError extends DsqlError {
  override name = 'OccRetryExhaustedError';
  /** Number of transaction attempts made. */
  readonly attempts: number;
  /** Milliseconds between the first attempt's start and giving up. */
  readonly elapsedMs: number;
  /** Why retrying stopped. */
  readonly reason: 'attempts' | 'deadline' | 'aborted';
  constructor(
    message: string,
    info: { attempts: number; elapsedMs: number; reason: 'attempts' | 'deadline' | 'aborted' },
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.attempts = info.attempts;
    this.elapsedMs = info.elapsedMs;
    this.reason = info.reason;
  }
}

/**
 * The connection was lost while COMMIT was in flight: the transaction may or may not have been
 * committed. Never retried automatically; the caller must check (idempotency key, read-back).
 */
export class CommitOutcomeUnknownError extends DsqlError {
  override name = 'CommitOutcomeUnknownError';
  /** Transaction attempts made, including the one whose outcome is unknown. */
  readonly attempts: number;
  constructor(message: string, attempts: number, options?: { cause?: unknown }) {
    super(message, options);
    this.attempts = attempts;
  }
}

const SQLSTATE_SERIALIZATION_FAILURE = '40001';

const OCC_CODE = /\bOC00[01]\b/;

/** Walks an error, its `cause` chain and `AggregateError.errors`, at most 16 deep, cycle-safe. */
function* errorChain(err: unknown): Generator<unknown> {
  const seen = new Set<unknown>();
  const stack: unknown[] = [err];
  while (stack.length > 0 && seen.size < 16) {
    const e = stack.shift();
    if (e == null || seen.has(e)) continue;
    seen.add(e);
    yield e;
    if (typeof e === 'object') {
      const cause = (e as { cause?: unknown }).cause;
      if (cause !== undefined) stack.push(cause);
      const inner = (e as { errors?: unknown }).errors;
      if (Array.isArray(inner)) stack.push(...inner);
    }
  }
}

function codeOf(e: unknown): string | undefined {
  if (typeof e !== 'object' || e === null) return undefined;
  const code = (e as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

function messageOf(e: unknown): string {
  if (typeof e === 'string') return e;
  if (typeof e !== 'object' || e === null) return '';
  const message = (e as { message?: unknown }).message;
  return typeof message === 'string' ? message : '';
}

/**
 * True when `err` (or anything in its `cause` chain) is an Aurora DSQL optimistic-concurrency
 * conflict: SQLSTATE `40001`, or `OC000` (data conflict) / `OC001` (schema changed) as the
 * error's `code` or in its message. Deadlocks (`40P01`) are not OCC conflicts: DSQL takes no locks, so a 40P01 means
 * something else is wrong and is not retried.
 * @example
 * try { await tx.query('COMMIT'); } catch (err) { if (isOccError(err)) retry(); else throw err; }
 */
export function isOccError(err: unknown): boolean {
  for (const e of errorChain(err))
    if (codeOf(e) === SQLSTATE_SERIALIZATION_FAILURE || occCodeOf(e)) return true;
  return false;
}

/**
 * The OCC code (`'OC000'` or `'OC001'`) in `err`'s chain, if any: as `code` (how the official
 * connectors' errors carry it) or in the message (how DSQL sends it, with SQLSTATE 40001).
 * @example
 * occCode(err) === 'OC001' // schema changed: the statement's catalog was stale
 */
export function occCode(err: unknown): 'OC000' | 'OC001' | undefined {
  for (const e of errorChain(err)) {
    const code = occCodeOf(e);
    if (code) return code;
  }
  return undefined;
}

function occCodeOf(e: unknown): 'OC000' | 'OC001' | undefined {
  const code = codeOf(e);
  if (code === 'OC000' || code === 'OC001') return code;
  return OCC_CODE.exec(messageOf(e))?.[0] as 'OC000' | 'OC001' | undefined;
}

const TRANSIENT_NETWORK_CODES = new Set(
  'ECONNRESET ECONNREFUSED ETIMEDOUT EPIPE EHOSTUNREACH ENETUNREACH EAI_AGAIN ECONNABORTED'.split(' '),
);

const LOST_CONNECTION_MESSAGES = [
  'Connection terminated',
  'Client has encountered a connection error and is not queryable',
  'Client was closed and is not queryable',
  'connection timeout',
  'Query read timeout',
];

/**
 * True when `err` says the connection itself is gone or unusable (socket reset, closed by the
 * server, admin shutdown `57P01`/`57P02`/`57P03`, read timeout) as opposed to an error the
 * server returned for a statement on a healthy connection.
 */
export function isConnectionLostError(err: unknown): boolean {
  for (const e of errorChain(err)) {
    const code = codeOf(e);
    if (code !== undefined && TRANSIENT_NETWORK_CODES.has(code)) return true;
    if (code === '57P01' || code === '57P02' || code === '57P03' || code === '08006' || code === '08003')
      return true;
    const message = messageOf(e);
    if (LOST_CONNECTION_MESSAGES.some((m) => message.includes(m))) return true;
  }
  return false;
}

/**
 * Why opening a connection is worth another attempt: DSQL's admission refusals (`53400` rate
 * exceeded, `53300` too many connections) or a transient network failure; `undefined` when it is
 * not (token errors and authentication failures `28000`/`28P01` never are).
 */
export function refusalOf(err: unknown): '53400' | '53300' | 'network' | undefined {
  if (err instanceof DsqlTokenError) return undefined;
  for (const e of errorChain(err)) {
    const code = codeOf(e);
    if (code === '28000' || code === '28P01') return undefined;
    if (code === '53400' || code === '53300') return code;
  }
  return isConnectionLostError(err) ? 'network' : undefined;
}
