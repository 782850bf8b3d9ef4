import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import { createKvCache } from '@xquant/tfjs';
import { DeviceKvCache, type DeviceQuantizedConfig } from '../src/index.js';
import { matrixDecodeSource, matrixSharedBytes, matrixUnsupported } from '../src/device/matrix-attention-wgsl.js';
import { buffer, compare, device, gpu, identityRope, mixedPlan, reason, trackBuffers } from './device-compare.js';

// The matrix kernel (tuning `matrix`) on lavapipe: no subgroup matrices there, so `'emulate'` runs the same kernel with
// the 16 × 8 × 16 products written as loops over the same workgroup-memory tiles; everything else (decode of the codes
// into f16 tiles, Q′ and P′, the bias and zero-point sums, softmax, rings, chunking, partials) is the real kernel's.
const emulate = { matrix: 'emulate' as const };

describe.skipIf(!gpu)(`device cache, matrix kernel (${reason ?? 'lavapipe'})`, () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });
  it('xquant-1.38 and kivi-2 over two chunks (300 positions), GQA 4 and 7 heads per KV head, head dims 64 and 32, the chunk\'s words loaded up front (prefetch, the default) and per sub-block: the CPU cache\'s numbers within f16 rounding', async () => {
    if (!device!.features.has('subgroups') || !device!.features.has('shader-f16')) return;
    const xq = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32 }, qHeads: 8, kvHeads: 2, tuning: emulate }, 300, 2);
    expect(xq.maxRel).toBeLessThan(5e-3);
    const perSubBlock = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32 }, qHeads: 8, kvHeads: 2, tuning: { ...emulate, prefetch: false } }, 300, 2);
    expect(perSubBlock.maxRel).toBeLessThan(5e-3);
    const kivi = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 32 }, qHeads: 14, kvHeads: 2, tuning: emulate }, 280, 2);
    expect(kivi.maxRel).toBeLessThan(5e-3);
    const xq32 = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32 }, qHeads: 4, kvHeads: 1, tuning: emulate }, 270, 2, 32);
    expect(xq32.maxRel).toBeLessThan(5e-3);
  }, 900_000);

  it('a plan mixing 1/2/4/16 bits, borrowed codes and calibrations: packed layers on the matrix kernel, fp16 layers on the float one in the same 256-token chunks; the dispatch says which', async () => {
    const dev = device!;
    if (!dev.features.has('subgroups') || !dev.features.has('shader-f16')) return;
    const options = mixedPlan(32);
    const planned = await compare({ name: 'planned', preset: 'planned', options, qHeads: 8, kvHeads: 2, tuning: emulate }, 280, 4);
    expect(planned.maxRel).toBeLessThan(5e-3);
    const cpu = createKvCache('planned', { layers: 4, kvHeads: 2, headDim: 64 }, options) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
    const c = await DeviceKvCache.create(dev, { layers: 4, qHeads: 8, kvHeads: 2, headDim: 64 }, { kind: 'quantized', config: cpu.config }, { capacity: 300, tuning: emulate });
    cpu.dispose();
    const io = { qkv: buffer(dev, new Float32Array(12 * 64)), rope: buffer(dev, identityRope(c.capacity, 64)), out: buffer(dev, new Float32Array(8 * 64)) };
    try {
      c.attach(io);
      c.beginPosition();
      // layers 0 and 1: packed keys and values; layer 2: fp16 keys; layer 3: fp16 values
      expect([0, 1, 2, 3].map((l) => c.attentionDispatch(l).matrix)).toEqual([true, true, false, false]);
      expect(c.attentionDispatch(0)).toMatchObject({ headsPerGroup: 4, chunks: 1, workgroups: 2 });
      expect(c.attentionDispatch(2)).toMatchObject({ workgroup: 64, slot: 4, chunks: 1 });
      c.endPosition();
    } finally {
      c.dispose();
      for (const b of Object.values(io)) b.destroy();
    }
  }, 900_000);

  it('typed errors: no subgroup matrices on the device, a bad value, the int8 or f16 paths, more than 8 heads per KV head, a geometry given beside it; a full cache ignores the option', async () => {
    const dev = device!;
    const cpu = createKvCache('xquant-1.38', { layers: 2, kvHeads: 2, headDim: 64 }, { residualLength: 32 }) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
    const spec = { kind: 'quantized' as const, config: cpu.config };
    cpu.dispose();
    const shape = { layers: 2, qHeads: 8, kvHeads: 2, headDim: 64 };
    await expect(DeviceKvCache.create(dev, shape, spec, { capacity: 64, tuning: { matrix: 'yes' as never } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/matrix must be/) });
    if (!dev.features.has('chromium-experimental-subgroup-matrix' as GPUFeatureName)) {
      const m = DeviceKvCache.create(dev, shape, spec, { capacity: 64, tuning: { matrix: true } });
      await expect(m).rejects.toMatchObject({ code: 'E_BACKEND_UNAVAILABLE', message: expect.stringMatching(/allow_unsafe_apis/) });
    }
    await expect(DeviceKvCache.create(dev, shape, spec, { capacity: 64, tuning: { matrix: 'emulate', valueDot: 'f16' } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/int8 or f16/) });
    await expect(DeviceKvCache.create(dev, shape, spec, { capacity: 64, tuning: { matrix: 'emulate', keyDot: 'int8' } })).rejects.toMatchObject({ code: 'E_CONFIG' });
    if (!dev.features.has('subgroups') || !dev.features.has('shader-f16')) return;
    await expect(DeviceKvCache.create(dev, shape, spec, { capacity: 64, tuning: { matrix: 'emulate', workgroup: 128, small: { workgroup: 32, slot: 4 } } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/own geometry.*workgroup, small/) });
    const cpu9 = createKvCache('xquant-1.38', { layers: 2, kvHeads: 1, headDim: 64 }, { residualLength: 32 }) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
    // (rejected after the layers' buffers were made: none is left allocated)
    const { live, restore } = trackBuffers(dev);
    try {
      await expect(DeviceKvCache.create(dev, { layers: 2, qHeads: 9, kvHeads: 1, headDim: 64 }, { kind: 'quantized', config: cpu9.config }, { capacity: 64, tuning: { matrix: 'emulate' } })).rejects.toMatchObject({
        code: 'E_CONFIG',
        message: expect.stringMatching(/layer 0: 9 query heads per KV head/),
      });
      expect(live.size).toBe(0);
    } finally {
      restore();
      cpu9.dispose();
    }
    const full = await DeviceKvCache.create(dev, shape, { kind: 'full' }, { capacity: 64, tuning: { matrix: true } });
    full.dispose();
  }, 120_000);
});

