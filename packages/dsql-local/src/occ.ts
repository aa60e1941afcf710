/**
 * Commit-time optimistic concurrency on top of PostgreSQL's row locks ("the waiter wins").
 *
 * DSQL never makes a writer wait: the loser of a write conflict fails at COMMIT with 40001 OC000.
 * PostgreSQL makes the second writer of a row wait for the first one's lock. The endpoint turns
 * one into the other: when a session's request has been running for about a millisecond, the
 * arbiter asks PostgreSQL (on a side connection, `pg_blocking_pids`) whether it waits on a lock;
 * every holder that is one of this endpoint's sessions and idle in a transaction (its client is
 * between statements, nothing in flight) is "wounded": the relay rolls its upstream transaction
 * back itself, which ends the wait at once, and opens a new one in its place (relay.ts), so the
 * holder's client notices nothing until its COMMIT, which fails with 40001 OC000, as on DSQL.
 *
 * Holders that are busy (running a statement themselves, deadlocks, chains) are not wounded;
 * the waiter is probed again a little later, and `lock_timeout` ends its wait as a statement-
 * level 40001 OC000 if nothing freed it. A session already doomed wounds only other doomed
 * ones (it loses anyway, and must not make a live transaction lose too). Only transactions that began before a probe was sent are wounded by its
 * answer, so a holder that committed and began again meanwhile is left alone.
 * @packageDocumentation
 */
import pg from 'pg';
import { INTERNAL_SCHEMA, literal } from './sql/catalog.js';
import { bump } from './stats.js';
import type { UpstreamTarget } from './upstream.js';

/** What the arbiter needs from a session's relay. */
export interface OccSession {
  /** Idle in a healthy transaction with nothing in flight: may be rolled back under its client. */
  readonly woundable: boolean;
  /** Sequence number of the session's current transaction ({@link OccArbiter.nextTransaction}). */
  readonly transaction: number;
  /** Its transaction was wounded: it fails at COMMIT. */
  readonly doomed: boolean;
  /** Its oldest request is still unanswered. */
  readonly waiting: boolean;
  /** Rolls the upstream transaction back and opens a doomed one in its place. */
  wound(): void;
  /** The arbiter saw its oldest request wait on a lock. */
  sawLockWait(): void;
}

/** Counters of the arbiter (part of the SQL stats). */
export interface OccStats {
  /** Idle transactions rolled back because another session waited on their locks. */
  wounds: number;
  /**
   * Requests that met a conflict upstream (serialization failure, lock timeout) and ran again in
   * a doomed transaction instead of failing.
   */
  reruns: number;
  /** COMMITs of wounded (or rerun) transactions answered with 40001 OC000. */
  conflictsAtCommit: number;
  /** `pg_blocking_pids` queries sent (each may cover several waiting sessions). */
  probes: number;
  /**
   * Requests seen waiting on a lock, by how long they took from being sent upstream to their
   * reply (ms bucket upper bounds `'1'`, `'2'`, `'5'`, `'10'`, `'20'`, `'50'`, `'100'`, `'inf'`).
   */
  lockWaitsMs: Record<string, number>;
  /** Longest of those, ms. */
  maxLockWaitMs: number;
}

/** Zeroed {@link OccStats}. */
export function emptyOccStats(): OccStats {
  return { wounds: 0, reruns: 0, conflictsAtCommit: 0, probes: 0, lockWaitsMs: {}, maxLockWaitMs: 0 };
}

const WAIT_BUCKETS = [1, 2, 5, 10, 20, 50, 100];

/** Records one request that waited on a lock and took `ms` in all. */
export function recordLockWait(stats: OccStats, ms: number): void {
  const bucket = WAIT_BUCKETS.find((b) => ms <= b);
  bump(stats.lockWaitsMs, bucket === undefined ? 'inf' : String(bucket));
  if (ms > stats.maxLockWaitMs) stats.maxLockWaitMs = Math.round(ms * 10) / 10;
}

/** How long a request runs before the first probe, ms. */
export const FIRST_PROBE_MS = 1;

/** Delay before the next probe of a request that has been running `elapsedMs`. */
export function nextProbeDelay(elapsedMs: number): number {
  return Math.min(50, Math.max(2, Math.floor(elapsedMs / 4)));
}

