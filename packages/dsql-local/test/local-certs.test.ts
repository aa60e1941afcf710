import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { type LocalCertificates, localCertificates } from '../src/certs.js';

// The endpoint's certificates are made with node:crypto alone; checked here by node's own X.509
// parser and by real TLS handshakes.
const wildcard = '*.dsql.us-east-1.on.aws';
const certs = await localCertificates([wildcard, 'localhost']);

const server = tls.createServer({ cert: certs.cert, key: certs.key }, (s) => s.end());
server.on('tlsClientError', () => {}); // clients that reject the certificate abort the handshake
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address() as AddressInfo;
afterAll(() => new Promise((resolve) => server.close(resolve)));

/** Connects with `ca` trusted and `servername` sent; resolves `'ok'` or the error's code. */
function handshake(ca: string, servername: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername }, () => {
      socket.end();
      resolve('ok');
    });
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

describe('localCertificates', () => {
  it('makes a CA and a server certificate it issued, with the extensions a TLS client checks', () => {
    const ca = new X509Certificate(certs.ca);
    const cert = new X509Certificate(certs.cert);
    expect(ca.subject).toBe('CN=dsql-lambda local test CA');
    expect(ca.ca).toBe(true);
    expect(ca.verify(ca.publicKey)).toBe(true);
    expect(cert.ca).toBe(false);
    expect(cert.subject).toBe(`CN=${wildcard}`);
    expect(cert.checkIssued(ca)).toBe(true);
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.subjectAltName).toBe(`DNS:${wildcard}, DNS:localhost, IP Address:127.0.0.1`);
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']); // extendedKeyUsage serverAuth
    expect(cert.checkHost('abc.dsql.us-east-1.on.aws')).toBe(wildcard);
    expect(cert.checkHost('a.b.dsql.us-east-1.on.aws')).toBeUndefined();
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(Number.parseInt(cert.serialNumber[0]!, 16)).toBeLessThan(8); // positive
    expect(Date.parse(cert.validFrom)).toBeLessThan(Date.now());
    expect(readFileSync(certs.caFile, 'utf8')).toBe(certs.ca);
  });

  it('caches per distinct host-name set and keeps one CA per process', async () => {
    expect(await localCertificates(['localhost', wildcard, wildcard])).toBe(certs);
    const other = await localCertificates(['other.test']);
    expect(other.cert).not.toBe(certs.cert);
    expect(other.ca).toBe(certs.ca);
    expect(new X509Certificate(other.cert).checkIssued(new X509Certificate(certs.ca))).toBe(true);
  });

  it('passes a real TLS handshake for a name the wildcard covers', async () => {
    expect(await handshake(certs.ca, 'k3x9a.dsql.us-east-1.on.aws')).toBe('ok');
  });

  it('fails the handshake for a name not in the subjectAltName', async () => {
    expect(await handshake(certs.ca, 'k3x9a.dsql.eu-west-1.on.aws')).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
  });

  it('fails the handshake for a client trusting another CA', async () => {
    vi.resetModules(); // a second module instance: a second, unrelated CA
    const fresh = (await import('../src/certs.js')) as typeof import('../src/certs.js');
    const foreign = await fresh.localCertificates([wildcard]);
    expect(foreign.ca).not.toBe(certs.ca);
    expect(new X509Certificate(certs.cert).verify(new X509Certificate(foreign.ca).publicKey)).toBe(false);
    expect(await handshake(foreign.ca, 'k3x9a.dsql.us-east-1.on.aws')).toBe(
      'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    );
  });

  it('needs no external command: works with an empty PATH, and removes the CA file at exit', async () => {
    const url = new URL('../src/certs.ts', import.meta.url).href;
    const script = `import(${JSON.stringify(url)}).then((m) => m.localCertificates(['*.dsql.eu-west-1.on.aws']))
      .then((c) => process.stdout.write(JSON.stringify(c)))`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '-e', script], {
      env: { PATH: '' },
    });
    const child = JSON.parse(stdout) as LocalCertificates;
    const cert = new X509Certificate(child.cert);
    expect(cert.checkIssued(new X509Certificate(child.ca))).toBe(true);
    expect(cert.checkHost('abc.dsql.eu-west-1.on.aws')).toBe('*.dsql.eu-west-1.on.aws');
    expect(child.key).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(existsSync(child.caFile)).toBe(false);
  });
});
