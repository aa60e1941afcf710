/**
 * DSQL's SQL surface for one session: the relay hands every client frame and every upstream frame
 * to {@link DsqlSession}, which parses Query and Parse frames (other frames are not parsed),
 * answers what DSQL refuses with DSQL's SQLSTATE and text, rewrites `CREATE INDEX [ASYNC]`,
 * applies the transaction rules, reports lock and serialization conflicts as DSQL's OCC errors,
 * and decides whether a COMMIT fails (schema changed underneath: OC001; transaction too old).
 *
 * Refusals are executed by PostgreSQL itself (`SELECT dsql_local.refuse(…)` in place of the
 * statement), so the transaction state PostgreSQL reports afterwards stays true.
 * @packageDocumentation
 */

import type { OccStats } from '../occ.js';
import {
  bindStatementName,
  errorResponseFromFields,
  type Frame,
  frame,
  parseErrorFields,
  parseText,
  queryMessage,
  queryText,
  readCString,
  replaceParseText,
} from '../protocol.js';
import type { OccCode } from '../types.js';
import {
  COMPAT_SCHEMA,
  DSQL_SERVER_VERSION,
  DSQL_SERVER_VERSION_NUM,
  INTERNAL_SCHEMA,
  ident,
  literal,
  newJobId,
} from './catalog.js';
import { type Refusal, refusals } from './errors.js';
import type { DsqlLimits } from './limits.js';
import { type ParsedStatement, parseSql } from './parser.js';
import { type StatementKind, statementKind, statementRefusal } from './rules.js';
import { TransactionRules } from './transaction.js';

/** Counters of the SQL layer (part of the endpoint's stats). */
export interface DialectStats {
  /** Statements refused, by SQLSTATE. */
  refusedByCode: Record<string, number>;
  /** Upstream conflicts (lock timeout 55P03, serialization failure 40001, deadlock 40P01) reported as OC000, by upstream code. */
  conflictsByUpstreamCode: Record<string, number>;
  /** COMMITs failed with OC001 because a table the transaction used changed schema. */
  schemaConflicts: number;
  /** `CREATE INDEX ASYNC` jobs created. */
  asyncIndexJobs: number;
  /** Commit-time optimistic concurrency: wounds, conflicts at COMMIT, lock waits (occ.ts). */
  occ: OccStats;
}

/** Schema versions per table, shared by every session of an endpoint (for OC001). */
export class SchemaVersions {
  private seq = 0;
  private readonly byTable = new Map<string, number>();

  /** Current version (increases with every committed DDL). */
  get current(): number {
    return this.seq;
  }

  /** Records committed DDL on `tables`. */
  bump(tables: Iterable<string>): void {
    this.seq++;
    for (const t of tables) this.byTable.set(t, this.seq);
  }

  /** True when one of `tables` changed after version `since`. */
  changedSince(tables: Iterable<string>, since: number): boolean {
    for (const t of tables) if ((this.byTable.get(t) ?? 0) > since) return true;
    return false;
  }
}

/** What a session needs from its endpoint. */
export interface DialectCore {
  limits: DsqlLimits;
  occMessages: Record<OccCode, string>;
  schema: SchemaVersions;
  stats: DialectStats;
  /** Counts one refusal (the endpoint's `unsupportedRejected`). */
  refused(refusal: Refusal): void;
  /** Counts one conflict reported as OC000 (the endpoint's `occFromContention`). */
  conflict(upstreamCode: string): void;
}

/** How the reply to one executed statement is adjusted. */
interface Hook {
  kind: StatementKind;
  /** Replace the CommandComplete tag with this one. */
  tag?: string;
  /** Tables whose schema this statement changes. */
  ddlTables?: string[];
}

interface Entry {
  batch: number;
  hook: Hook;
}

const CONFLICT_CODES = new Set(['40001', '55P03', '40P01']);

type Node = Record<string, unknown>;

/** Lower-case names of the tables a statement mentions. */
function tablesOf(node: unknown, out: Set<string> = new Set()): Set<string> {
  if (Array.isArray(node)) {
    for (const n of node) tablesOf(n, out);
  } else if (node && typeof node === 'object') {
    const relname = (node as Node).relname;
    if (typeof relname === 'string') out.add(relname.toLowerCase());
    for (const v of Object.values(node)) if (v && typeof v === 'object') tablesOf(v, out);
  }
  return out;
}

