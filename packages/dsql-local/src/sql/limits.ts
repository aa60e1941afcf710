/**
 * DSQL's per-transaction and schema limits, each configurable so tests can use small values.
 * @packageDocumentation
 */

/** Limits the endpoint enforces with DSQL's errors (see {@link DEFAULT_LIMITS}). */
export interface DsqlLimits {
  /** Rows inserted, updated or deleted per transaction (54000). Default `3000`. */
  rowsPerTransaction: number;
  /** Bytes written per transaction, as PostgreSQL sizes the new rows (54000). Default 10 MiB. */
  bytesPerTransaction: number;
  /** Age of a transaction at which its next statement or COMMIT fails (54000). Default `300`. */
  transactionAgeSeconds: number;
  /**
   * Combined size of a row's primary-key values, bytes, as PostgreSQL sizes them (54000 `key
   * size too large`). Default `1024`.
   */
  keyBytes: number;
  /** Columns in a primary key or index (54011). Default `8`. */
  columnsPerIndex: number;
  /** Columns per table (54011). Default `255`. */
  columnsPerTable: number;
}

/** DSQL's documented values. */
export const DEFAULT_LIMITS: Readonly<DsqlLimits> = Object.freeze({
  rowsPerTransaction: 3000,
  bytesPerTransaction: 10 * 1024 * 1024,
  transactionAgeSeconds: 300,
  keyBytes: 1024,
  columnsPerIndex: 8,
  columnsPerTable: 255,
});

/** `DEFAULT_LIMITS` overridden by `given`; every value must be a number > 0. */
export function resolveLimits(given: Partial<DsqlLimits> | undefined): DsqlLimits {
  const limits = { ...DEFAULT_LIMITS, ...given };
  for (const [name, value] of Object.entries(limits)) {
    if (!(typeof value === 'number' && value > 0))
      throw new RangeError(`limits.${name} must be a number > 0`);
  }
  return limits;
}
