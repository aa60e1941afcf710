/**
 * One client connection as every stage sees it: its sockets, what is known about the client so
 * far, the ordered (optionally delayed) writes in each direction, and how it ends. The stages
 * (negotiate → startup → upstream → relay) take it in turn; none of them owns it, and it knows
 * nothing about what they do.
 * @packageDocumentation
 */
import type { EventEmitter } from 'node:events';
import type net from 'node:net';
import type tls from 'node:tls';
import type { Admission } from './admission.js';
import type { CommitFaults } from './faults.js';
import type { OccArbiter, OccSession } from './occ.js';
import type { SessionPolicy } from './policy.js';
import { errorResponse, type Frame, FrameSplitter } from './protocol.js';
import type { Dialect } from './sql/dialect.js';
import type { DsqlLimits } from './sql/limits.js';
import { bump } from './stats.js';
import type { LocalDsqlStats, LocalSessionInfo, Negotiation, OccCode } from './types.js';
import type { UpstreamTarget } from './upstream.js';
import type { LocalCredentials } from './verify.js';

/** What the stages need from the endpoint: its settings, counters and shared state. */
export interface EndpointCore {
  region: string;
  upstream: UpstreamTarget;
  credentials: LocalCredentials[];
  stats: LocalDsqlStats;
  distinctTokens: Set<string>;
  events: EventEmitter;
  secureContext: tls.SecureContext;
  handshakeTimeoutMs: number;
  clockSkewSeconds: number;
  maxConnectionAgeMs: number;
  /** `'dsql'`: DSQL's SQL rules (sql/); `'postgres'`: plain relay. */
  dialect: Dialect;
  limits: DsqlLimits;
  lockTimeoutMs: number;
  occMessages: Record<OccCode, string>;
  latency: { toClient: number; toServer: number };
  admission: Admission;
  commitFaults: CommitFaults;
  /** Under `'dsql'`: wounds idle lock holders so that nobody waits (occ.ts). */
  arbiter: OccArbiter | undefined;
  /** The SQL policy of a new session (see policy.ts). */
  sessionPolicy(conn: Connection): SessionPolicy;
  /** The clock for token validity (`setClock`). */
  now(): number;
  mapUser(user: string): string;
  ensureRole(role: string): Promise<void>;
  /** A session is established: selectable by faults, listed by `sessions()`. */
  register(conn: Connection): void;
  /** A client sent a CancelRequest for the session with upstream backend `pid`. */
  cancelRequested(pid: number): void;
  /** The connection no longer counts as a session or as admitted. */
  unregister(conn: Connection): void;
}

/**
 * Delays writes by a per-direction amount while keeping their order; with no delay and nothing
 * queued it writes straight through.
 */
export class DelayedWriter {
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

/** The established session's view the relay keeps up to date (see relay.ts). */
export interface SessionState extends OccSession {
  /** Authenticated, outside a transaction, nothing in flight. */
  readonly idle: boolean;
}

/** One client connection and, once authenticated, its upstream socket. */
export class Connection {
  readonly acceptedAt = Date.now();
  lastActivity = Date.now();
  negotiation: Negotiation | undefined;
  sni: string | undefined;
  user = '';
  role = '';
  applicationName: string | undefined;
  /** Session id: the upstream backend pid, once known. */
  pid = 0;
  /** CancelRequests clients sent for this session (through the endpoint). */
  cancelsRequested = 0;
  txStatus: 'I' | 'T' | 'E' = 'I';
  /** Authenticated and the upstream session is ready. */
  established = false;
  /** Counted against the open-connection cap. */
  admitted = false;
  closed = false;
  /** On its way out: a FATAL or FIN may still be in flight; it relays nothing more. */
  ending = false;
  /** Dropped `silent` (half-open): swallows traffic both ways until the endpoint stops. */
  silent = false;
  /** The TLS socket once negotiated. */
  tls: tls.TLSSocket | undefined;
  upstream: net.Socket | undefined;
  /** Set by the relay once the session is established. */
  session: SessionState | undefined;
  /** Client frames: untyped (length only) until the startup packet is read, typed after. */
  readonly clientFrames: FrameSplitter;
  readonly toClient: DelayedWriter;
  readonly toServer: DelayedWriter;

  private receiver: ((frames: Frame[]) => void) | undefined;
  private waiting: ((frame: Frame | undefined) => void) | undefined;
  private queued: Frame[] = [];
  private ageTimer: NodeJS.Timeout | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private sessionEnded = false;

