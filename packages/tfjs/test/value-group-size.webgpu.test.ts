import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, describe, expect, it } from 'vitest';
import { createKvCache, releaseWebgpu, selectBackend, webgpuPackedAttentionKernel as kernel, type AsyncKvCache, type KvCache } from '@xquant/tfjs';
import { kvLike, maxAbs, maxAbsDiff, randn } from './helpers.js';

process.env.XDG_RUNTIME_DIR ??= '/tmp';

// Probe once: WebGPU needs the optional `webgpu` package and a Vulkan driver (lavapipe here: scripts/setup-webgpu.sh).
let reason = '';
try {
  reason = (await selectBackend({ prefer: 'webgpu' })).reason;
} catch (e) {
  reason = `no WebGPU adapter: ${(e as Error).message}`;
}
const hasWebgpu = tf.getBackend() === 'webgpu';

const H = 2, D = 64, QH = 4, LAYERS = 2;

/** Prefill P tokens, then `steps` decode steps on `backend`; the decode outputs of every layer, step after step. */
async function decodeRun(backend: string, make: () => KvCache, P: number, steps: number): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  const cache = make() as AsyncKvCache;
  const T = P + steps;
  const k = kvLike(H, T, D, 21);
  const v = randn(H * T * D, 22);
  const slice = (x: Float32Array, from: number, n: number) => {
    const out = new Float32Array(H * n * D);
    for (let h = 0; h < H; h++) out.set(x.subarray((h * T + from) * D, (h * T + from + n) * D), h * n * D);
    return out;
  };
  const outs: Float32Array[] = [];
  for (let l = 0; l < LAYERS; l++) {
    const [kt, vt] = [tf.tensor3d(slice(k, 0, P), [H, P, D]), tf.tensor3d(slice(v, 0, P), [H, P, D])];
    await cache.prefillAsync(l, kt, vt);
    const q = tf.tensor3d(randn(QH * P * D, 200 + l), [QH, P, D]);
    tf.dispose([kt, vt, q, cache.attend(l, q)]);
  }
  for (let s = 0; s < steps; s++) {
    for (let l = 0; l < LAYERS; l++) {
      const [kt, vt] = [tf.tensor3d(slice(k, P + s, 1), [H, 1, D]), tf.tensor3d(slice(v, P + s, 1), [H, 1, D])];
      await cache.appendAsync(l, kt, vt);
      const q = tf.tensor3d(randn(QH * D, 3000 * s + l), [QH, 1, D]);
      const o = cache.attend(l, q);
      outs.push((await o.data()) as Float32Array);
      tf.dispose([kt, vt, q, o]);
    }
  }
  cache.dispose();
  return outs;
}

const worstRelative = (a: Float32Array[], b: Float32Array[]) => a.reduce((w, x, i) => Math.max(w, maxAbsDiff(x, b[i]!) / Math.max(maxAbs(b[i]!), 1e-6)), 0);

describe.skipIf(!hasWebgpu)(`WebGPU packed attention with a value group size apart from keys (${hasWebgpu ? reason : `skipped — ${reason}`})`, () => {
  afterAll(() => releaseWebgpu());

  // R = 32 with key groups of 32 and value groups of 64 (= headDim: one scale/zero per token and head)
  it.each(['xquant-1.38', 'kivi-2'])('%s, value group 64: decode steps on WebGPU equal the cpu backend (1e-4 relative), packed kernel used', async (id) => {
    const make = () => createKvCache(id, { layers: LAYERS, kvHeads: H, headDim: D }, { residualLength: 32, groupSize: 32, valueGroupSize: 64 });
    const cpu = await decodeRun('cpu', make, 40, 40);
    kernel.resetCounts();
    const gpu = await decodeRun('webgpu', make, 40, 40);
    expect(kernel.counts.packed).toBe(40 * LAYERS);
    expect(kernel.counts.fallback).toBe(0);
    expect(worstRelative(gpu, cpu)).toBeLessThan(1e-4);
  });

  it('a value group that is not a multiple of 16 falls back to the dense-upload kernel (counted, with its reason)', async () => {
    const make = () => createKvCache('kivi-2', { layers: LAYERS, kvHeads: H, headDim: D }, { residualLength: 32, groupSize: 32, valueGroupSize: 8 });
    const cpu = await decodeRun('cpu', make, 40, 8);
    kernel.resetCounts();
    const gpu = await decodeRun('webgpu', make, 40, 8);
    expect(kernel.counts.packed).toBe(0);
    expect(kernel.counts.fallback).toBe((8 + 1) * LAYERS);
    expect(Object.keys(kernel.counts.fallbackReasons)).toEqual(['value group size 8 (the WGSL kernels need a multiple of 16)']);
    // the dense-upload kernel dequantizes with the reference's fp16 rounding; the cpu packed kernels do not round
    expect(worstRelative(gpu, cpu)).toBeLessThan(2e-3);
  });
});
