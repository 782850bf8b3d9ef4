import { defineConfig } from 'vitest/config';
import { fileURLToPath } from 'node:url';

const pkg = (name: string) => fileURLToPath(new URL(`./packages/${name}/src/index.ts`, import.meta.url));

export default defineConfig({
  resolve: {
    alias: {
      '@xquant/quant': pkg('quant'),
      '@xquant/calibration': pkg('calibration'),
      '@xquant/cross-layer': pkg('cross-layer'),
      '@xquant/tfjs/testing': fileURLToPath(new URL('./packages/tfjs/src/testing/index.ts', import.meta.url)),
      '@xquant/tfjs': pkg('tfjs'),
      '@xquant/models': pkg('models'),
      '@xquant/conformance': pkg('conformance'),
      '@xquant/webgpu/tfjs': fileURLToPath(new URL('./packages/webgpu/src/tfjs.ts', import.meta.url)),
      '@xquant/webgpu/kv-cache': fileURLToPath(new URL('./packages/webgpu/src/kv-cache.ts', import.meta.url)),
      '@xquant/webgpu': pkg('webgpu'),
      '@xquant/eval': pkg('eval'),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'apps/*/test/**/*.test.ts', 'scripts/*.test.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default', 'json', './scripts/skip-reporter.mjs'],
    outputFile: { json: '.vitest-results.json' },
  },
});
