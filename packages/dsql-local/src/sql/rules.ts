/**
 * What DSQL accepts, statement by statement: the kind of each statement (for the transaction
 * rules) and the refusal DSQL answers an unsupported one with. Pure functions over the AST.
 * @packageDocumentation
 */
import { type Refusal, refusals } from './errors.js';
import type { DsqlLimits } from './limits.js';
import type { ParsedStatement } from './parser.js';

/** How the transaction rules see a statement. */
export type StatementKind = 'ddl' | 'dml' | 'read' | 'begin' | 'commit' | 'rollback' | 'other';

type Node = Record<string, unknown>;

const DDL = new Set([
  'CreateStmt',
  'AlterTableStmt',
  'DropStmt',
  'IndexStmt',
  'ViewStmt',
  'CreateFunctionStmt',
  'AlterFunctionStmt',
  'CreateSchemaStmt',
  'CreateSeqStmt',
  'AlterSeqStmt',
  'CreateDomainStmt',
  'AlterDomainStmt',
  'RenameStmt',
  'CommentStmt',
  'GrantStmt',
  'GrantRoleStmt',
  'CreateRoleStmt',
  'AlterRoleStmt',
  'DropRoleStmt',
  'AlterOwnerStmt',
  'AlterObjectSchemaStmt',
  'CreateStatsStmt',
  'AlterStatsStmt',
  'CreateTableAsStmt',
  'CreateEnumStmt',
  'CompositeTypeStmt',
  'DefineStmt',
  'AlterEnumStmt',
  'CreateExtensionStmt',
  'CreateTrigStmt',
  'CreateEventTrigStmt',
  'CreatePolicyStmt',
  'AlterPolicyStmt',
  'RuleStmt',
  'CreatedbStmt',
  'DropdbStmt',
  'CreateTableSpaceStmt',
  'RefreshMatViewStmt',
  'AlterDefaultPrivilegesStmt',
]);

const DML = new Set(['InsertStmt', 'UpdateStmt', 'DeleteStmt', 'MergeStmt', 'CopyStmt']);

/** Statement types DSQL refuses whatever their options. */
const UNSUPPORTED = new Set([
  'TruncateStmt',
  'CreateTrigStmt',
  'CreateEventTrigStmt',
  'AlterEventTrigStmt',
  'CreateExtensionStmt',
  'AlterExtensionStmt',
  'CreateEnumStmt',
  'AlterEnumStmt',
  'CompositeTypeStmt',
  'CreateRangeStmt',
  'ListenStmt',
  'UnlistenStmt',
  'NotifyStmt',
  'DoStmt',
  'CreatedbStmt',
  'DropdbStmt',
  'AlterDatabaseStmt',
  'AlterDatabaseSetStmt',
  'CreateTableSpaceStmt',
  'DropTableSpaceStmt',
  'AlterSystemStmt',
  'ClusterStmt',
  'ReindexStmt',
  'LockStmt',
  'RuleStmt',
  'RefreshMatViewStmt',
  'CreatePLangStmt',
  'CreateFdwStmt',
  'CreateForeignServerStmt',
  'CreateForeignTableStmt',
  'ImportForeignSchemaStmt',
  'CreateUserMappingStmt',
  'CreateConversionStmt',
  'CreateCastStmt',
  'CreateOpClassStmt',
  'CreateOpFamilyStmt',
  'CreateTransformStmt',
  'CreateAmStmt',
  'CreatePublicationStmt',
  'CreateSubscriptionStmt',
  'AlterSystemStmt',
  'LoadStmt',
  'MergeStmt',
]);

/** Built-in types DSQL refuses as columns (only query-time use works). */
const REFUSED_TYPES = new Set([
  'jsonb',
  'xml',
  'money',
  'inet',
  'cidr',
  'macaddr',
  'macaddr8',
  'bit',
  'varbit',
  'point',
  'line',
  'lseg',
  'box',
  'path',
  'polygon',
  'circle',
  'tsvector',
  'tsquery',
  'int4range',
  'int8range',
  'numrange',
  'tsrange',
  'tstzrange',
  'daterange',
  'int4multirange',
  'int8multirange',
  'nummultirange',
  'tsmultirange',
  'tstzmultirange',
  'datemultirange',
  'oid',
  'regclass',
  'pg_lsn',
  'txid_snapshot',
  'pg_snapshot',
  'hstore',
  'citext',
  'vector',
  'geometry',
  'geography',
]);

