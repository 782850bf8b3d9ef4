import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKvCache } from '@xquant/tfjs';
import { DeviceKvCache, type DeviceCacheSpec, type DeviceQuantizedConfig } from '../src/index.js';
import { ROWS_MIN_CHUNK, rowsChunking, rowsKeyTile } from '../src/device/rows-attention-wgsl.js';
import { QUANTIZE_ROWS_GROUP, quantizeRowsGroups } from '../src/device/update-wgsl.js';
import { valueBlockTokens } from '../src/device/attention-wgsl.js';
import { buffer, device, gpu, gpuErrors, mixedPlan as mixedPlanOptions, readF32, reason } from './device-compare.js';
import { rng } from './helpers.js';

/** A rotary table of random angles (so a position read from the wrong row or slot changes the numbers). */
function randomRope(positions: number, D: number, seed: number): Float32Array {
  const r = rng(seed);
  const t = new Float32Array(positions * D);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < D / 2; i++) {
      const a = r() * 2 * Math.PI;
      t[p * D + i] = Math.cos(a);
      t[p * D + D / 2 + i] = Math.sin(a);
    }
  }
  return t;
}

beforeAll(async () => {
  tf.enableProdMode();
  await tf.setBackend('cpu');
});
// (one device for the file's describes)
afterAll(() => gpu?.device.destroy());

interface RowsCase {
  name: string;
  spec: () => DeviceCacheSpec;
  layers: number;
  qHeads: number;
  kvHeads: number;
  D: number;
  /** Positions per batch, in order (the last repeats until N). */
  batches: number[];
  N: number;
}

/**
 * Run N positions through a cache, position by position (batches of one through encodeLayer) and in the batches of
 * `c.batches` (encodeLayerRows where the layer has it, encodeLayer per slot elsewhere); the same random q/k/v per
 * position and layer. Returns both runs' outputs and stored words.
 */
async function runBoth(c: RowsCase) {
  const dev = gpu!.device;
  const shape = { layers: c.layers, qHeads: c.qHeads, kvHeads: c.kvHeads, headDim: c.D };
  const width = (c.qHeads + 2 * c.kvHeads) * c.D;
  const outW = c.qHeads * c.D;
  const r = rng(7);
  const x = Array.from({ length: c.N }, () => Array.from({ length: c.layers }, () => Float32Array.from({ length: width }, () => r() * 2 - 1)));
  const maxRows = Math.max(...c.batches);
  const run = async (sizes: number[]) => {
    const rows = Math.max(...sizes);
    const cache = await DeviceKvCache.create(dev, shape, c.spec(), { capacity: c.N + 1 });
    const io = { qkv: buffer(dev, new Float32Array(width * maxRows)), rope: buffer(dev, randomRope(cache.capacity, c.D, 11)), out: buffer(dev, new Float32Array(outW * maxRows)), rows };
    cache.attach(io);
    const outs: Float32Array[][] = [];
    const rowsLayers = new Set<number>();
    try {
      for (let p0 = 0, b = 0; p0 < c.N; b++) {
        const n = Math.min(sizes[Math.min(b, sizes.length - 1)]!, c.N - p0);
        cache.beginPositions(n);
        for (let l = 0; l < c.layers; l++) {
          for (let s = 0; s < n; s++) dev.queue.writeBuffer(io.qkv, s * width * 4, x[p0 + s]![l]!);
          const enc = dev.createCommandEncoder();
          const pass = enc.beginComputePass();
          if (n > 1 && cache.rowsAttention(l)) {
            cache.encodeLayerRows(pass, l);
            rowsLayers.add(l);
          } else {
            for (let s = 0; s < n; s++) cache.encodeLayer(pass, l, s);
          }
          pass.end();
          dev.queue.submit([enc.finish()]);
          const got = await readF32(dev, io.out, outW * n);
          for (let s = 0; s < n; s++) (outs[p0 + s] ??= [])[l] = got.slice(s * outW, (s + 1) * outW);
        }
        cache.endPositions(n);
        p0 += n;
      }
      const words = await Promise.all(Array.from({ length: c.layers }, (_, l) => cache.readLayer(l)));
      return { outs, words, rowsLayers, memory: cache.memory() };
    } finally {
      cache.dispose();
      for (const b of [io.qkv, io.rope, io.out]) b.destroy();
    }
  };
  return { one: await run([1]), batched: await run(c.batches) };
}

