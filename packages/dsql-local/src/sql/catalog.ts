/**
 * What the endpoint installs in the upstream database for DSQL's dialect: the `sys` schema
 * (`sys.jobs`, `sys.wait_for_job()`), the functions `CREATE INDEX [ASYNC]` is rewritten to, the
 * per-transaction write counter enforcing the row and size limits, and the session-reporting
 * functions (`current_database()`, `version()`), and the table whose deferred trigger makes a
 * wounded transaction's COMMIT fail (occ.ts). PL/pgSQL is used here, upstream only: clients
 * of the endpoint cannot use it.
 * @packageDocumentation
 */
import { randomInt } from 'node:crypto';

/** Schema of the endpoint's own functions. */
export const INTERNAL_SCHEMA = 'dsql_local';
/** Schema holding the functions that report DSQL's values; searched just before pg_catalog. */
export const COMPAT_SCHEMA = 'dsql_local_compat';
/** `server_version` DSQL reports. */
export const DSQL_SERVER_VERSION = '16.15';
/** `server_version_num` matching {@link DSQL_SERVER_VERSION}. */
export const DSQL_SERVER_VERSION_NUM = '160015';
/** Custom settings (passed at session start) carrying the write limits to the counter. */
export const ROWS_SETTING = 'dsql_local.rows_limit';
/** See {@link ROWS_SETTING}. */
export const BYTES_SETTING = 'dsql_local.bytes_limit';
/** See {@link ROWS_SETTING}. */
export const KEY_SETTING = 'dsql_local.key_limit';
/** See {@link ROWS_SETTING}. */
export const DATABASE_SETTING = 'dsql_local.database';

/** A job id shaped like DSQL's: 26 characters of lower-case base32. */
export function newJobId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
  let id = '';
  for (let i = 0; i < 26; i++) id += alphabet[randomInt(32)];
  return id;
}