const SERIAL = new Set(['serial', 'serial4', 'bigserial', 'serial8', 'smallserial', 'serial2']);

/** Parameters a session may SET (DSQL refuses the others). */
const SETTABLE = new Set([
  'search_path',
  'application_name',
  'client_encoding',
  'timezone',
  'datestyle',
  'intervalstyle',
  'extra_float_digits',
  'bytea_output',
  'standard_conforming_strings',
  'client_min_messages',
  'transaction_read_only',
  'default_transaction_read_only',
]);

function str(node: unknown): string | undefined {
  const s = (node as { String?: { sval?: string } } | undefined)?.String?.sval;
  return typeof s === 'string' ? s : undefined;
}

function list(value: unknown): Node[] {
  return Array.isArray(value) ? (value as Node[]) : [];
}

/** Depth-first search of the AST for a node of `type`. */
function contains(node: unknown, type: string): boolean {
  if (Array.isArray(node)) return node.some((n) => contains(n, type));
  if (!node || typeof node !== 'object') return false;
  for (const [k, v] of Object.entries(node)) {
    if (k === type) return true;
    if (typeof v === 'object' && contains(v, type)) return true;
  }
  return false;
}

/** How the transaction rules count `s`. */
export function statementKind(s: ParsedStatement): StatementKind {
  if (s.type === 'TransactionStmt') {
    const kind = s.node.kind as string;
    if (kind === 'TRANS_STMT_BEGIN' || kind === 'TRANS_STMT_START') return 'begin';
    if (kind === 'TRANS_STMT_COMMIT') return 'commit';
    if (kind === 'TRANS_STMT_ROLLBACK') return 'rollback';
    return 'other';
  }
  if (DDL.has(s.type)) return 'ddl';
  if (DML.has(s.type)) return 'dml';
  if (s.type === 'SelectStmt') {
    if (s.node.intoClause) return 'ddl';
    // A data-modifying CTE makes the SELECT a write.
    const ctes = list((s.node.withClause as Node | undefined)?.ctes);
    if (ctes.some((c) => contains(c, 'InsertStmt') || contains(c, 'UpdateStmt') || contains(c, 'DeleteStmt')))
      return 'dml';
    return 'read';
  }
  if (s.type === 'ExplainStmt') {
    // EXPLAIN ANALYZE runs the statement it explains.
    const inner = explained(s);
    return inner && explainAnalyzes(s.node) ? statementKind(inner) : 'read';
  }
  return 'other';
}

/** The statement an EXPLAIN explains. */
function explained(s: ParsedStatement): ParsedStatement | undefined {
  const query = s.node.query as Node | undefined;
  const type = query && Object.keys(query)[0];
  return type ? { type, node: query[type] as Node, text: s.text, async: false } : undefined;
}

function explainAnalyzes(node: Node): boolean {
  return list(node.options).some((o) => {
    const d = o.DefElem as Node | undefined;
    if (d?.defname !== 'analyze') return false;
    // `ANALYZE 0` (libpg-query leaves a zero ival out), `ANALYZE false|off|no`.
    const int = (d.arg as { Integer?: { ival?: number } } | undefined)?.Integer;
    if (int) return (int.ival ?? 0) !== 0;
    const arg = str(d.arg)?.toLowerCase();
    return arg === undefined || !['false', 'off', '0', 'no'].includes(arg);
  });
}

function typeName(tn: Node | undefined): {
  name: string;
  display: string;
  array: boolean;
  qualified: boolean;
} {
  const names = list(tn?.names)
    .map(str)
    .filter((n): n is string => n !== undefined);
  const qualified = names.length > 1 && names[0] !== 'pg_catalog';
  const name = (names[names.length - 1] ?? '').toLowerCase();
  const array = list(tn?.arrayBounds).length > 0;
  const display = DISPLAY[name] ?? name;
  return { name, display: array ? `${display}[]` : display, array, qualified };
}

const DISPLAY: Record<string, string> = {
  int2: 'smallint',
  int4: 'integer',
  int8: 'bigint',
  float4: 'real',
  float8: 'double precision',
  bpchar: 'character',
  bool: 'boolean',
};

