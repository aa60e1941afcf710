/**
 * Negotiation: from TCP accept to an established TLS session with ALPN and SNI checked. Either
 * an SSLRequest (answered `S`, then TLS on the same socket) or direct TLS (first byte 0x16, ALPN
 * `postgresql` required); GSSENCRequests are answered `N`; a plaintext StartupMessage is refused
 * (DSQL is TLS only); a plaintext CancelRequest is forwarded.
 * @packageDocumentation
 */
import tls from 'node:tls';
import { MAX_NEGOTIATION_REQUESTS } from './admission.js';
import type { Connection, EndpointCore } from './connection.js';
import {
  CANCEL_REQUEST_CODE,
  errorResponse,
  type Frame,
  GSSENC_REQUEST_CODE,
  PROTOCOL_V3,
  parseStartupParams,
  SSL_REQUEST_CODE,
} from './protocol.js';
import { bump } from './stats.js';
import type { Negotiation } from './types.js';
import { forwardCancel } from './upstream.js';

const TLS_HANDSHAKE_RECORD = 0x16;

/**
 * Runs the plaintext negotiation on `conn.raw`, then the TLS handshake. Resolves `true` once the
 * client is on TLS with an acceptable ALPN and an SNI name (`conn.tls`, `conn.sni` and
 * `conn.negotiation` set, client frames readable with `conn.read()`), `false` when the
 * connection was refused or closed.
 */
export function negotiate(core: EndpointCore, conn: Connection): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const raw = conn.raw;
    const done = (ok: boolean) => {
      raw.removeListener('data', onData);
      raw.removeListener('close', onClose);
      resolve(ok);
    };
    const onClose = () => done(false);
    const seen = new Set<number>();
    const onData = (chunk: Buffer): void => {
      // One chunk may hold many requests (each answered in order): a loop, never recursion.
      let next: Buffer = chunk;
      for (;;) {
        if (conn.clientFrames.pendingBytes === 0 && next[0] === TLS_HANDSHAKE_RECORD) {
          // TLS ClientHello first: direct negotiation. Give the bytes back and let TLS read them.
          raw.removeListener('data', onData);
          raw.pause();
          raw.unshift(next);
          startTls(core, conn, 'direct').then(done);
          return;
        }
        let frames: Frame[];
        try {
          frames = conn.clientFrames.push(next);
        } catch {
          conn.violation();
          done(false);
          return;
        }
        const f = frames[0];
        if (!f) return;
        const outcome = onRequest(core, conn, f.bytes, seen);
        if (outcome === 'continue') {
          next = conn.clientFrames.drain();
          if (next.length === 0) return;
          continue;
        }
        if (outcome === 'tls') {
          raw.removeListener('data', onData);
          startTls(core, conn, 'postgres').then(done);
        } else done(false);
        return;
      }
    };
    raw.on('data', onData);
    raw.on('close', onClose);
  });
}

/** Handles one plaintext request; says whether to read the next, start TLS, or stop. */
function onRequest(
  core: EndpointCore,
  conn: Connection,
  bytes: Buffer,
  seen: Set<number>,
): 'continue' | 'tls' | 'closed' {
  if (bytes.length < 8) {
    conn.violation();
    return 'closed';
  }
  const code = bytes.readInt32BE(4);
  if (code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE) {
    if (seen.has(code) || seen.size >= MAX_NEGOTIATION_REQUESTS) {
      // PostgreSQL's answer to a repeated request (libpq never sends one).
      bump(core.stats.preAuthRefused, 'negotiation-requests');
      core.events.emit('refused', { reason: 'negotiation-requests' });
      const version = `${code >>> 16}.${code & 0xffff}`;
      conn.raw.end(
        errorResponse(
          'FATAL',
          '0A000',
          `unsupported frontend protocol ${version}: server supports 3.0 to 3.0`,
        ),
      );
      conn.close(true);
      return 'closed';
    }
    seen.add(code);
  }
  if (code === SSL_REQUEST_CODE) {
    if (conn.clientFrames.pendingBytes > 0) {
      // Bytes pipelined after SSLRequest would be read as if they came over TLS (CVE-2021-23214).
      core.stats.protocolViolations++;
      conn.raw.end(errorResponse('FATAL', '08P01', 'received unencrypted data after SSL request'));
      conn.close(true);
      return 'closed';
    }
    conn.raw.write('S');
    return 'tls';
  }
  if (code === GSSENC_REQUEST_CODE) {
    conn.raw.write('N');
    return 'continue';
  }
  if (code === CANCEL_REQUEST_CODE) {
    forwardCancel(core, conn, bytes);
    return 'closed';
  }
  if (code === PROTOCOL_V3) {
    const params = parseStartupParams(bytes);
    core.stats.plaintextRefused++;
    core.events.emit('refused', { reason: 'plaintext', user: params.user });
    conn.raw.end(errorResponse('FATAL', '28000', 'unable to accept connection, SSL/TLS is required'));
    conn.close(true);
    return 'closed';
  }
  conn.violation();
  return 'closed';
}

/** TLS on the raw socket; checks ALPN (direct negotiation) and SNI once the handshake is done. */
function startTls(core: EndpointCore, conn: Connection, negotiation: Negotiation): Promise<boolean> {
  conn.negotiation = negotiation;
  const socket = new tls.TLSSocket(conn.raw, {
    isServer: true,
    secureContext: core.secureContext,
    ALPNProtocols: ['postgresql'],
  });
  conn.readFrom(socket);
  socket.pause();
  socket.on('error', () => conn.close());
  socket.on('close', () => conn.close());
  return new Promise<boolean>((resolve) => {
    socket.once('close', () => resolve(false));
    socket.once('secure', () => {
      const alpn = typeof socket.alpnProtocol === 'string' ? socket.alpnProtocol : 'none';
      const sni = (socket as tls.TLSSocket & { servername?: string | false }).servername || undefined;
      conn.sni = sni;
      const stats = core.stats.connections;
      stats.byNegotiation[negotiation]++;
      bump(stats.byAlpn, alpn);
      bump(stats.bySni, sni ?? 'none');
      core.events.emit('connection', { negotiation, alpn, sni });
      if (negotiation === 'direct' && alpn !== 'postgresql') {
        conn.violation('received direct SSL connection request without ALPN protocol negotiation extension');
        resolve(false);
        return;
      }
      if (!sni) {
        core.stats.auth.failed++;
        bump(core.stats.auth.failedByReason, 'no-sni');
        core.events.emit('auth', { ok: false, reason: 'no-sni' });
        conn.fatalAndClose('08P01', 'unable to accept connection, sni was not received');
        resolve(false);
        return;
      }
      resolve(true);
    });
  });
}