/** Tables whose schema a DDL statement changes. */
function ddlTables(s: ParsedStatement): string[] {
  if (s.type === 'AlterTableStmt' || s.type === 'IndexStmt' || s.type === 'RenameStmt')
    return [...tablesOf(s.node.relation)];
  if (
    s.type === 'DropStmt' &&
    (s.node.removeType === 'OBJECT_TABLE' || s.node.removeType === 'OBJECT_INDEX')
  ) {
    const out: string[] = [];
    for (const o of (s.node.objects as Node[] | undefined) ?? []) {
      const items = ((o.List as Node | undefined)?.items as Node[] | undefined) ?? [];
      const last = items[items.length - 1] as { String?: { sval?: string } } | undefined;
      if (last?.String?.sval) out.push(last.String.sval.toLowerCase());
    }
    return out;
  }
  return [];
}

/** Highest `$n` a statement uses. */
function maxParam(node: unknown): number {
  let max = 0;
  const walk = (n: unknown): void => {
    if (Array.isArray(n)) n.forEach(walk);
    else if (n && typeof n === 'object') {
      const p = (n as Node).ParamRef as { number?: number } | undefined;
      if (p?.number && p.number > max) max = p.number;
      for (const v of Object.values(n)) if (v && typeof v === 'object') walk(v);
    }
  };
  walk(node);
  return max;
}

/** SQL making PostgreSQL raise `refusal`; keeps `$1…$params` so a Bind with values still fits. */
export function refusalSql(refusal: Refusal, params = 0): string {
  const args = Array.from({ length: params }, (_, i) => `, $${i + 1}::text`).join('');
  return `SELECT ${INTERNAL_SCHEMA}.refuse(${literal(refusal.code)}, ${literal(refusal.message)}, ${
    refusal.detail === undefined ? 'NULL' : literal(refusal.detail)
  }${args})`;
}

function commandComplete(tag: string): Buffer {
  return frame('C', Buffer.from(`${tag}\0`, 'utf8'));
}

/** A ParameterStatus frame as DSQL reports it (`server_version` is DSQL's). */
export function dsqlParameterStatus(bytes: Buffer): Buffer {
  const name = readCString(bytes, 5)[0];
  const value =
    name === 'server_version'
      ? DSQL_SERVER_VERSION
      : name === 'server_version_num'
        ? DSQL_SERVER_VERSION_NUM
        : undefined;
  return value === undefined ? bytes : frame('S', Buffer.from(`${name}\0${value}\0`, 'utf8'));
}

/** DSQL's rules for one client session. */
export class DsqlSession {
  private readonly tx: TransactionRules;
  /** Queries and Syncs sent upstream, ReadyForQuery received: batch numbers. */
  private sent = 0;
  private received = 0;
  private entries: Entry[] = [];
  private readonly prepared = new Map<string, Hook>();
  private readonly portals = new Map<string, Hook>();
  private readonly touched = new Set<string>();
  private txSchemaVersion = 0;
  private pendingDdl: string[] = [];
  private batchFailed = false;
  /** What the COMMIT in the frame being handled must fail with, decided before the rules forget the transaction. */
  private commitVerdict: Refusal | undefined;

  constructor(
    private readonly core: DialectCore,
    private readonly now: () => number = Date.now,
  ) {
    this.tx = new TransactionRules(() => core.limits.transactionAgeSeconds);
  }

  /** A client frame about to go upstream; returns the bytes to send instead (often the same). */
  clientFrame(f: Frame): Buffer {
    if (f.type === 'Q' || f.type === 'P') this.commitVerdict = undefined;
    switch (f.type) {
      case 'Q':
        return this.onQuery(f.bytes);
      case 'P':
        return this.onParse(f.bytes);
      case 'B': {
        const portal = readCString(f.bytes, 5)[0];
        const hook = this.prepared.get(bindStatementName(f.bytes));
        if (hook) this.portals.set(portal, hook);
        else this.portals.delete(portal);
        return f.bytes;
      }
      case 'E': {
        const hook = this.portals.get(readCString(f.bytes, 5)[0]);
        this.entries.push({ batch: this.sent, hook: hook ?? { kind: 'other' } });
        return f.bytes;
      }
      case 'S':
        this.sent++;
        this.tx.endBatch();
        return f.bytes;
      case 'F':
        // A FunctionCall is answered with a ReadyForQuery of its own.
        this.sent++;
        return f.bytes;
      case 'C':
        if (f.bytes[5] === 0x53) this.prepared.delete(readCString(f.bytes, 6)[0]);
        return f.bytes;
      default:
        return f.bytes;
    }
  }

