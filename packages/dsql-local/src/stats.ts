/**
 * The endpoint's counters: one mutable record every stage bumps, copied out by `stats()`.
 * @packageDocumentation
 */
import { emptyOccStats } from './occ.js';
import type { LocalDsqlStats } from './types.js';

/** A record with every counter at zero. */
export function emptyStats(): LocalDsqlStats {
  return {
    connections: { total: 0, byNegotiation: { postgres: 0, direct: 0 }, byAlpn: {}, bySni: {} },
    plaintextRefused: 0,
    protocolViolations: 0,
    preAuthRefused: {},
    auth: { ok: 0, failed: 0, failedByReason: {} },
    tokensAccepted: 0,
    distinctTokensAccepted: 0,
    tokensBySigningDate: {},
    tokensByUser: {},
    occInjected: { OC000: 0, OC001: 0 },
    occFromContention: 0,
    unsupportedRejected: 0,
    sql: {
      refusedByCode: {},
      conflictsByUpstreamCode: {},
      schemaConflicts: 0,
      asyncIndexJobs: 0,
      occ: emptyOccStats(),
    },
    commits: 0,
    dropped: { fin: 0, rst: 0, fatal: 0, silent: 0 },
    maxAgeClosed: 0,
    currentSessions: 0,
    awaitingAuthentication: 0,
    admissionRefused: { '53300': 0, '53400': 0 },
    cancelRequests: 0,
  };
}

/** Adds one to `record[key]`. */
export function bump(record: Record<string, number>, key: string): void {
  record[key] = (record[key] ?? 0) + 1;
}
