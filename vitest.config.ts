import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'packages/*/test/**/*.test.ts'],
    // The PostgreSQL behind every test endpoint: $DSQL_LOCAL_UPSTREAM, the machine's on :5432,
    // or one embedded server for the run.
    globalSetup: ['test/helpers/upstream-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Integration and freeze tests each start their own local endpoint on a random port;
    // two cores: keep parallelism modest so timing-sensitive freeze tests stay stable.
    maxWorkers: 2,
    typecheck: {
      enabled: true,
      include: ['test/types/**/*.test-d.ts'],
      tsconfig: './tsconfig.json',
    },
  },
});
