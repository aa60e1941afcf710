/**
 * `dsql-local`: a local Aurora DSQL-like endpoint for tests and development. The runtime
 * library never imports this entry point.
 * @packageDocumentation
 */
export { type LocalCertificates, localCertificates } from './certs.js';
export {
  EMBEDDED_POSTGRES_VERSION,
  type EmbeddedPostgres,
  EmbeddedPostgresError,
  type EmbeddedPostgresOptions,
  startEmbeddedPostgres,
  stopSharedEmbeddedPostgres,
} from './embedded.js';
export type { Refusal, SessionPolicy } from './policy.js';
export {
  OC000_MESSAGE,
  OC000_MESSAGE_NEW,
  OC001_MESSAGE,
  randomClusterId,
  randomCredentials,
  resolveUpstream,
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
  OccStats,
} from './types.js';
export {
  type SignTokenOptions,
  signToken,
  tokenFingerprint,
  type VerifyContext,
  type VerifyResult,
  verifyToken,
} from './verify.js';
