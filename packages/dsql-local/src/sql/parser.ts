/**
 * The real PostgreSQL parser (libpg-query, WASM) behind a small cache, plus the one piece of
 * DSQL syntax PostgreSQL's grammar lacks: the `ASYNC` keyword of `CREATE [UNIQUE] INDEX ASYNC`.
 * The keyword is found with PostgreSQL's own scanner (it reads it as an identifier), so a word
 * `async` in a string, comment or quoted identifier is never mistaken for it.
 * @packageDocumentation
 */
import { loadModule, parseSync, scanSync } from 'libpg-query';

/** One parsed statement. */
export interface ParsedStatement {
  /** AST node type, e.g. `'CreateStmt'`, `'SelectStmt'`. */
  type: string;
  /** The node's fields (libpg-query's JSON AST). */
  node: Record<string, unknown>;
  /** The statement's own text (without the `ASYNC` keyword when it had one). */
  text: string;
  /** True for `CREATE [UNIQUE] INDEX ASYNC`. */
  async: boolean;
}

/** Result of parsing one query string. */
export type ParseResult =
  | { ok: true; statements: ParsedStatement[] }
  /** PostgreSQL would refuse the text itself; the endpoint lets it do so. */
  | { ok: false; message: string };

let loaded: Promise<void> | undefined;

/** Loads the WASM parser once per process (about 60 ms). */
export function loadParser(): Promise<void> {
  loaded ??= loadModule();
  return loaded;
}

const CACHE_SIZE = 2000;
/** Longer texts (bulk INSERTs, generated SQL) are parsed every time rather than kept. */
const CACHE_MAX_TEXT = 64 * 1024;
const cache = new Map<string, ParseResult>();

/**
 * Parses `sql` (one or more statements). Results are cached by text (least recently used
 * evicted past 2,000 entries; texts over 64 KiB are not kept), so a query run repeatedly is
 * parsed once. {@link loadParser} must have resolved.
 */
export function parseSql(sql: string): ParseResult {
  const hit = cache.get(sql);
  if (hit) {
    cache.delete(sql);
    cache.set(sql, hit);
    return hit;
  }
  const result = parseUncached(sql);
  if (sql.length > CACHE_MAX_TEXT) return result;
  cache.set(sql, result);
  if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value as string);
  return result;
}

interface RawStmt {
  stmt?: Record<string, Record<string, unknown>>;
  stmt_location?: number;
  stmt_len?: number;
}

function parseUncached(sql: string): ParseResult {
  const bytes = Buffer.from(sql, 'utf8');
  let asyncAt: number[] = [];
  try {
    // The scanner runs only when the word occurs at all (most statements never contain it).
    if (/async/i.test(sql)) asyncAt = asyncKeywords(sql);
  } catch (err) {
    return { ok: false, message: (err as Error).message };
  }
  // Blank the keyword out (same length, so every offset stays valid) and parse the rest.
  const stripped = Buffer.from(bytes);
  for (const at of asyncAt) stripped.fill(0x20, at, at + 5);
  let raw: RawStmt[];
  try {
    raw = (parseSync(stripped.toString('utf8')) as { stmts?: RawStmt[] }).stmts ?? [];
  } catch (err) {
    return { ok: false, message: (err as Error).message };
  }
  const statements: ParsedStatement[] = [];
  for (const r of raw) {
    if (!r.stmt) continue;
    const start = r.stmt_location ?? 0;
    const end = r.stmt_len ? start + r.stmt_len : bytes.length;
    const [type, node] = Object.entries(r.stmt)[0]!;
    statements.push({
      type,
      node,
      text: stripped.toString('utf8', start, end).trim(),
      async: asyncAt.some((at) => at >= start && at < end),
    });
  }
  return { ok: true, statements };
}

/** Byte offsets of every `ASYNC` that follows `CREATE [UNIQUE] INDEX`. */
function asyncKeywords(sql: string): number[] {
  const tokens = scanSync(sql).tokens.filter(
    (t) => t.tokenName !== 'SQL_COMMENT' && t.tokenName !== 'C_COMMENT',
  );
  const found: number[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t.tokenName !== 'IDENT' || t.text.toLowerCase() !== 'async') continue;
    const prev = tokens[i - 1]?.text.toLowerCase();
    const prev2 = tokens[i - 2]?.text.toLowerCase();
    const prev3 = tokens[i - 3]?.text.toLowerCase();
    if (prev === 'index' && (prev2 === 'create' || (prev2 === 'unique' && prev3 === 'create'))) {
      found.push(t.start);
    }
  }
  return found;
}
