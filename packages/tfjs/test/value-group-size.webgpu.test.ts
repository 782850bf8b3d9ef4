import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, describe, expect, it } from 'vitest';
import { createKvCache, releaseWebgpu, selectBackend, webgpuPackedAttentionKernel as kernel, type KvCache } from '@xquant/tfjs';
import { decodeRunAsync, maxAbs, maxAbsDiff } from './helpers.js';

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

const decodeRun = (backend: string, make: () => KvCache, P: number, steps: number): Promise<Float32Array[]> =>
  decodeRunAsync(backend, make, { kvHeads: H, headDim: D, queryHeads: QH, layers: LAYERS }, P, steps, 21);

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
