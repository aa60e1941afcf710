import type pg from 'pg';

/**
 * Freeze-safe checkout settings (wall-clock based). Placeholder: the full implementation evicts
 * stale connections at checkout and validates reused connections after a thaw.
 */
export interface FreezeGuardOptions {
  /** Discard a connection older than this at checkout. */
  maxLifetimeSeconds: number;
  /** Discard a connection idle longer than this at checkout. */
  maxIdleMillis: number;
  /** A gap since the pool was last active longer than this counts as a thaw. */
  thawThresholdMillis: number;
  /** Timeout of the liveness check made on a reused connection after a thaw. */
  validationTimeoutMillis: number;
}

/** Makes `pool.connect()` (and so `pool.query()`) freeze-safe. Placeholder: no-op. */
export function installFreezeGuard(_pool: pg.Pool, _options: FreezeGuardOptions): void {}