  constructor(
    private readonly core: EndpointCore,
    readonly raw: net.Socket,
    maxStartupBytes: number,
  ) {
    this.clientFrames = new FrameSplitter(false, maxStartupBytes);
    this.toClient = new DelayedWriter(() => core.latency.toClient);
    this.toServer = new DelayedWriter(() => core.latency.toServer);
    raw.setNoDelay(true);
    raw.on('error', () => this.close());
    raw.on('close', () => this.close());
    this.handshakeTimer = setTimeout(() => {
      if (this.established || this.closed) return;
      bump(core.stats.preAuthRefused, 'handshake-timeout');
      this.close();
    }, core.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    this.scheduleAge();
  }

  // ---- client frames over TLS: read one at a time by the handshake, pushed to the relay ----

  /** Starts reading client frames from the TLS socket (once negotiation is done). */
  readFrom(socket: tls.TLSSocket): void {
    this.tls = socket;
    socket.on('data', (chunk: Buffer) => {
      if (this.closed || this.ending) return;
      this.lastActivity = Date.now();
      this.parse(chunk);
    });
  }

  /**
   * The next client frame, for the stages before the relay; `undefined` once the connection
   * closes. Frames that arrive while nobody reads are queued and the socket is paused, so a
   * client cannot make an unauthenticated connection hold more than one chunk.
   */
  read(): Promise<Frame | undefined> {
    if (this.closed) return Promise.resolve(undefined);
    const queued = this.queued.shift();
    if (queued) return Promise.resolve(queued);
    this.tls?.resume();
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }

  /** From now on every client frame goes to `receiver` (the relay), starting with queued ones. */
  receive(receiver: (frames: Frame[]) => void): void {
    this.receiver = receiver;
    const queued = this.queued;
    this.queued = [];
    if (queued.length > 0) receiver(queued);
    if (!this.closed) this.tls?.resume();
  }

  /** Switches client framing to typed messages (after the startup packet) with a frame size limit. */
  startTypedFrames(maxFrameBytes: number): void {
    this.clientFrames.typed = true;
    this.clientFrames.maxFrameBytes = maxFrameBytes;
    this.parse(Buffer.alloc(0));
  }

  private parse(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.clientFrames.push(chunk);
    } catch {
      this.violation();
      return;
    }
    if (frames.length === 0) return;
    if (this.receiver) {
      this.receiver(frames);
      return;
    }
    this.queued.push(...frames);
    const waiting = this.waiting;
    this.waiting = undefined;
    if (waiting) waiting(this.queued.shift());
    if (!this.waiting && this.queued.length > 0) this.tls?.pause();
  }

  // ---- what is known about it ----

  /** Idle = authenticated, outside a transaction, nothing in flight. */
  get idle(): boolean {
    return this.established && (this.session?.idle ?? false);
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

  /** The session is ready: no more handshake deadline; counted as a session. */
  establish(): void {
    this.established = true;
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.core.admission.authenticated(this);
    this.core.register(this);
    this.core.events.emit('session-start', { id: this.pid, user: this.user, role: this.role });
  }

  /** Emits `session-end` once, if the session was established. */
  endSession(reason: string): void {
    if (!this.established || this.sessionEnded) return;
    this.sessionEnded = true;
    this.core.events.emit('session-end', { id: this.pid, user: this.user, reason });
  }

  // ---- maximum age ----

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

  // ---- writing ----

  /** Writes to the client after the configured latency, in order; pauses upstream on back-pressure. */
  writeClient(data: Buffer): void {
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

  /** Writes to the upstream after the configured latency, in order; pauses the client on back-pressure. */
  writeServer(data: Buffer): void {
    const sock = this.upstream;
    if (!sock) return;
    this.toServer.push(() => {
      if (sock.destroyed) return;
      if (!sock.write(data) && this.tls && !this.tls.isPaused()) {
        this.tls.pause();
        sock.once('drain', () => this.tls?.resume());
      }
    });
  }

  // ---- ending ----

  /** A protocol violation: FATAL 08P01 (over TLS if negotiated, else plaintext), then close. */
  violation(message = 'invalid startup packet'): void {
    this.core.stats.protocolViolations++;
    this.core.events.emit('refused', { reason: 'protocol-violation', message });
    const out = errorResponse('FATAL', '08P01', message);
    if (this.tls) this.tls.end(out);
    else this.raw.end(out);
    this.close(true);
  }

  /** Sends a FATAL error to the client (after pending writes), then closes. */
  fatalAndClose(code: string, message: string): void {
    this.markEnding();
    this.writeClient(errorResponse('FATAL', code, message));
    this.toClient.push(() => this.tls?.end());
    this.upstream?.destroy();
    // Give the FATAL time to leave before the socket is torn down for good.
    setTimeout(() => this.close(), 1000).unref();
  }

  /**
   * From here on the connection is on its way out (a FATAL or FIN may still be in flight): it no
   * longer counts as a session, is not selectable for faults and relays nothing more.
   */
  markEnding(): void {
    this.ending = true;
    this.core.unregister(this);
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
    this.receiver = undefined;
    this.queued = [];
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.(undefined);
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