describe('matrix kernel source (no GPU)', () => {
  const base = { headDim: 64, rep: 4, keys: { bits: 2 as const, groupSize: 32 }, values: { bits: 1 as const, groupSize: 32 }, subgroupSize: 32 };
  it('hardware source: 16 × 8 × 16 f16 → f32 tiles, one product per 16 channels (scores) and per 16 tokens (values), workgroup memory within 48 KiB up to head dim 128', () => {
    const src = matrixDecodeSource(base);
    expect(src).toContain('enable chromium_experimental_subgroup_matrix;');
    expect(src).toContain('alias MR = subgroup_matrix_right<f16, 8, 16>;');
    // scores: 4 channel tiles of one 16-token tile; values: 4 token tiles of one 16-channel tile (per subgroup)
    expect(src.match(/subgroupMatrixMultiplyAccumulate/g)).toHaveLength(8);
    expect(src.match(/subgroupMatrixStore/g)).toHaveLength(2);
    expect(matrixSharedBytes({ ...base, headDim: 128 })).toBeLessThanOrEqual(48 * 1024);
    const emulated = matrixDecodeSource({ ...base, emulate: true, subgroupSize: 8 });
    expect(emulated).not.toContain('subgroupMatrix');
    // prefetch: the chunk's words in registers, read from them (not from storage) in the sub-block loops
    const pre = matrixDecodeSource({ ...base, prefetch: true });
    expect(pre).toMatch(/var kw: array<u32, 8>;/);
    expect(pre).toMatch(/let w = kw\[sb \* 2u \+ i\];/);
    expect(pre).toMatch(/let w = vw\[sb \* 1u \+ i\];/);
    expect(src).not.toContain('var kw');
    // stageMeta: the chunk's 8 key groups × 64 channels and 256 tokens × 2 value groups of scale/zero words in workgroup
    // memory (4 KiB more), read there; without it every such read goes to storage (km / vm) inside the loops
    const staged = matrixDecodeSource({ ...base, stageMeta: true });
    expect(staged).toContain('var<workgroup> kms: array<u32, 512>;');
    expect(staged).toContain('var<workgroup> vms: array<u32, 512>;');
    expect(staged.match(/km\[/g)).toHaveLength(1);
    expect(staged.match(/vm\[/g)).toHaveLength(1);
    expect(src).not.toContain('kms');
    expect(src.match(/km\[/g)).toHaveLength(2);
    expect(src.match(/vm\[/g)).toHaveLength(5); // 2 value groups × (softmax scale, zero-point) + P′
    expect(matrixSharedBytes({ ...base, stageMeta: true }) - matrixSharedBytes(base)).toBe(4 * 1024);
    // head dim 128 staged passes 48 KiB (the cache then falls back to unstaged)
    expect(matrixSharedBytes({ ...base, headDim: 128, stageMeta: true })).toBeGreaterThan(48 * 1024);
  });
  it('says why a layer does not fit it', () => {
    expect(matrixUnsupported(base)).toBeNull();
    expect(matrixUnsupported({ ...base, rep: 9 })).toMatch(/9 query heads/);
    expect(matrixUnsupported({ ...base, headDim: 40 })).toMatch(/head dim 40/);
    expect(matrixUnsupported({ ...base, keys: { bits: 2, groupSize: 48 } })).toMatch(/key group 48/);
    expect(matrixUnsupported({ ...base, values: { bits: 1, groupSize: 8 } })).toMatch(/value group 8/);
    expect(matrixUnsupported({ ...base, subgroupSize: 64 })).toMatch(/32-wide/);
    expect(matrixUnsupported({ ...base, headDim: 16, keys: { bits: 1, groupSize: 32 } })).toMatch(/longer than a 16-token sub-block/);
    expect(() => matrixDecodeSource({ ...base, rep: 9 })).toThrow(/9 query heads/);
  });
});