  /** The relay recounted the requests still to be answered (`SessionPolicy.onRecount`). */
  recount(delta: number): void {
    this.sent += delta;
  }

  /** The relay sent a simple query of its own upstream (its reply never reaches the client). */
  injectedQuery(): void {
    this.sent++;
  }

  /** An upstream frame; returns what the client gets instead (the same frame, rewritten, or several). */
  serverFrame(f: Frame): Buffer {
    switch (f.type) {
      case 'C': {
        const entry = this.entries.shift();
        if (!entry) return f.bytes;
        if (entry.hook.ddlTables?.length) this.pendingDdl.push(...entry.hook.ddlTables);
        return entry.hook.tag ? commandComplete(entry.hook.tag) : f.bytes;
      }
      case 'I':
      case 's':
        this.entries.shift();
        return f.bytes;
      case 'E': {
        this.entries = this.entries.filter((e) => e.batch > this.received);
        this.batchFailed = true;
        const fields = parseErrorFields(f.bytes);
        if (fields.S === 'ERROR' && fields.C !== undefined && CONFLICT_CODES.has(fields.C)) {
          this.core.conflict(fields.C);
          return errorResponseFromFields({
            S: 'ERROR',
            V: 'ERROR',
            C: '40001',
            M: this.core.occMessages.OC000,
          });
        }
        return f.bytes;
      }
      case 'Z': {
        this.received++;
        this.entries = this.entries.filter((e) => e.batch >= this.received);
        const status = f.bytes.toString('latin1', 5, 6) as 'I' | 'T' | 'E';
        if (this.sent === this.received) this.tx.status(status);
        if (status === 'I') {
          if (!this.batchFailed && this.pendingDdl.length > 0) this.core.schema.bump(this.pendingDdl);
          this.pendingDdl = [];
          this.touched.clear();
        }
        if (status !== 'T') this.batchFailed = false;
        return f.bytes;
      }
      case 'S':
        return dsqlParameterStatus(f.bytes);
      default:
        return f.bytes;
    }
  }

  /**
   * A COMMIT of an open transaction is about to go upstream: DSQL's reason to fail it instead
   * (the transaction is rolled back), or undefined.
   */
  commitRefusal(): Refusal | undefined {
    const verdict = this.commitVerdict;
    this.commitVerdict = undefined;
    if (verdict?.code === '40001') this.core.stats.schemaConflicts++;
    return verdict;
  }

  private judgeCommit(): Refusal | undefined {
    if (!this.tx.explicit || this.tx.failed) return undefined;
    if (this.tx.tooOld(this.now())) return refusals.ageLimit(this.core.limits.transactionAgeSeconds);
    if (this.touched.size > 0 && this.core.schema.changedSince(this.touched, this.txSchemaVersion))
      return { code: '40001', message: this.core.occMessages.OC001 };
    return undefined;
  }

  private onQuery(bytes: Buffer): Buffer {
    const batch = this.sent++;
    const parsed = parseSql(queryText(bytes));
    if (!parsed.ok) return bytes;
    let changed = false;
    const parts: string[] = [];
    for (const s of parsed.statements) {
      const plan = this.plan(s);
      parts.push(plan.text);
      this.entries.push({ batch, hook: plan.hook });
      changed ||= plan.text !== s.text || s.async;
      if (plan.refused) {
        changed = true;
        break;
      }
    }
    this.tx.endBatch();
    return changed ? queryMessage(parts.join(';\n')) : bytes;
  }

  private onParse(bytes: Buffer): Buffer {
    const name = readCString(bytes, 5)[0];
    const parsed = parseSql(parseText(bytes));
    // PostgreSQL refuses syntax errors and several statements in one Parse itself.
    if (!parsed.ok || parsed.statements.length !== 1) {
      this.prepared.delete(name);
      return bytes;
    }
    const s = parsed.statements[0]!;
    const plan = this.plan(s);
    this.prepared.set(name, plan.hook);
    return plan.text !== s.text || s.async || plan.refused ? replaceParseText(bytes, plan.text) : bytes;
  }

