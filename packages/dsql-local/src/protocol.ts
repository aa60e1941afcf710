/**
 * Just enough of the PostgreSQL v3 wire protocol for the local endpoint: splitting a byte
 * stream into frames, building the few server messages the endpoint writes itself, and reading
 * the fields it inspects (startup parameters, query text, error fields).
 * @packageDocumentation
 */

/** Protocol version 3.0 as sent in a StartupMessage. */
export const PROTOCOL_V3 = 196608;
/** Request code of an SSLRequest (sent instead of a protocol version). */
export const SSL_REQUEST_CODE = 80877103;
/** Request code of a GSSENCRequest. */
export const GSSENC_REQUEST_CODE = 80877104;
/** Request code of a CancelRequest. */
export const CANCEL_REQUEST_CODE = 80877102;

/** One complete protocol frame: its type byte (or 0 for untyped startup frames) and all its bytes. */
export interface Frame {
  /** Message type as a character, e.g. `'Q'`; `''` for untyped (startup-phase) frames. */
  type: string;
  /** The whole frame, header included. */
  bytes: Buffer;
}

/**
 * Accumulates chunks and yields complete frames. Typed frames have a 1-byte type and a 4-byte
 * length; startup-phase frames have only the length, so the caller switches mode once the
 * startup exchange is over.
 */
export class FrameSplitter {
  // Chunks are kept apart until a whole frame is there, so a large frame arriving in many chunks
  // is copied once instead of once per chunk.
  private chunks: Buffer[] = [];
  private length = 0;
  private needed = 0;

  /**
   * @param typed - `true` for regular messages (type byte + length), `false` for startup-phase
   *   messages (length only). Default `true`.
   * @param maxFrameBytes - frames announcing a larger length are treated as a protocol violation
   *   (throws). Default 1 GiB, PostgreSQL's own limit. Can be changed between pushes (the
   *   startup packet has a far smaller limit than later messages).
   */
  constructor(
    public typed = true,
    public maxFrameBytes = 1024 * 1024 * 1024,
  ) {}

  /** Bytes received but not yet part of a complete frame. */
  get pendingBytes(): number {
    return this.length;
  }

  /** Takes whatever is buffered and not framed yet. */
  drain(): Buffer {
    const rest = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.length);
    this.chunks = [];
    this.length = 0;
    this.needed = 0;
    return rest;
  }

  /** Appends `chunk` and returns every frame now complete, in order. */
  push(chunk: Buffer): Frame[] {
    if (chunk.length > 0) this.chunks.push(chunk);
    this.length += chunk.length;
    if (this.length < this.needed) return [];
    const buf = this.drain();
    const frames: Frame[] = [];
    let offset = 0;
    const header = this.typed ? 5 : 4;
    while (buf.length - offset >= header) {
      const len = this.typed ? buf.readInt32BE(offset + 1) : buf.readInt32BE(offset);
      if (len < 4 || len > this.maxFrameBytes) throw new Error(`invalid frame length ${len}`);
      const total = this.typed ? len + 1 : len;
      if (buf.length - offset < total) {
        this.needed = total;
        break;
      }
      const bytes = buf.subarray(offset, offset + total);
      frames.push({ type: this.typed ? String.fromCharCode(bytes[0]!) : '', bytes });
      offset += total;
      // Startup-phase framing ends after the first frame; the caller decides what comes next.
      if (!this.typed) break;
    }
    if (offset < buf.length) {
      this.chunks.push(offset === 0 ? buf : buf.subarray(offset));
      this.length = buf.length - offset;
      if (this.length < header) this.needed = header;
    }
    return frames;
  }
}

/** Builds a typed frame from its type character and body. */
export function frame(type: string, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out.write(type, 0, 'latin1');
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

/** Fields of an ErrorResponse / NoticeResponse, keyed by their one-letter codes. */
export type ErrorFields = Record<string, string>;

/**
 * Builds an ErrorResponse.
 * @param severity - `'FATAL'` (the connection closes afterwards) or `'ERROR'`.
 * @param code - SQLSTATE, e.g. `'28000'`.
 * @param message - primary message.
 */
export function errorResponse(severity: 'FATAL' | 'ERROR', code: string, message: string): Buffer {
  return errorResponseFromFields({ S: severity, V: severity, C: code, M: message });
}

/** Builds an ErrorResponse from raw fields (order preserved). */
export function errorResponseFromFields(fields: ErrorFields): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(fields)) {
    parts.push(Buffer.from(k, 'latin1'), Buffer.from(v, 'utf8'), Buffer.from([0]));
  }
  parts.push(Buffer.from([0]));
  return frame('E', Buffer.concat(parts));
}

