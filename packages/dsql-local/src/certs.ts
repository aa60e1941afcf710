/**
 * Test certificates for the local endpoint, made with `node:crypto` alone (no `openssl` command):
 * EC P-256 keys, and X.509 v3 certificates assembled by a small DER encoder below and signed
 * ECDSA-with-SHA256. One CA per process and one server certificate per set of host names, both
 * cached so that a test run starting many endpoints pays for them once (a few milliseconds).
 * @packageDocumentation
 */
import { createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** PEM material of a generated server certificate and its CA. */
export interface LocalCertificates {
  /** CA certificate (PEM). Clients trust this one. */
  ca: string;
  /** Path of a file holding `ca` (for `sslrootcert`, `NODE_EXTRA_CA_CERTS`). */
  caFile: string;
  /** Server certificate (PEM). */
  cert: string;
  /** Server private key (PEM). */
  key: string;
}

// --- DER (X.690), just the types a certificate needs ---
const tlv = (tag: number, ...content: Buffer[]): Buffer => {
  const body = Buffer.concat(content);
  const n = body.length;
  const len = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...len]), body]);
};
const seq = (...items: Buffer[]) => tlv(0x30, ...items);
const set = (...items: Buffer[]) => tlv(0x31, ...items);
const bool = (v: boolean) => tlv(0x01, Buffer.from([v ? 0xff : 0]));
/** INTEGER from big-endian magnitude bytes (a leading 0 keeps it positive). */
const int = (b: Buffer) => tlv(0x02, b[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), b]) : b);
const bits = (b: Buffer, unused = 0) => tlv(0x03, Buffer.from([unused]), b);
const octets = (b: Buffer) => tlv(0x04, b);
const utf8 = (s: string) => tlv(0x0c, Buffer.from(s, 'utf8'));
const explicit = (n: number, inner: Buffer) => tlv(0xa0 | n, inner);
const oid = (dotted: string): Buffer => {
  const [a, b, ...rest] = dotted.split('.').map(Number);
  const out = [a! * 40 + b!];
  for (let v of rest) {
    const base128 = [v & 0x7f];
    for (v >>= 7; v > 0; v >>= 7) base128.unshift((v & 0x7f) | 0x80);
    out.push(...base128);
  }
  return tlv(0x06, Buffer.from(out));
};
/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime after. */
const time = (d: Date): Buffer => {
  const iso = d.toISOString().replace(/[-:T]|\.\d+/g, ''); // YYYYMMDDHHMMSSZ
  return d.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(iso.slice(2))) : tlv(0x18, Buffer.from(iso));
};

// --- X.509 (RFC 5280) ---
const ecdsaWithSha256 = seq(oid('1.2.840.10045.4.3.2'));
const name = (cn: string) => seq(set(seq(oid('2.5.4.3'), utf8(cn))));
const ext = (id: string, critical: boolean, value: Buffer) =>
  seq(oid(id), ...(critical ? [bool(true)] : []), octets(value));
/** keyIdentifier: SHA-1 of the subjectPublicKey bits (RFC 5280 §4.2.1.2, method 1). */
const keyId = (spki: Buffer) => createHash('sha1').update(spki.subarray(-65)).digest(); // P-256 point
const pem = (label: string, der: Buffer) =>
  `-----BEGIN ${label}-----\n${der
    .toString('base64')
    .match(/.{1,64}/g)!
    .join('\n')}\n-----END ${label}-----\n`;
const DAY = 86_400_000;

interface Issued {
  cn: string;
  /** The certificate, DER. */
  der: Buffer;
  key: KeyObject;
  /** Subject key identifier. */
  keyId: Buffer;
}

/** Makes a P-256 key pair and a v3 certificate for it, signed by `issuer` (or self-signed). */
function issue(cn: string, days: number, extensions: (keyId: Buffer) => Buffer[], issuer?: Issued): Issued {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const id = keyId(spki);
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40; // positive, and no leading zero byte (minimal DER)
  const notBefore = Date.now() - DAY / 24; // an hour back: tolerates clock skew
  const tbs = seq(
    explicit(0, int(Buffer.from([2]))), // version v3
    int(serial),
    ecdsaWithSha256,
    name(issuer?.cn ?? cn),
    seq(time(new Date(notBefore)), time(new Date(notBefore + days * DAY))),
    name(cn),
    spki,
    explicit(3, seq(...extensions(id))),
  );
  const signature = sign('sha256', tbs, (issuer ?? { key: privateKey }).key); // DER ECDSA-Sig-Value
  return { cn, der: seq(tbs, ecdsaWithSha256, bits(signature)), key: privateKey, keyId: id };
}

const basicConstraints = '2.5.29.19';
const keyUsage = '2.5.29.15';

function makeCa(): { issued: Issued; ca: string; caFile: string } {
  const issued = issue('dsql-lambda local test CA', 3650, (id) => [
    ext(basicConstraints, true, seq(bool(true))),
    ext(keyUsage, true, bits(Buffer.from([0x06]), 1)), // keyCertSign (bit 5), cRLSign (bit 6)
    ext('2.5.29.14', false, octets(id)), // subjectKeyIdentifier
  ]);
  const ca = pem('CERTIFICATE', issued.der);
  const dir = mkdtempSync(join(tmpdir(), 'dsql-local-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  const caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, ca);
  return { issued, ca, caFile };
}

let caMaterial: ReturnType<typeof makeCa> | undefined;
const serverCerts = new Map<string, Promise<LocalCertificates>>();

async function makeServerCert(hostnames: string[]): Promise<LocalCertificates> {
  caMaterial ??= makeCa(); // left unset if it throws, so a later call tries again
  const { issued: ca } = caMaterial;
  const server = issue(
    hostnames[0] ?? 'localhost',
    825,
    () => [
      ext(basicConstraints, false, seq()), // CA:FALSE
      ext(keyUsage, true, bits(Buffer.from([0x80]), 7)), // digitalSignature (bit 0)
      ext('2.5.29.37', false, seq(oid('1.3.6.1.5.5.7.3.1'))), // extendedKeyUsage serverAuth
      ext(
        '2.5.29.17', // subjectAltName: dNSName [2], iPAddress [7]
        false,
        seq(
          ...hostnames.map((h) => tlv(0x82, Buffer.from(h, 'ascii'))),
          tlv(0x87, Buffer.from([127, 0, 0, 1])),
        ),
      ),
      ext('2.5.29.35', false, seq(tlv(0x80, ca.keyId))), // authorityKeyIdentifier [0] keyIdentifier
    ],
    ca,
  );
  return {
    ca: caMaterial.ca,
    caFile: caMaterial.caFile,
    cert: pem('CERTIFICATE', server.der),
    key: server.key.export({ type: 'pkcs8', format: 'pem' }) as string,
  };
}

/**
 * Returns a server certificate whose subjectAltName lists `hostnames` (plus `IP:127.0.0.1`),
 * signed by this process's local CA. Results are cached per distinct host-name set; a failed
 * generation is not cached.
 * @param hostnames - DNS names for the certificate; wildcards like `*.dsql.us-east-1.on.aws` work.
 */
export function localCertificates(hostnames: string[]): Promise<LocalCertificates> {
  const cacheKey = [...new Set(hostnames)].sort().join(',');
  let p = serverCerts.get(cacheKey);
  if (!p) {
    p = makeServerCert([...new Set(hostnames)]);
    p.catch(() => serverCerts.delete(cacheKey));
    serverCerts.set(cacheKey, p);
  }
  return p;
}
