/**
 * `dsql-lambda/esbuild`: the esbuild options we recommend for a Lambda handler that uses
 * dsql-lambda. A build-time helper: never imported by the runtime entry points, and it imports
 * nothing (not even esbuild), so it costs a handler's bundle nothing.
 * @packageDocumentation
 */

/**
 * The part of esbuild's `PluginBuild` the preset's plugin uses: esbuild's own `PluginBuild` is
 * assignable to it, so a {@link LambdaBundlePlugin} is an esbuild `Plugin`.
 */
export interface LambdaBundlePluginBuild {
  /** Calls `callback` for each import path `filter` matches; its `undefined` leaves that path to esbuild. */
  onResolve(
    options: { filter: RegExp },
    callback: (args: { path: string; importer: string }) => { path: string; external: boolean } | undefined,
  ): void;
}

/** An esbuild plugin, typed structurally (assignable to esbuild's `Plugin`). */
export interface LambdaBundlePlugin {
  /** The plugin's name in esbuild's messages. */
  readonly name: string;
  /** Called once per build, with esbuild's `PluginBuild`. */
  setup(build: LambdaBundlePluginBuild): void;
}

/**
 * The esbuild options {@link lambdaBundleOptions} sets. Structurally a subset of esbuild's
 * `BuildOptions`, so the object can be spread into `esbuild.build({ ... })` without this package
 * depending on esbuild.
 */
export interface LambdaBundleOptions {
  /** Bundle dependencies into the output. `true`. */
  readonly bundle: boolean;
  /** `'node'`: Node built-ins stay imports, `process`/`Buffer` are not shimmed. */
  readonly platform: 'node';
  /** `'node20'`: runs on the nodejs20.x, 22.x and 24.x runtimes. */
  readonly target: string;
  /** `'esm'`. */
  readonly format: 'esm';
  /** `{ '.js': '.mjs' }`, so Lambda loads the output as an ES module without a package.json. */
  readonly outExtension: Record<string, string>;
  /** `['module', 'main']`: the ESM builds of dependencies, which tree-shake better. */
  readonly mainFields: string[];
  /** `true`. */
  readonly minify: boolean;
  /** `'none'`: no license comments in the bundle. */
  readonly legalComments: 'none';
  /** `true`. */
  readonly treeShaking: boolean;
  /**
   * `['@aws-sdk/*', 'pg-native']`: the Lambda runtime ships the AWS SDK (dsql-lambda loads it only
   * for profiles or the default credential chain); pg loads `pg-native` only when asked to.
   */
  readonly external: string[];
  /**
   * `{ js: <a createRequire shim> }`: gives the ES module a `require`, which CommonJS
   * dependencies (pg) call for Node built-ins.
   */
  readonly banner: Record<string, string>;
  /** `'warning'`. */
  readonly logLevel: 'warning';
  /**
   * One plugin, `dsql-lambda:no-pg-native`: leaves `require('./native')` in `pg/lib/index.js`
   * unresolved (external), so pg's native client (≈ 8.5 KB minified) stays out of the bundle.
   * pg requires it only in the lazy `pg.native` getter, which turns the missing module into
   * `pg.native === null` (as when `pg-native` is not installed: on Lambda it never is, there is no
   * libpq), and under `NODE_PG_FORCE_NATIVE`, which fails at load either way. To add plugins of
   * your own, keep this one: `plugins: [...lambdaBundleOptions.plugins, ...mine]`.
   */
  readonly plugins: LambdaBundlePlugin[];
}

/**
 * esbuild options for a small, fast-starting Lambda bundle (Node 20+): ESM output, dependencies'
 * ESM builds preferred, minified, the AWS SDK and `pg-native` left external, pg's native client
 * left out (a plugin), and a `require` shim for CommonJS dependencies. Add your own `entryPoints`
 * and `outdir`; add `sourcemap: true` and set `NODE_OPTIONS=--enable-source-maps` on the function
 * for readable stack traces; add plugins after the preset's (`plugins`).
 * @example
 * ```ts
 * import * as esbuild from 'esbuild';
 * import { lambdaBundleOptions } from 'dsql-lambda/esbuild';
 *
 * await esbuild.build({ ...lambdaBundleOptions, entryPoints: ['src/handler.ts'], outdir: 'dist' });
 * // dist/handler.mjs, exporting `handler`: Handler is `handler.handler`
 * await esbuild.build({ ...lambdaBundleOptions, plugins: [...lambdaBundleOptions.plugins, myPlugin], ... });
 * ```
 */
export const lambdaBundleOptions: LambdaBundleOptions = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  outExtension: { '.js': '.mjs' },
  mainFields: ['module', 'main'],
  minify: true,
  legalComments: 'none',
  treeShaking: true,
  external: ['@aws-sdk/*', 'pg-native'],
  banner: {
    js: "import { createRequire as __dsqlCreateRequire } from 'node:module'; const require = __dsqlCreateRequire(import.meta.url);",
  },
  logLevel: 'warning',
  plugins: [
    {
      name: 'dsql-lambda:no-pg-native',
      setup(build) {
        build.onResolve({ filter: /^\.\/native$/ }, (args) =>
          /[\\/]pg[\\/]lib[\\/]index\.js$/.test(args.importer)
            ? { path: args.path, external: true }
            : undefined,
        );
      },
    },
  ],
};