/** The refusal for a column definition's type, if DSQL would refuse it. */
function columnTypeRefusal(column: Node): Refusal | undefined {
  const t = typeName(column.typeName as Node | undefined);
  if (t.qualified) return undefined; // a domain or other user type: DSQL decides by catalog
  if (SERIAL.has(t.name)) return refusals.serial(t.name);
  if (t.array) return refusals.datatype(t.display);
  if (REFUSED_TYPES.has(t.name)) return refusals.datatype(t.display);
  return undefined;
}

function cacheOf(options: Node[]): number | undefined {
  for (const o of options) {
    const d = o.DefElem as Node | undefined;
    if (d?.defname === 'cache') {
      const arg = d.arg as { Integer?: { ival?: number }; Float?: { fval?: string } } | undefined;
      if (arg?.Integer) return arg.Integer.ival ?? 0;
      if (arg?.Float?.fval) return Number(arg.Float.fval);
    }
  }
  return undefined;
}

const cacheOk = (cache: number | undefined): boolean =>
  cache === 1 || (cache !== undefined && cache >= 65536);

/** Type, identity and cache rules for one column. */
function columnRefusal(column: Node): Refusal | undefined {
  const typeRefusal = columnTypeRefusal(column);
  if (typeRefusal) return typeRefusal;
  for (const c of list(column.constraints)) {
    const con = c.Constraint as Node | undefined;
    if (con?.contype === 'CONSTR_IDENTITY') {
      const t = typeName(column.typeName as Node | undefined);
      if (t.name !== 'int8' && t.name !== 'bigint') return refusals.identityType(t.display);
      if (!cacheOk(cacheOf(list(con.options)))) return refusals.identityCache();
    }
  }
  return undefined;
}

function constraintRefusal(con: Node, limits: DsqlLimits): Refusal | undefined {
  if (con.contype === 'CONSTR_EXCLUSION') return refusals.createTable('EXCLUDE constraint');
  if (con.contype === 'CONSTR_PRIMARY' || con.contype === 'CONSTR_UNIQUE') {
    if (list(con.keys).length > limits.columnsPerIndex) return refusals.indexColumns(limits.columnsPerIndex);
  }
  return undefined;
}

function createTableRefusal(node: Node, limits: DsqlLimits): Refusal | undefined {
  const rel = node.relation as Node | undefined;
  if (rel?.relpersistence === 't') return refusals.temporaryTable();
  if (list(node.inhRelations).length > 0) return refusals.createTable('INHERITS');
  if (node.partspec) return refusals.createTable('PARTITION BY');
  if (node.partbound) return refusals.createTable('PARTITION OF');
  if (node.tablespacename) return refusals.createTable('TABLESPACE');
  const elts = list(node.tableElts);
  let columns = 0;
  for (const e of elts) {
    const col = e.ColumnDef as Node | undefined;
    if (col) {
      columns++;
      if (col.collClause) return refusals.createTable('COLLATE');
      const refusal = columnRefusal(col);
      if (refusal) return refusal;
      for (const c of list(col.constraints)) {
        const cr = constraintRefusal(c.Constraint as Node, limits);
        if (cr) return cr;
      }
    }
    const con = e.Constraint as Node | undefined;
    if (con) {
      const cr = constraintRefusal(con, limits);
      if (cr) return cr;
    }
  }
  if (columns > limits.columnsPerTable) return refusals.tableColumns(limits.columnsPerTable);
  return undefined;
}

const ALTER_ALLOWED = new Set([
  'AT_AddColumn',
  'AT_DropColumn',
  'AT_ColumnDefault',
  'AT_SetStorage',
  'AT_AddConstraint',
  'AT_DropConstraint',
  'AT_ChangeOwner',
  'AT_DropNotNull',
  'AT_AddIdentity',
  'AT_SetIdentity',
  'AT_DropIdentity',
  'AT_ReplicaIdentity',
]);

