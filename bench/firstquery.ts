/**
 * The first query of a cold process, counted rather than inferred from timing: from creating the
 * pool to the first result row, in a fresh `node` process per sample.
 *
 *   node --import tsx bench/firstquery.ts [--samples 9] [--delay 10]
 *
 * Round trips: clients dial a TCP relay of this script's own in front of the local endpoint (`host`
 * stays the cluster name, for SNI and signing). Per connection it counts 1 for the TCP handshake
 * plus one per client flight: client bytes arriving after the relay last passed server bytes to the
 * client (the first client write is one). The child exits without closing its pool, so no Terminate
 * is counted. Floor: 5 with direct TLS (TCP, TLS 1.3, startup, password, query), 6 with SSLRequest.
 *
 * Time: each child imports its library, then measures wall and CPU time (`process.cpuUsage()`
 * delta, user + system) from pool creation to the first row: once through a relay passing bytes at
 * once, once through one delaying each direction by `--delay` ms (a timer queue per direction,
 * order kept). The kernel completes the TCP handshake at the relay, so that round trip is not
 * delayed: a real link adds 2 × delay more. Only the parent imports the endpoint, signer and relay;
 * tsx loads node:net and node:crypto in every child, and node:tls is loaded by the library import
 * on Node 20 but not on Node 22, where loading it (and its first context) falls inside the clock.
 *
 * Variants: bare pg with a token signed beforehand (the floor, direct TLS), dsql-lambda with direct
 * TLS and with SSLRequest, the official `@aws/aurora-dsql-node-postgres-connector` (pg's default,
 * SSLRequest). Samples interleave variants and relays. Prints a table and writes
 * bench/results/firstquery-<node major>.json.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import type { Server, Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const VARIANTS = [
  'pg (token signed beforehand)',
  'dsql-lambda direct',
  'dsql-lambda postgres',
  'official connector',
];
type Pool = { query(text: string): Promise<{ rows: unknown[] }> };

/** Child side: import the variant's library, then one cold first query; prints `{ wallMs, cpuMs }`. */
async function child(variant: string): Promise<void> {
  const e = JSON.parse(process.env.FIRSTQUERY_ENDPOINT as string);
  const common = { host: e.host, port: e.port, max: 1 };
  let make: () => Pool;
  if (variant === VARIANTS[0]) {
    const pg = (await import('pg')).default;
    const login = { user: 'admin', database: 'postgres', password: e.token, sslnegotiation: 'direct' };
    const config = { ...common, ...login, host: e.address, ssl: { ca: e.ca, servername: e.host } };
    make = () => new pg.Pool(config as never);
  } else if (variant.startsWith('dsql-lambda')) {
    const { createPool } = await import('../src/index.js');
    const sslNegotiation = variant.endsWith('direct') ? 'direct' : 'postgres';
    const config = { ...common, hostaddr: e.address, ssl: { ca: e.ca }, credentials: e.credentials };
    make = () => createPool({ ...config, sslNegotiation });
  } else {
    const { AuroraDSQLPool } = await import('@aws/aurora-dsql-node-postgres-connector');
    // The connector dials `host`, which does not resolve: a socket that connects to the address.
    const dial = () => {
      const socket = new (process.getBuiltinModule('node:net').Socket)();
      const connect = socket.connect.bind(socket) as (port: number, host: string) => Socket;
      return Object.assign(socket, { connect: (port: number) => connect(port, e.address) });
    };
    const ssl = { ca: e.ca, servername: e.host, rejectUnauthorized: true };
    const config = { ...common, user: 'admin', customCredentialsProvider: e.credentials, ssl, stream: dial };
    make = () => new AuroraDSQLPool(config as never) as unknown as Pool;
  }
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const { rows } = await make().query('SELECT 1 AS one');
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  if (rows.length !== 1) throw new Error(`${variant}: expected one row`);
  // Exit with the connection open: closing it would send a Terminate, a flight after the row.
  const sample = { wallMs, cpuMs: (cpu.user + cpu.system) / 1000 };
  process.stdout.write(JSON.stringify(sample), () => process.exit(0));
}

/** Writes chunks to `socket` `delayMs` after they are given, in order; `null` ends it. */
function delayedWriter(socket: Socket, delayMs: number, onWrite = () => {}) {
  const queue: { at: number; chunk: Buffer | null }[] = [];
  const put = (chunk: Buffer | null) => {
    if (chunk === null) socket.end();
    else if (!socket.destroyed) {
      socket.write(chunk);
      onWrite();
    }
  };
  const flush = () => {
    while (queue[0] && queue[0].at <= performance.now())
      put((queue.shift() as { chunk: Buffer | null }).chunk);
    if (queue[0]) setTimeout(flush, queue[0].at - performance.now());
  };
  return (chunk: Buffer | null) => {
    if (delayMs === 0) return put(chunk);
    queue.push({ at: performance.now() + delayMs, chunk });
    if (queue.length === 1) setTimeout(flush, delayMs);
  };
}

