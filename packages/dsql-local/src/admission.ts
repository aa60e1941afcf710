/**
 * Admission: who gets in, before any work is done for them. DSQL's limits on authenticated
 * connections (a new-connection token bucket and an open-connection cap, refused at the startup
 * packet with 53400 / 53300) and PostgreSQL's limits on what an unauthenticated client may make
 * the endpoint hold.
 * @packageDocumentation
 */
import type { Connection } from './connection.js';

/** Largest startup packet accepted, bytes (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`). */
export const MAX_STARTUP_PACKET_BYTES = 10_000;
/**
 * Largest message accepted before authentication completes (the password message), bytes. A
 * DSQL token with a session token is a few KB; PostgreSQL allows 65,535 for auth messages.
 */
export const MAX_PREAUTH_MESSAGE_BYTES = 65_535;

/**
 * Plaintext negotiation requests accepted before TLS: one GSSENCRequest (answered `N`) and one
 * SSLRequest, like PostgreSQL, which refuses a repeated request as an unsupported protocol.
 */
export const MAX_NEGOTIATION_REQUESTS = 2;
/** Default cap on connections accepted and not yet authenticated (DSQL's connection burst). */
export const DEFAULT_MAX_UNAUTHENTICATED = 1000;

/** The DSQL code a connection is refused with at admission. */
export type AdmissionRefusal = '53300' | '53400';

/** New-connection rate limit and open-connection cap (both changeable at run time). */
export class Admission {
  private rate: { perSecond: number; burst: number };
  private bucket: { tokens: number; at: number };
  private readonly admitted = new Set<Connection>();
  private readonly unauthenticated = new Set<Connection>();

  constructor(
    rate: { perSecond: number; burst: number },
    /** Cap on concurrently admitted connections. */
    public maxConnections: number,
    /** Cap on connections accepted and not yet authenticated (a pre-authentication limit). */
    public maxUnauthenticated: number,
  ) {
    this.rate = rate;
    this.bucket = { tokens: rate.burst, at: Date.now() };
  }

  /**
   * At TCP accept: counts `conn` as unauthenticated, or returns false when the cap is reached
   * (the connection is then refused before any work is done for it).
   */
  accept(conn: Connection): boolean {
    if (this.unauthenticated.size >= this.maxUnauthenticated) return false;
    this.unauthenticated.add(conn);
    return true;
  }

  /** Connections accepted and not yet authenticated. */
  get awaitingAuthentication(): number {
    return this.unauthenticated.size;
  }

  /** `conn` authenticated (or went away): it no longer counts as unauthenticated. */
  authenticated(conn: Connection): void {
    this.unauthenticated.delete(conn);
  }

  /** Takes a rate token and a slot for `conn`, or says why it is refused. */
  admit(conn: Connection): AdmissionRefusal | undefined {
    const now = Date.now();
    const { rate, bucket } = this;
    // A clock stepped back refills nothing (and owes nothing): time since is counted from then.
    const elapsed = Math.max(0, now - bucket.at) / 1000;
    bucket.tokens = Math.min(rate.burst, bucket.tokens + elapsed * rate.perSecond);
    bucket.at = now;
    if (bucket.tokens < 1) return '53400';
    if (this.admitted.size >= this.maxConnections) return '53300';
    bucket.tokens -= 1;
    this.admitted.add(conn);
    conn.admitted = true;
    return undefined;
  }

  /** Gives `conn`'s slots back (idempotent). */
  release(conn: Connection): void {
    this.admitted.delete(conn);
    this.unauthenticated.delete(conn);
  }

  /** Changes the token bucket and refills it to the new burst. */
  setRate(limit: { perSecond?: number; burst?: number }): void {
    this.rate = { perSecond: limit.perSecond ?? this.rate.perSecond, burst: limit.burst ?? this.rate.burst };
    this.bucket = { tokens: this.rate.burst, at: Date.now() };
  }
}

/** The text of an admission refusal, as DSQL words it. */
export function admissionMessage(code: AdmissionRefusal): string {
  return code === '53400'
    ? 'Unable to accept connection, rate exceeded.'
    : 'Unable to accept connection, too many open connections.';
}
