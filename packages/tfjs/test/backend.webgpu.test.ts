import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createKvCache,
  denseAttentionKernel,
  plainAttention,
  registerAttentionKernel,
  releaseWebgpu,
  selectBackend,
  unregisterAttentionKernel,
  type AsyncKvCache,
} from '@xquant/tfjs';
import { kvLike, maxAbs, maxAbsDiff, randn, refAttention } from './helpers.js';

process.env.XDG_RUNTIME_DIR ??= '/tmp';

// Probe once: WebGPU needs the optional `webgpu` package and a Vulkan driver (lavapipe here: scripts/setup-webgpu.sh).
let reason = '';
try {
  const sel = await selectBackend({ prefer: 'webgpu' });
  reason = sel.reason;
} catch (e) {
  reason = `no WebGPU adapter: ${(e as Error).message}`;
}
const hasWebgpu = tf.getBackend() === 'webgpu';

describe.skipIf(!hasWebgpu)(`WebGPU (${hasWebgpu ? reason : `skipped — ${reason}`})`, () => {
  beforeAll(async () => {
    await tf.setBackend('webgpu');
  });
  afterAll(() => releaseWebgpu());

  it('full: plain attention on the GPU equals a float64 reference (prefill and decode, GQA)', async () => {
    const H = 2, D = 32, P = 24, qH = 4;
    const k = kvLike(H, P, D, 1);
    const v = randn(H * P * D, 2);
    const q = randn(qH * P * D, 3);
    const cache = createKvCache('full', { layers: 1, kvHeads: H, headDim: D });
    cache.prefill(0, tf.tensor3d(k, [H, P, D]), tf.tensor3d(v, [H, P, D]));
    const o = await cache.attend(0, tf.tensor3d(q, [qH, P, D])).data();
    const ref = refAttention(q, k, v, qH, P, H, P, D);
    expect(maxAbsDiff(o, ref)).toBeLessThan(1e-4 * Math.max(1, maxAbs(ref)));
  });

  it('quantized caches read inputs with appendAsync and attend on the GPU (dense fallback kernel) like cpu', async () => {
    const H = 2, D = 64, P = 100, qH = 4;
    const k = kvLike(H, P + 1, D, 7);
    const v = randn(H * (P + 1) * D, 8);
    const q = randn(qH * D, 9);
    const run = async (backend: string) => {
      await tf.setBackend(backend);
      const cache = createKvCache('xquant-1.38', { layers: 2, kvHeads: H, headDim: D }, { residualLength: 32 }) as AsyncKvCache;
      const kt = tf.tensor3d(k, [H, P + 1, D]);
      const vt = tf.tensor3d(v, [H, P + 1, D]);
      for (const l of [0, 1]) {
        // on WebGPU the sync variants cannot read GPU tensors; the async ones work everywhere
        await cache.prefillAsync(l, tf.slice(kt, [0, 0, 0], [H, P, D]), tf.slice(vt, [0, 0, 0], [H, P, D]));
        await cache.appendAsync(l, tf.slice(kt, [0, P, 0], [H, 1, D]), tf.slice(vt, [0, P, 0], [H, 1, D]));
      }
      cache.attend(0, tf.tensor3d(q, [qH, 1, D])).dispose(); // layers run in order: layer 1 reads layer 0's value codes
      const { keys, values } = cache.dequantize(1); // what attend(1) sees (it flushes afterwards)
      const out = (await cache.attend(1, tf.tensor3d(q, [qH, 1, D])).data()) as Float32Array;
      const plain = (await plainAttention(tf.tensor3d(q, [qH, 1, D]), keys, values).data()) as Float32Array;
      return { out, plain };
    };
    // the packed WGSL kernel is the default on webgpu (tested in webgpu-packed.webgpu.test.ts); this checks the fallback
    registerAttentionKernel('webgpu', denseAttentionKernel);
    const gpu = await run('webgpu').finally(() => unregisterAttentionKernel('webgpu'));
    const cpu = await run('cpu');
    expect(maxAbsDiff(gpu.out, gpu.plain)).toBeLessThan(1e-4 * maxAbs(gpu.plain) + 1e-5);
    expect(maxAbsDiff(gpu.out, cpu.out)).toBeLessThan(2e-3 * maxAbs(cpu.out) + 1e-5);
  });
});
