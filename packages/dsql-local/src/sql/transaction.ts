/**
 * DSQL's transaction rules as a state machine: at most one DDL statement per transaction, no DDL
 * and DML in one transaction, and the transaction age limit. A simple query outside an explicit
 * transaction is one implicit transaction (all its statements count together), as is each
 * extended-protocol batch up to Sync.
 * @packageDocumentation
 */
import { type Refusal, refusals } from './errors.js';
import type { StatementKind } from './rules.js';

/** Transaction state of one session. */
export class TransactionRules {
  /** Inside BEGIN … COMMIT/ROLLBACK. */
  explicit = false;
  /** The upstream reported the transaction failed: PostgreSQL answers everything with 25P02. */
  failed = false;
  /** When the explicit transaction began (ms). */
  startedAt = 0;
  private ddl = 0;
  private dml = false;

  constructor(private readonly ageLimitSeconds: () => number) {}

  /** The transaction's age exceeded the limit at `now`. */
  tooOld(now: number): boolean {
    return this.explicit && now - this.startedAt > this.ageLimitSeconds() * 1000;
  }

  /**
   * Checks statement `kind` about to run at `now`; returns DSQL's refusal, or undefined after
   * recording it.
   */
  statement(kind: StatementKind, now: number): Refusal | undefined {
    if (this.failed) return undefined;
    switch (kind) {
      case 'begin':
        if (!this.explicit) {
          this.reset();
          this.explicit = true;
          this.startedAt = now;
        }
        return undefined;
      case 'commit':
      case 'rollback':
        this.explicit = false;
        this.reset();
        return undefined;
      default:
        break;
    }
    if (this.tooOld(now)) return refusals.ageLimit(this.ageLimitSeconds());
    if (kind === 'ddl') {
      if (this.ddl > 0) return refusals.multipleDdl();
      if (this.dml) return refusals.ddlAndDml();
      this.ddl++;
    } else if (kind === 'dml') {
      if (this.ddl > 0) return refusals.ddlAndDml();
      this.dml = true;
    }
    return undefined;
  }

  /** The DDL this transaction ran (0 or 1). */
  get ddlCount(): number {
    return this.ddl;
  }

  /** End of a simple query or extended batch: an implicit transaction ends with it. */
  endBatch(): void {
    if (!this.explicit) this.reset();
  }

  /** The upstream's transaction status at a ReadyForQuery with nothing else in flight. */
  status(status: 'I' | 'T' | 'E'): void {
    if (status === 'I') {
      this.explicit = false;
      this.reset();
    } else if (status === 'E') {
      this.failed = true;
    } else {
      this.failed = false;
    }
  }

  private reset(): void {
    this.ddl = 0;
    this.dml = false;
    this.failed = false;
  }
}