const ALTER_NAMES: Record<string, string> = {
  AT_AlterColumnType: 'ALTER COLUMN ... SET DATA TYPE',
  AT_ValidateConstraint: 'VALIDATE CONSTRAINT',
  AT_SetNotNull: 'ALTER COLUMN ... SET NOT NULL',
  AT_AddConstraint: 'ADD CONSTRAINT',
  AT_EnableTrig: 'ENABLE TRIGGER',
  AT_DisableTrig: 'DISABLE TRIGGER',
  AT_SetTableSpace: 'SET TABLESPACE',
  AT_SetLogged: 'SET LOGGED',
  AT_SetUnLogged: 'SET UNLOGGED',
  AT_AttachPartition: 'ATTACH PARTITION',
  AT_DetachPartition: 'DETACH PARTITION',
  AT_AddInherit: 'INHERIT',
  AT_DropInherit: 'NO INHERIT',
  AT_EnableRowSecurity: 'ENABLE ROW LEVEL SECURITY',
  AT_DisableRowSecurity: 'DISABLE ROW LEVEL SECURITY',
  AT_ClusterOn: 'CLUSTER ON',
  AT_SetRelOptions: 'SET',
  AT_ResetRelOptions: 'RESET',
};

function alterTableRefusal(node: Node, limits: DsqlLimits): Refusal | undefined {
  if (node.objtype !== 'OBJECT_TABLE') return undefined;
  for (const c of list(node.cmds)) {
    const cmd = c.AlterTableCmd as Node | undefined;
    if (!cmd) continue;
    const subtype = cmd.subtype as string;
    if (!ALTER_ALLOWED.has(subtype))
      return refusals.alterTable(ALTER_NAMES[subtype] ?? subtype.replace(/^AT_/, '').toUpperCase());
    const def = cmd.def as Node | undefined;
    if (subtype === 'AT_AddColumn' && def?.ColumnDef) {
      const col = def.ColumnDef as Node;
      const refusal = columnTypeRefusal(col);
      if (refusal) return refusal;
      if (list(col.constraints).length > 0) return refusals.addColumnConstraint();
    }
    if (subtype === 'AT_AddConstraint' && def?.Constraint) {
      const con = def.Constraint as Node;
      // CHECK and FOREIGN KEY only as NOT VALID (validated later); UNIQUE/PRIMARY KEY only USING INDEX.
      if ((con.contype === 'CONSTR_CHECK' || con.contype === 'CONSTR_FOREIGN') && !con.skip_validation)
        return refusals.alterTable('ADD CONSTRAINT');
      if ((con.contype === 'CONSTR_UNIQUE' || con.contype === 'CONSTR_PRIMARY') && !con.indexname)
        return refusals.alterTable('ADD CONSTRAINT');
      const cr = constraintRefusal(con, limits);
      if (cr) return cr;
    }
  }
  return undefined;
}

function isolationRefusal(options: Node[]): Refusal | undefined {
  for (const o of options) {
    const d = o.DefElem as Node | undefined;
    if (d?.defname !== 'transaction_isolation') continue;
    const level = (
      (d.arg as { A_Const?: { sval?: { sval?: string } } })?.A_Const?.sval?.sval ?? ''
    ).toLowerCase();
    if (level !== 'repeatable read') return refusals.isolation(level.toUpperCase());
  }
  return undefined;
}

function lockingRefusal(node: unknown): Refusal | undefined {
  let found: Refusal | undefined;
  const walk = (n: unknown): void => {
    if (found || !n || typeof n !== 'object') return;
    if (Array.isArray(n)) {
      n.forEach(walk);
      return;
    }
    const lc = (n as Node).LockingClause as Node | undefined;
    if (lc) {
      if (lc.strength === 'LCS_FORSHARE') found = refusals.locking('FOR SHARE');
      else if (lc.strength === 'LCS_FORNOKEYUPDATE') found = refusals.locking('FOR NO KEY UPDATE');
      else if (lc.waitPolicy === 'LockWaitSkip') found = refusals.locking('SKIP LOCKED');
      else if (lc.waitPolicy === 'LockWaitError') found = refusals.locking('NOWAIT');
    }
    if ((n as Node).RangeTableSample) found = refusals.statement('TableSample');
    for (const v of Object.values(n)) walk(v);
  };
  walk(node);
  return found;
}

/**
 * DSQL's refusal for `s` on its own (without transaction context), or undefined when DSQL runs
 * it. `CREATE INDEX` without ASYNC is judged by the caller (it depends on the table's rows).
 */
