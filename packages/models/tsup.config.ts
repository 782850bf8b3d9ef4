import { defineConfig } from 'tsup';
export default defineConfig({
  entry: { index: 'src/index.ts', gpu: 'src/gpu/index.ts' },
  external: ['@xquant/webgpu', 'webgpu'],
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'es2022',
  platform: 'node',
});
