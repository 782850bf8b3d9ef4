import { describe, expect, it } from 'vitest';
import { releaseWebgpu, selectBackend } from '../src/index.js';

describe('selectBackend() default order', () => {
  it('falls through missing native bindings and a software WebGPU adapter to wasm, saying why for each', async () => {
    process.env.XDG_RUNTIME_DIR ??= '/tmp';
    const sel = await selectBackend();
    try {
      // Here neither tfjs-node binding can load and WebGPU is at best Mesa's CPU emulation, so wasm must win.
      expect(sel.backend).toBe('wasm');
      expect(sel.skipped.map((s) => s.name)).toEqual(['tensorflow-gpu', 'tensorflow', 'webgpu']);
      const webgpu = sel.skipped.find((s) => s.name === 'webgpu')!;
      expect(webgpu.why).toMatch(/software WebGPU adapter|no WebGPU adapter|not installed/);
      expect(sel.reason).toMatch(/wasm/);
    } finally {
      releaseWebgpu();
    }
  });
});
