#!/usr/bin/env node
// The `dsql-local` command. In a checkout of the repository (src/ present, tsx installed) it runs
// the TypeScript source, so nothing has to be built and no stale build is run; an installed
// package (no src/) runs its build in dist/.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const source = new URL('../src/cli.ts', import.meta.url);
const built = new URL('../dist/esm/cli.js', import.meta.url);
let register;
if (existsSync(fileURLToPath(source))) {
  try {
    ({ register } = await import('tsx/esm/api'));
  } catch {
    // no tsx: fall back to the build
  }
}
if (register) {
  register();
  await import(source.href);
} else if (existsSync(fileURLToPath(built))) {
  await import(built.href);
} else {
  console.error(
    'dsql-local: neither a build (dist/) nor tsx to run src/: run `npm install` and `npm run build`',
  );
  process.exit(1);
}
