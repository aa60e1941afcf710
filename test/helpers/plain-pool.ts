/**
 * The library's pool (its freeze-safe checkout) on plain pg settings: no TLS, no IAM token, a
 * client class of the caller's choosing (pg's own, or a scripted fake). For the tests that need
 * plain PostgreSQL (a real FATAL from pg_terminate_backend) or a client whose every answer they script.
 */
import pg from 'pg';
import { type DsqlConfig, resolveConfig } from '../../src/config.js';
import { DsqlPool } from '../../src/pool.js';

export function plainPgPool(config: DsqlConfig, pgConfig: pg.PoolConfig): DsqlPool {
  return new DsqlPool(resolveConfig({ host: 'plain.dsql.us-east-1.on.aws', ...config }, {}), {
    Client: pg.Client,
    ssl: false,
    sslnegotiation: 'postgres',
    application_name: undefined,
    ...pgConfig,
  });
}
