import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  asymkv,
  createKvCache,
  releaseWebgpu,
  selectBackend,
  type AsyncKvCache,
  type KvCache,
  type KvCacheShape,
} from '@xquant/tfjs';
import { registerWebGpuKernels, webgpuCodebookKernel as codebook, webgpuPackedAttentionKernel as kernel } from '../src/kv-cache.js';
import { XqShapeError, lloydMaxCodebook, scaleDecodeTable } from '@xquant/quant';
import { decodeRunAsync, kvLike, maxAbs, maxAbsDiff, randn } from '../../tfjs/test/helpers.js';

registerWebGpuKernels();
afterAll(() => releaseWebgpu());

process.env.XDG_RUNTIME_DIR ??= '/tmp';

// Probe once: WebGPU needs the optional `webgpu` package and a Vulkan driver (lavapipe here: scripts/setup-webgpu.sh).
let reason = '';
try {
  reason = (await selectBackend({ prefer: 'webgpu' })).reason;
} catch (e) {
  reason = `no WebGPU adapter: ${(e as Error).message}`;
}
const hasWebgpu = tf.getBackend() === 'webgpu';

const H = 2;
const D = 32;
const QH = 4;
const LAYERS = 2;
const SHAPE: KvCacheShape = { layers: LAYERS, kvHeads: H, headDim: D };

const decodeRun = (backend: string, make: () => KvCache, P: number, steps: number): Promise<Float32Array[]> =>
  decodeRunAsync(backend, make, { kvHeads: H, headDim: D, queryHeads: QH, layers: LAYERS }, P, steps, 11);

function expectClose(gpu: Float32Array[], cpu: Float32Array[]): number {
  let worst = 0;
  gpu.forEach((g, i) => {
    const c = cpu[i]!;
    worst = Math.max(worst, maxAbsDiff(g, c) / Math.max(maxAbs(c), 1e-6));
  });
  expect(worst).toBeLessThan(1e-4);
  return worst;
}

describe.skipIf(!hasWebgpu)(`WebGPU packed-code attention (${hasWebgpu ? reason : `skipped — ${reason}`})`, () => {
  beforeAll(async () => {
    await tf.setBackend('webgpu');
  });

  // R = 32, chunks of 32 values: 40 + 60 tokens cross two key flushes and seal value chunks, with a partial chunk at every step.
  const opts = { residualLength: 32, groupSize: 16 };
  it.each(['xquant-1.38', 'kivi-2', 'kivi-1'])('%s: decode steps on WebGPU equal the cpu backend (1e-4 relative), packed kernel used', async (id) => {
    const make = () => createKvCache(id, SHAPE, opts);
    const cpu = await decodeRun('cpu', make, 40, 60);
    kernel.resetCounts();
    const gpu = await decodeRun('webgpu', make, 40, 60);
    expect(kernel.counts.packed).toBe(60 * LAYERS);
    expect(kernel.counts.prefill).toBe(LAYERS);
    expect(kernel.counts.fallback).toBe(0);
    expectClose(gpu, cpu);
  });

  it('1-bit keys in groups of 48 (R = 96): the empty key block before the first flush holds whole words, packed kernel used', async () => {
    const make = () => createKvCache('kivi-1', SHAPE, { residualLength: 96, groupSize: 48, valueGroupSize: 16 });
    const cpu = await decodeRun('cpu', make, 40, 70);
    kernel.resetCounts();
    const gpu = await decodeRun('webgpu', make, 40, 70);
    expect([kernel.counts.packed, kernel.counts.fallback]).toEqual([70 * LAYERS, 0]);
    expectClose(gpu, cpu);
  });

  it('full-precision layers pass everything as residual; 8-bit layers fall back to the dense-upload kernel (counted)', async () => {
    const make = () => asymkv({ keyBits: [16, 8], valueBits: [2, 16], ...opts }).createCache(SHAPE);
    const cpu = await decodeRun('cpu', make, 40, 40);
    kernel.resetCounts();
    const gpu = await decodeRun('webgpu', make, 40, 40);
    expect(kernel.counts.packed).toBe(40); // layer 0: 16-bit keys, 2-bit values
    expect(kernel.counts.fallback).toBe(41); // layer 1: 8-bit keys (prefill and 40 decode steps)
    expect(Object.keys(kernel.counts.fallbackReasons)).toEqual(['8-bit key codes (the WGSL kernels read 1/2/4 bits)']);
    // the dense-upload kernel dequantizes with the reference's fp16 rounding; the packed kernels do not round
    const worst = gpu.reduce((w, g, i) => Math.max(w, maxAbsDiff(g, cpu[i]!) / maxAbs(cpu[i]!)), 0);
    expect(worst).toBeLessThan(2e-3);
    const packedOnly = gpu.filter((_, i) => i % LAYERS === 0);
    expectClose(packedOnly, cpu.filter((_, i) => i % LAYERS === 0));
  });

  it('no tensor leaks over 300 decode steps; device mirrors are reported and freed', async () => {
    await tf.setBackend('webgpu');
    const cache = createKvCache('xquant-1.38', { layers: 1, kvHeads: H, headDim: D }, opts) as AsyncKvCache;
    const k = kvLike(H, 1, D, 3);
    const before = tf.memory().numTensors;
    kernel.resetCounts();
    let steady = 0;
    let steadyBytes = 0;
    for (let s = 0; s < 300; s++) {
      const [kt, vt] = [tf.tensor3d(k, [H, 1, D]), tf.tensor3d(randn(H * D, s), [H, 1, D])];
      await cache.appendAsync(0, kt, vt);
      const q = tf.tensor3d(randn(QH * D, s + 7), [QH, 1, D]);
      const o = cache.attend(0, q);
      if (s % 50 === 49) await o.data();
      tf.dispose([kt, vt, q, o]);
      if (s === 100) {
        steady = tf.memory().numTensors;
        steadyBytes = cache.memory().kernelBytes ?? 0;
      }
    }
    expect(kernel.counts.packed).toBe(300);
    expect(tf.memory().numTensors).toBe(steady); // mirrors are replaced, never added to
    expect(cache.memory().kernelBytes ?? 0).toBeGreaterThan(steadyBytes); // grown with the flushed blocks/chunks
    cache.dispose();
    // the kernel provider keeps one helper tensor per backend
    expect(tf.memory().numTensors - before).toBeLessThanOrEqual(1);
  });
});