/** Reads the fields of an ErrorResponse or NoticeResponse frame. */
export function parseErrorFields(bytes: Buffer): ErrorFields {
  const fields: ErrorFields = {};
  let i = 5;
  while (i < bytes.length && bytes[i] !== 0) {
    const key = String.fromCharCode(bytes[i]!);
    const end = bytes.indexOf(0, i + 1);
    if (end < 0) break;
    fields[key] = bytes.toString('utf8', i + 1, end);
    i = end + 1;
  }
  return fields;
}

/** AuthenticationCleartextPassword. */
export function authCleartextRequest(): Buffer {
  const body = Buffer.alloc(4);
  body.writeInt32BE(3, 0);
  return frame('R', body);
}

/** ReadyForQuery with the given transaction status. */
export function readyForQuery(status: 'I' | 'T' | 'E'): Buffer {
  return frame('Z', Buffer.from(status, 'latin1'));
}

/** A simple Query message. */
export function queryMessage(sql: string): Buffer {
  return frame('Q', Buffer.concat([Buffer.from(sql, 'utf8'), Buffer.from([0])]));
}

/** A StartupMessage (protocol 3.0) with the given parameters. */
export function startupMessage(params: Record<string, string>): Buffer {
  const parts: Buffer[] = [Buffer.alloc(4)];
  parts[0]!.writeInt32BE(PROTOCOL_V3, 0);
  for (const [k, v] of Object.entries(params)) {
    parts.push(Buffer.from(k, 'utf8'), Buffer.from([0]), Buffer.from(v, 'utf8'), Buffer.from([0]));
  }
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeInt32BE(4 + body.length, 0);
  body.copy(out, 4);
  return out;
}

/** Reads the key/value pairs of a StartupMessage frame (length + version + pairs). */
export function parseStartupParams(bytes: Buffer): Record<string, string> {
  const params: Record<string, string> = {};
  let i = 8;
  while (i < bytes.length && bytes[i] !== 0) {
    const kEnd = bytes.indexOf(0, i);
    if (kEnd < 0) break;
    const vEnd = bytes.indexOf(0, kEnd + 1);
    if (vEnd < 0) break;
    params[bytes.toString('utf8', i, kEnd)] = bytes.toString('utf8', kEnd + 1, vEnd);
    i = vEnd + 1;
  }
  return params;
}

/** The zero-terminated string starting at `offset`, and the offset after its terminator. */
export function readCString(bytes: Buffer, offset: number): [string, number] {
  const end = bytes.indexOf(0, offset);
  if (end < 0) return [bytes.toString('utf8', offset), bytes.length];
  return [bytes.toString('utf8', offset, end), end + 1];
}

/** Query text of a simple Query ('Q') frame. */
export function queryText(bytes: Buffer): string {
  return readCString(bytes, 5)[0];
}

/** Prepared statement name a Bind ('B') frame refers to (after the portal name). */
export function bindStatementName(bytes: Buffer): string {
  const [, next] = readCString(bytes, 5);
  return readCString(bytes, next)[0];
}

/** Query text of a Parse ('P') frame (after the statement name). */
export function parseText(bytes: Buffer): string {
  const [, next] = readCString(bytes, 5);
  return readCString(bytes, next)[0];
}

// COMMIT, END, COMMIT WORK/TRANSACTION, with optional trailing semicolon; not COMMIT PREPARED or
// AND CHAIN, which DSQL does not support anyway.
const COMMIT_RE = /^\s*(?:commit|end)(?:\s+(?:work|transaction))?\s*;?\s*$/i;

/** True when `sql` is exactly one COMMIT (or END) statement. */
export function isCommitStatement(sql: string): boolean {
  return COMMIT_RE.test(sql);
}

/**
 * SQL that makes PostgreSQL itself raise an error with SQLSTATE `code` (five characters `[0-9A-Z]`)
 * and `message`, so the transaction state it reports afterwards stays right.
 */
export function raiseError(code: string, message: string): string {
  if (!/^[0-9A-Z]{5}$/.test(code))
    throw new RangeError(`SQLSTATE must be five characters [0-9A-Z], got ${code}`);
  return `DO $dsql_local$ BEGIN RAISE EXCEPTION USING ERRCODE = '${code}', MESSAGE = '${message.replace(/'/g, "''")}'; END $dsql_local$`;
}

/** A copy of Parse frame `bytes` with its query text replaced. */
export function replaceParseText(bytes: Buffer, sql: string): Buffer {
  const [, afterName] = readCString(bytes, 5);
  const [, afterQuery] = readCString(bytes, afterName);
  return frame(
    'P',
    Buffer.concat([
      bytes.subarray(5, afterName),
      Buffer.from(sql, 'utf8'),
      Buffer.from([0]),
      bytes.subarray(afterQuery),
    ]),
  );
}