/** One endpoint's arbiter: a side connection upstream and the sessions it may wound. */
export class OccArbiter {
  private client: pg.Client | undefined;
  private readonly queued = new Set<number>();
  private running = false;
  private stopped = false;
  private sequence = 0;

  constructor(
    private readonly upstream: UpstreamTarget,
    private readonly lookup: (pid: number) => OccSession | undefined,
    private readonly stats: () => OccStats,
  ) {}

  /** A number for a transaction that begins now (increasing). */
  nextTransaction(): number {
    return ++this.sequence;
  }

  /** Asks whether session `pid`'s request waits on a lock, and wounds idle holders. */
  probe(pid: number): void {
    if (this.stopped) return;
    this.queued.add(pid);
    if (!this.running) void this.run();
  }

  /** Closes the side connection. */
  async stop(): Promise<void> {
    this.stopped = true;
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => {});
  }

  private async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    const client = new pg.Client({
      host: this.upstream.host,
      port: this.upstream.port,
      user: this.upstream.user,
      password: this.upstream.password,
      database: this.upstream.database,
      application_name: 'dsql-local occ arbiter',
    });
    client.on('error', () => {
      if (this.client === client) this.client = undefined;
    });
    await client.connect();
    if (this.stopped) {
      await client.end().catch(() => {});
      throw new Error('stopped');
    }
    this.client = client;
    return client;
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (this.queued.size > 0 && !this.stopped) {
        const pids = [...this.queued];
        this.queued.clear();
        // Transactions that begin after this point cannot be what the answer is about.
        const asOf = this.sequence;
        let rows: { pid: number; blockers: number[] }[];
        try {
          const client = await this.connection();
          this.stats().probes++;
          rows = (
            await client.query<{ pid: number; blockers: number[] }>(
              'SELECT pid, pg_blocking_pids(pid) AS blockers FROM unnest($1::int[]) AS pid',
              [pids],
            )
          ).rows;
        } catch {
          // The side connection failed: lock_timeout still bounds every wait.
          if (this.client) await this.client.end().catch(() => {});
          this.client = undefined;
          return;
        }
        for (const { pid, blockers } of rows) {
          const waiter = this.lookup(pid);
          if (!waiter?.waiting || blockers.length === 0) continue;
          waiter.sawLockWait();
          for (const b of blockers) {
            const holder = this.lookup(b);
            // A doomed waiter has lost already: it only frees itself from other doomed holders.
            if (waiter.doomed && !holder?.doomed) continue;
            if (holder?.woundable && holder.transaction <= asOf) {
              holder.wound();
              this.stats().wounds++;
            }
          }
        }
      }
    } finally {
      this.running = false;
    }
  }
}

/**
 * What the relay sends upstream to wound a session: roll its transaction back (its locks go, the
 * waiter proceeds), open a new one in its place, and make that one unable to commit, whatever
 * form the client's COMMIT takes (a deferred trigger raises 40001 with `message` at commit).
 */
export function woundSql(message: string): string {
  return [
    'ROLLBACK',
    'BEGIN ISOLATION LEVEL REPEATABLE READ',
    `INSERT INTO ${INTERNAL_SCHEMA}.doomed (message) VALUES (${literal(message)})`,
  ].join('; ');
}

/**
 * DDL that lost a race for a name: two sessions creating the same table at once (`IF NOT EXISTS`
 * included) make PostgreSQL fail the later one with a unique violation on a catalog index
 * (`pg_type_typname_nsp_index`, …) or "type … already exists" (the table's row type). DSQL fails
 * concurrent DDL with 40001 OC001, which clients retry; this is that error's fields, or undefined.
 */
export function catalogRace(
  fields: Record<string, string>,
  oc001Message: string,
): Record<string, string> | undefined {
  const race =
    (fields.C === '23505' && /^pg_\w+_index$/.test(fields.n ?? '')) ||
    (fields.C === '42710' && /^type ".*" already exists$/.test(fields.M ?? ''));
  if (race) return { S: fields.S ?? 'ERROR', V: fields.V ?? 'ERROR', C: '40001', M: oc001Message };
  return undefined;
}
