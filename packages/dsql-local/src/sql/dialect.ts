/**
 * DSQL's dialect wired into the endpoint: the upstream preparation (parser loaded, catalog
 * installed), the upstream session settings, and the per-session policy the relay calls.
 * @packageDocumentation
 */
import type { SessionPolicy } from '../policy.js';
import {
  BYTES_SETTING,
  CATALOG_SQL,
  DATABASE_SETTING,
  DSQL_SEARCH_PATH,
  KEY_SETTING,
  ROWS_SETTING,
} from './catalog.js';
import type { DsqlLimits } from './limits.js';
import { loadParser } from './parser.js';
import { type DialectCore, DsqlSession } from './session.js';

export { dsqlParameterStatus } from './session.js';

/** `'dsql'`: DSQL's SQL rules; `'postgres'`: a plain relay to PostgreSQL. */
export type Dialect = 'dsql' | 'postgres';

/** How long a statement may wait for a row or table lock before it is a conflict. Default `10`. */
export const DEFAULT_LOCK_TIMEOUT_MS = 10;

const prepared = new Map<string, Promise<void>>();

/**
 * Loads the parser and installs the catalog in `database` once per process (idempotent SQL, so
 * concurrent endpoints and test workers are fine). `run` executes SQL as the bootstrap user.
 */
export function prepareDsql(key: string, run: (sql: string) => Promise<unknown>): Promise<void> {
  let p = prepared.get(key);
  if (!p) {
    p = Promise.all([loadParser(), installCatalog(run)]).then(() => undefined);
    p.catch(() => prepared.delete(key));
    prepared.set(key, p);
  }
  return p;
}

async function installCatalog(run: (sql: string) => Promise<unknown>): Promise<void> {
  // Concurrent installers (other processes) can collide on CREATE … IF NOT EXISTS; retry once.
  try {
    await run(`BEGIN; ${CATALOG_SQL}; COMMIT;`);
  } catch {
    await run('ROLLBACK').catch(() => {});
    await run(`BEGIN; ${CATALOG_SQL}; COMMIT;`);
  }
}

/**
 * Upstream startup parameters of a session under DSQL's rules: the bounded lock wait (a
 * lock whose holder is busy is waited on only this long, so deadlocks cannot form; an idle holder
 * is wounded at once, occ.ts), the write limits, the
 * database the client asked for (reported by `current_database()`), and UTC unless the client
 * chose a time zone.
 */
export function dsqlUpstreamParams(
  clientParams: Record<string, string>,
  limits: DsqlLimits,
  lockTimeoutMs: number,
): Record<string, string> {
  return {
    lock_timeout: `${lockTimeoutMs}ms`,
    [ROWS_SETTING]: String(limits.rowsPerTransaction),
    [BYTES_SETTING]: String(limits.bytesPerTransaction),
    [KEY_SETTING]: String(limits.keyBytes),
    [DATABASE_SETTING]: clientParams.database || clientParams.user || 'postgres',
    search_path: DSQL_SEARCH_PATH,
    TimeZone: clientParams.TimeZone ?? 'UTC',
  };
}

/** The relay policy of one session under DSQL's rules. */
export function dsqlPolicy(core: DialectCore): SessionPolicy {
  const session = new DsqlSession(core);
  return {
    onClientFrame: (f) => session.clientFrame(f),
    onServerFrame: (f) => session.serverFrame(f),
    onInjectedQuery: () => session.injectedQuery(),
    onRecount: (delta) => session.recount(delta),
    onCommit: () => session.commitRefusal(),
  };
}