  /** Decides one statement: the SQL to run upstream, the reply hook, whether it was refused. */
  private plan(s: ParsedStatement): { text: string; hook: Hook; refused: boolean } {
    const limits = this.core.limits;
    let kind = statementKind(s);
    let refusal = statementRefusal(s, limits);
    let text = s.text;
    const hook: Hook = { kind };
    if (!refusal && s.type === 'IndexStmt') {
      kind = 'ddl';
      hook.kind = kind;
      hook.tag = 'CREATE INDEX';
      const rel = s.node.relation as Node;
      const table = `${typeof rel.schemaname === 'string' ? `${ident(rel.schemaname)}.` : ''}${ident(String(rel.relname))}`;
      if (s.async) {
        const jobId = newJobId();
        const schema = typeof rel.schemaname === 'string' ? `${ident(rel.schemaname)}.` : '';
        const name = typeof s.node.idxname === 'string' ? s.node.idxname : undefined;
        const ref = name === undefined ? 'NULL' : literal(`${schema}${ident(name)}`);
        text = `SELECT ${INTERNAL_SCHEMA}.create_index_async(${literal(jobId)}, ${literal(s.text)}, ${ref}, ${
          name === undefined ? 'NULL' : literal(name)
        }) AS job_id`;
      } else {
        // A DO block: PostgreSQL answers it without a result set, as it answers CREATE INDEX.
        text = `DO $dsql_local$ BEGIN PERFORM ${INTERNAL_SCHEMA}.create_index_sync(${literal(table)}, ${literal(s.text)}); END $dsql_local$`;
      }
    }
    if (kind === 'commit') this.commitVerdict = this.judgeCommit();
    if (!refusal && s.type === 'VariableShowStmt') {
      // SHOW server_version[_num] answers DSQL's values (the ParameterStatus already does).
      const name = String(s.node.name ?? '').toLowerCase();
      const value =
        name === 'server_version'
          ? DSQL_SERVER_VERSION
          : name === 'server_version_num'
            ? DSQL_SERVER_VERSION_NUM
            : undefined;
      if (value !== undefined) {
        text = `SELECT ${literal(value)}::text AS ${name}`;
        hook.tag = 'SHOW';
      }
    }
    if (!refusal && s.type === 'VariableSetStmt') text = searchPathWithCompat(s) ?? text;
    if (!refusal) refusal = this.tx.statement(kind, this.now());
    if (refusal) {
      this.core.refused(refusal);
      return { text: refusalSql(refusal, maxParam(s.node)), hook: { kind: 'other' }, refused: true };
    }
    if (s.async) this.core.stats.asyncIndexJobs++;
    if (kind === 'begin') {
      this.touched.clear();
      this.txSchemaVersion = this.core.schema.current;
    } else if (kind === 'rollback') {
      this.pendingDdl = [];
    }
    if (this.tx.explicit && (kind === 'dml' || kind === 'read' || kind === 'ddl'))
      tablesOf(s.node, this.touched);
    if (kind === 'ddl') hook.ddlTables = ddlTables(s);
    return { text, hook, refused: false };
  }
}

/**
 * `SET [LOCAL] search_path TO …` with DSQL's compatibility functions (`current_database()`,
 * `version()`) still found: the client's schemas, then `dsql_local_compat, pg_catalog`, unless it
 * names `pg_catalog` itself (then PostgreSQL's own functions are its choice). Undefined for any
 * other statement.
 */
function searchPathWithCompat(s: ParsedStatement): string | undefined {
  const n = s.node;
  if (n.kind !== 'VAR_SET_VALUE' || String(n.name ?? '').toLowerCase() !== 'search_path') return undefined;
  const schemas: string[] = [];
  for (const arg of Array.isArray(n.args) ? (n.args as Node[]) : []) {
    const value = (arg.A_Const as { sval?: { sval?: string } } | undefined)?.sval?.sval;
    if (value === undefined) return undefined;
    schemas.push(value);
  }
  if (schemas.length === 0 || schemas.some((v) => v.toLowerCase() === 'pg_catalog')) return undefined;
  return `SET ${n.is_local ? 'LOCAL ' : ''}search_path TO ${[...schemas, COMPAT_SCHEMA, 'pg_catalog'].map(literal).join(', ')}`;
}
