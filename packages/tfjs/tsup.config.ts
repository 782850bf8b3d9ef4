import { defineConfig, type Options } from 'tsup';

/** The test kit (src/testing) imports the package through '../index.js'; its build imports '@xquant/tfjs' instead, so
 * the kit and the caller share one copy of the package (and of its registries). */
const kitImportsThePackage: NonNullable<Options['esbuildPlugins']>[number] = {
  name: 'testing-kit-imports-the-package',
  setup(build) {
    build.onResolve({ filter: /^\.\.\/index\.js$/ }, (args) => (/[\\/]src[\\/]testing[\\/]/.test(args.importer) ? { path: '@xquant/tfjs', external: true } : undefined));
  },
};

export default defineConfig({
  entry: { index: 'src/index.ts', testing: 'src/testing/index.ts' },
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  splitting: false,
  target: 'es2022',
  platform: 'node',
  esbuildPlugins: [kitImportsThePackage],
});
