/**
 * Faults: what `dsql.faults` injects. Dropping connections (FIN, RST, FATAL, half-open), commit
 * faults the relay consumes at the next COMMIT, and the run-time knobs of the other stages
 * (admission limits, maximum age, latency, contention translation, strict SQL).
 * @packageDocumentation
 */
import type { Connection, EndpointCore } from './connection.js';
import type { DropConnectionsOptions, DropHow, LocalDsqlFaults, OccCode } from './types.js';

/** A pending fault for an upcoming COMMIT. */
export type CommitFault =
  | { kind: 'fail'; code: OccCode; remaining: number; session: number | undefined }
  | { kind: 'drop'; how: DropHow; afterCommit: boolean; session: number | undefined };

/** The queue of pending commit faults, oldest first. */
export class CommitFaults {
  private faults: CommitFault[] = [];

  add(fault: CommitFault): void {
    this.faults.push(fault);
  }

  /** Takes the first fault that applies to `conn`'s session (a `fail` with count > 1 stays, decremented). */
  take(conn: Connection): CommitFault | undefined {
    const i = this.faults.findIndex((f) => f.session === undefined || f.session === conn.pid);
    if (i < 0) return undefined;
    const fault = this.faults[i]!;
    if (fault.kind === 'fail' && fault.remaining > 1) {
      fault.remaining--;
      return { ...fault };
    }
    this.faults.splice(i, 1);
    return fault;
  }

  clear(): void {
    this.faults = [];
  }
}

/** Drops `conn` the way a fault asks for; its upstream session is closed in every case. */
export function dropConnection(core: EndpointCore, conn: Connection, how: DropHow): void {
  if (conn.closed || conn.ending) return;
  conn.markEnding();
  core.stats.dropped[how]++;
  core.events.emit('fault', { kind: 'drop', how, session: conn.pid });
  conn.endSession(`drop-${how}`);
  conn.upstream?.destroy();
  switch (how) {
    case 'fin':
      conn.toClient.push(() => conn.tls?.end() ?? conn.raw.end());
      setTimeout(() => conn.close(), 1000).unref();
      break;
    case 'rst':
      conn.toClient.clear();
      conn.raw.resetAndDestroy();
      conn.close();
      break;
    case 'fatal':
      conn.fatalAndClose('57P01', 'terminating connection due to administrator command');
      break;
    case 'silent':
      // Half-open: the socket stays up and swallows everything until the endpoint stops.
      conn.silent = true;
      conn.toClient.clear();
      conn.toServer.clear();
      break;
  }
}

/** A fault setting must be a number ≥ 0: NaN would stall every write or close every connection. */
function check(name: string, value: number | undefined): void {
  if (value !== undefined && !(value >= 0)) throw new RangeError(`${name} must be a number ≥ 0`);
}

/** The `faults` object of an endpoint; `connections` are every connection not yet gone. */
export function createFaults(core: EndpointCore, connections: Set<Connection>): LocalDsqlFaults {
  const live = () => [...connections].filter((c) => !c.closed && !c.ending);
  return {
    dropConnections(opts: DropConnectionsOptions = {}) {
      const which = opts.which ?? 'all';
      const how = opts.how ?? 'fin';
      const targets = live().filter((c) =>
        which === 'all' ? true : which === 'idle' ? c.idle : c.established && c.pid === which,
      );
      for (const c of targets) dropConnection(core, c, how);
      return targets.length;
    },
    failNextCommits(opts = {}) {
      const count = opts.count ?? 1;
      if (count < 1) return;
      core.commitFaults.add({
        kind: 'fail',
        code: opts.code ?? 'OC000',
        remaining: count,
        session: opts.session,
      });
    },
    dropOnNextCommit(opts = {}) {
      core.commitFaults.add({
        kind: 'drop',
        how: opts.how ?? 'fin',
        afterCommit: opts.afterCommit ?? true,
        session: opts.session,
      });
    },
    setMaxConnectionAge(seconds) {
      check('max connection age', seconds);
      core.maxConnectionAgeMs = seconds * 1000;
      for (const c of connections) c.scheduleAge();
    },
    setRateLimit(limit) {
      check('perSecond', limit.perSecond);
      check('burst', limit.burst);
      core.admission.setRate(limit);
    },
    setMaxConnections(max) {
      check('max connections', max);
      core.admission.maxConnections = max;
    },
    setLatency(latency) {
      check('toServer', latency.toServer);
      check('toClient', latency.toClient);
      if (latency.toClient !== undefined) core.latency.toClient = latency.toClient;
      if (latency.toServer !== undefined) core.latency.toServer = latency.toServer;
    },
    clear() {
      core.commitFaults.clear();
      core.latency.toClient = 0;
      core.latency.toServer = 0;
    },
  };
}
