/**
 * Session policies: where DSQL's SQL rules plug into the relay. The relay (relay.ts) asks a
 * session's policy about every statement the client sends and about every COMMIT inside a
 * transaction; a {@link Refusal} makes that statement (or the COMMIT) fail with the given error
 * while the session stays usable and the transaction state the client sees stays true.
 *
 * How a refusal is carried out (so a policy only decides, never touches the wire):
 * - a statement: the relay replaces it by a `DO` block that makes PostgreSQL raise the error
 *   itself, so PostgreSQL reports the right transaction status afterwards (`E` inside a
 *   transaction, `I` outside);
 * - a COMMIT: the relay sends `ROLLBACK` upstream instead and answers the client with the error
 *   and ReadyForQuery `I`, as DSQL does when a transaction fails at commit.
 *
 * One policy object is made per session ({@link EndpointCore.sessionPolicy}), so it may keep
 * per-session or per-transaction state; `onReadyForQuery` tells it where transactions end.
 * @packageDocumentation
 */
import type { Frame } from './protocol.js';

/** An error the relay returns to the client instead of running a statement or a COMMIT. */
export interface Refusal {
  /** SQLSTATE, e.g. `'0A000'`. */
  code: string;
  /** Primary message. */
  message: string;
  /** DETAIL field, if any. */
  detail?: string;
}

/** Decides, per session, which statements and COMMITs are refused. Every hook is optional. */
export interface SessionPolicy {
  /**
   * Every client frame, before the relay looks at it: returns the bytes to send upstream instead
   * (the same frame, or a rewritten one of the same type). DSQL's dialect (sql/dialect.ts)
   * parses Query and Parse frames here and rewrites refused or DSQL-only statements.
   */
  onClientFrame?(f: Frame): Buffer;
  /** Every upstream frame of the session: returns the bytes the client gets instead. */
  onServerFrame?(f: Frame): Buffer;
  /**
   * The relay found `delta` more (negative: fewer) ReadyForQuery messages to come than the
   * requests (Query, Sync, FunctionCall) the policy saw: Syncs PostgreSQL ignores during COPY,
   * or a ReadyForQuery no request accounts for.
   */
  onRecount?(delta: number): void;
  /** The relay sent a simple query of its own upstream (the ROLLBACK of a failed COMMIT). */
  onInjectedQuery?(): void;
  /**
   * A statement the client sent: the whole text of a simple Query (which may hold several
   * statements) or of an extended-protocol Parse. Return a refusal to make it fail.
   */
  onStatement?(sql: string, kind: 'query' | 'parse'): Refusal | undefined;
  /** A COMMIT inside a transaction (simple or extended). Return a refusal to make it fail. */
  onCommit?(): Refusal | undefined;
  /** Every ReadyForQuery from upstream, with the transaction status it reports. */
  onReadyForQuery?(status: 'I' | 'T' | 'E'): void;
}
