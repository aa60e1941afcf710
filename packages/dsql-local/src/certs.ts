/**
 * Test certificates for the local endpoint, made with the `openssl` CLI: one CA per process and
 * one server certificate per set of host names, both cached so that a test run starting many
 * endpoints pays for key generation once (EC P-256 keys take milliseconds anyway).
 * @packageDocumentation
 */
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

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

interface CaMaterial {
  dir: string;
  caFile: string;
  caKeyFile: string;
  ca: string;
}

let caPromise: Promise<CaMaterial> | undefined;
const serverCerts = new Map<string, Promise<LocalCertificates>>();
let serial = 0;

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await run('openssl', args, { cwd });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new Error(
        'the local endpoint makes its TLS certificates with the `openssl` command, which is not on PATH: ' +
          'install OpenSSL (e.g. apt install openssl, brew install openssl) or add it to PATH',
      );
    throw err;
  }
}

async function makeCa(): Promise<CaMaterial> {
  const dir = await mkdtemp(join(tmpdir(), 'dsql-local-'));
  // The directory holds private keys of a throwaway CA: remove it when the process ends.
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key'], dir);
  await openssl(
    [
      'req',
      '-x509',
      '-new',
      '-key',
      'ca.key',
      '-sha256',
      '-days',
      '3650',
      '-subj',
      '/CN=dsql-lambda local test CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
      '-out',
      'ca.pem',
    ],
    dir,
  );
  const caFile = join(dir, 'ca.pem');
  return { dir, caFile, caKeyFile: join(dir, 'ca.key'), ca: await readFile(caFile, 'utf8') };
}

async function makeServerCert(hostnames: string[]): Promise<LocalCertificates> {
  if (!caPromise) {
    caPromise = makeCa();
    // A failed generation (e.g. no openssl on PATH) must not poison later attempts.
    caPromise.catch(() => {
      caPromise = undefined;
    });
  }
  const ca = await caPromise;
  const n = ++serial;
  const key = `server-${n}.key`;
  const csr = `server-${n}.csr`;
  const crt = `server-${n}.pem`;
  const ext = `server-${n}.ext`;
  const san = [...hostnames.map((h) => `DNS:${h}`), 'IP:127.0.0.1'].join(',');
  await writeFile(
    join(ca.dir, ext),
    `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`,
  );
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key], ca.dir);
  await openssl(
    ['req', '-new', '-key', key, '-subj', `/CN=${hostnames[0] ?? 'localhost'}`, '-out', csr],
    ca.dir,
  );
  await openssl(
    [
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-set_serial',
      String(Date.now() * 1000 + n),
      '-days',
      '825',
      '-sha256',
      '-extfile',
      ext,
      '-out',
      crt,
    ],
    ca.dir,
  );
  return {
    ca: ca.ca,
    caFile: ca.caFile,
    cert: await readFile(join(ca.dir, crt), 'utf8'),
    key: await readFile(join(ca.dir, key), 'utf8'),
  };
}

/**
 * Returns a server certificate whose subjectAltName lists `hostnames` (plus `IP:127.0.0.1`),
 * signed by this process's local CA. Results are cached per distinct host-name set.
 * @param hostnames - DNS names for the certificate; wildcards like `*.dsql.us-east-1.on.aws` work.
 */
export function localCertificates(hostnames: string[]): Promise<LocalCertificates> {
  const cacheKey = [...new Set(hostnames)].sort().join(',');
  let p = serverCerts.get(cacheKey);
  if (!p) {
    p = makeServerCert([...new Set(hostnames)]);
    // A failed generation (e.g. no openssl) must not poison later attempts.
    p.catch(() => serverCerts.delete(cacheKey));
    serverCerts.set(cacheKey, p);
  }
  return p;
}
