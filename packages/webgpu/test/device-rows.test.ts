import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKvCache } from '@xquant/tfjs';
import { DeviceKvCache, type DeviceCacheSpec, type DeviceQuantizedConfig } from '../src/index.js';
import { ROWS_MIN_CHUNK, rowsChunking, rowsKeyTile } from '../src/device/rows-attention-wgsl.js';
import { buffer, device, gpu, gpuErrors, readF32, reason } from './device-compare.js';
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
  beforeAll(async () => {
    tf.enableProdMode();
    await tf.setBackend('cpu');
  });
  afterAll(() => gpu?.device.destroy());

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
