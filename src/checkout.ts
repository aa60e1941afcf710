/** The checkout now lives in pool.ts; this keeps src/index.ts's type exports until it imports them from there. */
import type { DsqlConfig } from './config.js';

export type { CheckoutStats } from './pool.js';
/** The checkout's settings: these `DsqlConfig` fields. */
export type CheckoutOptions = Pick<
  DsqlConfig,
  'maxLifetimeSeconds' | 'maxLifetimeJitterSeconds' | 'maxIdleMillis' | 'thawThresholdMillis' | 'validationTimeoutMillis'
>;
