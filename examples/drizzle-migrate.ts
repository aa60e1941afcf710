/**
 * drizzle-kit's SQL migrations on DSQL, e.g. from a deploy step:
 * `node --import tsx examples/drizzle-migrate.ts ./drizzle` with the DSQL settings in the
 * environment (DSQL_ENDPOINT, AWS_REGION, credentials).
 *
 * The folder is drizzle-kit's output (`meta/_journal.json`, one `<tag>.sql` per migration). Each
 * `--> statement-breakpoint` chunk runs in its own transaction (DSQL allows one DDL per
 * transaction, no DDL with DML); `CREATE INDEX` goes out as `CREATE INDEX ASYNC` and is awaited;
 * a run that stops half-way is resumed by the next one. On DSQL a foreign key added to an
 * existing table must be `NOT VALID`: add it to drizzle-kit's `ADD CONSTRAINT … FOREIGN KEY`.
 */
import { createPool } from 'dsql-lambda';
import { createDrizzle, migrate } from 'dsql-lambda/drizzle';

const pool = createPool();
try {
  const { applied, resumed } = await migrate(createDrizzle({ client: pool }), {
    migrationsFolder: process.argv[2] ?? './drizzle',
    onStatement: (s) =>
      console.log(`${s.migration} ${s.index + 1}/${s.count}${s.jobId ? ` (job ${s.jobId})` : ''}`),
  });
  if (resumed) console.log(`resumed ${resumed.migration} at statement ${resumed.statement + 1}`);
  console.log(applied.length ? `applied: ${applied.join(', ')}` : 'up to date');
} finally {
  await pool.end();
}
