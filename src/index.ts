/**
 * dsql-lambda: Amazon Aurora DSQL from AWS Lambda through node-postgres.
 * @packageDocumentation
 */
export type { AwsCredentialIdentity, AwsCredentialIdentityProvider, DsqlConfig } from './config.js';
export { DSQL_DEFAULTS } from './defaults.js';
export {
  CommitOutcomeUnknownError,
  DsqlConfigError,
  DsqlConnectionError,
  DsqlError,
  DsqlTokenError,
  isOccError,
  OccRetryExhaustedError,
} from './errors.js';
export {
  type Dsql,
  type DsqlContext,
  type DsqlHandlerOptions,
  type DsqlLifecycleOptions,
  type DsqlLogger,
  type LambdaContextLike,
  withDsql,
} from './lambda.js';
export { type CheckoutStats, connect, createPool, type DsqlPool } from './pool.js';
export {
  execWithRetry,
  type RetryCode,
  type RetryInfo,
  type RetryOptions,
  type TransactionClient,
  withRetry,
} from './retry.js';
