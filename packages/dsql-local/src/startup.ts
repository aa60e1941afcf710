/**
 * Startup: the client's StartupMessage (or a CancelRequest over TLS), admission, the cleartext
 * password request, and the IAM token check (verify.ts). Nothing is opened upstream before the
 * token is verified.
 * @packageDocumentation
 */
import { type AdmissionRefusal, admissionMessage, MAX_PREAUTH_MESSAGE_BYTES } from './admission.js';
import type { Connection, EndpointCore } from './connection.js';
import { authCleartextRequest, CANCEL_REQUEST_CODE, PROTOCOL_V3, parseStartupParams } from './protocol.js';
import { bump } from './stats.js';
import { forwardCancel } from './upstream.js';
import { tokenFingerprint, verifyToken } from './verify.js';

/** An authenticated client: its startup parameters (`conn.user` is set too). */
export interface Login {
  params: Record<string, string>;
}

/**
 * Reads the startup packet, admits the connection, asks for the password and verifies it as a
 * DSQL IAM token. Resolves the login, or `undefined` when the connection was refused or closed.
 */
export async function startup(core: EndpointCore, conn: Connection): Promise<Login | undefined> {
  const first = await conn.read();
  if (!first) return undefined;
  const bytes = first.bytes;
  if (bytes.length < 8) {
    conn.violation();
    return undefined;
  }
  const code = bytes.readInt32BE(4);
  if (code === CANCEL_REQUEST_CODE) {
    forwardCancel(core, conn, bytes);
    return undefined;
  }
  if (code !== PROTOCOL_V3) {
    conn.violation('unsupported frontend protocol');
    return undefined;
  }
  conn.startTypedFrames(MAX_PREAUTH_MESSAGE_BYTES);
  const params = parseStartupParams(bytes);
  conn.user = params.user ?? '';
  conn.applicationName = params.application_name;
  if (!conn.user) {
    conn.fatalAndClose('28000', 'no PostgreSQL user name specified in startup packet');
    return undefined;
  }
  const refused: AdmissionRefusal | undefined = core.admission.admit(conn);
  if (refused) {
    core.stats.admissionRefused[refused]++;
    core.events.emit('refused', { reason: 'admission', code: refused, user: conn.user });
    conn.fatalAndClose(refused, admissionMessage(refused));
    return undefined;
  }
  conn.writeClient(authCleartextRequest());
  const reply = await conn.read();
  if (!reply || conn.closed || conn.ending) return undefined;
  if (reply.type !== 'p') {
    conn.violation('expected password response');
    return undefined;
  }
  const password = reply.bytes.toString('utf8', 5, reply.bytes.length - 1);
  return checkToken(core, conn, password) ? { params } : undefined;
}

/** Verifies `password` as a DSQL token for `conn`; counts the outcome; refuses on failure. */
function checkToken(core: EndpointCore, conn: Connection, password: string): boolean {
  const result = verifyToken(password, {
    user: conn.user,
    sni: conn.sni,
    region: core.region,
    credentials: core.credentials,
    now: core.now(),
    skewSeconds: core.clockSkewSeconds,
  });
  const stats = core.stats;
  if (!result.ok) {
    stats.auth.failed++;
    bump(stats.auth.failedByReason, result.reason);
    core.events.emit('auth', { ok: false, user: conn.user, reason: result.reason });
    conn.fatalAndClose('28000', `IAM authentication failed for user "${conn.user}"`);
    return false;
  }
  stats.auth.ok++;
  stats.tokensAccepted++;
  core.distinctTokens.add(tokenFingerprint(password));
  stats.distinctTokensAccepted = core.distinctTokens.size;
  bump(stats.tokensBySigningDate, result.token.signingDate);
  bump(stats.tokensByUser, conn.user);
  core.events.emit('auth', { ok: true, user: conn.user, signingDate: result.token.signingDate });
  return true;
}