const decodeRunV = (backend: string, make: () => KvCache, P: number, steps: number): Promise<Float32Array[]> =>
  decodeRunAsync(backend, make, { kvHeads: H, headDim: 64, queryHeads: QH, layers: LAYERS }, P, steps, 21);

const worstRelative = (a: Float32Array[], b: Float32Array[]) => a.reduce((w, x, i) => Math.max(w, maxAbsDiff(x, b[i]!) / Math.max(maxAbs(b[i]!), 1e-6)), 0);

describe.skipIf(!hasWebgpu)(`WebGPU packed attention with a value group size apart from keys (${hasWebgpu ? reason : `skipped — ${reason}`})`, () => {

  // R = 32 with key groups of 32 and value groups of 64 (= headDim: one scale/zero per token and head)
  it.each(['xquant-1.38', 'kivi-2'])('%s, value group 64: decode steps on WebGPU equal the cpu backend (1e-4 relative), packed kernel used', async (id) => {
    const make = () => createKvCache(id, { layers: LAYERS, kvHeads: H, headDim: 64 }, { residualLength: 32, groupSize: 32, valueGroupSize: 64 });
    const cpu = await decodeRunV('cpu', make, 40, 40);
    kernel.resetCounts();
    const gpu = await decodeRunV('webgpu', make, 40, 40);
    expect(kernel.counts.packed).toBe(40 * LAYERS);
    expect(kernel.counts.fallback).toBe(0);
    expect(worstRelative(gpu, cpu)).toBeLessThan(1e-4);
  });

  it('a value group that is not a multiple of 16 falls back to the dense-upload kernel (counted, with its reason)', async () => {
    const make = () => createKvCache('kivi-2', { layers: LAYERS, kvHeads: H, headDim: 64 }, { residualLength: 32, groupSize: 32, valueGroupSize: 8 });
    const cpu = await decodeRunV('cpu', make, 40, 8);
    kernel.resetCounts();
    const gpu = await decodeRunV('webgpu', make, 40, 8);
    expect(kernel.counts.packed).toBe(0);
    expect(kernel.counts.fallback).toBe((8 + 1) * LAYERS);
    expect(Object.keys(kernel.counts.fallbackReasons)).toEqual(['value group size 8 (the WGSL kernels need a multiple of 16)']);
    // the dense-upload kernel dequantizes with the reference's fp16 rounding; the cpu packed kernels do not round
    expect(worstRelative(gpu, cpu)).toBeLessThan(2e-3);
  });
});

