/**
 * The local DSQL-like endpoint: a TLS-only PostgreSQL front end that checks IAM tokens and relays
 * sessions to a real PostgreSQL, with DSQL's admission limits and injectable faults.
 * @packageDocumentation
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import pg from 'pg';
import { localCertificates } from './certs.js';
import {
  authCleartextRequest,
  bindStatementName,
  CANCEL_REQUEST_CODE,
  errorResponse,
  errorResponseFromFields,
  type Frame,
  FrameSplitter,
  frame,
  GSSENC_REQUEST_CODE,
  isCommitStatement,
  PROTOCOL_V3,
  parseErrorFields,
  parseStartupParams,
  parseText,
  queryMessage,
  queryText,
  raiseFeatureNotSupported,
  readCString,
  readyForQuery,
  replaceParseText,
  SSL_REQUEST_CODE,
  startupMessage,
  unsupportedStatement,
} from './protocol.js';
import type {
  DropConnectionsOptions,
  DropHow,
  LocalDsql,
  LocalDsqlFaults,
  LocalDsqlOptions,
  LocalDsqlStats,
  LocalSessionInfo,
  Negotiation,
  OccCode,
} from './types.js';
import { type LocalCredentials, tokenFingerprint, verifyToken } from './verify.js';

/**
 * DSQL's message for a data conflict detected at COMMIT (the long-standing text; newer clusters
 * say `mutation conflicts with another transaction, retry as needed (OC000)`, see
 * {@link OC000_MESSAGE_NEW} and the `occMessages` option).
 */
export const OC000_MESSAGE = 'change conflicts with another transaction, please retry: (OC000)';
/** Newer DSQL text for a data conflict. */
export const OC000_MESSAGE_NEW = 'mutation conflicts with another transaction, retry as needed (OC000)';
/** DSQL's message for a schema change seen by a transaction at COMMIT. */
export const OC001_MESSAGE = 'schema has been updated by another transaction, please retry: (OC001)';
/** Default upstream URL. */
export const DEFAULT_UPSTREAM = 'postgresql://postgres@127.0.0.1:5432/dsql_local';

const CONTENTION_CODES = new Set(['40001', '55P03', '40P01']);

interface Upstream {
  host: string;
  port: number;
  user: string;
  password: string | undefined;
  database: string;
}

