import { defineConfig } from 'tsup';
export default defineConfig({
  entry: { index: 'src/index.ts', tfjs: 'src/tfjs.ts', 'kv-cache': 'src/kv-cache.ts' },
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'es2022',
  platform: 'neutral',
  external: ['@tensorflow/tfjs-core', '@tensorflow/tfjs-backend-webgpu', 'webgpu', '@xquant/tfjs'],
});
