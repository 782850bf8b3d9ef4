import { defineConfig } from 'tsup';
// Three self-contained builds (no shared chunks, so each keeps its own platform): index = Node (strings are paths),
// browser = platform-neutral (strings are URLs; no node: imports, checked by test/browser-build.test.ts); gpu = the raw
// WebGPU decoder (Node: loads model files from paths).
export default defineConfig({
  entry: { index: 'src/index.ts', browser: 'src/browser.ts', gpu: 'src/gpu/index.ts' },
  external: ['@xquant/webgpu', 'webgpu'],
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  splitting: false,
  target: 'es2022',
  platform: 'node',
});