function parseUpstream(url: string): Upstream {
  const u = new URL(url);
  return {
    host: decodeURIComponent(u.hostname) || '127.0.0.1',
    port: u.port ? Number(u.port) : 5432,
    user: decodeURIComponent(u.username) || 'postgres',
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: decodeURIComponent(u.pathname.replace(/^\//, '')) || 'dsql_local',
  };
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

function randomString(alphabet: string, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += alphabet[randomInt(alphabet.length)];
  return s;
}

/** A random 26-character cluster id (`[a-z0-9]`), like DSQL's. */
export function randomClusterId(): string {
  return randomString('abcdefghijklmnopqrstuvwxyz0123456789', 26);
}

/** A random temporary credential set (looks like STS output; only the endpoint knows it). */
export function randomCredentials(): LocalCredentials {
  return {
    accessKeyId: `ASIA${randomString('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567', 16)}`,
    secretAccessKey: randomBytes(30).toString('base64'),
    // `+`, `/` and `=` in the session token exercise the signer's query encoding.
    sessionToken: `IQoJb3JpZ2luX2VjE${randomBytes(180).toString('base64')}`,
  };
}

function emptyStats(): LocalDsqlStats {
  return {
    connections: { total: 0, byNegotiation: { postgres: 0, direct: 0 }, byAlpn: {}, bySni: {} },
    plaintextRefused: 0,
    protocolViolations: 0,
    auth: { ok: 0, failed: 0, failedByReason: {} },
    tokensAccepted: 0,
    distinctTokensAccepted: 0,
    tokensBySigningDate: {},
    tokensByUser: {},
    occInjected: { OC000: 0, OC001: 0 },
    occFromContention: 0,
    unsupportedRejected: 0,
    commits: 0,
    dropped: { fin: 0, rst: 0, fatal: 0, silent: 0 },
    maxAgeClosed: 0,
    currentSessions: 0,
    admissionRefused: { '53300': 0, '53400': 0 },
    cancelRequests: 0,
  };
}

function bump(record: Record<string, number>, key: string): void {
  record[key] = (record[key] ?? 0) + 1;
}

/** Pending fault for an upcoming COMMIT. */
type CommitFault =
  | { kind: 'fail'; code: OccCode; remaining: number; session: number | undefined }
  | { kind: 'drop'; how: DropHow; afterCommit: boolean; session: number | undefined };

/** What to do with the upstream replies that end at the `atZ`-th ReadyForQuery. */
type ServerAction = { fromZ: number; atZ: number } & (
  | { kind: 'replace'; frames: Buffer[] }
  | { kind: 'drop'; how: DropHow }
);

/**
 * Delays writes by a per-direction amount while keeping their order; with no delay and nothing
 * queued it writes straight through.
 */
class DelayedWriter {
  private readonly queue: { at: number; run: () => void }[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly delayMs: () => number) {}

  push(run: () => void): void {
    const delay = this.delayMs();
    if (delay <= 0 && this.queue.length === 0) {
      run();
      return;
    }
    const last = this.queue[this.queue.length - 1];
    this.queue.push({ at: Math.max(Date.now() + delay, last?.at ?? 0), run });
    this.schedule();
  }

  clear(): void {
    this.queue.length = 0;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.timer || this.queue.length === 0) return;
    const wait = Math.max(0, this.queue[0]!.at - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const now = Date.now();
      while (this.queue.length > 0 && this.queue[0]!.at <= now) this.queue.shift()!.run();
      this.schedule();
    }, wait);
  }
}

/** Everything a connection needs from the endpoint. */
interface EndpointCore {
  region: string;
  upstream: Upstream;
  credentials: LocalCredentials[];
  stats: LocalDsqlStats;
  distinctTokens: Set<string>;
  events: EventEmitter;
  secureContext: tls.SecureContext;
  handshakeTimeoutMs: number;
  clockSkewSeconds: number;
  maxConnectionAgeMs: number;
  occFromContention: boolean;
  strictSql: boolean;
  occMessages: Record<OccCode, string>;
  latency: { toClient: number; toServer: number };
  now(): number;
  mapUser(user: string): string;
  ensureRole(role: string): Promise<void>;
  admit(conn: Connection): '53300' | '53400' | undefined;
  takeCommitFault(conn: Connection): CommitFault | undefined;
  register(conn: Connection): void;
  unregister(conn: Connection): void;
}

/** One client connection and, once authenticated, its upstream session. */
class Connection {
  readonly acceptedAt = Date.now();
  lastActivity = Date.now();
  negotiation: Negotiation | undefined;
  sni: string | undefined;
  user = '';
  role = '';
  applicationName: string | undefined;
  pid = 0;
  txStatus: 'I' | 'T' | 'E' = 'I';
  established = false;
  admitted = false;
  closed = false;
  ending = false;
  silent = false;

  private tls: tls.TLSSocket | undefined;
  private upstream: net.Socket | undefined;
  private readonly clientFrames = new FrameSplitter(false);
  private readonly serverFrames = new FrameSplitter(true);
  private phase: 'negotiate' | 'startup' | 'password' | 'upstream' | 'relay' = 'negotiate';
  private startupParams: Record<string, string> = {};
  private syncsSent = 0;
  private zReceived = 0;
  private injecting: ServerAction | undefined;
  private batchCommitSeen = false;
  private readonly preparedCommits = new Set<string>();
  private readonly serverActions: ServerAction[] = [];
  private readonly toClient: DelayedWriter;
  private readonly toServer: DelayedWriter;
  private ageTimer: NodeJS.Timeout | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly core: EndpointCore,
    readonly raw: net.Socket,
  ) {
    this.toClient = new DelayedWriter(() => core.latency.toClient);
    this.toServer = new DelayedWriter(() => core.latency.toServer);
    raw.setNoDelay(true);
    raw.on('error', () => this.close());
    raw.on('close', () => this.close());
    raw.on('data', this.onNegotiationData);
    this.handshakeTimer = setTimeout(() => {
      if (!this.established) this.close();
    }, core.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    this.scheduleAge();
  }

  /** (Re)arms the max-age timer from the accept time and the endpoint's current limit. */
  scheduleAge(): void {
    if (this.ageTimer) clearTimeout(this.ageTimer);
    if (this.closed) return;
    const wait = Math.max(0, this.acceptedAt + this.core.maxConnectionAgeMs - Date.now());
    this.ageTimer = setTimeout(() => this.expire(), Math.min(wait, 2 ** 31 - 1));
    this.ageTimer.unref();
  }

  private expire(): void {
    // Already closing, unless half-open: those the server side does close at max age.
    if (this.closed || (this.ending && !this.silent)) return;
    if (Date.now() - this.acceptedAt < this.core.maxConnectionAgeMs) {
      this.scheduleAge();
      return;
    }
    this.core.stats.maxAgeClosed++;
    this.endSession('max-age');
    if (this.established && !this.silent) {
      const secs = this.core.maxConnectionAgeMs / 1000;
      this.fatalAndClose(
        '57P01',
        `terminating connection due to maximum connection duration of ${secs} seconds reached`,
      );
    } else {
      this.close();
    }
  }

  private sessionEnded = false;

  private endSession(reason: string): void {
    if (!this.established || this.sessionEnded) return;
    this.sessionEnded = true;
    this.core.events.emit('session-end', { id: this.pid, user: this.user, reason });
  }

  /** Idle = authenticated, outside a transaction, nothing in flight. */
  get idle(): boolean {
    return this.established && this.txStatus === 'I' && this.syncsSent === this.zReceived;
  }

  info(): LocalSessionInfo {
    const now = Date.now();
    return {
      id: this.pid,
      user: this.user,
      role: this.role,
      ageMs: now - this.acceptedAt,
      idleMs: now - this.lastActivity,
      inTransaction: this.txStatus !== 'I',
      txStatus: this.txStatus,
      negotiation: this.negotiation ?? 'postgres',
      sni: this.sni ?? '',
      applicationName: this.applicationName,
    };
  }

  // ---- negotiation (plaintext, before TLS) ----

  private readonly onNegotiationData = (chunk: Buffer): void => {
    if (this.clientFrames.pendingBytes === 0 && chunk[0] === 0x16) {
      // TLS ClientHello first: direct negotiation. Give the bytes back and let TLS read them.
      this.raw.removeListener('data', this.onNegotiationData);
      this.raw.pause();
      this.raw.unshift(chunk);
      this.startTls('direct');
      return;
    }
    let frames: Frame[];
    try {
      frames = this.clientFrames.push(chunk);
    } catch {
      this.violation();
      return;
    }
    const f = frames[0];
    if (!f) return;
    if (f.bytes.length < 8) {
      this.violation();
      return;
    }
    const code = f.bytes.readInt32BE(4);
    if (code === SSL_REQUEST_CODE) {
      this.raw.removeListener('data', this.onNegotiationData);
      if (this.clientFrames.pendingBytes > 0) {
        // Bytes pipelined after SSLRequest would be read as if they came over TLS (CVE-2021-23214).
        this.core.stats.protocolViolations++;
        this.raw.end(errorResponse('FATAL', '08P01', 'received unencrypted data after SSL request'));
        this.close(true);
        return;
      }
      this.raw.write('S');
      this.startTls('postgres');
    } else if (code === GSSENC_REQUEST_CODE) {
      this.raw.write('N');
      if (this.clientFrames.pendingBytes > 0) this.onNegotiationData(this.clientFrames.drain());
    } else if (code === CANCEL_REQUEST_CODE) {
      this.forwardCancel(f.bytes);
    } else if (code === PROTOCOL_V3) {
      const params = parseStartupParams(f.bytes);
      this.core.stats.plaintextRefused++;
      this.core.events.emit('refused', { reason: 'plaintext', user: params.user });
      this.raw.end(errorResponse('FATAL', '28000', 'unable to accept connection, SSL/TLS is required'));
      this.close(true);
    } else {
      this.violation();
    }
  };

  private violation(message = 'invalid startup packet'): void {
    this.core.stats.protocolViolations++;
    this.core.events.emit('refused', { reason: 'protocol-violation', message });
    const out = errorResponse('FATAL', '08P01', message);
    if (this.tls) this.tls.end(out);
    else this.raw.end(out);
    this.close(true);
  }

  private startTls(negotiation: Negotiation): void {
    this.negotiation = negotiation;
    const socket = new tls.TLSSocket(this.raw, {
      isServer: true,
      secureContext: this.core.secureContext,
      ALPNProtocols: ['postgresql'],
    });
    this.tls = socket;
    socket.on('error', () => this.close());
    socket.on('close', () => this.close());
    socket.once('secure', () => {
      const alpn = typeof socket.alpnProtocol === 'string' ? socket.alpnProtocol : 'none';
      const sni = (socket as tls.TLSSocket & { servername?: string | false }).servername || undefined;
      this.sni = sni;
      const stats = this.core.stats.connections;
      stats.byNegotiation[negotiation]++;
      bump(stats.byAlpn, alpn);
      bump(stats.bySni, sni ?? 'none');
      this.core.events.emit('connection', { negotiation, alpn, sni });
      if (negotiation === 'direct' && alpn !== 'postgresql') {
        this.violation('received direct SSL connection request without ALPN protocol negotiation extension');
        return;
      }
      if (!sni) {
        this.core.stats.auth.failed++;
        bump(this.core.stats.auth.failedByReason, 'no-sni');
        this.core.events.emit('auth', { ok: false, reason: 'no-sni' });
        this.fatalAndClose('08P01', 'unable to accept connection, sni was not received');
        return;
      }
      this.phase = 'startup';
      socket.on('data', this.onClientData);
    });
  }

  // ---- client data over TLS ----

  private readonly onClientData = (chunk: Buffer): void => {
    if (this.closed || this.ending) return;
    this.lastActivity = Date.now();
    let frames: Frame[];
    try {
      frames = this.clientFrames.push(chunk);
    } catch {
      this.violation();
      return;
    }
    if (this.phase === 'startup') {
      const f = frames[0];
      if (!f) return;
      this.clientFrames.typed = true;
      this.onStartup(f.bytes);
      // Anything after the startup message before we asked for the password is stray.
      const rest = this.clientFrames.drain();
      if (rest.length > 0 && !this.closed) this.onClientData(rest);
      return;
    }
    if (this.phase === 'password') {
      const f = frames.shift();
      if (!f) return;
      void this.onPassword(f);
      // Clients do not pipeline past the password; if one does, keep the frames for the relay.
      if (frames.length > 0) this.pendingClientFrames.push(...frames);
      return;
    }
    if (this.phase === 'upstream') {
      this.pendingClientFrames.push(...frames);
      return;
    }
    if (this.phase === 'relay') this.relayClientFrames(frames);
  };

  private pendingClientFrames: Frame[] = [];

  private onStartup(bytes: Buffer): void {
    if (bytes.length < 8) {
      this.violation();
      return;
    }
    const code = bytes.readInt32BE(4);
    if (code === CANCEL_REQUEST_CODE) {
      this.forwardCancel(bytes);
      return;
    }
    if (code !== PROTOCOL_V3) {
      this.violation('unsupported frontend protocol');
      return;
    }
    this.startupParams = parseStartupParams(bytes);
    this.user = this.startupParams.user ?? '';
    this.applicationName = this.startupParams.application_name;
    if (!this.user) {
      this.fatalAndClose('28000', 'no PostgreSQL user name specified in startup packet');
      return;
    }
    const refused = this.core.admit(this);
    if (refused) {
      this.core.stats.admissionRefused[refused]++;
      this.core.events.emit('refused', { reason: 'admission', code: refused, user: this.user });
      this.fatalAndClose(
        refused,
        refused === '53400'
          ? 'Unable to accept connection, rate exceeded.'
          : 'Unable to accept connection, too many open connections.',
      );
      return;
    }
    this.phase = 'password';
    this.writeClient(authCleartextRequest());
  }

  private async onPassword(f: Frame): Promise<void> {
    if (f.type !== 'p') {
      this.violation('expected password response');
      return;
    }
    const password = f.bytes.toString('utf8', 5, f.bytes.length - 1);
    const result = verifyToken(password, {
      user: this.user,
      sni: this.sni,
      region: this.core.region,
      credentials: this.core.credentials,
      now: this.core.now(),
      skewSeconds: this.core.clockSkewSeconds,
    });
    const stats = this.core.stats;
    if (!result.ok) {
      stats.auth.failed++;
      bump(stats.auth.failedByReason, result.reason);
      this.core.events.emit('auth', { ok: false, user: this.user, reason: result.reason });
      this.fatalAndClose('28000', `IAM authentication failed for user "${this.user}"`);
      return;
    }
    stats.auth.ok++;
    stats.tokensAccepted++;
    this.core.distinctTokens.add(tokenFingerprint(password));
    stats.distinctTokensAccepted = this.core.distinctTokens.size;
    bump(stats.tokensBySigningDate, result.token.signingDate);
    bump(stats.tokensByUser, this.user);
    this.core.events.emit('auth', { ok: true, user: this.user, signingDate: result.token.signingDate });
    this.phase = 'upstream';
    this.role = this.core.mapUser(this.user);
    try {
      await this.core.ensureRole(this.role);
    } catch (err) {
      this.fatalAndClose(
        '28000',
        `role "${this.role}" could not be prepared upstream: ${(err as Error).message}`,
      );
      return;
    }
    if (this.closed || this.ending) return;
    this.connectUpstream();
  }

  // ---- upstream ----

  private connectUpstream(): void {
    const up = this.core.upstream;
    const params: Record<string, string> = {
      user: this.role,
      database: up.database,
      default_transaction_isolation: 'repeatable read',
    };
    for (const key of [
      'application_name',
      'client_encoding',
      'DateStyle',
      'TimeZone',
      'extra_float_digits',
    ]) {
      const v = this.startupParams[key];
      if (v !== undefined) params[key] = v;
    }
    if (this.core.occFromContention) params.lock_timeout = '100ms';
    const sock = net.connect({ host: up.host, port: up.port });
    this.upstream = sock;
    sock.setNoDelay(true);
    sock.on('error', (err) => {
      if (!this.established && !this.closed) this.fatalAndClose('08006', `upstream: ${err.message}`);
      else this.close();
    });
    sock.on('close', () => {
      if (this.closed) return;
      if (this.silent) return;
      // PostgreSQL sends its own FATAL before closing; pass the close on after pending writes.
      this.toClient.push(() => this.tls?.end());
      setTimeout(() => this.close(), 1000).unref();
    });
    sock.on('data', this.onServerData);
    sock.write(startupMessage(params));
  }

  private readonly onServerData = (chunk: Buffer): void => {
    if (this.closed || this.ending) return;
    this.lastActivity = Date.now();
    let frames: Frame[];
    try {
      frames = this.serverFrames.push(chunk);
    } catch {
      this.close();
      return;
    }
    if (this.phase === 'upstream') {
      while (frames.length > 0 && this.phase === 'upstream') this.onUpstreamStartup(frames.shift()!);
      if (this.closed || frames.length === 0) return;
    }
    this.relayServerFrames(frames);
  };

  private onUpstreamStartup(f: Frame): void {
    const up = this.core.upstream;
    if (f.type === 'R') {
      const code = f.bytes.readInt32BE(5);
      if (code === 0) {
        this.writeClient(f.bytes);
        return;
      }
      if (code === 3 && up.password !== undefined) {
        this.upstream?.write(frame('p', Buffer.from(`${up.password}\0`, 'utf8')));
        return;
      }
      if (code === 5 && up.password !== undefined) {
        const salt = f.bytes.subarray(9, 13);
        const inner = createHash('md5')
          .update(up.password + this.role)
          .digest('hex');
        const outer = createHash('md5')
          .update(Buffer.concat([Buffer.from(inner), salt]))
          .digest('hex');
        this.upstream?.write(frame('p', Buffer.from(`md5${outer}\0`, 'utf8')));
        return;
      }
      this.fatalAndClose('08006', `upstream requested unsupported authentication (code ${code})`);
      return;
    }
    if (f.type === 'K') {
      this.pid = f.bytes.readInt32BE(5);
      this.writeClient(f.bytes);
      return;
    }
    if (f.type === 'E') {
      this.writeClient(f.bytes);
      this.toClient.push(() => this.tls?.end());
      this.close(true);
      return;
    }
    if (f.type === 'Z') {
      this.txStatus = f.bytes.toString('latin1', 5, 6) as 'I' | 'T' | 'E';
      this.phase = 'relay';
      this.established = true;
      if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
      this.core.register(this);
      this.core.events.emit('session-start', { id: this.pid, user: this.user, role: this.role });
      this.writeClient(f.bytes);
      const pending = this.pendingClientFrames;
      this.pendingClientFrames = [];
      if (pending.length > 0) this.relayClientFrames(pending);
      return;
    }
    this.writeClient(f.bytes);
  }

  // ---- relay ----

  private relayClientFrames(frames: Frame[]): void {
    const out: Buffer[] = [];
    for (let f of frames) {
      if (this.injecting) {
        // An extended-protocol COMMIT turned into a conflict: statements are still prepared
        // upstream (later Binds by name must work); everything else is dropped until Sync, which
        // is followed by the ROLLBACK whose reply becomes the conflict.
        if (f.type === 'P') {
          this.notePrepared(f.bytes);
          out.push(f.bytes);
        } else if (f.type === 'S') {
          out.push(f.bytes, queryMessage('ROLLBACK'));
          this.syncsSent += 2;
          this.serverActions.push({ ...this.injecting, atZ: this.syncsSent });
          this.injecting = undefined;
          this.batchCommitSeen = false;
        }
        continue;
      }
      if (this.core.strictSql && (f.type === 'Q' || f.type === 'P')) {
        const refusal = unsupportedStatement(f.type === 'Q' ? queryText(f.bytes) : parseText(f.bytes));
        if (refusal) {
          // PostgreSQL raises the error itself, so the transaction state it reports stays true.
          this.core.stats.unsupportedRejected++;
          const sql = raiseFeatureNotSupported(refusal);
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
      if (isCommit && this.txStatus === 'T') {
        this.core.stats.commits++;
        const fault = this.core.takeCommitFault(this);
        if (fault?.kind === 'fail') {
          // DSQL reports the conflict at COMMIT and the transaction is gone: roll back upstream
          // and answer with the conflict instead of ROLLBACK's reply.
          this.core.stats.occInjected[fault.code]++;
          this.core.events.emit('fault', { kind: 'occ', code: fault.code, session: this.pid });
          const action: ServerAction = {
            fromZ: this.syncsSent,
            atZ: this.syncsSent + 1,
            kind: 'replace',
            frames: [errorResponse('ERROR', '40001', this.core.occMessages[fault.code]), readyForQuery('I')],
          };
          if (f.type === 'Q') {
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
          this.core.events.emit('fault', {
            kind: 'drop-on-commit',
            how: fault.how,
            afterCommit: fault.afterCommit,
            session: this.pid,
          });
          if (!fault.afterCommit) {
            this.flushServer(out);
            this.drop(fault.how);
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

  private relayServerFrames(frames: Frame[]): void {
    const out: Buffer[] = [];
    for (const f of frames) {
      if (f.type === 'Z') {
        this.zReceived++;
        this.txStatus = f.bytes.toString('latin1', 5, 6) as 'I' | 'T' | 'E';
      }
      const action = this.serverActions[0];
      // The window is everything after the fromZ-th ReadyForQuery up to and including the atZ-th.
      if (action && (f.type === 'Z' ? this.zReceived > action.fromZ : this.zReceived >= action.fromZ)) {
        // Inside the reply we replace or suppress.
        if (f.type === 'Z' && this.zReceived === action.atZ) {
          this.serverActions.shift();
          if (action.kind === 'replace') {
            this.txStatus = 'I';
            out.push(...action.frames);
          } else {
            this.flushClient(out);
            this.drop(action.how);
            return;
          }
        }
        continue;
      }
      if (f.type === 'E' && this.core.occFromContention) {
        const fields = parseErrorFields(f.bytes);
        if (fields.S === 'ERROR' && fields.C !== undefined && CONTENTION_CODES.has(fields.C)) {
          this.core.stats.occFromContention++;
          this.core.events.emit('fault', {
            kind: 'occ-from-contention',
            upstreamCode: fields.C,
            session: this.pid,
          });
          out.push(
            errorResponseFromFields({ S: 'ERROR', V: 'ERROR', C: '40001', M: this.core.occMessages.OC000 }),
          );
          continue;
        }
      }
      out.push(f.bytes);
    }
    this.flushClient(out);
  }

  private flushServer(out: Buffer[]): void {
    if (out.length === 0 || !this.upstream) return;
    const data = out.length === 1 ? out[0]! : Buffer.concat(out);
    const sock = this.upstream;
    this.toServer.push(() => {
      if (sock.destroyed) return;
      if (!sock.write(data) && this.tls && !this.tls.isPaused()) {
        this.tls.pause();
        sock.once('drain', () => this.tls?.resume());
      }
    });
  }

  private flushClient(out: Buffer[]): void {
    if (out.length === 0) return;
    this.writeClient(out.length === 1 ? out[0]! : Buffer.concat(out));
  }

  private writeClient(data: Buffer): void {
    const socket = this.tls;
    if (!socket || this.silent) return;
    this.toClient.push(() => {
      if (socket.destroyed || this.silent) return;
      if (!socket.write(data) && this.upstream && !this.upstream.isPaused()) {
        const up = this.upstream;
        up.pause();
        socket.once('drain', () => up.resume());
      }
    });
  }

  // ---- closing ----

  private fatalAndClose(code: string, message: string): void {
    this.markEnding();
    this.writeClient(errorResponse('FATAL', code, message));
    this.toClient.push(() => this.tls?.end());
    this.upstream?.destroy();
    // Give the FATAL time to leave before the socket is torn down for good.
    setTimeout(() => this.close(), 1000).unref();
  }

  /** Drops the connection the way a fault asks for. */
  drop(how: DropHow): void {
    if (this.closed || this.ending) return;
    this.markEnding();
    this.core.stats.dropped[how]++;
    this.core.events.emit('fault', { kind: 'drop', how, session: this.pid });
    this.endSession(`drop-${how}`);
    this.upstream?.destroy();
    switch (how) {
      case 'fin':
        this.toClient.push(() => this.tls?.end() ?? this.raw.end());
        setTimeout(() => this.close(), 1000).unref();
        break;
      case 'rst':
        this.toClient.clear();
        this.raw.resetAndDestroy();
        this.close();
        break;
      case 'fatal':
        this.fatalAndClose('57P01', 'terminating connection due to administrator command');
        break;
      case 'silent':
        // Half-open: the socket stays up and swallows everything until the endpoint stops.
        this.silent = true;
        this.toClient.clear();
        this.toServer.clear();
        this.core.unregister(this);
        break;
    }
  }

  /**
   * From here on the connection is on its way out (a FATAL or FIN may still be in flight): it no
   * longer counts as a session, is not selectable for faults and relays nothing more.
   */
  private markEnding(): void {
    this.ending = true;
    this.core.unregister(this);
  }

  /** Forwards a CancelRequest to the upstream; the key is the upstream's own, passed through. */
  private forwardCancel(bytes: Buffer): void {
    this.core.stats.cancelRequests++;
    const up = this.core.upstream;
    const sock = net.connect({ host: up.host, port: up.port }, () => sock.end(bytes));
    sock.on('error', () => sock.destroy());
    sock.setTimeout(5000, () => sock.destroy());
    // Like PostgreSQL: no reply, just close.
    if (this.tls) this.tls.end();
    else this.raw.end();
    this.close(true);
  }

  /**
   * Tears everything down. `graceful` leaves the client socket to finish writing what was queued
   * (end() was already called); otherwise it is destroyed.
   */
  close(graceful = false): void {
    if (this.closed) {
      if (!graceful) this.destroyClient();
      return;
    }
    this.closed = true;
    if (this.ageTimer) clearTimeout(this.ageTimer);
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.toServer.clear();
    this.upstream?.destroy();
    this.endSession('closed');
    this.core.unregister(this);
    if (graceful) {
      // Make sure a peer that never closes its side cannot keep the socket forever.
      setTimeout(() => this.destroyClient(), 2000).unref();
    } else {
      this.toClient.clear();
      this.destroyClient();
    }
  }

  /** Destroys the client socket now (also ends a silent connection). */
  destroyClient(): void {
    this.tls?.destroy();
    this.raw.destroy();
  }
}

/**
 * Starts a local DSQL-like endpoint in front of a PostgreSQL server: TLS only (SSLRequest or
 * direct TLS with ALPN `postgresql`, SNI required), IAM tokens verified like Aurora DSQL does,
 * DSQL's admission limits, and injectable faults. For tests and local development only.
 *
 * @example
 * const dsql = await startLocalDsql();
 * // connect pg to dsql.address:dsql.port with ssl { ca: dsql.ca, servername: dsql.host }
 * await dsql.stop();
 */
export async function startLocalDsql(options: LocalDsqlOptions = {}): Promise<LocalDsql> {
  const region = options.region ?? 'us-east-1';
  const clusterId = options.clusterId ?? randomClusterId();
  const host = `${clusterId}.dsql.${region}.on.aws`;
  const hostnames = options.hostnames ?? [`*.dsql.${region}.on.aws`, 'localhost'];
  const upstream = parseUpstream(options.upstream ?? DEFAULT_UPSTREAM);
  const credentials = options.credentials?.length ? [...options.credentials] : [randomCredentials()];
  const listenHost = options.listenHost ?? '127.0.0.1';

  const [certs] = await Promise.all([localCertificates(hostnames), ensureDatabase(upstream)]);
  const secureContext = tls.createSecureContext({ cert: certs.cert, key: certs.key });

  let clock: number | (() => number) | undefined;
  let rate = { perSecond: options.rateLimit?.perSecond ?? 100, burst: options.rateLimit?.burst ?? 1000 };
  let bucket = { tokens: rate.burst, at: Date.now() };
  let maxConnections = options.maxConnections ?? 10000;
  let commitFaults: CommitFault[] = [];
  const connections = new Set<Connection>();
  const admitted = new Set<Connection>();
  const sessions = new Map<number, Connection>();
  const ensuredRoles = new Map<string, Promise<void>>();
  const userMap = options.userMap;

  const core: EndpointCore = {
    region,
    upstream,
    credentials,
    stats: emptyStats(),
    distinctTokens: new Set(),
    events: new EventEmitter(),
    secureContext,
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
    clockSkewSeconds: options.clockSkewSeconds ?? 300,
    maxConnectionAgeMs: (options.maxConnectionAgeSeconds ?? 3600) * 1000,
    occFromContention: options.occFromContention ?? false,
    strictSql: options.strictSql ?? false,
    occMessages: {
      OC000: options.occMessages?.OC000 ?? OC000_MESSAGE,
      OC001: options.occMessages?.OC001 ?? OC001_MESSAGE,
    },
    latency: { toClient: options.latencyMs?.toClient ?? 0, toServer: options.latencyMs?.toServer ?? 0 },
    now: () => (clock === undefined ? Date.now() : typeof clock === 'number' ? clock : clock()),
    mapUser(user) {
      if (typeof userMap === 'function') return userMap(user);
      if (userMap && Object.hasOwn(userMap, user)) return userMap[user]!;
      return user === 'admin' ? upstream.user : user;
    },
    ensureRole(role) {
      if (role === upstream.user) return Promise.resolve();
      let p = ensuredRoles.get(role);
      if (!p) {
        p = createRole(upstream, role);
        p.catch(() => ensuredRoles.delete(role));
        ensuredRoles.set(role, p);
      }
      return p;
    },
    admit(conn) {
      const now = Date.now();
      bucket.tokens = Math.min(rate.burst, bucket.tokens + ((now - bucket.at) / 1000) * rate.perSecond);
      bucket.at = now;
      if (bucket.tokens < 1) return '53400';
      if (admitted.size >= maxConnections) return '53300';
      bucket.tokens -= 1;
      admitted.add(conn);
      conn.admitted = true;
      return undefined;
    },
    takeCommitFault(conn) {
      const i = commitFaults.findIndex((f) => f.session === undefined || f.session === conn.pid);
      if (i < 0) return undefined;
      const fault = commitFaults[i]!;
      if (fault.kind === 'fail' && fault.remaining > 1) {
        fault.remaining--;
        return { ...fault };
      }
      commitFaults.splice(i, 1);
      return fault;
    },
    register(conn) {
      sessions.set(conn.pid, conn);
      core.stats.currentSessions = sessions.size;
    },
    unregister(conn) {
      admitted.delete(conn);
      if (sessions.get(conn.pid) === conn) sessions.delete(conn.pid);
      core.stats.currentSessions = sessions.size;
    },
  };

  const server = net.createServer((raw) => {
    core.stats.connections.total++;
    const conn = new Connection(core, raw);
    // Kept until the socket is really gone, so stop() also reaches half-open (silent) ones.
    connections.add(conn);
    raw.once('close', () => connections.delete(conn));
  });
  server.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, listenHost, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  const address = listenHost === '0.0.0.0' || listenHost === '::' ? '127.0.0.1' : listenHost;

  /** A fault setting must be a number ≥ 0: NaN would stall every write or close every connection. */
  const check = (name: string, value: number | undefined): void => {
    if (value !== undefined && !(value >= 0)) throw new RangeError(`${name} must be a number ≥ 0`);
  };

  const liveConnections = (): Connection[] => [...connections].filter((c) => !c.closed && !c.ending);

  const faults: LocalDsqlFaults = {
    dropConnections(opts: DropConnectionsOptions = {}) {
      const which = opts.which ?? 'all';
      const how = opts.how ?? 'fin';
      const targets = liveConnections().filter((c) =>
        which === 'all' ? true : which === 'idle' ? c.idle : c.established && c.pid === which,
      );
      for (const c of targets) c.drop(how);
      return targets.length;
    },
    failNextCommits(opts = {}) {
      const count = opts.count ?? 1;
      if (count < 1) return;
      commitFaults.push({
        kind: 'fail',
        code: opts.code ?? 'OC000',
        remaining: count,
        session: opts.session,
      });
    },
    dropOnNextCommit(opts = {}) {
      commitFaults.push({
        kind: 'drop',
        how: opts.how ?? 'fin',
        afterCommit: opts.afterCommit ?? true,
        session: opts.session,
      });
    },
    setOccFromContention(on) {
      core.occFromContention = on;
    },
    setStrictSql(on) {
      core.strictSql = on;
    },
    setMaxConnectionAge(seconds) {
      check('max connection age', seconds);
      core.maxConnectionAgeMs = seconds * 1000;
      for (const c of connections) c.scheduleAge();
    },
    setRateLimit(limit) {
      check('perSecond', limit.perSecond);
      check('burst', limit.burst);
      rate = { perSecond: limit.perSecond ?? rate.perSecond, burst: limit.burst ?? rate.burst };
      bucket = { tokens: rate.burst, at: Date.now() };
    },
    setMaxConnections(max) {
      check('max connections', max);
      maxConnections = max;
    },
    setLatency(latency) {
      check('toServer', latency.toServer);
      check('toClient', latency.toClient);
      if (latency.toClient !== undefined) core.latency.toClient = latency.toClient;
      if (latency.toServer !== undefined) core.latency.toServer = latency.toServer;
    },
    clear() {
      commitFaults = [];
      core.latency.toClient = 0;
      core.latency.toServer = 0;
    },
  };

  const first = credentials[0]!;
  const env: Record<string, string> = {
    DSQL_ENDPOINT: host,
    DSQL_HOSTADDR: address,
    PGHOSTADDR: address,
    PGPORT: String(port),
    PGUSER: 'admin',
    PGDATABASE: 'postgres',
    PGSSLMODE: 'verify-full',
    PGSSLROOTCERT: certs.caFile,
    AWS_REGION: region,
    AWS_DEFAULT_REGION: region,
    AWS_ACCESS_KEY_ID: first.accessKeyId,
    AWS_SECRET_ACCESS_KEY: first.secretAccessKey,
    ...(first.sessionToken ? { AWS_SESSION_TOKEN: first.sessionToken } : {}),
    NODE_EXTRA_CA_CERTS: certs.caFile,
  };

  let stopping: Promise<void> | undefined;
  return {
    host,
    address,
    port,
    clusterId,
    ca: certs.ca,
    caFile: certs.caFile,
    region,
    credentials: first,
    env,
    events: core.events,
    faults,
    stats: () => structuredClone(core.stats),
    resetStats() {
      const current = core.stats.currentSessions;
      Object.assign(core.stats, emptyStats(), { currentSessions: current });
      core.distinctTokens.clear();
    },
    sessions: () => [...sessions.values()].filter((c) => !c.closed && !c.ending).map((c) => c.info()),
    setClock(now) {
      clock = now;
    },
    stop() {
      stopping ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const c of [...connections]) {
          c.close();
          c.destroyClient();
        }
        connections.clear();
      });
      return stopping;
    },
  };
}

async function adminQuery(upstream: Upstream, database: string, sql: string, params: unknown[] = []) {
  const client = new pg.Client({
    host: upstream.host,
    port: upstream.port,
    user: upstream.user,
    password: upstream.password,
    database,
  });
  await client.connect();
  try {
    return await client.query(sql, params);
  } finally {
    await client.end();
  }
}

const databasesReady = new Map<string, Promise<void>>();

/** Creates the upstream database if missing; concurrent creators (other test workers) are fine. */
function ensureDatabase(upstream: Upstream): Promise<void> {
  const key = `${upstream.host}:${upstream.port}/${upstream.database}`;
  let p = databasesReady.get(key);
  if (!p) {
    p = (async () => {
      const found = await adminQuery(upstream, 'postgres', 'SELECT 1 FROM pg_database WHERE datname = $1', [
        upstream.database,
      ]);
      if (found.rowCount) return;
      try {
        await adminQuery(upstream, 'postgres', `CREATE DATABASE ${quoteIdent(upstream.database)}`);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code !== '42P04' && code !== '23505') throw err;
      }
    })();
    p.catch(() => databasesReady.delete(key));
    databasesReady.set(key, p);
  }
  return p;
}

async function createRole(upstream: Upstream, role: string): Promise<void> {
  const found = await adminQuery(upstream, upstream.database, 'SELECT 1 FROM pg_roles WHERE rolname = $1', [
    role,
  ]);
  if (found.rowCount) return;
  try {
    await adminQuery(upstream, upstream.database, `CREATE ROLE ${quoteIdent(role)} LOGIN`);
  } catch (err) {
    const code = (err as { code?: string }).code;
    // Another endpoint (or test worker) created it first.
    if (code !== '42710' && code !== '23505') throw err;
  }
}
