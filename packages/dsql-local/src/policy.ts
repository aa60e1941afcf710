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
import type { EndpointCore } from './connection.js';
import { unsupportedStatement } from './protocol.js';

/** An error the relay returns to the client instead of running a statement or a COMMIT. */
export interface Refusal {
  /** SQLSTATE, e.g. `'0A000'`. */
  code: string;
  /** Primary message. */
  message: string;
}

/** Decides, per session, which statements and COMMITs are refused. Every hook is optional. */
export interface SessionPolicy {
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

/** Runs `policies` in order; the first refusal wins. */
export function composePolicies(policies: SessionPolicy[]): SessionPolicy {
  return {
    onStatement: (sql, kind) => {
      for (const p of policies) {
        const r = p.onStatement?.(sql, kind);
        if (r) return r;
      }
      return undefined;
    },
    onCommit: () => {
      for (const p of policies) {
        const r = p.onCommit?.();
        if (r) return r;
      }
      return undefined;
    },
    onReadyForQuery: (status) => {
      for (const p of policies) p.onReadyForQuery?.(status);
    },
  };
}

/**
 * The `strictSql` option: refuses with 0A000 the statements DSQL does not support, judged by
 * the first statement of the text (a pattern check, see `unsupportedStatement`). Reads the
 * setting at each statement, so `faults.setStrictSql` applies to open sessions.
 */
export function strictSqlPolicy(core: Pick<EndpointCore, 'strictSql'>): SessionPolicy {
  return {
    onStatement(sql) {
      if (!core.strictSql) return undefined;
      const message = unsupportedStatement(sql);
      return message === undefined ? undefined : { code: '0A000', message };
    },
  };
}
