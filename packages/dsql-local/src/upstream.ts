/**
 * The upstream side: where sessions land (a PostgreSQL server), opening and authenticating one
 * upstream session per client (trust, cleartext, md5 or SCRAM-SHA-256), forwarding
 * CancelRequests, and the bootstrap queries (database and roles) the endpoint runs itself.
 * @packageDocumentation
 */
import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import pg from 'pg';
import type { Connection, EndpointCore } from './connection.js';
import { type Frame, FrameSplitter, frame, readCString, startupMessage } from './protocol.js';
import { dsqlParameterStatus, dsqlUpstreamParams } from './sql/dialect.js';

/** A parsed upstream URL. */
export interface UpstreamTarget {
  host: string;
  port: number;
  /** Bootstrap user (creates the database and roles); `admin` maps to it. */
  user: string;
  /** Password for every upstream role, if the server asks for one. */
  password: string | undefined;
  /** Database every session lands in. */
  database: string;
}

/** Parses `postgresql://user[:password]@host[:port]/database` (defaults: postgres@127.0.0.1:5432/dsql_local). */
export function parseUpstream(url: string): UpstreamTarget {
  const u = new URL(url);
  return {
    host: decodeURIComponent(u.hostname) || '127.0.0.1',
    port: u.port ? Number(u.port) : 5432,
    user: decodeURIComponent(u.username) || 'postgres',
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: decodeURIComponent(u.pathname.replace(/^\//, '')) || 'dsql_local',
  };
}

/** Startup parameters of the client passed on to the upstream session; others are dropped. */
const PASSED_PARAMS = ['application_name', 'client_encoding', 'DateStyle', 'TimeZone', 'extra_float_digits'];

/** An authenticated upstream session, ready for queries. */
export interface UpstreamSession {
  /** Hands upstream frames to `receiver` from now on (those after ReadyForQuery first). */
  receive(receiver: (frames: Frame[]) => void): void;
}

/**
 * Opens `conn`'s upstream session as `conn.role` and authenticates it. AuthenticationOk,
 * ParameterStatus, BackendKeyData (its pid becomes `conn.pid`) and the first ReadyForQuery are
 * relayed to the client; an upstream error is relayed and ends the connection. Resolves once
 * ReadyForQuery arrived, or `undefined` when the connection ended.
 */
export function openUpstream(
  core: EndpointCore,
  conn: Connection,
  clientParams: Record<string, string>,
): Promise<UpstreamSession | undefined> {
  const up = core.upstream;
  const params: Record<string, string> = {
    user: conn.role,
    database: up.database,
    default_transaction_isolation: 'repeatable read',
  };
  for (const key of PASSED_PARAMS) {
    const v = clientParams[key];
    if (v !== undefined) params[key] = v;
  }
  if (core.dialect === 'dsql')
    Object.assign(params, dsqlUpstreamParams(clientParams, core.limits, core.lockTimeoutMs));
  const sock = net.connect({ host: up.host, port: up.port });
  conn.upstream = sock;
  sock.setNoDelay(true);
  const frames = new FrameSplitter(true);
  const auth = new UpstreamAuth(up.password, conn.role);
  // Frames not handled yet: startup frames wait here while SCRAM's proof is computed, and
  // session frames after ReadyForQuery until the relay takes over.
  const pending: Frame[] = [];
  let relay: ((frames: Frame[]) => void) | undefined;
  let ready = false;
  let busy = false;

  return new Promise<UpstreamSession | undefined>((resolve) => {
    const session: UpstreamSession = {
      receive(next) {
        relay = next;
        const all = pending.splice(0);
        if (all.length > 0) next(all);
      },
    };
    const fail = (code: string, message: string) => {
      conn.fatalAndClose(code, message);
      resolve(undefined);
    };
    /** Handles one startup frame; a promise while an authentication step is computed. */
    const handle = (f: Frame): Promise<void> | undefined => {
      if (f.type === 'R') {
        const step = auth.step(f.bytes);
        if (step instanceof Promise)
          return step.then(apply, (err: Error) => fail('08006', `upstream: ${err.message}`));
        apply(step);
      } else if (f.type === 'K') {
        conn.pid = f.bytes.readInt32BE(5);
        conn.writeClient(f.bytes);
      } else if (f.type === 'E') {
        conn.writeClient(f.bytes);
        conn.toClient.push(() => conn.tls?.end());
        conn.close(true);
        resolve(undefined);
      } else if (f.type === 'Z') {
        ready = true;
        conn.txStatus = f.bytes.toString('latin1', 5, 6) as 'I' | 'T' | 'E';
        conn.writeClient(f.bytes);
        resolve(session);
      } else if (f.type === 'S' && core.dialect === 'dsql') {
        conn.writeClient(dsqlParameterStatus(f.bytes));
      } else {
        conn.writeClient(f.bytes);
      }
      return undefined;
    };
    const apply = (step: AuthStep) => {
      if (conn.closed || conn.ending) return;
      if (step.kind === 'ok') conn.writeClient(authOk);
      else if (step.kind === 'send') sock.write(step.frame);
      else if (step.kind === 'fail') fail('08006', step.message);
    };
    const pump = () => {
      while (!busy && !ready && pending.length > 0 && !conn.closed && !conn.ending) {
        const wait = handle(pending.shift()!);
        if (wait) {
          busy = true;
          void wait.then(() => {
            busy = false;
            pump();
          });
        }
      }
    };

    sock.on('error', (err) => {
      if (!conn.established && !conn.closed) fail('08006', `upstream: ${err.message}`);
      else conn.close();
    });
    sock.on('close', () => {
      resolve(undefined);
      if (conn.closed || conn.silent) return;
      // PostgreSQL sends its own FATAL before closing; pass the close on after pending writes.
      conn.toClient.push(() => conn.tls?.end());
      setTimeout(() => conn.close(), 1000).unref();
    });
    sock.on('data', (chunk: Buffer) => {
      if (conn.closed || conn.ending) return;
      conn.lastActivity = Date.now();
      let got: Frame[];
      try {
        got = frames.push(chunk);
      } catch {
        conn.close();
        return;
      }
      if (relay) {
        relay(got);
        return;
      }
      pending.push(...got);
      pump();
    });
    sock.write(startupMessage(params));
  });
}

/** AuthenticationOk, as relayed to the client. */
const authOk = frame('R', Buffer.alloc(4));

/**
 * One step of the upstream authentication exchange: `ok` (AuthenticationOk, relayed to the
 * client), `send` a message upstream, `wait` for the next request, or `fail`.
 */
export type AuthStep =
  | { kind: 'ok' }
  | { kind: 'send'; frame: Buffer }
  | { kind: 'wait' }
  | { kind: 'fail'; message: string };

/**
 * The client side of PostgreSQL authentication for one upstream session: trust, cleartext,
 * md5 and SCRAM-SHA-256 (RFC 5802 / 7677, without channel binding), with node:crypto.
 */
export class UpstreamAuth {
  private scram: { clientNonce: string; clientFirstBare: string; serverSignature?: Buffer } | undefined;

  constructor(
    private readonly password: string | undefined,
    private readonly role: string,
  ) {}

  /** Answers one Authentication ('R') request (SCRAM's PBKDF2 step is asynchronous). */
  step(bytes: Buffer): AuthStep | Promise<AuthStep> {
    const code = bytes.readInt32BE(5);
    if (code === 0) return { kind: 'ok' };
    if (code !== 3 && code !== 5 && code !== 10 && code !== 11 && code !== 12)
      return { kind: 'fail', message: `upstream requested unsupported authentication (code ${code})` };
    const password = this.password;
    if (password === undefined)
      return {
        kind: 'fail',
        message: `upstream asks for a password for role "${this.role}" and the upstream URL has none`,
      };
    if (code === 3) return { kind: 'send', frame: passwordMessage(password) };
    if (code === 5) {
      const salt = bytes.subarray(9, 13);
      const inner = createHash('md5')
        .update(password + this.role)
        .digest('hex');
      const outer = createHash('md5')
        .update(Buffer.concat([Buffer.from(inner), salt]))
        .digest('hex');
      return { kind: 'send', frame: passwordMessage(`md5${outer}`) };
    }
    if (code === 10) return this.scramStart(bytes);
    if (code === 11) return this.scramContinue(bytes, password);
    return this.scramFinal(bytes);
  }

  private scramStart(bytes: Buffer): AuthStep {
    const mechanisms: string[] = [];
    let offset = 9;
    while (offset < bytes.length && bytes[offset] !== 0) {
      const [name, next] = readCString(bytes, offset);
      mechanisms.push(name);
      offset = next;
    }
    if (!mechanisms.includes('SCRAM-SHA-256'))
      return {
        kind: 'fail',
        message: `upstream offers no supported SASL mechanism (${mechanisms.join(', ') || 'none'})`,
      };
    const clientNonce = randomBytes(18).toString('base64');
    // The user name comes from the startup message; SCRAM's n= stays empty, as libpq sends it.
    const clientFirstBare = `n=,r=${clientNonce}`;
    this.scram = { clientNonce, clientFirstBare };
    const data = Buffer.from(`n,,${clientFirstBare}`, 'utf8');
    const length = Buffer.alloc(4);
    length.writeInt32BE(data.length, 0);
    return {
      kind: 'send',
      frame: frame('p', Buffer.concat([Buffer.from('SCRAM-SHA-256\0', 'utf8'), length, data])),
    };
  }

  private async scramContinue(bytes: Buffer, password: string): Promise<AuthStep> {
    const scram = this.scram;
    if (!scram) return { kind: 'fail', message: 'upstream SCRAM exchange out of order' };
    const serverFirst = bytes.toString('utf8', 9);
    const attrs = scramAttributes(serverFirst);
    const iterations = Number(attrs.i);
    if (
      !attrs.r?.startsWith(scram.clientNonce) ||
      !attrs.s ||
      !Number.isInteger(iterations) ||
      iterations < 1
    )
      return { kind: 'fail', message: 'upstream sent an invalid SCRAM server-first message' };
    const salted = await saltedPassword(password, Buffer.from(attrs.s, 'base64'), iterations);
    const clientKey = hmac(salted, 'Client Key');
    const storedKey = createHash('sha256').update(clientKey).digest();
    const clientFinalBare = `c=biws,r=${attrs.r}`;
    const authMessage = `${scram.clientFirstBare},${serverFirst},${clientFinalBare}`;
    const signature = hmac(storedKey, authMessage);
    const proof = Buffer.alloc(clientKey.length);
    for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i]! ^ signature[i]!;
    scram.serverSignature = hmac(hmac(salted, 'Server Key'), authMessage);
    return {
      kind: 'send',
      frame: frame('p', Buffer.from(`${clientFinalBare},p=${proof.toString('base64')}`, 'utf8')),
    };
  }

  private scramFinal(bytes: Buffer): AuthStep {
    const expected = this.scram?.serverSignature;
    const attrs = scramAttributes(bytes.toString('utf8', 9));
    if (attrs.e) return { kind: 'fail', message: `upstream SCRAM authentication failed: ${attrs.e}` };
    const got = attrs.v ? Buffer.from(attrs.v, 'base64') : Buffer.alloc(0);
    if (!expected || got.length !== expected.length || !timingSafeEqual(got, expected))
      return { kind: 'fail', message: 'upstream SCRAM server signature does not match' };
    return { kind: 'wait' };
  }
}

function passwordMessage(password: string): Buffer {
  return frame('p', Buffer.from(`${password}\0`, 'utf8'));
}

function scramAttributes(message: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of message.split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) out[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return out;
}

function hmac(key: Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

const saltedCache = new Map<string, Promise<Buffer>>();

/** PBKDF2-HMAC-SHA-256 of the password; cached (a role's salt and iteration count do not change). */
function saltedPassword(password: string, salt: Buffer, iterations: number): Promise<Buffer> {
  const key = createHash('sha256')
    .update(`${salt.toString('base64')}:${iterations}:${password}`)
    .digest('hex');
  let p = saltedCache.get(key);
  if (!p) {
    p = new Promise<Buffer>((resolve, reject) =>
      pbkdf2(password.normalize('NFKC'), salt, iterations, 32, 'sha256', (err, out) =>
        err ? reject(err) : resolve(out),
      ),
    );
    p.catch(() => saltedCache.delete(key));
    if (saltedCache.size > 100) saltedCache.clear();
    saltedCache.set(key, p);
  }
  return p;
}

/** Forwards a CancelRequest to the upstream (the key is the upstream's own), then closes `conn` without a reply, like PostgreSQL. */
export function forwardCancel(core: EndpointCore, conn: Connection, bytes: Buffer): void {
  core.stats.cancelRequests++;
  if (bytes.length >= 16) core.cancelRequested(bytes.readInt32BE(8));
  const up = core.upstream;
  const sock = net.connect({ host: up.host, port: up.port }, () => sock.end(bytes));
  sock.on('error', () => sock.destroy());
  sock.setTimeout(5000, () => sock.destroy());
  if (conn.tls) conn.tls.end();
  else conn.raw.end();
  conn.close(true);
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/** Runs `sql` as the bootstrap user in `database` on a short-lived connection. */
export async function adminQuery(
  upstream: UpstreamTarget,
  database: string,
  sql: string,
  params: unknown[] = [],
) {
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
export function ensureDatabase(upstream: UpstreamTarget): Promise<void> {
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

/**
 * Creates login role `role` upstream if missing, with the upstream URL's password when it has
 * one (the server stores it the way its `password_encryption` says, e.g. as a SCRAM verifier).
 */
export async function createRole(upstream: UpstreamTarget, role: string): Promise<void> {
  const found = await adminQuery(upstream, upstream.database, 'SELECT 1 FROM pg_roles WHERE rolname = $1', [
    role,
  ]);
  const password = upstream.password === undefined ? '' : ` PASSWORD ${quoteLiteral(upstream.password)}`;
  // An embedded server makes a new password at each start: a role from an earlier start gets it too.
  if (found.rowCount) {
    if (password) await adminQuery(upstream, upstream.database, `ALTER ROLE ${quoteIdent(role)}${password}`);
    return;
  }
  try {
    await adminQuery(upstream, upstream.database, `CREATE ROLE ${quoteIdent(role)} LOGIN${password}`);
  } catch (err) {
    const code = (err as { code?: string }).code;
    // Another endpoint (or test worker) created it first.
    if (code !== '42710' && code !== '23505') throw err;
  }
}
