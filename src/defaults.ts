/** Every default dsql-lambda applies, in one frozen object; no other file repeats a number. */
export const DSQL_DEFAULTS = Object.freeze({
  /** Database user: `admin` signs `DbConnectAdmin` tokens. */
  user: 'admin',
  /** Database name: the only one DSQL has. */
  database: 'postgres',
  /** TCP port. */
  port: 5432,
  /** Token lifetime, seconds (the AWS SDK's default). */
  tokenDurationSecs: 900,
  /** Pool size outside Lambda Managed Instances (there: `AWS_LAMBDA_MAX_CONCURRENCY`). */
  max: 4,
  /** Minimum idle connections pg-pool keeps. */
  min: 0,
  /** Connection lifetime, seconds: retired before DSQL closes connections at 60 minutes. */
  maxLifetimeSeconds: 3300,
  /** Up to this many seconds come off each lifetime at random, so connections opened together do not expire together. */
  maxLifetimeJitterSeconds: 300,
  /** pg-pool's idle timer, ms: only a backstop, since it does not run while the process is frozen. */
  idleTimeoutMillis: 300_000,
  /** Budget of a checkout (waiting for a pooled client and connecting, retries included), ms. */
  connectionTimeoutMillis: 10_000,
  /** A pooled connection idle longer than this is discarded at checkout, ms (below a NAT gateway's 350 s). */
  maxIdleMillis: 300_000,
  /** A pause longer than this since a connection's last use counts as a freeze/thaw, ms. */
  thawThresholdMillis: 5_000,
  /** Timeout of the liveness round trip on a reused connection after a thaw, ms. */
  validationTimeoutMillis: 1_000,
  /** Direct TLS (ALPN `postgresql`) saves the SSLRequest round trip. */
  sslNegotiation: 'direct' as 'direct' | 'postgres',
  /** A script that never calls `pool.end()` may exit once its connections are idle (pg-pool's option). */
  allowExitOnIdle: true,
  /**
   * First backoff window after DSQL refuses a connection (53400 rate, 53300 too many), ms; it
   * doubles per attempt. A refusal means many sandboxes connect at once: retries spread wide.
   */
  admissionRetryWindowMillis: 6_000,
  /** First backoff window after a network error while connecting, ms; it doubles per attempt. */
  networkRetryWindowMillis: 100,
  /** A token is renewed once less than this (or a fifth of its life, if shorter) remains, ms. */
  tokenRefreshMarginMillis: 60_000,
  /** Credentials are resolved again when they expire within this (the AWS SDK's window), ms. */
  credentialsRefreshMarginMillis: 300_000,
  /** A credentials provider call not settled after this fails the renewal, ms. */
  credentialsTimeoutMillis: 5_000,
  /**
   * OCC retry policy of `withRetry`, `execWithRetry` and `context.dsql`, chosen with
   * `bench/occ.ts` (`bench/results/occ.json`): each sleep is drawn from `[baseDelayMs,
   * min(maxDelayMs, 3 × previous sleep)]` ("decorrelated jitter"), so every retry waits at least
   * the base and colliding transactions drift apart.
   */
  retry: Object.freeze({
    /** Attempts in total: with 4 (the official connectors' budget) 6–32 % of hot transfers gave up, with 8 0–2 %. */
    maxAttempts: 8,
    /** Shortest sleep, ms: 1 ms (the official node connector's) gave up on 40–65 % of hot transfers, 10 ms on 3–12 %. */
    baseDelayMs: 50,
    /** Longest sleep, ms: 7 sleeps take 0.35–5.6 s in all. */
    maxDelayMs: 1000,
  }),
  /** Milliseconds kept free at the end of an invocation: `context.dsql` calls settle before it. */
  deadlineMarginMs: 500,
});