describe.skipIf(!device)(`batch attention over fp16 rows (encodeLayerRows) (${reason || 'WebGPU adapter'})`, () => {
  const full = (): DeviceCacheSpec => ({ kind: 'full' });
  const cases: RowsCase[] = [
    // 300 positions: up to 5 chunks of 64 keys; batches that start off the chunk and tile grid (31 after 1, then 5, then 32s)
    { name: 'full, GQA 4 (two query tiles of 64), head dim 64', spec: full, layers: 2, qHeads: 8, kvHeads: 2, D: 64, batches: [1, 31, 5, 32], N: 300 },
    { name: 'full, one KV head per query head, head dim 128 (16-key tiles)', spec: full, layers: 1, qHeads: 3, kvHeads: 3, D: 128, batches: [32, 7, 32], N: 200 },
    { name: 'full, GQA 7, head dim 32 (32-key tiles, a tile of 64 queries over 9 rows)', spec: full, layers: 1, qHeads: 14, kvHeads: 2, D: 32, batches: [19, 64], N: 150 },
  ];
  for (const c of cases) {
    it(`${c.name}: every position's output within float rounding of one position at a time; the same stored words`, async () => {
      const { one, batched } = await runBoth(c);
      expect([...batched.rowsLayers].sort()).toEqual(Array.from({ length: c.layers }, (_, l) => l));
      let err = 0;
      let mag = 0;
      for (let p = 0; p < c.N; p++) {
        for (let l = 0; l < c.layers; l++) {
          const a = batched.outs[p]![l]!;
          const b = one.outs[p]![l]!;
          for (let i = 0; i < a.length; i++) {
            expect(Number.isFinite(a[i]!), `position ${p} layer ${l} element ${i}`).toBe(true);
            err = Math.max(err, Math.abs(a[i]! - b[i]!));
            mag = Math.max(mag, Math.abs(b[i]!));
          }
        }
      }
      // the same fp16 rows, attended with float sums in another order (measured 1.8e-7)
      expect(err / mag, `max |Δ| ${err} over ${mag}`).toBeLessThan(2e-6);
      for (let l = 0; l < c.layers; l++) {
        expect(batched.words[l]!.keys).toEqual(one.words[l]!.keys);
        expect(batched.words[l]!.values).toEqual(one.words[l]!.values);
      }
      expect(batched.memory.usedBytes).toBe(one.memory.usedBytes);
      expect(gpuErrors).toEqual([]);
    }, 600_000);
  }

  it('a plan: its 16-bit layer takes the batch in one dispatch, its packed layers position by position, the outputs and words of one position at a time', async () => {
    const cpu = createKvCache('planned', { layers: 2, kvHeads: 2, headDim: 64 }, {
      residualLength: 32,
      keys: [{ bits: 2, codesFrom: null }, { bits: 16, codesFrom: null }],
      values: [{ bits: 2, codesFrom: null }, { bits: 16, codesFrom: null }],
    }) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
    const config = cpu.config;
    cpu.dispose();
    const { one, batched } = await runBoth({ name: 'plan', spec: () => ({ kind: 'quantized', config }), layers: 2, qHeads: 8, kvHeads: 2, D: 64, batches: [32, 13], N: 140 });
    expect([...batched.rowsLayers]).toEqual([1]);
    for (let p = 0; p < 140; p++) {
      // the packed layer runs the same kernels in the same order: identical
      expect(batched.outs[p]![0]).toEqual(one.outs[p]![0]);
      const a = batched.outs[p]![1]!;
      const b = one.outs[p]![1]!;
      let err = 0;
      for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i]! - b[i]!));
      expect(err, `position ${p}`).toBeLessThan(2e-6);
    }
    for (let l = 0; l < 2; l++) {
      expect(batched.words[l]!.keys).toEqual(one.words[l]!.keys);
      expect(batched.words[l]!.values).toEqual(one.words[l]!.values);
      expect(batched.words[l]!.ring).toEqual(one.words[l]!.ring);
    }
    expect(gpuErrors).toEqual([]);
  }, 600_000);

  it('typed errors: a packed layer, a cache attached with one row, no batch begun; the batch buffers are counted in allocatedBytes', async () => {
    const dev = gpu!.device;
    const cpu = createKvCache('kivi-2', { layers: 1, kvHeads: 1, headDim: 64 }, { residualLength: 32 }) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
    const shape = { layers: 1, qHeads: 2, kvHeads: 1, headDim: 64 };
    const width = 4 * 64;
    const bufs = [buffer(dev, new Float32Array(width * 4)), buffer(dev, randomRope(64, 64, 1)), buffer(dev, new Float32Array(2 * 64 * 4))];
    const packed = await DeviceKvCache.create(dev, shape, { kind: 'quantized', config: cpu.config }, { capacity: 32 });
    const dense = await DeviceKvCache.create(dev, shape, { kind: 'full' }, { capacity: 32 });
    cpu.dispose();
    try {
      packed.attach({ qkv: bufs[0]!, rope: bufs[1]!, out: bufs[2]!, rows: 4 });
      dense.attach({ qkv: bufs[0]!, rope: bufs[1]!, out: bufs[2]!, rows: 1 });
      const single = dense.memory().allocatedBytes;
      const enc = dev.createCommandEncoder();
      const pass = enc.beginComputePass();
      expect(packed.rowsAttention(0)).toBe(false);
      packed.beginPositions(2);
      expect(() => packed.encodeLayerRows(pass, 0)).toThrow(expect.objectContaining({ code: 'E_STATE', message: expect.stringMatching(/fp16 keys and values/) }));
      expect(dense.rowsAttention(0)).toBe(false);
      expect(() => dense.encodeLayerRows(pass, 0)).toThrow(expect.objectContaining({ code: 'E_STATE', message: expect.stringMatching(/more than one row/) }));
      dense.attach({ qkv: bufs[0]!, rope: bufs[1]!, out: bufs[2]!, rows: 4 });
      expect(dense.rowsAttention(0)).toBe(true);
      expect(() => dense.encodeLayerRows(pass, 0)).toThrow(expect.objectContaining({ code: 'E_STATE', message: expect.stringMatching(/no batch begun/) }));
      expect(() => dense.encodeLayerRows(pass, 1)).toThrow(expect.objectContaining({ code: 'E_STATE' }));
      pass.end();
      enc.finish();
      // rotated queries of 4 rows, the partials of 64 chunks, step counters for 3 more positions
      const stride = Math.max(80, dev.limits.minUniformBufferOffsetAlignment);
      expect(dense.memory().allocatedBytes - single).toBe(4 * 2 * 64 * 4 + 64 * 4 * 2 * 66 * 4 + 3 * stride);
      expect(gpuErrors).toEqual([]);
    } finally {
      packed.dispose();
      dense.dispose();
      for (const b of bufs) b.destroy();
    }
  });
});