export function statementRefusal(s: ParsedStatement, limits: DsqlLimits): Refusal | undefined {
  const n = s.node;
  if (UNSUPPORTED.has(s.type)) return refusals.statement(s.type);
  switch (s.type) {
    case 'TransactionStmt': {
      const kind = n.kind as string;
      if (
        kind === 'TRANS_STMT_SAVEPOINT' ||
        kind === 'TRANS_STMT_RELEASE' ||
        kind === 'TRANS_STMT_ROLLBACK_TO'
      )
        return refusals.savepoint();
      if (
        kind === 'TRANS_STMT_PREPARE' ||
        kind === 'TRANS_STMT_COMMIT_PREPARED' ||
        kind === 'TRANS_STMT_ROLLBACK_PREPARED'
      )
        return refusals.statement('PrepareTransaction');
      if (n.chain) return refusals.statement('AND CHAIN');
      return isolationRefusal(list(n.options));
    }
    case 'VariableSetStmt': {
      const kind = n.kind as string;
      const name = String(n.name ?? '').toLowerCase();
      if (kind === 'VAR_SET_MULTI') return refusals.setTransaction();
      if (kind === 'VAR_RESET_ALL') return undefined;
      if (!SETTABLE.has(name)) return refusals.setParameter(name);
      return undefined;
    }
    case 'CreateStmt':
      return createTableRefusal(n, limits);
    case 'CreateTableAsStmt':
      return n.objtype === 'OBJECT_MATVIEW'
        ? refusals.statement('CreateMaterializedView')
        : refusals.createTable('AS SELECT');
    case 'AlterTableStmt':
      return alterTableRefusal(n, limits);
    case 'CreateSeqStmt':
    case 'AlterSeqStmt': {
      const cache = cacheOf(list(n.options));
      if (s.type === 'CreateSeqStmt' ? !cacheOk(cache) : cache !== undefined && !cacheOk(cache))
        return refusals.sequenceCache();
      return undefined;
    }
    case 'CreateFunctionStmt': {
      const lang = list(n.options)
        .map((o) => o.DefElem as Node | undefined)
        .find((d) => d?.defname === 'language');
      const name = (str(lang?.arg) ?? 'sql').toLowerCase();
      if (name !== 'sql') return refusals.language(name);
      return undefined;
    }
    case 'DefineStmt':
      // CREATE TYPE … (base type), CREATE AGGREGATE, CREATE OPERATOR, …
      return refusals.statement(
        `Create${String(n.kind ?? '')
          .replace(/^OBJECT_/, '')
          .toLowerCase()}`,
      );
    case 'IndexStmt': {
      if (list(n.indexParams).length + list(n.indexIncludingParams).length > limits.columnsPerIndex)
        return refusals.indexColumns(limits.columnsPerIndex);
      if (n.concurrent) return refusals.statement('CREATE INDEX CONCURRENTLY');
      return undefined;
    }
    case 'SelectStmt':
    case 'InsertStmt':
    case 'UpdateStmt':
    case 'DeleteStmt':
      if (s.type === 'SelectStmt' && n.intoClause) return refusals.createTable('AS SELECT');
      return lockingRefusal(n);
    case 'DropStmt':
      if (n.removeType === 'OBJECT_TYPE') return refusals.statement('DropType');
      if (n.removeType === 'OBJECT_EXTENSION' || n.removeType === 'OBJECT_TRIGGER')
        return refusals.statement('DropStmt');
      return undefined;
    case 'ExplainStmt': {
      const inner = explained(s);
      return inner ? statementRefusal(inner, limits) : undefined;
    }
    case 'CopyStmt':
      return n.filename || n.is_program ? refusals.statement('COPY with a file or program') : undefined;
    case 'VacuumStmt': {
      // DSQL runs ANALYZE with relation names only; VACUUM not at all.
      if (n.is_vacuumcmd) return refusals.statement('Vacuum');
      const rels = list(n.rels);
      const namesOnly =
        rels.length > 0 &&
        list(n.options).length === 0 &&
        rels.every((r) => list((r.VacuumRelation as Node | undefined)?.va_cols).length === 0);
      return namesOnly ? undefined : refusals.statement('Analyze');
    }
    default:
      return undefined;
  }
}
