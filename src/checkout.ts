import type { DsqlConfig } from './config.js';

/** The checkout lives in pool.ts now; src/index.ts still imports these names from here. */
export type { CheckoutStats } from './pool.js';

type Keys =
  | `${'maxLifetime' | 'maxLifetimeJitter'}Seconds`
  | `${'maxIdle' | 'thawThreshold' | 'validationTimeout'}Millis`;
/** The checkout's settings: these `DsqlConfig` fields. */
export type CheckoutOptions = Pick<DsqlConfig, Keys>;
