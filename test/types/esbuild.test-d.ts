/**
 * Type-level tests: the preset, typed without esbuild, is esbuild's: spread into
 * `esbuild.build({ ... })` as is or with the user's plugins after its own, with no cast.
 */
import type * as esbuild from 'esbuild';
import { describe, expectTypeOf, it } from 'vitest';
import { type LambdaBundlePlugin, lambdaBundleOptions } from '../../src/esbuild.js';

describe('lambdaBundleOptions types', () => {
  it('the options are esbuild BuildOptions, the plugin an esbuild Plugin', () => {
    expectTypeOf(lambdaBundleOptions).toExtend<esbuild.BuildOptions>();
    expectTypeOf<LambdaBundlePlugin>().toExtend<esbuild.Plugin>();
    expectTypeOf(lambdaBundleOptions.plugins).toExtend<esbuild.Plugin[]>();
  });

  it('spreads into esbuild.build, alone or with plugins of the user after its own', () => {
    const mine: esbuild.Plugin = { name: 'mine', setup: () => {} };
    // Never called: only type-checked.
    const build = (b: typeof esbuild.build) => {
      void b({ ...lambdaBundleOptions, entryPoints: ['h.ts'], outdir: 'out' });
      void b({ ...lambdaBundleOptions, plugins: [...lambdaBundleOptions.plugins, mine], outdir: 'out' });
    };
    expectTypeOf(build).toBeFunction();
    // @ts-expect-error: an esbuild plugin needs a setup
    const noSetup: LambdaBundlePlugin = { name: 'x' };
    void noSetup;
  });
});
