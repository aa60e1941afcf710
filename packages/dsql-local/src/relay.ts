/**
 * The relay: frames both ways between an authenticated client and its upstream session. It
 * tracks transaction status (from ReadyForQuery), what is in flight, and COMMITs (a simple Query
 * that is one COMMIT/END, a Parse of one, or a Bind of a statement earlier prepared as one).
 *
 * The one place SQL rules act is the session's {@link SessionPolicy} (policy.ts):
 * `onStatement` for every Query/Parse text, `onCommit` for every COMMIT inside a transaction,
 * `onReadyForQuery` for transaction boundaries, and `onClientFrame` / `onServerFrame` for every
 * frame (DSQL's dialect rewrites statements and replies there). Commit faults (faults.ts) act
 * here too, on the same COMMIT path.
 * @packageDocumentation
 */
import type { Connection, EndpointCore, SessionState } from './connection.js';
import { dropConnection } from './faults.js';
import type { Refusal, SessionPolicy } from './policy.js';
import {
  bindStatementName,
  errorResponseFromFields,
  type Frame,
  isCommitStatement,
  parseText,
  queryMessage,
  queryText,
  raiseError,
  readCString,
  readyForQuery,
  replaceParseText,
} from './protocol.js';
import type { DropHow } from './types.js';
import type { UpstreamSession } from './upstream.js';

/** PostgreSQL's frame limit, for authenticated sessions. */
const MAX_SESSION_FRAME_BYTES = 1024 * 1024 * 1024;

/** The ErrorResponse of a refusal. */
function errorFrame(r: Refusal): Buffer {
  const fields: Record<string, string> = { S: 'ERROR', V: 'ERROR', C: r.code, M: r.message };
  if (r.detail !== undefined) fields.D = r.detail;
  return errorResponseFromFields(fields);
}

/** What to do with the upstream replies that end at the `atZ`-th ReadyForQuery. */
type ServerAction = { fromZ: number; atZ: number } & (
  | { kind: 'replace'; frames: Buffer[] }
  | { kind: 'drop'; how: DropHow }
);

/**
 * Starts relaying `conn` (authenticated, upstream ready): the session is established from here
 * on, and client frames queued since the password are forwarded first.
 */
export function startRelay(core: EndpointCore, conn: Connection, upstream: UpstreamSession): void {
  const relay = new Relay(core, conn, core.sessionPolicy(conn));
  conn.session = relay;
  conn.establish();
  conn.clientFrames.maxFrameBytes = MAX_SESSION_FRAME_BYTES;
  upstream.receive((frames) => relay.fromServer(frames));
  conn.receive((frames) => relay.fromClient(frames));
}

/** The per-session relay state. */
class Relay implements SessionState {
  private syncsSent = 0;
  private zReceived = 0;
  /** An extended-protocol COMMIT being turned into a refusal, until its Sync. */
  private injecting: ServerAction | undefined;
  private batchCommitSeen = false;
  private readonly preparedCommits = new Set<string>();
  private readonly serverActions: ServerAction[] = [];

  constructor(
    private readonly core: EndpointCore,
    private readonly conn: Connection,
    private readonly policy: SessionPolicy,
  ) {}

  get idle(): boolean {
    return this.conn.txStatus === 'I' && this.syncsSent === this.zReceived;
  }

