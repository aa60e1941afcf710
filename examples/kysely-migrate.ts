/**
 * Kysely migrations on DSQL, e.g. from a deploy step: `node --import tsx examples/kysely-migrate.ts`
 * with the DSQL settings in the environment (DSQL_ENDPOINT, AWS_REGION, credentials).
 *
 * Each `up(db)` is recorded, then applied one statement per transaction (DSQL allows one DDL per
 * transaction, no DDL with DML); the index is built with CREATE INDEX ASYNC and awaited; a run
 * that stops half-way is resumed by the next one. Kysely's `FileMigrationProvider` works too.
 */
import { createPool } from 'dsql-lambda';
import { createKysely, migrate } from 'dsql-lambda/kysely';
import type { Migration } from 'kysely';

const migrations: Record<string, Migration> = {
  '0001_accounts': {
    async up(db) {
      await db.schema
        .createTable('accounts')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('owner', 'text', (c) => c.notNull())
        .addColumn('balance', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('accounts_owner_idx').on('accounts').column('owner').execute();
    },
  },
  '0002_transfers': {
    async up(db) {
      await db.schema
        .createTable('transfers')
        .addColumn('id', 'uuid', (c) => c.primaryKey())
        .addColumn('src', 'text', (c) => c.notNull().references('accounts.id'))
        .addColumn('dst', 'text', (c) => c.notNull().references('accounts.id'))
        .addColumn('amount', 'integer', (c) => c.notNull())
        .execute();
    },
  },
};

const pool = createPool();
try {
  const { applied, resumed } = await migrate(createKysely({ pool }), migrations, {
    onStatement: (s) =>
      console.log(`${s.migration} ${s.index + 1}/${s.count}${s.jobId ? ` (job ${s.jobId})` : ''}`),
  });
  if (resumed) console.log(`resumed ${resumed.migration} at statement ${resumed.statement + 1}`);
  console.log(applied.length ? `applied: ${applied.join(', ')}` : 'up to date');
} finally {
  await pool.end();
}
