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
 *
 * Under DSQL's dialect the relay is also the session's side of optimistic concurrency (occ.ts):
 * it asks the endpoint's arbiter to probe a request that runs longer than a millisecond, and
 * when the arbiter wounds the session (idle in a transaction, holding a lock another session
 * waits on) it rolls the upstream transaction back and opens a doomed one on its own; those
 * internal exchanges are never seen by the client or the policy, and the doomed transaction's
 * COMMIT is answered with 40001 OC000.
 * @packageDocumentation
 */
import type { Connection, EndpointCore, SessionState } from './connection.js';
import { dropConnection } from './faults.js';
import { catalogRace, FIRST_PROBE_MS, nextProbeDelay, recordLockWait, woundSql } from './occ.js';
import type { Refusal, SessionPolicy } from './policy.js';
import {
  bindStatementName,
  errorResponseFromFields,
  type Frame,
  isCommitStatement,
  parseErrorFields,
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

/** A request sent upstream whose ReadyForQuery has not arrived yet. */
interface Pending {
  /** Sent by the relay for its own purposes (a wound): its reply is swallowed whole. */
  internal: boolean;
  /** When it started to run upstream (sent, or the previous reply arrived), performance.now(). */
  startedAt: number;
  /** The arbiter saw it wait on a lock. */
  waited: boolean;
  /** Set while its reply is held back so that it can run again after a conflict. */
  replay?: Replay;
  /** Answered at a Sync (an extended-protocol batch), not at a Query or FunctionCall. */
  viaSync?: boolean;
  /** The session's {@link Connection.cancelsRequested} when it was sent. */
  cancels: number;
}

/** A request that may run again in a doomed transaction if it meets a conflict. */
interface Replay {
  /** Its frames as sent upstream. */
  frames: Buffer[];
  /** Reply frames held back so far. */
  held: Frame[];
  heldBytes: number;
  /** The reply holds a conflict error. */
  conflict: boolean;
}

/**
 * A simple query that may end or begin a transaction (conservatively, by keyword: a false match
 * only means no rerun) cannot run again: part of it may have committed.
 */
const ENDS_TRANSACTION = /\b(?:commit|end|begin|start|rollback|abort|prepare)\b/i;
/**
 * Where PostgreSQL reports a statement waiting for another transaction's row (XactLockTableWait's
 * error context), e.g. `while updating tuple (0,1) in relation "t"`.
 */
const ROW_WAIT_CONTEXT =
  /^while (?:updating|locking|deleting|rechecking updated|inserting index|checking uniqueness of|checking exclusion constraint on) tuple/;
const USER_CANCEL = 'canceling statement due to user request';

/** Upstream errors after which a request runs again (serialization failure, lock timeout). */
const REPLAY_CODES = new Set(['40001', '55P03']);
/** Larger replies are relayed as they come (and a conflict in them stays at the statement). */
const MAX_HELD_BYTES = 1024 * 1024;
/** Client frames a batch that can run again may hold (others: Flush, Close, COPY, function call). */
const REPLAYABLE_FRAMES = new Set(['P', 'B', 'D', 'E', 'S']);

/** Frames of the extended protocol that leave a batch open until Sync. */
const BATCH_FRAMES = new Set(['P', 'B', 'D', 'E', 'C', 'H']);

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
  /** Requests in flight upstream, in order (client ones and internal ones). */
  private readonly pending: Pending[] = [];
  /** Extended-protocol frames were sent since the last Sync. */
  private openBatch = false;
  /** Frames of the open batch, while it can still run again (see {@link Replay}). */
  private batchFrames: Buffer[] | undefined = [];
  /** The unnamed statement was parsed in the open batch. */
  private batchParsedUnnamed = false;
  private probeTimer: NodeJS.Timeout | undefined;
  /**
   * The upstream is in COPY FROM STDIN (CopyInResponse seen, the client's CopyDone/CopyFail not
   * yet): PostgreSQL ignores Sync and Flush then, so such a Sync gets no ReadyForQuery.
   * `absorbAfter`: the COPY came from a batch whose Sync was already sent; that batch's
   * ReadyForQuery comes at the client's first Sync after CopyDone/CopyFail (libpq sends one),
   * which therefore is no request of its own.
   */
  private copyIn: { absorbAfter: boolean } | undefined;
  /** The next client Sync ends a COPY's batch (see {@link copyIn}): not a new request. */
  private absorbSync = false;
  /** See {@link OccSession.transaction}. */
  transaction = 0;
  /** See {@link OccSession.doomed}. */
  doomed = false;

  constructor(
    private readonly core: EndpointCore,
    private readonly conn: Connection,
    private readonly policy: SessionPolicy,
  ) {}

  get idle(): boolean {
    return this.conn.txStatus === 'I' && this.syncsSent === this.zReceived;
  }

  get woundable(): boolean {
    const c = this.conn;
    return (
      c.established &&
      !c.closed &&
      !c.ending &&
      !c.silent &&
      c.txStatus === 'T' &&
      this.pending.length === 0 &&
      !this.openBatch &&
      !this.injecting &&
      this.serverActions.length === 0
    );
  }

  get waiting(): boolean {
    return this.pending[0]?.internal === false;
  }

  sawLockWait(): void {
    const head = this.pending[0];
    if (head && !head.internal) head.waited = true;
  }

  wound(): void {
    const arbiter = this.core.arbiter;
    if (!arbiter || !this.woundable) return;
    this.doomed = true;
    this.transaction = arbiter.nextTransaction();
    this.pending.push({ internal: true, startedAt: performance.now(), waited: false, cancels: 0 });
    this.conn.writeServer(queryMessage(woundSql(this.core.occMessages.OC000)));
  }

  /**
   * `n` client requests (Query, Sync, or the relay's ROLLBACK in their place) go upstream;
   * `frames`: those of the one request, when it may run again after a conflict.
   */
  private sent(n = 1, frames?: Buffer[], viaSync = false): void {
    const c = this.conn;
    const replay =
      frames &&
      this.core.arbiter &&
      c.txStatus === 'T' &&
      this.pending.length === 0 &&
      !this.injecting &&
      this.serverActions.length === 0
        ? { frames, held: [], heldBytes: 0, conflict: false }
        : undefined;
    this.syncsSent += n;
    const now = performance.now();
    for (let i = 0; i < n; i++)
      this.pending.push({
        internal: false,
        startedAt: now,
        waited: false,
        cancels: c.cancelsRequested,
        ...(replay ? { replay } : {}),
        ...(viaSync ? { viaSync } : {}),
      });
    if (this.core.arbiter && !this.probeTimer) this.armProbe(FIRST_PROBE_MS);
  }

  private armProbe(ms: number): void {
    this.probeTimer = setTimeout(() => this.onProbeTimer(), ms);
    this.probeTimer.unref();
  }

  /** The oldest request may be waiting on a lock: ask the arbiter, then look again later. */
  private onProbeTimer(): void {
    this.probeTimer = undefined;
    const head = this.pending[0];
    if (!head || this.conn.closed || this.conn.ending) return;
    const elapsed = performance.now() - head.startedAt;
    if (!head.internal && elapsed >= FIRST_PROBE_MS) this.core.arbiter?.probe(this.conn.pid);
    this.armProbe(head.internal ? FIRST_PROBE_MS : nextProbeDelay(elapsed));
  }

  /** A ReadyForQuery arrived: its request is answered. */
  private answered(): Pending | undefined {
    const done = this.pending.shift();
    const now = performance.now();
    if (done?.waited) recordLockWait(this.core.stats.sql.occ, now - done.startedAt);
    const next = this.pending[0];
    if (next) next.startedAt = Math.max(next.startedAt, now);
    else if (this.probeTimer) {
      clearTimeout(this.probeTimer);
      this.probeTimer = undefined;
    }
    return done;
  }

  fromClient(frames: Frame[]): void {
    const { core, conn } = this;
    if (conn.closed || conn.ending) return;
    const out: Buffer[] = [];
    for (let f of frames) {
      if (this.copyIn || (this.absorbSync && f.type === 'S')) {
        // COPY data, and the Syncs PostgreSQL does not answer with a ReadyForQuery of their own:
        // relayed as they are, neither requests nor statements (the policy does not see them).
        if (f.type === 'c' || f.type === 'f') {
          this.absorbSync = this.copyIn?.absorbAfter ?? false;
          this.copyIn = undefined;
        } else if (f.type === 'S' && !this.copyIn) {
          this.absorbSync = false;
          this.endBatch();
        }
        out.push(f.bytes);
        continue;
      }
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
          this.openBatch = true;
        } else if (f.type === 'S') {
          out.push(f.bytes, queryMessage('ROLLBACK'));
          this.sent(1, undefined, true);
          this.sent(1);
          this.endBatch();
          this.policy.onInjectedQuery?.();
          this.serverActions.push({ ...this.injecting, atZ: this.syncsSent });
          this.injecting = undefined;
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
        // A batch that commits cannot run again (part of it may have committed).
        this.batchFrames = undefined;
        // Parse and Bind of the same COMMIT arrive in one batch: count it once.
        if (this.batchCommitSeen) isCommit = false;
        this.batchCommitSeen = true;
      }
      if (isCommit && conn.txStatus === 'T') {
        core.stats.commits++;
        const refusal = this.policy.onCommit?.();
        let error: Refusal | undefined = refusal;
        if (!error && this.doomed) {
          // Wounded earlier (occ.ts): DSQL's loser fails at COMMIT.
          core.stats.sql.occ.conflictsAtCommit++;
          error = { code: '40001', message: core.occMessages.OC000 };
        }
        const fault = error ? undefined : core.commitFaults.take(conn);
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
            this.sent();
            this.serverActions.push(action);
          } else {
            if (f.type === 'P') {
              out.push(f.bytes);
              this.openBatch = true;
            }
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
          if (f.type === 'Q') this.sent();
          else {
            this.openBatch = true;
            this.batchFrames = undefined;
          }
          continue;
        }
      }
      if (f.type === 'Q')
        this.sent(1, isCommit || ENDS_TRANSACTION.test(queryText(f.bytes)) ? undefined : [f.bytes]);
      // A FunctionCall is answered with a ReadyForQuery of its own.
      else if (f.type === 'F') this.sent();
      else this.noteBatchFrame(f);
      if (f.type === 'S') {
        this.sent(1, this.batchFrames && [...this.batchFrames, f.bytes], true);
        this.endBatch();
      } else if (BATCH_FRAMES.has(f.type)) this.openBatch = true;
      out.push(f.bytes);
    }
    this.flushServer(out);
  }

  /**
   * Collects an extended-protocol frame for a possible rerun: a batch can run again when it
   * holds only Parse of the unnamed statement (a named one exists already the second time),
   * Bind of statements that still exist then (named ones, or the unnamed one parsed in the
   * batch), Describe, Execute.
   */
  private noteBatchFrame(f: Frame): void {
    if (!this.batchFrames) return;
    let ok = REPLAYABLE_FRAMES.has(f.type);
    if (f.type === 'P') {
      ok = f.bytes[5] === 0;
      this.batchParsedUnnamed = true;
    } else if (f.type === 'B') ok = bindStatementName(f.bytes) !== '' || this.batchParsedUnnamed;
    if (ok) {
      if (f.type !== 'S') this.batchFrames.push(f.bytes);
    } else this.batchFrames = undefined;
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
    const { conn } = this;
    if (conn.closed || conn.ending) return;
    const out: Buffer[] = [];
    for (let f of frames) {
      const head = this.pending[0];
      if (head?.internal) {
        // The reply to a wound: nobody else sees it.
        if (f.type === 'Z') this.answered();
        continue;
      }
      if (f.type === 'E' && head && this.core.arbiter) f = this.unrequestedCancel(f, head);
      if (f.type === 'E' && this.core.arbiter) {
        const oc001 = catalogRace(parseErrorFields(f.bytes), this.core.occMessages.OC001);
        if (oc001) f = { type: 'E', bytes: errorResponseFromFields(oc001) };
      }
      const replay = head?.replay;
      if (replay) {
        // Held back until its ReadyForQuery: a conflict makes the request run again instead.
        if (
          f.type === 'G' ||
          f.type === 'W' ||
          f.type === 'H' ||
          replay.heldBytes + f.bytes.length > MAX_HELD_BYTES
        ) {
          // COPY (the client must answer) or a large reply: relay as it comes.
          head.replay = undefined;
          for (const h of [...replay.held, f]) if (!this.relayFrame(h, out)) return;
          continue;
        }
        if (f.type === 'E' && REPLAY_CODES.has(parseErrorFields(f.bytes).C ?? '')) replay.conflict = true;
        if (f.type !== 'Z') {
          replay.held.push(f);
          replay.heldBytes += f.bytes.length;
          continue;
        }
        head.replay = undefined;
        // Status E: the transaction is still open (failed), so nothing of the request committed.
        if (
          replay.conflict &&
          f.bytes[5] === 0x45 &&
          this.pending.length === 1 &&
          !this.openBatch &&
          !this.injecting
        ) {
          this.rerun(replay.frames);
          continue;
        }
        for (const h of [...replay.held, f]) if (!this.relayFrame(h, out)) return;
        continue;
      }
      if (!this.relayFrame(f, out)) return;
    }
    this.flushClient(out);
  }

  /**
   * The only request in flight met a conflict: its reply is dropped, the upstream transaction is
   * replaced by a doomed one (as for a wound) and the request runs again there, so the client
   * gets a real answer now and the conflict at COMMIT.
   */
  private rerun(frames: Buffer[]): void {
    const arbiter = this.core.arbiter!;
    this.pending.shift();
    this.doomed = true;
    this.transaction = arbiter.nextTransaction();
    this.core.stats.sql.occ.reruns++;
    const now = performance.now();
    this.pending.push(
      { internal: true, startedAt: now, waited: false, cancels: 0 },
      { internal: false, startedAt: now, waited: false, cancels: this.conn.cancelsRequested },
    );
    if (!this.probeTimer) this.armProbe(FIRST_PROBE_MS);
    this.conn.writeServer(Buffer.concat([queryMessage(woundSql(this.core.occMessages.OC000)), ...frames]));
  }

  /** One upstream frame of a client request, through the policy and the server actions; false when the connection was dropped. */
  private relayFrame(frame: Frame, out: Buffer[]): boolean {
    const { core, conn } = this;
    let f = frame;
    if (f.type === 'G' && !this.copyIn) this.enterCopyIn();
    // A ReadyForQuery no request counted for (a client that keeps its own protocol): count it
    // now rather than let every later reply be taken for the one before it.
    if (f.type === 'Z' && this.pending.length === 0) {
      this.syncsSent++;
      this.policy.onRecount?.(1);
    }
    if (this.policy.onServerFrame) {
      const bytes = this.policy.onServerFrame(f);
      if (bytes !== f.bytes) f = { type: f.type, bytes };
    }
    if (f.type === 'Z') {
      // Out of COPY whatever the client sends next (after an error PostgreSQL drops COPY data).
      this.copyIn = undefined;
      this.absorbSync = false;
      this.zReceived++;
      this.answered();
      const before = conn.txStatus;
      conn.txStatus = f.bytes.toString('latin1', 5, 6) as 'I' | 'T' | 'E';
      if (conn.txStatus === 'I') this.doomed = false;
      else if (before === 'I' && core.arbiter) this.transaction = core.arbiter.nextTransaction();
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
          return false;
        }
      }
      return true;
    }
    if (f.type === 'Z') this.policy.onReadyForQuery?.(conn.txStatus);
    out.push(f.bytes);
    return true;
  }

  /**
   * PostgreSQL may report a lock wait cut short by `lock_timeout` as a user's cancel (the timeout
   * fires as the lock is granted, and the statement's next lock wait clears the timeout's flag
   * before the cancel is seen). A 57014 "user request" that no client asked for (no CancelRequest
   * for this session since the request was sent) while the statement waited on a lock is that: it
   * becomes the lock timeout it is (55P03), so it runs again or is reported as OC000 like one.
   */
  private unrequestedCancel(f: Frame, head: Pending): Frame {
    const fields = parseErrorFields(f.bytes);
    if (fields.C !== '57014' || fields.M !== USER_CANCEL || this.conn.cancelsRequested !== head.cancels)
      return f;
    if (!head.waited && !ROW_WAIT_CONTEXT.test(fields.W ?? '')) return f;
    return {
      type: 'E',
      bytes: errorResponseFromFields({ ...fields, C: '55P03', M: 'canceling statement due to lock timeout' }),
    };
  }

  /**
   * CopyInResponse: the upstream copies until the client's CopyDone/CopyFail and ignores Syncs
   * meanwhile, those already sent behind this request included (anything else the client sent
   * behind it ends the session: PostgreSQL's "unexpected message type during COPY").
   */
  private enterCopyIn(): void {
    const head = this.pending[0];
    const ignored = this.pending.splice(1).length;
    this.syncsSent -= ignored;
    if (ignored > 0) this.policy.onRecount?.(-ignored);
    this.copyIn = { absorbAfter: head?.viaSync === true && !head.internal };
  }

  /** A Sync went upstream: the extended-protocol batch it ends is over. */
  private endBatch(): void {
    this.openBatch = false;
    this.batchFrames = [];
    this.batchParsedUnnamed = false;
    this.batchCommitSeen = false;
  }

  private flushServer(out: Buffer[]): void {
    if (out.length > 0) this.conn.writeServer(out.length === 1 ? out[0]! : Buffer.concat(out));
  }

  private flushClient(out: Buffer[]): void {
    if (out.length > 0) this.conn.writeClient(out.length === 1 ? out[0]! : Buffer.concat(out));
  }
}
