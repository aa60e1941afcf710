/**
 * DSQL's refusals: SQLSTATE and message text. Texts marked "observed" were reported from real
 * clusters or DSQL's documentation; the others follow DSQL's wording style where no text is
 * known (see the package README).
 * @packageDocumentation
 */

import type { Refusal } from '../policy.js';

export type { Refusal } from '../policy.js';

const r = (code: string, message: string, detail?: string): Refusal =>
  detail === undefined ? { code, message } : { code, message, detail };

/** DSQL's refusals, one function per situation. */
export const refusals = {
  /** Generic, observed (`unsupported statement: CreateExtension`). */
  statement: (node: string) => r('0A000', `unsupported statement: ${node.replace(/Stmt$/, '')}`),
  /** Observed. */
  setParameter: (name: string) => r('0A000', `setting configuration parameter "${name}" not supported`),
  /** `SET TRANSACTION` / `SET SESSION CHARACTERISTICS`: 0A000 observed, text ours. */
  setTransaction: () => r('0A000', 'unsupported statement: SET TRANSACTION'),
  /** Isolation other than REPEATABLE READ: text ours. */
  isolation: (level: string) => r('0A000', `unsupported isolation level: ${level}`),
  /** SAVEPOINT, RELEASE, ROLLBACK TO: 0A000 observed, text ours. */
  savepoint: () => r('0A000', 'unsupported statement: SAVEPOINT'),
  /** Observed: `type "serial" does not exist`. */
  serial: (name: string) => r('42704', `type "${name}" does not exist`),
  /** Observed (`datatype money not supported`, `datatype text[] not supported`). */
  datatype: (name: string) => r('0A000', `datatype ${name} not supported`),
  /** Observed. */
  sequenceCache: () =>
    r(
      '0A000',
      'CREATE SEQUENCE is not supported without an explicit cache size. please define CACHE greater than or equal to 65536 or equal to 1',
    ),
  /** Observed (first sentence). */
  identityCache: () =>
    r(
      '0A000',
      'identity column is not supported without an explicit cache size. please define CACHE greater than or equal to 65536 or equal to 1',
    ),
  /** Identity columns must be bigint: text ours. */
  identityType: (type: string) => r('0A000', `identity column of type ${type} not supported, use bigint`),
  /** Observed style (`unsupported ALTER TABLE ADD CONSTRAINT statement`). */
  alterTable: (what: string) => r('0A000', `unsupported ALTER TABLE ${what} statement`),
  /** Observed (migration guides). */
  addColumnConstraint: () => r('0A000', 'ALTER TABLE ADD COLUMN with constraint not supported'),
  /** Observed. */
  multipleDdl: () => r('0A000', 'multiple ddl statements not supported in a transaction'),
  /** Observed. */
  ddlAndDml: () => r('0A000', 'ddl and dml are not supported in the same transaction'),
  /** Synchronous CREATE INDEX on a table with rows: text ours, pointing at ASYNC. */
  syncIndex: () =>
    r('0A000', 'CREATE INDEX on a table with rows is not supported, please use CREATE INDEX ASYNC'),
  /** `CREATE INDEX ASYNC s.name`: DSQL puts the index in the table's schema (syntax error). */
  qualifiedIndexName: () => r('42601', 'syntax error: index name cannot be schema-qualified'),
  /** Locking clauses other than FOR UPDATE / FOR KEY SHARE: 0A000 observed, text ours. */
  locking: (clause: string) => r('0A000', `unsupported locking clause: ${clause}`),
  /** Functions in languages other than SQL: text ours. */
  language: (lang: string) => r('0A000', `unsupported language: ${lang}`),
  /** Temporary tables: text ours. */
  temporaryTable: () => r('0A000', 'unsupported statement: CREATE TEMPORARY TABLE'),
  /** CREATE TABLE clauses DSQL lacks (COLLATE, INHERITS, PARTITION BY, …): text ours. */
  createTable: (what: string) => r('0A000', `unsupported CREATE TABLE ${what}`),
  /** Documented limit (54011). */
  indexColumns: (max: number) => r('54011', `more than ${max} column keys in an index are not supported`),
  /** Documented limit (54011). */
  tableColumns: (max: number) => r('54011', `tables can have at most ${max} columns`),
  /** Documented limit (54000). */
  rowLimit: () => r('54000', 'transaction row limit exceeded'),
  /** Documented limit (54000), with its DETAIL. */
  sizeLimit: (limitMb: number, currentMb: number) =>
    r(
      '54000',
      `transaction size limit ${limitMb}mb exceeded`,
      `Current transaction size ${currentMb}mb ${limitMb}mb`,
    ),
  /** Documented limit (54000). */
  ageLimit: (seconds: number) => r('54000', `transaction age limit of ${seconds}s exceeded`),
} as const;