describe.skipIf(!hasWebgpu)(`turboquant (codebook) cache on WebGPU (${hasWebgpu ? reason : `skipped — ${reason}`})`, () => {
  const SHAPE64: KvCacheShape = { layers: LAYERS, kvHeads: H, headDim: 64 };
  // 2-bit; half-bit outlier split with 8-bit scales; the rotated split with log8 least-squares scales (the planner's family)
  it.each([
    { bits: 2, residualLength: 32 },
    { keyBits: 2.5, valueBits: 1.5, residualLength: 16, scaleFormat: 'e4m3' },
    { keyBits: [1.5, 3], valueBits: [2, 1], residualLength: 32, split: 'rotated', scaleFormat: 'log8', scaleRule: 'lsq' },
  ])('decode steps on WebGPU equal the cpu backend (1e-4 relative), WGSL codebook kernels used: %j', async (o) => {
    const make = () => createKvCache('turboquant', SHAPE64, o as Record<string, unknown>);
    const cpu = await decodeRunV('cpu', make, 40, 24);
    codebook.resetCounts();
    const gpu = await decodeRunV('webgpu', make, 40, 24);
    // prefill attends before anything is quantized (plain attention); every decode step runs both kernels per layer
    expect([codebook.counts.keyScores, codebook.counts.valueMix]).toEqual([24 * LAYERS, 24 * LAYERS]);
    expect(worstRelative(gpu, cpu)).toBeLessThan(1e-4);
  });

  it('bad input to the codebook kernel: typed errors, no tensor left behind, the device copy still serves', async () => {
    await tf.setBackend('webgpu');
    const segments = [{ start: 0, length: 64, bits: 2, levels: Float32Array.from(lloydMaxCodebook(2, 64).levels), bitOffset: 0, scaleSlot: 0 }];
    const view = { heads: H, tokens: 3, headDim: 64, segments, rowWords: 4, scalesPerRow: 1, packed: new Uint32Array(3 * H * 4).fill(0x1b1b1b1b), scales: new Uint16Array(3 * H).fill(0x3c00), scaleTable: scaleDecodeTable('fp16') };
    const owner = {};
    const keys = { view, layer: 0, kind: 'keys' as const, version: 1, owner };
    const before = tf.memory().numTensors;
    const q3 = tf.zeros([3, 64]) as tf.Tensor2D; // 3 query rows over 2 KV heads
    expect(() => codebook.keyScores(q3, keys)).toThrow(XqShapeError);
    const p = tf.zeros([H, 2]) as tf.Tensor2D; // weights for 2 of the 3 tokens
    expect(() => codebook.valueMix(p, { ...keys, kind: 'values' })).toThrow(XqShapeError);
    // a fourth row whose fp16 scales are +Inf: rejected before anything is written to the device copy
    const scales = new Uint16Array(4 * H).fill(0x3c00).fill(0x7c00, 3 * H);
    const bad = { ...keys, version: 2, view: { ...view, tokens: 4, packed: new Uint32Array(4 * H * 4), scales } };
    const q2 = tf.zeros([H, 64]) as tf.Tensor2D;
    expect(() => codebook.keyScores(q2, bad)).toThrow(/decodes to Infinity/);
    const ints = tf.zeros([H, 64], 'int32') as tf.Tensor2D;
    expect(() => codebook.keyScores(ints, keys)).toThrow(expect.objectContaining({ code: 'E_DTYPE' }));
    tf.dispose([q3, p, q2, ints]);
    expect(tf.memory().numTensors).toBe(before);
    // values tfjs keeps on the CPU (a fresh small tensor) and values on the GPU (a result of an op) give the same scores
    const q = tf.ones([H, 64]) as tf.Tensor2D;
    const onGpu = tf.add(q, tf.zerosLike(q)) as tf.Tensor2D;
    const s = codebook.keyScores(q, keys);
    const s2 = codebook.keyScores(onGpu, keys);
    const got = Array.from(await s.data());
    expect(got.every(Number.isFinite)).toBe(true);
    expect(Array.from(await s2.data())).toEqual(got);
    tf.dispose([q, onGpu, s, s2]);
    codebook.release!(owner);
    expect(codebook.heldBytes!(owner)).toBe(0);
  });

  it('device copies count in memory().kernelBytes and are freed by reset(); no tensor leaks', async () => {
    await tf.setBackend('webgpu');
    const cache = createKvCache('turboquant', { layers: 1, kvHeads: H, headDim: 64 }, { bits: 2, residualLength: 8 }) as AsyncKvCache;
    const before = tf.memory().numTensors;
    const rotationBytes = 2 * H * 64 * 64 * 4;
    const permBytes = 2 * H * 64 * 4;
    codebook.resetCounts();
    for (let s = 0; s < 40; s++) {
      const [kt, vt] = [tf.tensor3d(randn(H * 64, s), [H, 1, 64]), tf.tensor3d(randn(H * 64, s + 99), [H, 1, 64])];
      await cache.appendAsync(0, kt, vt);
      const q = tf.tensor3d(randn(QH * 64, s + 7), [QH, 1, 64]);
      const o = cache.attend(0, q);
      await o.data();
      tf.dispose([kt, vt, q, o]);
    }
    expect(tf.memory().numTensors).toBe(before);
    // 31 attends over quantized rows, keys and values: rows appended in place, whole copies only when room doubles
    expect(codebook.counts.uploads + codebook.counts.appends).toBe(2 * 31);
    expect(codebook.counts.uploads).toBeLessThanOrEqual(2 * 6);
    const held = cache.memory().kernelBytes! - rotationBytes - permBytes;
    // 32 quantized tokens (the last attend saw 31 rows: it flushes afterwards) of 2 heads: 4 code words and one fp16 scale per row
    expect(held).toBeGreaterThanOrEqual(31 * H * 4 * 4);
    cache.reset();
    expect(cache.memory().kernelBytes).toBe(0);
    cache.dispose();
  });
});
