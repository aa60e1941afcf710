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

/** The DSQL code a connection is refused with at admission. */
export type AdmissionRefusal = '53300' | '53400';

/** New-connection rate limit and open-connection cap (both changeable at run time). */
export class Admission {
  private rate: { perSecond: number; burst: number };
  private bucket: { tokens: number; at: number };
  private readonly admitted = new Set<Connection>();

  constructor(
    rate: { perSecond: number; burst: number },
    /** Cap on concurrently admitted connections. */
    public maxConnections: number,
  ) {
    this.rate = rate;
    this.bucket = { tokens: rate.burst, at: Date.now() };
  }

  /** Takes a rate token and a slot for `conn`, or says why it is refused. */
  admit(conn: Connection): AdmissionRefusal | undefined {
    const now = Date.now();
    const { rate, bucket } = this;
    bucket.tokens = Math.min(rate.burst, bucket.tokens + ((now - bucket.at) / 1000) * rate.perSecond);
    bucket.at = now;
    if (bucket.tokens < 1) return '53400';
    if (this.admitted.size >= this.maxConnections) return '53300';
    bucket.tokens -= 1;
    this.admitted.add(conn);
    conn.admitted = true;
    return undefined;
  }

  /** Gives `conn`'s slot back (idempotent). */
  release(conn: Connection): void {
    this.admitted.delete(conn);
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
