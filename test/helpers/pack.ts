/**
 * The package as npm would publish it: `npm pack` of the built repository, into a temporary
 * folder. Builds first when the build is missing (`npm test` builds before vitest runs).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { root } from './examples.js';

const run = promisify(execFile);

/** Packs the repository's package; resolves with the tarball's path and the list of files in it. */
export async function packPackage(): Promise<{ tarball: string; files: string[] }> {
  const built = ['dist/esm/index.js', 'dist/cjs/index.js', 'dist/types/index.d.ts', 'dist/esm/esbuild.js'];
  if (!built.every((f) => existsSync(join(root, f)))) {
    await run('npm', ['run', 'build'], { cwd: root, timeout: 180_000 });
  }
  const destination = await mkdtemp(join(tmpdir(), 'dsql-lambda-pack-'));
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', destination], {
    cwd: root,
    timeout: 120_000,
  });
  const [info] = JSON.parse(stdout) as [{ filename: string; files: { path: string }[] }];
  return { tarball: join(destination, info.filename), files: info.files.map((f) => f.path) };
}
