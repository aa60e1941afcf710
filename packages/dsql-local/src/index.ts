/**
 * `dsql-lambda/local`: a local Aurora DSQL-like endpoint for tests and development. The runtime
 * library never imports this entry point.
 * @packageDocumentation
 */
export { type LocalCertificates, localCertificates } from './certs.js';
export {
  DEFAULT_UPSTREAM,
  OC000_MESSAGE,
  OC000_MESSAGE_NEW,
  OC001_MESSAGE,
  randomClusterId,
  randomCredentials,
  startLocalDsql,
} from './server.js';
export { DEFAULT_LIMITS } from './sql/limits.js';
export type {
  AuthFailureReason,
  DialectStats,
  DropConnectionsOptions,
  DropHow,
  DsqlLimits,
  LocalCredentials,
  LocalDsql,
  LocalDsqlFaults,
  LocalDsqlOptions,
  LocalDsqlStats,
  LocalSessionInfo,
  Negotiation,
  OccCode,
} from './types.js';
export { tokenFingerprint, type VerifyContext, type VerifyResult, verifyToken } from './verify.js';