/** Quotes a SQL string literal. */
export function literal(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

/** Quotes an identifier. */
export function ident(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

/** Idempotent upstream setup (run once per database by a superuser, in one transaction). */
export const CATALOG_SQL = `
CREATE SCHEMA IF NOT EXISTS sys;
CREATE SCHEMA IF NOT EXISTS ${INTERNAL_SCHEMA};
CREATE SCHEMA IF NOT EXISTS ${COMPAT_SCHEMA};
GRANT USAGE ON SCHEMA sys, ${INTERNAL_SCHEMA}, ${COMPAT_SCHEMA} TO PUBLIC;
CREATE TABLE IF NOT EXISTS sys.jobs (
  job_id text PRIMARY KEY,
  status text NOT NULL,
  details text,
  job_type text NOT NULL,
  class_id oid,
  object_id oid,
  object_name text,
  start_time timestamptz NOT NULL DEFAULT now(),
  update_time timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT ON sys.jobs TO PUBLIC;

CREATE OR REPLACE FUNCTION sys.wait_for_job(job_id text) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE s text;
BEGIN
  SELECT j.status INTO s FROM sys.jobs j WHERE j.job_id = wait_for_job.job_id;
  IF s IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '42704', MESSAGE = format('job %s does not exist', wait_for_job.job_id);
  END IF;
  RETURN s = 'completed';
END $fn$;

CREATE OR REPLACE FUNCTION ${INTERNAL_SCHEMA}.refuse(code text, message text, detail text, VARIADIC args text[] DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  IF detail IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
  END IF;
  RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, DETAIL = detail;
END $fn$;

CREATE OR REPLACE FUNCTION ${INTERNAL_SCHEMA}.create_index_async(job_id text, ddl text, index_ref text, index_name text)
RETURNS text LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE ddl;
  INSERT INTO sys.jobs (job_id, status, job_type, class_id, object_id, object_name)
  VALUES (create_index_async.job_id, 'completed', 'INDEX_BUILD', 'pg_class'::regclass,
          to_regclass(index_ref), index_name);
  RETURN create_index_async.job_id;
END $fn$;

CREATE OR REPLACE FUNCTION ${INTERNAL_SCHEMA}.create_index_sync(tbl text, ddl text)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE has_rows boolean;
BEGIN
  EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', tbl) INTO has_rows;
  IF has_rows THEN
    RAISE EXCEPTION USING ERRCODE = '0A000',
      MESSAGE = 'CREATE INDEX on a table with rows is not supported, please use CREATE INDEX ASYNC';
  END IF;
  EXECUTE ddl;
END $fn$;

CREATE OR REPLACE FUNCTION ${INTERNAL_SCHEMA}.count_writes() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  max_rows bigint := nullif(current_setting('${ROWS_SETTING}', true), '')::bigint;
  max_bytes bigint := nullif(current_setting('${BYTES_SETTING}', true), '')::bigint;
  max_key bigint := nullif(current_setting('${KEY_SETTING}', true), '')::bigint;
  key_bytes bigint;
  n bigint;
  b bigint := 0;
  total_rows bigint;
  total_bytes bigint;
BEGIN
  IF max_rows IS NULL THEN RETURN NULL; END IF;
  IF TG_OP = 'DELETE' THEN
    SELECT count(*) INTO n FROM dsql_local_rows;
  ELSE
    SELECT count(*), coalesce(sum(pg_column_size(r.*)), 0) INTO n, b FROM dsql_local_rows r;
  END IF;
  total_rows := coalesce(nullif(current_setting('dsql_local.tx_rows', true), '')::bigint, 0) + n;
  total_bytes := coalesce(nullif(current_setting('dsql_local.tx_bytes', true), '')::bigint, 0) + b;
  PERFORM set_config('dsql_local.tx_rows', total_rows::text, true);
  PERFORM set_config('dsql_local.tx_bytes', total_bytes::text, true);
  -- TG_ARGV[0]: the sum of pg_column_size over the primary-key columns, as SQL.
  IF TG_OP <> 'DELETE' AND max_key IS NOT NULL AND TG_NARGS > 0 AND TG_ARGV[0] <> '' THEN
    EXECUTE format('SELECT coalesce(max(%s), 0) FROM dsql_local_rows', TG_ARGV[0]) INTO key_bytes;
    IF key_bytes > max_key THEN
      RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'key size too large';
    END IF;
  END IF;
  IF total_rows > max_rows THEN
    RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'transaction row limit exceeded';
  END IF;
  IF max_bytes IS NOT NULL AND total_bytes > max_bytes THEN
    RAISE EXCEPTION USING ERRCODE = '54000',
      MESSAGE = format('transaction size limit %smb exceeded', ceil(max_bytes / 1048576.0)),
      DETAIL = format('Current transaction size %smb %smb', ceil(total_bytes / 1048576.0), ceil(max_bytes / 1048576.0));
  END IF;
  RETURN NULL;
END $fn$;

CREATE OR REPLACE FUNCTION ${INTERNAL_SCHEMA}.on_create_table() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE r record; key_size text;
BEGIN
  -- Only tables created by sessions under DSQL's rules get the counter.
  IF nullif(current_setting('${ROWS_SETTING}', true), '') IS NULL THEN RETURN; END IF;
  FOR r IN SELECT objid FROM pg_event_trigger_ddl_commands()
           WHERE command_tag = 'CREATE TABLE' AND object_type = 'table' LOOP
    SELECT coalesce(string_agg(format('coalesce(pg_column_size(%I), 0)', a.attname), ' + '), '') INTO key_size
      FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
      WHERE i.indrelid = r.objid AND i.indisprimary;
    EXECUTE format('CREATE TRIGGER dsql_local_ins AFTER INSERT ON %s REFERENCING NEW TABLE AS dsql_local_rows FOR EACH STATEMENT EXECUTE FUNCTION ${INTERNAL_SCHEMA}.count_writes(%L)', r.objid::regclass, key_size);
    EXECUTE format('CREATE TRIGGER dsql_local_upd AFTER UPDATE ON %s REFERENCING NEW TABLE AS dsql_local_rows FOR EACH STATEMENT EXECUTE FUNCTION ${INTERNAL_SCHEMA}.count_writes(%L)', r.objid::regclass, key_size);
    EXECUTE format('CREATE TRIGGER dsql_local_del AFTER DELETE ON %s REFERENCING OLD TABLE AS dsql_local_rows FOR EACH STATEMENT EXECUTE FUNCTION ${INTERNAL_SCHEMA}.count_writes()', r.objid::regclass);
  END LOOP;
END $fn$;

DO $do$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'dsql_local_count_writes') THEN
    CREATE EVENT TRIGGER dsql_local_count_writes ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
      EXECUTE FUNCTION ${INTERNAL_SCHEMA}.on_create_table();
  END IF;
END $do$;

-- A wounded transaction (occ.ts) inserts one row here: its COMMIT then fails, however it is sent.
CREATE TABLE IF NOT EXISTS ${INTERNAL_SCHEMA}.doomed (message text NOT NULL);
GRANT INSERT ON ${INTERNAL_SCHEMA}.doomed TO PUBLIC;
CREATE OR REPLACE FUNCTION ${INTERNAL_SCHEMA}.fail_commit() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = NEW.message;
END $fn$;
DO $do$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'dsql_local_doomed'
                 AND tgrelid = '${INTERNAL_SCHEMA}.doomed'::regclass) THEN
    CREATE CONSTRAINT TRIGGER dsql_local_doomed AFTER INSERT ON ${INTERNAL_SCHEMA}.doomed
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ${INTERNAL_SCHEMA}.fail_commit();
  END IF;
END $do$;

CREATE OR REPLACE FUNCTION ${COMPAT_SCHEMA}.current_database() RETURNS name
LANGUAGE sql STABLE AS $fn$ SELECT coalesce(nullif(current_setting('${DATABASE_SETTING}', true), ''), pg_catalog.current_database())::name $fn$;
CREATE OR REPLACE FUNCTION ${COMPAT_SCHEMA}.version() RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$ SELECT 'PostgreSQL 16'::text $fn$;
`;

/** Upstream `search_path` for DSQL sessions: the compat functions shadow pg_catalog's. */
export const DSQL_SEARCH_PATH = `"$user", public, ${COMPAT_SCHEMA}, pg_catalog`;