  fromClient(frames: Frame[]): void {
    const { core, conn } = this;
    if (conn.closed || conn.ending) return;
    const out: Buffer[] = [];
    for (let f of frames) {
      if (this.policy.onClientFrame) {
        const bytes = this.policy.onClientFrame(f);
        if (bytes !== f.bytes) f = { type: f.type, bytes };
      }
      if (this.injecting) {
        // An extended-protocol COMMIT turned into a refusal: statements are still prepared
        // upstream (later Binds by name must work); everything else is dropped until Sync, which
        // is followed by the ROLLBACK whose reply becomes the error.
        if (f.type === 'P') {
          this.notePrepared(f.bytes);
          out.push(f.bytes);
        } else if (f.type === 'S') {
          out.push(f.bytes, queryMessage('ROLLBACK'));
          this.syncsSent += 2;
          this.policy.onInjectedQuery?.();
          this.serverActions.push({ ...this.injecting, atZ: this.syncsSent });
          this.injecting = undefined;
          this.batchCommitSeen = false;
        }
        continue;
      }
      if (f.type === 'Q' || f.type === 'P') {
        const refusal = this.policy.onStatement?.(
          f.type === 'Q' ? queryText(f.bytes) : parseText(f.bytes),
          f.type === 'Q' ? 'query' : 'parse',
        );
        if (refusal) {
          // PostgreSQL raises the error itself, so the transaction state it reports stays true.
          core.stats.unsupportedRejected++;
          const sql = raiseError(refusal.code, refusal.message);
          f = { type: f.type, bytes: f.type === 'Q' ? queryMessage(sql) : replaceParseText(f.bytes, sql) };
        }
      }
      let isCommit = false;
      if (f.type === 'Q') isCommit = isCommitStatement(queryText(f.bytes));
      else if (f.type === 'P') isCommit = this.notePrepared(f.bytes);
      else if (f.type === 'B') isCommit = this.preparedCommits.has(bindStatementName(f.bytes));
      else if (f.type === 'C' && f.bytes[5] === 0x53) this.preparedCommits.delete(readCString(f.bytes, 6)[0]);
      if (isCommit && f.type !== 'Q') {
        // Parse and Bind of the same COMMIT arrive in one batch: count it once.
        if (this.batchCommitSeen) isCommit = false;
        this.batchCommitSeen = true;
      }
      if (isCommit && conn.txStatus === 'T') {
        core.stats.commits++;
        const refusal = this.policy.onCommit?.();
        const fault = refusal ? undefined : core.commitFaults.take(conn);
        let error: Refusal | undefined = refusal;
        if (fault?.kind === 'fail') {
          core.stats.occInjected[fault.code]++;
          core.events.emit('fault', { kind: 'occ', code: fault.code, session: conn.pid });
          error = { code: '40001', message: core.occMessages[fault.code] };
        }
        if (error) {
          // DSQL reports the failure at COMMIT and the transaction is gone: roll back upstream
          // and answer with the error instead of ROLLBACK's reply.
          const action: ServerAction = {
            fromZ: this.syncsSent,
            atZ: this.syncsSent + 1,
            kind: 'replace',
            frames: [errorFrame(error), readyForQuery('I')],
          };
          if (f.type === 'Q') {
            // The client's Query is replaced: the policy already counted it.
            out.push(queryMessage('ROLLBACK'));
            this.syncsSent++;
            this.serverActions.push(action);
          } else {
            if (f.type === 'P') out.push(f.bytes);
            this.injecting = action;
          }
          continue;
        }
        if (fault?.kind === 'drop') {
          core.events.emit('fault', {
            kind: 'drop-on-commit',
            how: fault.how,
            afterCommit: fault.afterCommit,
            session: conn.pid,
          });
          if (!fault.afterCommit) {
            this.flushServer(out);
            dropConnection(core, conn, fault.how);
            return;
          }
          out.push(f.bytes);
          // The reply ends at the ReadyForQuery of this Query, or of the batch's Sync.
          this.serverActions.push({
            fromZ: this.syncsSent,
            atZ: this.syncsSent + 1,
            kind: 'drop',
            how: fault.how,
          });
          if (f.type === 'Q') this.syncsSent++;
          continue;
        }
      }
      if (f.type === 'Q' || f.type === 'S') this.syncsSent++;
      if (f.type === 'S') this.batchCommitSeen = false;
      out.push(f.bytes);
    }
    this.flushServer(out);
  }

  /** Remembers whether a Parse prepares a COMMIT (by statement name); returns that. */
  private notePrepared(bytes: Buffer): boolean {
    const [name, next] = readCString(bytes, 5);
    const isCommit = isCommitStatement(readCString(bytes, next)[0]);
    if (isCommit) this.preparedCommits.add(name);
    else this.preparedCommits.delete(name);
    return isCommit;
  }

  fromServer(frames: Frame[]): void {
    const { core, conn } = this;
    if (conn.closed || conn.ending) return;
    const out: Buffer[] = [];
    for (let f of frames) {
      if (this.policy.onServerFrame) {
        const bytes = this.policy.onServerFrame(f);
        if (bytes !== f.bytes) f = { type: f.type, bytes };
      }
      if (f.type === 'Z') {
        this.zReceived++;
        conn.txStatus = f.bytes.toString('latin1', 5, 6) as 'I' | 'T' | 'E';
      }
      const action = this.serverActions[0];
      // The window is everything after the fromZ-th ReadyForQuery up to and including the atZ-th.
      if (action && (f.type === 'Z' ? this.zReceived > action.fromZ : this.zReceived >= action.fromZ)) {
        // Inside the reply we replace or suppress.
        if (f.type === 'Z' && this.zReceived === action.atZ) {
          this.serverActions.shift();
          if (action.kind === 'replace') {
            conn.txStatus = 'I';
            this.policy.onReadyForQuery?.('I');
            out.push(...action.frames);
          } else {
            this.flushClient(out);
            dropConnection(core, conn, action.how);
            return;
          }
        }
        continue;
      }
      if (f.type === 'Z') this.policy.onReadyForQuery?.(conn.txStatus);
      out.push(f.bytes);
    }
    this.flushClient(out);
  }

  private flushServer(out: Buffer[]): void {
    if (out.length > 0) this.conn.writeServer(out.length === 1 ? out[0]! : Buffer.concat(out));
  }

  private flushClient(out: Buffer[]): void {
    if (out.length > 0) this.conn.writeClient(out.length === 1 ? out[0]! : Buffer.concat(out));
  }
}