/** A TCP relay to `target`; `flights` holds, per accepted connection, its client flights so far. */
async function startRelay(target: { address: string; port: number }, delayMs: number) {
  const net = await import('node:net');
  const flights: number[] = [];
  const server: Server = net.createServer((client) => {
    const i = flights.push(0) - 1;
    let serverSpokeLast = true; // so the first client write counts one flight
    const upstream = net.connect(target.port, target.address);
    const toServer = delayedWriter(upstream, delayMs);
    const toClient = delayedWriter(client, delayMs, () => {
      serverSpokeLast = true;
    });
    client.on('data', (chunk) => {
      if (serverSpokeLast) flights[i] = (flights[i] ?? 0) + 1;
      serverSpokeLast = false;
      toServer(chunk);
    });
    upstream.on('data', toClient);
    client.on('end', () => toServer(null));
    upstream.on('end', () => toClient(null));
    for (const s of [client, upstream])
      s.on('error', () => {}).on('close', () => [client, upstream].map((x) => x.destroy()));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return { port, flights, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** One sample in a fresh process, given the endpoint (and the relay port to dial) in its env. */
async function runChild(variant: string, endpoint: object): Promise<{ wallMs: number; cpuMs: number }> {
  const { execFile } = await import('node:child_process');
  const args = ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', variant];
  const env = { ...process.env, FIRSTQUERY_ENDPOINT: JSON.stringify(endpoint) };
  const options = { cwd: root, env, timeout: 60_000 };
  const stdout = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, args, options, (err, out) => (err ? reject(err) : resolve(out))),
  );
  return JSON.parse(stdout);
}

const round = (x: number) => Math.round(x * 10) / 10;
const seen = (xs: number[]) => [...new Set(xs)].sort((a, b) => a - b);
function stats(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  const at = (i: number) => s[i] ?? NaN;
  const median = (at(Math.floor((s.length - 1) / 2)) + at(Math.ceil((s.length - 1) / 2))) / 2;
  return { median: round(median), min: round(at(0)), max: round(at(s.length - 1)) };
}

async function main(): Promise<void> {
  const opt = { type: 'string' } as const;
  const options = { samples: { ...opt, default: '9' }, delay: { ...opt, default: '10' }, child: opt };
  const { values } = parseArgs({ options });
  if (values.child) return child(values.child);
  const samples = Number(values.samples);
  const delay = Number(values.delay);
  const os = await import('node:os');
  const { startLocalDsql } = await import('../packages/dsql-local/src/index.js');
  const { signTestToken } = await import('../test/helpers/endpoint.js');
  const loadBefore = os.loadavg();
  const endpoint = await startLocalDsql();
  const relays = { local: await startRelay(endpoint, 0), delayed: await startRelay(endpoint, delay) };
  type Runs = { wallMs: number[]; cpuMs: number[]; roundTrips: number[]; connections: number[] };
  const empty = (): Runs => ({ wallMs: [], cpuMs: [], roundTrips: [], connections: [] });
  const raw = Object.fromEntries(VARIANTS.map((v) => [v, { local: empty(), delayed: empty() }]));
  try {
    const token = await signTestToken(endpoint);
    const { host, ca, credentials } = endpoint;
    for (let i = 0; i < samples; i++) {
      for (const variant of VARIANTS) {
        for (const name of ['local', 'delayed'] as const) {
          const relay = relays[name];
          const before = relay.flights.length;
          const env = { host, address: '127.0.0.1', port: relay.port, ca, credentials, token };
          const { wallMs, cpuMs } = await runChild(variant, env);
          const conns = relay.flights.slice(before);
          const runs = (raw[variant] as Record<typeof name, Runs>)[name];
          runs.wallMs.push(round(wallMs));
          runs.cpuMs.push(round(cpuMs));
          runs.roundTrips.push(conns.reduce((n, f) => n + 1 + f, 0));
          runs.connections.push(conns.length);
        }
      }
      process.stderr.write(`sample ${i + 1}/${samples}\n`);
    }
  } finally {
    await Promise.all([relays.local.close(), relays.delayed.close()]);
    await endpoint.stop();
  }
  const rows = VARIANTS.map((variant) => {
    const { local, delayed } = raw[variant] as { local: Runs; delayed: Runs };
    return {
      variant,
      roundTrips: seen([...local.roundTrips, ...delayed.roundTrips]),
      connections: seen([...local.connections, ...delayed.connections]),
      cpuMs: stats(local.cpuMs),
      wallMs: stats(local.wallMs),
      delayedWallMs: stats(delayed.wallMs),
    };
  });
  const range = (s: ReturnType<typeof stats>) => `${s.median} (${s.min}–${s.max})`;
  console.table(
    rows.map((r) => ({
      variant: r.variant,
      RTT: r.roundTrips.join(','),
      'CPU ms': range(r.cpuMs),
      'wall ms': range(r.wallMs),
      [`wall ms, ${delay} ms each way`]: range(r.delayedWallMs),
    })),
  );
  const result = {
    description: 'Cold first query: round trips counted at a TCP relay, CPU and wall ms to the first row',
    node: process.version,
    date: new Date().toISOString(),
    loadAverage: { before: loadBefore, after: os.loadavg() },
    samples,
    delayEachWayMs: delay,
    method: [
      'fresh node process per sample, the library imported before the clock; wall and CPU (process.cpuUsage user+system) from pool creation to first row (node:tls is loaded by the library import on Node 20, inside the clock on Node 22)',
      'round trips counted at a TCP relay in front of the local endpoint: 1 (TCP handshake) + client flights (client bytes after the client last received server bytes); the child exits without closing the pool',
      `wall ms through the relay with no delay and with ${delay} ms added each way (TCP handshake not delayed); CPU ms from the no-delay runs; medians, min, max; variants and relays interleaved; roundTrips and connections: every value seen`,
    ],
    rows,
    raw,
  };
  const file = join(root, `bench/results/firstquery-${process.versions.node.split('.')[0]}.json`);
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, `${JSON.stringify(result, null, 2)}\n`);
}

await main();
