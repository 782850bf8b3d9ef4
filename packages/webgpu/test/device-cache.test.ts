import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKvCache } from '@xquant/tfjs';
import { DeviceKvCache, INT8_KEYS_MIN_CAPACITY, type DeviceAttentionTuning, type DeviceQuantizedConfig } from '../src/index.js';
import { cooperativeKeys } from '../src/device/update-wgsl.js';
import { buffer, compare, device, gpu, gpuErrors, identityRope, mixedPlan, readF32, reason, trackBuffers } from './device-compare.js';

describe.skipIf(!device)(`device-resident KV cache vs the CPU cache (${reason || 'WebGPU adapter'})`, () => {
  beforeAll(async () => {
    tf.enableProdMode();
    await tf.setBackend('cpu');
  });
  afterAll(() => gpu?.device.destroy());

  it('full (fp16 rows), GQA 7, short-context geometry: every position within fp16 rounding of the float32 CPU cache', async () => {
    const { maxRel } = await compare({ name: 'full', preset: 'full', qHeads: 14, kvHeads: 2 }, 70);
    expect(maxRel).toBeLessThan(1e-3);
  }, 600_000);

  it('kivi-2, R = 32, GQA 3 in groups of 2 heads, 16-token slots: the same codes and scale/zero as the CPU cache across key flushes and value quantizations', async () => {
    const { maxRel } = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 32 }, qHeads: 6, kvHeads: 2, tuning: { slot: 16, small: null, headsPerGroup: 2 } }, 100);
    expect(maxRel).toBeLessThan(2e-5);
  }, 600_000);

  it('xquant-1.38 (η calibration, cross-layer shared codes), R = 32, 4-token key slots, 8-channel value slots', async () => {
    const { maxRel } = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32 }, qHeads: 4, kvHeads: 2, tuning: { slot: 4, workgroup: 32, small: null, valueSlot: 8 } }, 100);
    expect(maxRel).toBeLessThan(2e-5);
  }, 600_000);

  it('a plan mixing 1/2/4/16 bits, value group 64, η and least squares on borrowed codes, GQA 4 served by one workgroup, short-context geometry', async () => {
    const { maxRel } = await compare({ name: 'planned', preset: 'planned', options: mixedPlan(64), qHeads: 8, kvHeads: 2, tuning: { headsPerGroup: 4 } }, 100, 4);
    // fp16 rows of the 16-bit layers and float32 least squares (the CPU fits in float64)
    expect(maxRel).toBeLessThan(1e-3);
  }, 600_000);

  it("half-precision value mix (valueDot 'f16'): 1-, 2- and 4-bit values in 8- and 16-channel slots, η and least squares, borrowed codes, values near the fp16 limit, within 1e-2 of the CPU cache; a typed error without shader-f16", async () => {
    const dev = device!;
    const options = {
      residualLength: 32,
      groupSize: 32,
      valueGroupSize: 32,
      keys: [{ bits: 2, codesFrom: null }, { bits: 2, codesFrom: null }, { bits: 4, codesFrom: null }, { bits: 2, codesFrom: 0 }],
      values: [{ bits: 1, codesFrom: null }, { bits: 2, codesFrom: null }, { bits: 4, codesFrom: null }, { bits: 1, codesFrom: 0 }],
      keyCalibration: ['eta', 'none', 'none', 'eta'],
      valueCalibration: ['eta', 'least-squares', 'none', 'eta'],
    };
    const cpu = createKvCache('planned', { layers: 4, kvHeads: 2, headDim: 64 }, options) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
    const spec = { kind: 'quantized' as const, config: cpu.config };
    cpu.dispose();
    // a device opened without shader-f16: a typed error before anything is allocated
    const plainAdapter = await gpu!.gpu.requestAdapter();
    const plain = await plainAdapter!.requestDevice();
    await expect(DeviceKvCache.create(plain, { layers: 4, qHeads: 8, kvHeads: 2, headDim: 64 }, spec, { capacity: 64, tuning: { valueDot: 'f16' } })).rejects.toMatchObject({
      code: 'E_BACKEND_UNAVAILABLE',
      message: expect.stringMatching(/shader-f16/),
    });
    plain.destroy();
    if (!dev.features.has('shader-f16')) return;
    const probe = await DeviceKvCache.create(dev, { layers: 4, qHeads: 8, kvHeads: 2, headDim: 64 }, spec, { capacity: 64, tuning: { valueDot: 'f16' } });
    const io = { qkv: buffer(dev, new Float32Array(12 * 64)), rope: buffer(dev, identityRope(probe.capacity, 64)), out: buffer(dev, new Float32Array(8 * 64)) };
    probe.attach(io);
    expect(probe.attentionDispatch(0).valueMix).toBe('f16');
    probe.dispose();
    for (const b of Object.values(io)) b.destroy();
    // 16-channel slots: 16, 32 and 64 bits of codes per thread; 8-channel slots: 8, 16 and 32 (every regrouping)
    for (const tuning of [{ valueDot: 'f16' as const, valueSlot: 16 }, { valueDot: 'f16' as const, valueSlot: 8, slot: 16, small: null }]) {
      const { maxRel } = await compare({ name: 'planned', preset: 'planned', options, qHeads: 8, kvHeads: 2, tuning }, 100, 4);
      // measured 1.2–2.1e-3 on lavapipe (sums of up to 32 products per thread in f16)
      expect(maxRel).toBeLessThan(1e-2);
    }
    // values in ±60000 (scales near the fp16 limit), 8 token lanes per 128-token chunk (up to 16 packed tokens summed per
    // thread): the weights' scaling by the chunk's largest scale keeps every f16 sum finite
    const wide = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 32 }, qHeads: 4, kvHeads: 2, amplitude: 60000, tuning: { workgroup: 32, slot: 4, small: null, valueDot: 'f16' } }, 100, 1);
    expect(wide.maxRel).toBeLessThan(1e-2);
  }, 600_000);

  it('value groups of 128 channels (the cooperative value quantization in half-workgroup segments), least squares and η, head dim 128', async () => {
    const options = {
      residualLength: 32,
      groupSize: 32,
      valueGroupSize: 128,
      keys: [{ bits: 2, codesFrom: null }, { bits: 2, codesFrom: null }],
      values: [{ bits: 2, codesFrom: null }, { bits: 4, codesFrom: null }],
      keyCalibration: ['eta', 'none'],
      valueCalibration: ['least-squares', 'eta'],
    };
    const { maxRel } = await compare({ name: 'planned', preset: 'planned', options, qHeads: 4, kvHeads: 2 }, 44, 2, 128);
    // float32 least squares (the CPU fits in float64)
    expect(maxRel).toBeLessThan(1e-3);
  }, 600_000);

  it('key blocks flushed cooperatively (groups of 32, channel and quad layouts) and by one thread per group (groups of 48 or 128 in the quad layout): the numbers of the CPU cache', async () => {
    const packed = (groupSize: number, keyLayout?: 'quad') => ({ keys: { kind: 'packed' as const, bits: 2 as const, groupSize }, ...(keyLayout ? { keyLayout } : {}) });
    expect([cooperativeKeys(packed(32)), cooperativeKeys(packed(32, 'quad')), cooperativeKeys(packed(48)), cooperativeKeys(packed(128, 'quad'))]).toEqual([true, true, false, false]);
    // key groups of 48 tokens (R = 48): the per-thread key flush (values in groups of 16 channels)
    const { maxRel } = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 48, groupSize: 48, valueGroupSize: 16 }, qHeads: 4, kvHeads: 2, tuning: { slot: 16, small: null } }, 130, 1);
    expect(maxRel).toBeLessThan(2e-5);
    // key groups of 128 in the int8 keys' quad layout (R = 128): the per-thread flush writing quad words
    const quad = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 128, groupSize: 128, valueGroupSize: 32 }, qHeads: 2, kvHeads: 2, tuning: { keyDot: 'int8', slot: 16, small: null } }, 300, 1);
    expect(quad.maxRel).toBeLessThan(1e-2);
  }, 600_000);

  it('groups wider than fp16 (values in ±60000): the CPU cache\'s exact range and bounded scale, finite outputs', async () => {
    const { maxRel } = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 32 }, qHeads: 4, kvHeads: 2, amplitude: 60000, tuning: { slot: 16, small: null } }, 70, 2);
    expect(maxRel).toBeLessThan(2e-5);
  }, 600_000);

  it('the short-context geometry runs while the main one, counted in chunks × KV heads × head groups, has fewer than 256 workgroups', async () => {
    const dev = device!;
    const D = 64;
    const cpu = createKvCache('kivi-2', { layers: 1, kvHeads: 2, headDim: D }, { residualLength: 32 }) as unknown as { config: DeviceQuantizedConfig };
    // main: 64 threads × 4-token slots (256-token chunks), 2 of the 4 query heads per workgroup; short: 128-token chunks
    const cache = await DeviceKvCache.create(dev, { layers: 1, qHeads: 8, kvHeads: 2, headDim: D }, { kind: 'quantized', config: cpu.config }, { capacity: 20_001, tuning: { workgroup: 64, slot: 4, headsPerGroup: 2, medium: null } });
    const io = { qkv: buffer(dev, new Float32Array(12 * D)), rope: buffer(dev, identityRope(cache.capacity, D)), out: buffer(dev, new Float32Array(8 * D)) };
    cache.attach(io);
    try {
      // 20 000 tokens: 79 chunks × 2 KV heads × 2 head groups = 316 workgroups → main (chunks × KV heads alone: 158)
      await cache.fillSynthetic(19_999);
      cache.beginPosition();
      expect(cache.attentionDispatch()).toEqual({ geometry: 'main', workgroup: 64, slot: 4, headsPerGroup: 2, chunks: 79, workgroups: 316, keyScores: 'f32', valueMix: 'f32', subgroups: false, matrix: false });
      // 10 000 tokens: 40 × 2 × 2 = 160 → short-context, 79 chunks of 128 tokens
      await cache.fillSynthetic(9_999);
      cache.beginPosition();
      expect(cache.attentionDispatch()).toEqual({ geometry: 'short-context', workgroup: 32, slot: 4, headsPerGroup: 2, chunks: 79, workgroups: 316, keyScores: 'f32', valueMix: 'f32', subgroups: false, matrix: false });
    } finally {
      cache.dispose();
      for (const b of Object.values(io)) b.destroy();
    }
  }, 600_000);

  it('refuses a medium geometry outside 32…256 threads / 4, 8, 16-token slots, or beside the int8 paths, with E_CONFIG', async () => {
    const cpu = createKvCache('kivi-2', { layers: 1, kvHeads: 2, headDim: 64 }, { residualLength: 32 }) as unknown as { config: DeviceQuantizedConfig };
    const make = (tuning: object) => DeviceKvCache.create(device!, { layers: 1, qHeads: 4, kvHeads: 2, headDim: 64 }, { kind: 'quantized', config: cpu.config }, { capacity: 64, tuning });
    await expect(make({ medium: { workgroup: 48, slot: 4 } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/medium geometry/) });
    await expect(make({ medium: { workgroup: 64, slot: 5 } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/medium geometry/) });
    await expect(make({ keyDot: 'int8', slot: 16, medium: { workgroup: 64, slot: 16 } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/int8/) });
  });

  it('head dims that are not powers of two (80, 96: fractional threads per row) and bad unroll counts are typed errors', async () => {
    for (const D of [80, 96, 512]) {
      await expect(DeviceKvCache.create(device!, { layers: 1, qHeads: 2, kvHeads: 1, headDim: D }, { kind: 'full' }, { capacity: 64 })).rejects.toMatchObject({ code: 'E_SHAPE', message: expect.stringMatching(/power of two/) });
    }
    for (const tuning of [{ unroll: 0 }, { unroll: 2.5 }, { valueUnroll: 64 }]) {
      await expect(DeviceKvCache.create(device!, { layers: 1, qHeads: 2, kvHeads: 1, headDim: 64 }, { kind: 'full' }, { capacity: 64, tuning })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/nroll must be an integer/) });
    }
  });

  it('unroll counts that do not divide the loop (3 key quads, 3 value tokens) keep every step inside it: the numbers of the float32 CPU cache', async () => {
    // 16 key quads per row (head dim 64) and 32 value tokens per lane: steps of 2 and 2 (before: quads 15…17, wrong numbers)
    const { maxRel } = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 32 }, qHeads: 4, kvHeads: 2, tuning: { unroll: 3, valueUnroll: 3, slot: 16, small: null } }, 70, 2);
    expect(maxRel).toBeLessThan(2e-5);
  }, 600_000);

  it('fp16 rows with GQA from head dim 128 default to 256 threads × 4-token slots and at most 4 query heads per workgroup: the numbers of the CPU cache', async () => {
    const dev = device!;
    for (const [qHeads, D, want] of [[8, 128, { workgroup: 256, slot: 4, headsPerGroup: 4 }], [14, 128, { workgroup: 256, slot: 4, headsPerGroup: 4 }], [8, 64, { workgroup: 128, slot: 4, headsPerGroup: 4 }]] as const) {
      const c = await DeviceKvCache.create(dev, { layers: 1, qHeads, kvHeads: 2, headDim: D }, { kind: 'full' }, { capacity: 4096, tuning: { small: null } });
      const io = { qkv: buffer(dev, new Float32Array((qHeads + 4) * D)), rope: buffer(dev, identityRope(c.capacity, D)), out: buffer(dev, new Float32Array(qHeads * D)) };
      c.attach(io);
      c.beginPosition();
      expect(c.attentionDispatch(0)).toMatchObject(want);
      c.dispose();
      for (const b of Object.values(io)) b.destroy();
    }
    // 7 query heads per KV head in two workgroups of 4 (the last head repeated, its result not written)
    const { maxRel } = await compare({ name: 'full', preset: 'full', qHeads: 14, kvHeads: 2, tuning: { small: null } }, 40, 2, 128);
    expect(maxRel).toBeLessThan(1e-3);
  }, 600_000);

  it("the benchmark-only modes ('arith': the packed loops' loads without their arithmetic; 'nomerge', 'empty', 'empty-nomerge', 'nolanes': launch, merge and lane-reduction costs) compile and run for both key paths", async () => {
    const dev = device!;
    const D = 64;
    for (const [qHeads, keyDot, debugSkip] of [[8, 'f32', 'arith'], [2, 'int8', 'arith'], [8, 'f32', 'nomerge'], [8, 'f32', 'empty'], [2, 'int8', 'empty-nomerge'], [8, 'f32', 'nolanes']] as const) {
      const cpu = createKvCache('xquant-1.38', { layers: 2, kvHeads: 2, headDim: D }, { residualLength: 32 }) as unknown as { config: DeviceQuantizedConfig };
      dev.pushErrorScope('validation');
      const c = await DeviceKvCache.create(dev, { layers: 2, qHeads, kvHeads: 2, headDim: D }, { kind: 'quantized', config: cpu.config }, { capacity: 128, tuning: { debugSkip, keyDot, slot: 16, small: null } });
      const io = { qkv: buffer(dev, new Float32Array((qHeads + 4) * D)), rope: buffer(dev, identityRope(c.capacity, D)), out: buffer(dev, new Float32Array(qHeads * D)) };
      c.attach(io);
      for (let p = 0; p < 40; p++) {
        c.beginPosition();
        const enc = dev.createCommandEncoder();
        const pass = enc.beginComputePass();
        for (let l = 0; l < 2; l++) c.encodeLayer(pass, l);
        pass.end();
        dev.queue.submit([enc.finish()]);
      }
      await dev.queue.onSubmittedWorkDone();
      expect(await dev.popErrorScope()).toBeNull();
      c.dispose();
      for (const b of Object.values(io)) b.destroy();
    }
  }, 600_000);

  it('value loads with and without the prefetch (the default: first batch before the softmax reductions, double-buffered after): the numbers of the CPU cache for fp16 rows, 1/2/4-bit codes and borrowed codes', async () => {
    const full = await compare({ name: 'full', preset: 'full', qHeads: 8, kvHeads: 2, tuning: { prefetch: false, small: null, workgroup: 32 } }, 70);
    expect(full.maxRel).toBeLessThan(1e-3);
    const options = {
      residualLength: 32,
      groupSize: 32,
      valueGroupSize: 32,
      keys: [{ bits: 2, codesFrom: null }, { bits: 2, codesFrom: 0 }, { bits: 4, codesFrom: null }],
      values: [{ bits: 1, codesFrom: null }, { bits: 1, codesFrom: 0 }, { bits: 4, codesFrom: null }],
      keyCalibration: ['eta', 'eta', 'none'],
      valueCalibration: ['eta', 'least-squares', 'none'],
    };
    for (const prefetch of [true, false]) {
      // batches of 2 tokens per lane: the prefetch in the last iteration reloads its own rows
      const planned = await compare({ name: 'planned', preset: 'planned', options, qHeads: 8, kvHeads: 2, tuning: { prefetch, small: null, workgroup: 64, slot: 8, valueUnroll: 2 } }, 100, 3);
      expect(planned.maxRel).toBeLessThan(1e-3);
    }
    await expect(DeviceKvCache.create(device!, { layers: 1, qHeads: 2, kvHeads: 1, headDim: 64 }, { kind: 'full' }, { capacity: 64, tuning: { prefetch: 1 as never } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/prefetch must be/) });
  }, 600_000);

  it('the mid-length geometry (half the main workgroup) runs while the main one has fewer than 512 workgroups and it at least 256', async () => {
    const dev = device!;
    const D = 64;
    const cpu = createKvCache('kivi-2', { layers: 1, kvHeads: 2, headDim: D }, { residualLength: 32 }) as unknown as { config: DeviceQuantizedConfig };
    // main: 128 threads × 4-token slots (512-token chunks); medium by default 64 × 4 (256); short 32 × 4 (128)
    const cache = await DeviceKvCache.create(dev, { layers: 1, qHeads: 8, kvHeads: 2, headDim: D }, { kind: 'quantized', config: cpu.config }, { capacity: 70_001, tuning: { workgroup: 128, slot: 4, headsPerGroup: 2 } });
    const io = { qkv: buffer(dev, new Float32Array(12 * D)), rope: buffer(dev, identityRope(cache.capacity, D)), out: buffer(dev, new Float32Array(8 * D)) };
    cache.attach(io);
    const at = async (tokens: number) => {
      await cache.fillSynthetic(tokens - 1);
      cache.beginPosition();
      return cache.attentionDispatch();
    };
    try {
      // 137 chunks × 2 KV heads × 2 head groups = 548 ≥ 512 → main
      expect(await at(70_000)).toMatchObject({ geometry: 'main', workgroup: 128, chunks: 137, workgroups: 548 });
      // main 40 × 4 = 160; medium 79 × 4 = 316 ≥ 256 → medium
      expect(await at(20_000)).toMatchObject({ geometry: 'medium', workgroup: 64, slot: 4, chunks: 79, workgroups: 316, keyScores: 'f32', valueMix: 'f32' });
      // main 10 × 4 = 40, medium 20 × 4 = 80 → short-context
      expect(await at(5_000)).toMatchObject({ geometry: 'short-context', workgroup: 32, chunks: 40, workgroups: 160 });
      // no such layer: a typed error, and the cache still answers for layer 0
      expect(() => cache.attentionDispatch(1)).toThrow(expect.objectContaining({ code: 'E_STATE' }));
      expect(() => cache.attentionDispatch(0.5)).toThrow(expect.objectContaining({ code: 'E_STATE' }));
      expect(cache.attentionDispatch(0).geometry).toBe('short-context');
    } finally {
      cache.dispose();
      for (const b of Object.values(io)) b.destroy();
    }
  }, 600_000);

  describe('subgroup reductions (subgroups: true; lavapipe has one subgroup size, 8)', () => {
    // (D = 64 with 16-channel value slots: 4 threads per row, 2 token lanes per 8-lane subgroup, one shuffle step; 8-channel
    // slots: a subgroup per row, no step; D = 32 with 16-channel slots: 4 lanes, two steps)
    it('fp16 rows and packed codes, one or two shuffle steps or none, one or two lane rounds, GQA: the numbers of the CPU cache', async () => {
      if (!device!.features.has('subgroups')) return;
      const sg = { subgroups: true, small: null } as const;
      const full = await compare({ name: 'full', preset: 'full', qHeads: 8, kvHeads: 2, tuning: { ...sg, workgroup: 32 } }, 70);
      expect(full.maxRel).toBeLessThan(1e-3);
      const full32 = await compare({ name: 'full', preset: 'full', qHeads: 6, kvHeads: 2, tuning: sg }, 40, 2, 32);
      expect(full32.maxRel).toBeLessThan(1e-3);
      const kivi = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 32 }, qHeads: 6, kvHeads: 2, tuning: { ...sg, slot: 16, headsPerGroup: 2 } }, 100);
      expect(kivi.maxRel).toBeLessThan(2e-5);
      // 4 heads per workgroup, 4 subgroups of 64 channels each: the 128-token chunk's scratch holds two heads per round
      const xq = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32 }, qHeads: 8, kvHeads: 2, tuning: { ...sg, slot: 4, workgroup: 32, headsPerGroup: 4 } }, 100);
      expect(xq.maxRel).toBeLessThan(2e-5);
      const xq32 = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32, groupSize: 32 }, qHeads: 8, kvHeads: 2, tuning: { ...sg, workgroup: 64, slot: 4, headsPerGroup: 4 } }, 100, 3, 32);
      expect(xq32.maxRel).toBeLessThan(2e-5);
    }, 600_000);

    it("a plan mixing 1/2/4/16 bits with the f16 value mix and the default geometries (short-context included), and the dispatch says so; typed errors without the feature, beside valueDot 'int8', or for a non-boolean", async () => {
      const dev = device!;
      const options = mixedPlan(32);
      const cpu = createKvCache('planned', { layers: 4, kvHeads: 2, headDim: 64 }, options) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
      const spec = { kind: 'quantized' as const, config: cpu.config };
      cpu.dispose();
      const shape = { layers: 4, qHeads: 8, kvHeads: 2, headDim: 64 };
      const plain = await (await gpu!.gpu.requestAdapter())!.requestDevice();
      await expect(DeviceKvCache.create(plain, shape, spec, { capacity: 64, tuning: { subgroups: true } })).rejects.toMatchObject({ code: 'E_BACKEND_UNAVAILABLE', message: expect.stringMatching(/'subgroups' feature/) });
      plain.destroy();
      await expect(DeviceKvCache.create(dev, shape, spec, { capacity: 64, tuning: { subgroups: 1 as never } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/subgroups must be true or false/) });
      if (!dev.features.has('subgroups')) return;
      await expect(DeviceKvCache.create(dev, shape, spec, { capacity: 64, tuning: { subgroups: true, valueDot: 'int8' } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/int8/) });
      const probe = await DeviceKvCache.create(dev, shape, spec, { capacity: 64, tuning: { subgroups: true } });
      const io = { qkv: buffer(dev, new Float32Array(12 * 64)), rope: buffer(dev, identityRope(probe.capacity, 64)), out: buffer(dev, new Float32Array(8 * 64)) };
      probe.attach(io);
      probe.beginPosition();
      expect(probe.attentionDispatch(0)).toMatchObject({ geometry: 'short-context', subgroups: true });
      probe.endPosition();
      probe.dispose();
      for (const b of Object.values(io)) b.destroy();
      const planned = await compare({ name: 'planned', preset: 'planned', options, qHeads: 8, kvHeads: 2, tuning: { subgroups: true } }, 100, 4);
      expect(planned.maxRel).toBeLessThan(1e-3);
      if (!dev.features.has('shader-f16')) return;
      const f16 = await compare({ name: 'planned', preset: 'planned', options, qHeads: 8, kvHeads: 2, tuning: { subgroups: true, valueDot: 'f16', small: null } }, 100, 4);
      expect(f16.maxRel).toBeLessThan(1e-2);
    }, 600_000);
  });

  describe("valueDot 'int8' (quad value layout, dot4I8Packed mix)", () => {
    it('kivi-2 (2-bit values), R = 32, GQA 3 in groups of 2 heads, 16-token slots', async () => {
      const { maxRel } = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 32 }, qHeads: 6, kvHeads: 2, tuning: { valueDot: 'int8', slot: 16, small: null, headsPerGroup: 2 } }, 100);
      // the int8 weight rounding alone (≈ 1/250 of a block's largest weight per token; the float32 mix matches to 2e-5,
      // a wrong code layout or a lost weight sign measured 0.1–1)
      expect(maxRel).toBeLessThan(2e-2);
      expect(maxRel).toBeGreaterThan(0);
    }, 600_000);

    it('xquant-1.38 (1-bit values, borrowed codes read in the quad layout), short-context geometry on, int8 keys too', async () => {
      const { maxRel } = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32 }, qHeads: 4, kvHeads: 2, tuning: { valueDot: 'int8', keyDot: 'int8', slot: 8, workgroup: 32 } }, 70);
      expect(maxRel).toBeLessThan(2e-2);
    }, 600_000);

    it('a plan with 1-, 2-, 4- and 16-bit values, value group 64, borrowed 1-bit codes, head dim 128', async () => {
      const options = {
        residualLength: 32,
        groupSize: 32,
        valueGroupSize: 64,
        keys: [{ bits: 2, codesFrom: null }, { bits: 2, codesFrom: null }, { bits: 2, codesFrom: null }, { bits: 2, codesFrom: null }],
        values: [{ bits: 1, codesFrom: null }, { bits: 1, codesFrom: 0 }, { bits: 4, codesFrom: null }, { bits: 16, codesFrom: null }],
        valueCalibration: ['eta', 'least-squares', 'eta', 'none'],
      };
      const { maxRel } = await compare({ name: 'planned', preset: 'planned', options, qHeads: 8, kvHeads: 2, tuning: { valueDot: 'int8', small: null, workgroup: 64 } }, 40, 4, 128);
      expect(maxRel).toBeLessThan(2e-2);
    }, 600_000);

    it('refuses an unknown valueDot with a typed error', async () => {
      const shape = { layers: 1, qHeads: 1, kvHeads: 1, headDim: 64 };
      const cpu = createKvCache('planned', { layers: 1, kvHeads: 1, headDim: 64 }, { residualLength: 32, groupSize: 16, keys: [{ bits: 2, codesFrom: null }], values: [{ bits: 2, codesFrom: null }] }) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
      await expect(DeviceKvCache.create(gpu!.device, shape, { kind: 'quantized', config: cpu.config }, { capacity: 64, tuning: { valueDot: 'u4' as never } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/valueDot must be/) });
      cpu.dispose();
    });
  });

  describe("keyDot 'int8' (quad key layout, dot4I8Packed scores)", () => {
    it('kivi-2, R = 32, GQA 3 in groups of 2 heads, 16-token slots', async () => {
      const { maxRel } = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 32 }, qHeads: 6, kvHeads: 2, tuning: { keyDot: 'int8', slot: 16, small: null, headsPerGroup: 2 } }, 100);
      // the query rounding alone (a wrong code layout measured 0.67); the float32 kernel matches to 2e-5
      expect(maxRel).toBeLessThan(1e-2);
    }, 600_000);

    it('xquant-1.38 (borrowed codes read in the quad layout), 8-token slots, short-context geometry on', async () => {
      const { maxRel } = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32 }, qHeads: 4, kvHeads: 2, tuning: { keyDot: 'int8', slot: 8, workgroup: 32 } }, 70);
      expect(maxRel).toBeLessThan(1e-2);
    }, 600_000);

    it('a plan with 1-, 4- and 16-bit keys and borrowed 4-bit codes, least squares, 8-token slots', async () => {
      const options = {
        residualLength: 32,
        groupSize: 32,
        keys: [{ bits: 1, codesFrom: null }, { bits: 4, codesFrom: null }, { bits: 16, codesFrom: null }, { bits: 4, codesFrom: 1 }],
        values: [{ bits: 2, codesFrom: null }, { bits: 2, codesFrom: null }, { bits: 2, codesFrom: null }, { bits: 16, codesFrom: null }],
        keyCalibration: ['eta', 'none', 'none', 'least-squares'],
      };
      const { maxRel } = await compare({ name: 'planned', preset: 'planned', options, qHeads: 8, kvHeads: 2, tuning: { keyDot: 'int8', slot: 8, small: null } }, 40, 4);
      expect(maxRel).toBeLessThan(1e-2);
    }, 600_000);

    it('is the default without GQA in caches of 32K tokens or more (16-token slots), not with GQA, in smaller caches, nor where the geometry does not fit it; an explicit keyDot wins', async () => {
      const D = 64;
      const dispatchOf = async (qHeads: number, kvHeads: number, preset: string, options: Record<string, unknown>, tuning?: DeviceAttentionTuning, capacity = INT8_KEYS_MIN_CAPACITY) => {
        const cpu = createKvCache(preset, { layers: 1, kvHeads, headDim: D }, options) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
        const cache = await DeviceKvCache.create(device!, { layers: 1, qHeads, kvHeads, headDim: D }, { kind: 'quantized', config: cpu.config }, { capacity, ...(tuning ? { tuning } : {}) });
        const io = { qkv: buffer(device!, new Float32Array((qHeads + 2 * kvHeads) * D)), rope: buffer(device!, identityRope(cache.capacity, D)), out: buffer(device!, new Float32Array(qHeads * D)) };
        cache.attach(io);
        cache.beginPosition();
        const d = cache.attentionDispatch();
        cache.dispose();
        cpu.dispose();
        for (const b of Object.values(io)) b.destroy();
        return d;
      };
      const R32 = { residualLength: 32 };
      expect(await dispatchOf(2, 2, 'xquant-1.38', R32)).toMatchObject({ keyScores: 'int8', geometry: 'short-context', slot: 8 });
      expect(await dispatchOf(2, 2, 'xquant-1.38', R32, { small: null })).toMatchObject({ keyScores: 'int8', geometry: 'main', workgroup: 128, slot: 16 });
      expect(await dispatchOf(2, 2, 'xquant-1.38', R32, { small: null }, INT8_KEYS_MIN_CAPACITY - 1)).toMatchObject({ keyScores: 'f32', workgroup: 128, slot: 8 });
      expect(await dispatchOf(4, 2, 'xquant-1.38', R32, { small: null, medium: null })).toMatchObject({ keyScores: 'f32', workgroup: 256, slot: 8 });
      expect(await dispatchOf(2, 2, 'kivi-2', R32, { keyDot: 'f32', small: null })).toMatchObject({ keyScores: 'f32', workgroup: 128, slot: 8 });
      // no packed keys at all (16-bit keys, 2-bit values): float key scores whatever was asked
      const denseKeys = { residualLength: 32, keys: [{ bits: 16, codesFrom: null }], values: [{ bits: 2, codesFrom: null }] };
      expect(await dispatchOf(2, 2, 'planned', denseKeys, { small: null, keyDot: 'int8' })).toMatchObject({ keyScores: 'f32', valueMix: 'f32' });
      // a mid-length geometry asked for (no int8 variant): the default gives way too
      expect(await dispatchOf(2, 2, 'xquant-1.38', R32, { small: null, medium: { workgroup: 64, slot: 8 } })).toMatchObject({ keyScores: 'f32', valueMix: 'f32' });
      // 1-bit keys over 4-token slots cannot be scored as bytes: the default gives way, where asking for int8 is an error
      const oneBit = { residualLength: 32, keys: [{ bits: 1, codesFrom: null }], values: [{ bits: 2, codesFrom: null }] };
      expect(await dispatchOf(2, 2, 'planned', oneBit, { slot: 4, small: null })).toMatchObject({ keyScores: 'f32', slot: 4 });
    }, 600_000);

    it('a WGSL without packed_4x8_integer_dot_product: the default int8 path gives way to the float path; asked for, it is a typed error', async () => {
      const real = device!;
      // the same device, but every shader that needs the language feature names one no WGSL has
      const lacking = new Proxy(real, {
        get(target, key) {
          if (key === 'createShaderModule') {
            return (d: GPUShaderModuleDescriptor) => target.createShaderModule({ ...d, code: d.code.replace('requires packed_4x8_integer_dot_product;', 'requires no_such_language_feature;') });
          }
          const v = Reflect.get(target, key) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
      const D = 64;
      const cpu = createKvCache('xquant-1.38', { layers: 1, kvHeads: 2, headDim: D }, { residualLength: 32 }) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
      const shape = { layers: 1, qHeads: 2, kvHeads: 2, headDim: D };
      real.pushErrorScope('validation');
      try {
        const cache = await DeviceKvCache.create(lacking, shape, { kind: 'quantized', config: cpu.config }, { capacity: INT8_KEYS_MIN_CAPACITY, tuning: { small: null } });
        const io = { qkv: buffer(real, new Float32Array(6 * D)), rope: buffer(real, identityRope(cache.capacity, D)), out: buffer(real, new Float32Array(2 * D)) };
        cache.attach(io);
        cache.beginPosition();
        expect(cache.attentionDispatch()).toMatchObject({ keyScores: 'f32', workgroup: 128, slot: 8 });
        cache.dispose();
        for (const b of Object.values(io)) b.destroy();
        await expect(DeviceKvCache.create(lacking, shape, { kind: 'quantized', config: cpu.config }, { capacity: 64, tuning: { keyDot: 'int8' } })).rejects.toMatchObject({ code: 'E_KERNEL_MISSING' });
      } finally {
        await real.popErrorScope();
        cpu.dispose();
      }
    }, 600_000);

    it('the default geometry without GQA (128 × 16, short contexts 32 × 8): xquant-1.38 and kivi-2 within the int8 rounding of the CPU cache', async () => {
      for (const [preset, small] of [['xquant-1.38', undefined], ['kivi-2', null]] as const) {
        const { maxRel } = await compare({ name: preset, preset, options: { residualLength: 32 }, qHeads: 2, kvHeads: 2, tuning: { keyDot: 'int8', workgroup: 128, slot: 16, ...(small === null ? { small } : {}) } }, 80, 2);
        expect(maxRel).toBeLessThan(1e-2);
      }
    }, 600_000);

    it('refuses slots too short for 1-bit keys with a typed error', async () => {
      const cpu = createKvCache('planned', { layers: 1, kvHeads: 1, headDim: 64 }, { residualLength: 32, keys: [{ bits: 1, codesFrom: null }], values: [{ bits: 2, codesFrom: null }] }) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
      await expect(DeviceKvCache.create(gpu!.device, { layers: 1, qHeads: 1, kvHeads: 1, headDim: 64 }, { kind: 'quantized', config: cpu.config }, { capacity: 64, tuning: { keyDot: 'int8', slot: 4 } })).rejects.toMatchObject({ code: 'E_CONFIG' });
      cpu.dispose();
    });

    it('refuses an unknown keyDot and key groups that do not tile the chunk with typed errors', async () => {
      const shape = { layers: 1, qHeads: 1, kvHeads: 1, headDim: 64 };
      const make = (options: Record<string, unknown>) => createKvCache('planned', { layers: 1, kvHeads: 1, headDim: 64 }, options) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
      const a = make({ residualLength: 32, keys: [{ bits: 2, codesFrom: null }], values: [{ bits: 2, codesFrom: null }] });
      await expect(DeviceKvCache.create(gpu!.device, shape, { kind: 'quantized', config: a.config }, { capacity: 64, tuning: { keyDot: 'fp8' as never } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/keyDot must be/) });
      a.dispose();
      // 48-token key groups against 256-token chunks (32 threads × 8-token slots)
      const b = make({ residualLength: 96, groupSize: 48, valueGroupSize: 64, keys: [{ bits: 2, codesFrom: null }], values: [{ bits: 2, codesFrom: null }] });
      await expect(DeviceKvCache.create(gpu!.device, shape, { kind: 'quantized', config: b.config }, { capacity: 192, tuning: { keyDot: 'int8', workgroup: 32, slot: 8, small: null } })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/divide one another/) });
      b.dispose();
    });
  });

  it('a batch of positions in one command buffer (beginPositions, slot s = row s of qkv and out) gives every position the outputs and leaves the words of one position at a time, across key flushes and value quantizations, and so does taking them in without attending (encodeIngest); typed errors for bad batches', async () => {
    const dev = gpu!.device;
    const layers = 2;
    const D = 64;
    const shape = { layers, qHeads: 4, kvHeads: 2, headDim: D };
    const cpu = createKvCache('xquant-1.38', { layers, kvHeads: 2, headDim: D }, { residualLength: 32 }) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
    const spec = { kind: 'quantized' as const, config: cpu.config };
    cpu.dispose();
    const N = 75;
    const B = 16;
    const width = (shape.qHeads + 2 * shape.kvHeads) * D;
    const outW = shape.qHeads * D;
    const rand = (() => {
      let s = 12345;
      return () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) * 2 - 1;
    })();
    const x = Array.from({ length: N }, () => Array.from({ length: layers }, () => Float32Array.from({ length: width }, (_, i) => rand() + (i >= outW && i % D < 2 ? 3 : 0))));
    const run = async (batch: number, ingest = false) => {
      const c = await DeviceKvCache.create(dev, shape, spec, { capacity: N + 1, tuning: { small: null } });
      const io = { qkv: buffer(dev, new Float32Array(width * batch)), rope: buffer(dev, identityRope(c.capacity, D)), out: buffer(dev, new Float32Array(outW * batch)), rows: batch };
      c.attach(io);
      const outs: Float32Array[][] = [];
      for (let p0 = 0; p0 < N; p0 += batch) {
        const n = Math.min(batch, N - p0);
        c.beginPositions(n);
        for (let l = 0; l < layers; l++) {
          for (let s = 0; s < n; s++) dev.queue.writeBuffer(io.qkv, s * width * 4, x[p0 + s]![l]!);
          const enc = dev.createCommandEncoder();
          const pass = enc.beginComputePass();
          for (let s = 0; s < n; s++) (ingest ? c.encodeIngest(pass, l, s) : c.encodeLayer(pass, l, s));
          pass.end();
          dev.queue.submit([enc.finish()]);
          const got = await readF32(dev, io.out, outW * n);
          for (let s = 0; s < n; s++) (outs[p0 + s] ??= [])[l] = got.slice(s * outW, (s + 1) * outW);
        }
        c.endPositions(n);
      }
      const words = await Promise.all(Array.from({ length: layers }, (_, l) => c.readLayer(l)));
      return { c, io, outs, words };
    };
    const one = await run(1);
    const many = await run(B);
    // taking positions in without attending (encodeIngest) leaves the same words
    const ingested = await run(B, true);
    try {
      for (let l = 0; l < layers; l++) {
        expect(ingested.words[l]!.keys).toEqual(one.words[l]!.keys);
        expect(ingested.words[l]!.values).toEqual(one.words[l]!.values);
        expect(ingested.words[l]!.ring).toEqual(one.words[l]!.ring);
      }
      expect(many.c.tokens).toBe(N);
      for (let p = 0; p < N; p++) for (let l = 0; l < layers; l++) expect(many.outs[p]![l], `position ${p}, layer ${l}`).toEqual(one.outs[p]![l]);
      for (let l = 0; l < layers; l++) {
        expect(many.words[l]!.keys).toEqual(one.words[l]!.keys);
        expect(many.words[l]!.values).toEqual(one.words[l]!.values);
        expect(many.words[l]!.ring).toEqual(one.words[l]!.ring);
      }
      // bad batches: typed errors, and the cache is unchanged
      const c = many.c;
      c.reset();
      expect(() => c.beginPositions(0)).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
      expect(() => c.beginPositions(B + 1)).toThrow(/1 to 16 positions/);
      c.beginPositions(2);
      const enc = dev.createCommandEncoder();
      const pass = enc.beginComputePass();
      expect(() => c.encodeAttention(pass, 0, 2)).toThrow(expect.objectContaining({ code: 'E_STATE', message: expect.stringMatching(/slot 2/) }));
      pass.end();
      enc.finish();
      expect(() => c.endPositions(3)).toThrow(expect.objectContaining({ code: 'E_STATE' }));
      expect(c.tokens).toBe(0);
      expect(() => c.attach({ ...many.io, rows: B + 1 })).toThrow(expect.objectContaining({ code: 'E_SHAPE', message: expect.stringMatching(/smaller than 17 ×/) }));
      expect(gpuErrors).toEqual([]);
    } finally {
      for (const r of [one, many, ingested]) {
        r.c.dispose();
        for (const b of [r.io.qkv, r.io.rope, r.io.out]) b.destroy();
      }
    }
  }, 600_000);

  it('a cache whose later layer does not fit the device throws a typed error and leaves no buffer allocated', async () => {
    const dev = gpu!.device;
    const limit = dev.limits.maxStorageBufferBindingSize;
    // layer 0: 1-bit keys and values (small); layer 1: fp16 keys, kvHeads · capacity · headDim · 2 bytes > the limit
    const cpu = createKvCache('planned', { layers: 2, kvHeads: 2, headDim: 64 }, { residualLength: 32, keys: [{ bits: 1, codesFrom: null }, { bits: 16, codesFrom: null }], values: [{ bits: 1, codesFrom: null }, { bits: 1, codesFrom: null }] }) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
    const { live, restore } = trackBuffers(dev);
    try {
      const capacity = Math.ceil(limit / (2 * 64 * 2)) + 1024;
      await expect(DeviceKvCache.create(dev, { layers: 2, qHeads: 4, kvHeads: 2, headDim: 64 }, { kind: 'quantized', config: cpu.config }, { capacity })).rejects.toMatchObject({ code: 'E_BACKEND_UNAVAILABLE', message: expect.stringMatching(/layer 1 keys: .* exceed maxStorageBufferBindingSize/) });
      expect(live.size).toBe(0);
    } finally {
      restore();
      cpu.dispose();
    }
  }, 600_000);
});