describe.skipIf(!device)(`a batch taken into packed layers at once (encodeIngestRows) (${reason || 'WebGPU adapter'})`, () => {
  /**
   * Take N positions in without attending, slot by slot (encodeIngest) and a batch at a time (encodeIngestRows), in
   * caches created alike (rings for batches of `batchRows`); returns both caches' words of every layer.
   */
  async function ingestBoth(config: DeviceQuantizedConfig, shape: { layers: number; qHeads: number; kvHeads: number; headDim: number }, batches: number[], N: number, tuning = {}) {
    const dev = gpu!.device;
    const D = shape.headDim;
    const width = (shape.qHeads + 2 * shape.kvHeads) * D;
    const r = rng(5);
    // value channels 0 and 1 offset (wide groups), as the batch test of device-cache.test.ts
    const x = Array.from({ length: N }, () => Array.from({ length: shape.layers }, () => Float32Array.from({ length: width }, (_, i) => r() * 2 - 1 + (i >= shape.qHeads * D && i % D < 2 ? 3 : 0))));
    const batchRows = Math.max(...batches);
    const run = async (rowsAtOnce: boolean) => {
      const cache = await DeviceKvCache.create(dev, shape, { kind: 'quantized', config }, { capacity: N + 1, batchRows, tuning });
      const io = { qkv: buffer(dev, new Float32Array(width * batchRows)), rope: buffer(dev, randomRope(cache.capacity, D, 3)), out: buffer(dev, new Float32Array(shape.qHeads * D * batchRows)), rows: batchRows };
      cache.attach(io);
      try {
        for (let p0 = 0, b = 0; p0 < N; b++) {
          const n = Math.min(batches[Math.min(b, batches.length - 1)]!, N - p0);
          cache.beginPositions(n);
          for (let l = 0; l < shape.layers; l++) {
            // (each layer's rows go through qkv: one submission per layer, after its rows are written)
            for (let s = 0; s < n; s++) dev.queue.writeBuffer(io.qkv, s * width * 4, x[p0 + s]![l]!);
            const enc = dev.createCommandEncoder();
            const pass = enc.beginComputePass();
            if (rowsAtOnce && n > 1) cache.encodeIngestRows(pass, l);
            else for (let s = 0; s < n; s++) cache.encodeIngest(pass, l, s);
            pass.end();
            dev.queue.submit([enc.finish()]);
          }
          cache.endPositions(n);
          p0 += n;
        }
        return await Promise.all(Array.from({ length: shape.layers }, (_, l) => cache.readLayer(l)));
      } finally {
        cache.dispose();
        for (const b of [io.qkv, io.rope, io.out]) b.destroy();
      }
    };
    return { one: await run(false), rows: await run(true) };
  }

  const cpuConfig = (preset: string, layers: number, options: Record<string, unknown>) => {
    const c = createKvCache(preset, { layers, kvHeads: 2, headDim: 64 }, options) as unknown as { config: DeviceQuantizedConfig; dispose(): void };
    const config = c.config;
    c.dispose();
    return config;
  };
  const cases: { name: string; config: () => DeviceQuantizedConfig; tuning?: object }[] = [
    { name: 'xquant-1.38 (1-bit values that share words, borrowed codes, η)', config: () => cpuConfig('xquant-1.38', 4, { residualLength: 32 }) },
    { name: 'kivi-2', config: () => cpuConfig('kivi-2', 2, { residualLength: 32 }) },
    { name: "a 1/2/4/16-bit plan with least squares, in the quad layouts (keyDot and valueDot 'int8': 4 tokens share a word)", config: () => cpuConfig('planned', 4, mixedPlanOptions(32)), tuning: { keyDot: 'int8', valueDot: 'int8', small: null } },
  ];
  for (const c of cases) {
    it(`${c.name}: the words, metadata and rings of slot-by-slot ingestion, batches off the 8-position groups and across key flushes`, async () => {
      const config = c.config();
      const { one, rows } = await ingestBoth(config, { layers: config.keys.length, qHeads: 4, kvHeads: 2, headDim: 64 }, [1, 21, 5, 32, 30], 200, c.tuning);
      for (let l = 0; l < one.length; l++) {
        expect(rows[l]!.keys, `layer ${l} keys`).toEqual(one[l]!.keys);
        expect(rows[l]!.values, `layer ${l} values`).toEqual(one[l]!.values);
        expect(rows[l]!.ring, `layer ${l} rings`).toEqual(one[l]!.ring);
      }
      expect(gpuErrors).toEqual([]);
    }, 600_000);
  }

  it('typed errors: a batch larger than the rings were made for, one row attached, no batch begun, a bad batchRows', async () => {
    const dev = gpu!.device;
    const config = cpuConfig('kivi-2', 1, { residualLength: 32 });
    const shape = { layers: 1, qHeads: 2, kvHeads: 2, headDim: 64 };
    for (const bad of [0, 2.5, 257, '4' as never]) {
      await expect(DeviceKvCache.create(dev, shape, { kind: 'quantized', config }, { capacity: 64, batchRows: bad })).rejects.toMatchObject({ code: 'E_CONFIG', message: expect.stringMatching(/batchRows/) });
    }
    const cache = await DeviceKvCache.create(dev, shape, { kind: 'quantized', config }, { capacity: 64, batchRows: 4 });
    const width = 6 * 64;
    const bufs = [buffer(dev, new Float32Array(width * 8)), buffer(dev, randomRope(cache.capacity, 64, 1)), buffer(dev, new Float32Array(2 * 64 * 8))];
    try {
      cache.attach({ qkv: bufs[0]!, rope: bufs[1]!, out: bufs[2]!, rows: 1 });
      const enc = dev.createCommandEncoder();
      const pass = enc.beginComputePass();
      expect(() => cache.encodeIngestRows(pass, 0)).toThrow(expect.objectContaining({ code: 'E_STATE', message: expect.stringMatching(/no batch begun/) }));
      cache.beginPositions(1);
      expect(() => cache.encodeIngestRows(pass, 0)).toThrow(expect.objectContaining({ code: 'E_STATE', message: expect.stringMatching(/more than one row/) }));
      cache.endPositions(1);
      cache.attach({ qkv: bufs[0]!, rope: bufs[1]!, out: bufs[2]!, rows: 8 });
      cache.beginPositions(5);
      expect(() => cache.encodeIngestRows(pass, 0)).toThrow(expect.objectContaining({ code: 'E_STATE', message: expect.stringMatching(/batchRows 4/) }));
      cache.endPositions(5);
      pass.end();
      enc.finish();
      expect(gpuErrors).toEqual([]);
    } finally {
      cache.dispose();
      for (const b of bufs) b.destroy();
    }
  });
});

describe('rowsChunking', () => {
  it('covers the batch in at most maxChunks chunks of whole key tiles, each at least the minimum', () => {
    for (const D of [16, 32, 64, 128, 256]) {
      const kt = rowsKeyTile(D);
      expect(kt * D * 4).toBeLessThanOrEqual(8192);
      for (const end of [1, 2, 63, 64, 65, 1000, 4096, 4097, 131072, 1 << 20]) {
        for (const max of [1, 7, 64]) {
          const { chunk, chunks } = rowsChunking(end, D, max);
          expect(chunk % kt).toBe(0);
          expect(chunk).toBeGreaterThanOrEqual(ROWS_MIN_CHUNK);
          expect(chunks).toBeLessThanOrEqual(max);
          expect(chunk * chunks).toBeGreaterThanOrEqual(end);
          expect(chunk * (chunks - 1)).toBeLessThan(end);
        }
      }
    }
  });
});

describe('quantizeRowsSource groups', () => {
  it('no packed value word spans two groups (lavapipe cannot show the race this prevents); the groups cover every batch', () => {
    // block layout: a vec4 of codes holds a block of valueBlockTokens tokens; quad layout: 4 tokens share a word
    for (const bits of [1, 2, 4] as const) expect(QUANTIZE_ROWS_GROUP % valueBlockTokens(bits)).toBe(0);
    expect(QUANTIZE_ROWS_GROUP % 4).toBe(0);
    for (const pos of [0, 1, 7, 8, 31, 100]) {
      for (const rows of [1, 2, 8, 9, 32, 256]) {
        const first = Math.floor(pos / QUANTIZE_ROWS_GROUP) * QUANTIZE_ROWS_GROUP;
        const g = quantizeRowsGroups(pos, rows);
        expect(first + g * QUANTIZE_ROWS_GROUP).toBeGreaterThanOrEqual(pos + rows);
        expect(first + (g - 1) * QUANTIZE_ROWS_GROUP).toBeLessThan(pos + rows);
      }
    }
  });
});
