// Issue 13 (part A): every cache operation is all-or-nothing, async operations are serialised, one input policy for
// every cache, named limits. Each test names its item.
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqError, type GroupStats } from '@xquant/quant';
import {
  CACHE_LIMITS,
  createKvCache,
  defineQuantizedStrategy,
  plainAttention,
  chunkedAttention as tfjsChunked,
  resolveCacheConfig,
  uniformLayers,
  type AsyncKvCache,
  type KvCache,
  type KvCacheShape,
} from '@xquant/tfjs';
import { randn, refAttention, useCpu } from './helpers.js';

beforeAll(useCpu);

/** `Name:CODE` of the typed error `fn` throws (an untyped error fails the test). */
function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (!XqError.isInstance(e)) throw new Error(`untyped error: ${String(e)}`, { cause: e });
    return `${e.name}:${e.code}`;
  }
  return 'no error';
}
async function codeAsync(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (!XqError.isInstance(e)) throw new Error(`untyped error: ${String(e)}`, { cause: e });
    return `${e.name}:${e.code}`;
  }
  return 'no error';
}

const H = 2, D = 32, QH = 4;
const t3 = (x: Float32Array, n: number, h = H) => tf.tensor3d(x, [h, n, D]);

/** Everything observable about layer `l`: tokens, dequantized K/V, attention of a fixed query. */
function snapshot(cache: KvCache, l: number): { tokens: number; keys: Float32Array; values: Float32Array; out: Float32Array } {
  const tokens = cache.seqLength(l);
  const { keys, values } = cache.dequantize(l);
  const res = { tokens, keys: keys.dataSync() as Float32Array, values: values.dataSync() as Float32Array, out: new Float32Array(0) };
  tf.dispose([keys, values]);
  return res;
}

describe('issue 13 item 1: a rejected input leaves the cache as it was (kivi-2, xquant-1.38, full)', () => {
  for (const id of ['kivi-2', 'xquant-1.38', 'full']) {
    it(`${id}: 200 tokens with one value of 70000 (above fp16) — rejected at prefill, nothing changes, no leak`, () => {
      const shape = { layers: 2, kvHeads: H, headDim: D };
      const cache = createKvCache(id, shape);
      const k = randn(H * 200 * D, 1), v = randn(H * 200 * D, 2);
      const bad = v.slice();
      bad[(1 * 200 + 150) * D + 7] = 70000; // head 1, token 150, channel 7
      const ok100k = t3(randn(H * 100 * D, 3), 100), ok100v = t3(randn(H * 100 * D, 4), 100);
      cache.prefill(0, ok100k, ok100v);
      cache.attend(0, t3(randn(QH * D, 5), 1, QH)).dispose();
      const before = snapshot(cache, 0);
      const kt = t3(k, 200), vt = t3(bad, 200);
      const n0 = tf.memory().numTensors;
      if (id === 'full') {
        cache.prefill(0, kt, vt); // float32 holds 70000: the full cache accepts it (and attends finite)
        const o = cache.attend(0, t3(randn(QH * D, 6), 1, QH));
        expect((o.dataSync() as Float32Array).every(Number.isFinite)).toBe(true);
        o.dispose();
        return;
      }
      expect(code(() => cache.prefill(0, kt, vt))).toBe('XqNumericError:E_NON_FINITE');
      expect(tf.memory().numTensors).toBe(n0);
      const after = snapshot(cache, 0);
      expect(after.tokens).toBe(before.tokens);
      expect(after.keys).toEqual(before.keys);
      expect(after.values).toEqual(before.values);
      // the next valid prefill and attends line keys and values up (positions 100…299 = the good data)
      cache.prefill(0, kt, t3(v, 200));
      const q = randn(QH * D, 7);
      const o1 = cache.attend(0, t3(q, 1, QH));
      const o2 = cache.attend(0, t3(q, 1, QH));
      const { keys, values } = cache.dequantize(0);
      const ref = refAttention(q, keys.dataSync(), values.dataSync(), QH, 1, H, 300, D);
      const got = o2.dataSync();
      for (let i = 0; i < ref.length; i++) expect(Math.abs(got[i]! - ref[i]!)).toBeLessThan(2e-3);
      // the newest values are held exactly: position 299 equals the input's token 199
      const vv = values.dataSync();
      for (let c = 0; c < D; c++) expect(vv[(0 * 300 + 299) * D + c]).toBe(v[(0 * 200 + 199) * D + c]);
      tf.dispose([o1, o2, keys, values, kt, vt, ok100k, ok100v]);
      cache.dispose();
    });
  }

  it('a flush that fails inside attend (a throwing calibrator) leaves state and tensor count as they were, and the output is not leaked', () => {
    let fail = true;
    const flaky = {
      id: 'flaky',
      calibrate(stats: GroupStats): GroupStats {
        if (fail) throw new Error('calibrator failure');
        return stats;
      },
    };
    const strategy = defineQuantizedStrategy({
      id: 'flaky-test',
      layout: (_o, s) => ({ keys: uniformLayers(s.layers, 2), values: uniformLayers(s.layers, 2), keyCalibrators: Array.from({ length: s.layers }, () => flaky) }),
    });
    const shape = { layers: 1, kvHeads: H, headDim: D };
    const cache = strategy({ residualLength: 32 }).createCache(shape);
    const twin = strategy({ residualLength: 32 }).createCache(shape);
    const k = t3(randn(H * 70 * D, 11), 70), v = t3(randn(H * 70 * D, 12), 70), q = t3(randn(QH * D, 13), 1, QH);
    cache.prefill(0, k, v);
    twin.prefill(0, k, v);
    const before = snapshot(cache, 0);
    const n0 = tf.memory().numTensors;
    expect(() => cache.attend(0, q)).toThrow('calibrator failure');
    expect(tf.memory().numTensors).toBe(n0);
    const after = snapshot(cache, 0);
    expect(after).toEqual(before);
    fail = false;
    const a = cache.attend(0, q), b = twin.attend(0, q);
    expect(a.dataSync()).toEqual(b.dataSync());
    const sa = snapshot(cache, 0), sb = snapshot(twin, 0);
    expect(sa).toEqual(sb);
    tf.dispose([a, b, k, v, q]);
  });
});

describe('issue 13 item 5: async operations are serialised; reset/dispose during them give typed errors', () => {
  for (const id of ['kivi-2', 'xquant-1.38', 'full']) {
    const shape: KvCacheShape = { layers: 2, kvHeads: H, headDim: D, maxTokens: 41 };
    const make = () => createKvCache(id, shape, id === 'full' ? undefined : { residualLength: 32 }) as AsyncKvCache;
    const one = (seed: number) => t3(randn(H * D, seed), 1);

    it(`${id}: two concurrent appendAsync at 40/41 tokens — one succeeds, the other E_CAPACITY; seqLength 41`, async () => {
      const cache = make();
      cache.prefill(0, t3(randn(H * 40 * D, 1), 40), t3(randn(H * 40 * D, 2), 40));
      const r = await Promise.all([codeAsync(cache.appendAsync(0, one(3), one(4))), codeAsync(cache.appendAsync(0, one(5), one(6)))]);
      expect(r.sort()).toEqual(['XqStateError:E_CAPACITY', 'no error']);
      expect(cache.seqLength(0)).toBe(41);
      cache.dispose();
    });

    it(`${id}: appendAsync calls land in call order`, async () => {
      const cache = make();
      const ks = [21, 22, 23].map((s) => randn(H * D, s));
      await Promise.all(ks.map((k) => cache.appendAsync(0, t3(k, 1), t3(k, 1))));
      const { values } = cache.dequantize(0);
      const vv = values.dataSync();
      for (let t = 0; t < 3; t++) for (let c = 0; c < D; c++) expect(vv[t * D + c]).toBe(ks[t]![c]);
      values.dispose();
      cache.dispose();
    });

    it(`${id}: reset() during appendAsync — the append rejects with E_STATE and leaves no stale token`, async () => {
      const cache = make();
      const p = cache.appendAsync(0, one(7), one(8));
      cache.reset();
      expect(await codeAsync(p)).toBe('XqStateError:E_STATE');
      expect(cache.seqLength(0)).toBe(0);
      await cache.appendAsync(0, one(9), one(10)); // usable afterwards
      expect(cache.seqLength(0)).toBe(1);
      cache.dispose();
    });

    it(`${id}: dispose() during appendAsync — typed E_STATE, not a TypeError; no tensors left`, async () => {
      const n0 = tf.memory().numTensors;
      const cache = make();
      const k = one(11), v = one(12);
      const p = cache.appendAsync(0, k, v);
      cache.dispose();
      expect(await codeAsync(p)).toBe('XqStateError:E_STATE');
      tf.dispose([k, v]);
      expect(tf.memory().numTensors).toBe(n0);
    });

    it(`${id}: a synchronous append while an appendAsync is pending is E_STATE`, async () => {
      const cache = make();
      const p = cache.appendAsync(0, one(13), one(14));
      expect(code(() => cache.append(0, one(15), one(16)))).toBe('XqStateError:E_STATE');
      await p;
      expect(cache.seqLength(0)).toBe(1);
      cache.dispose();
    });
  }
});

describe('issue 13 item 7: one input policy for every cache — no NaN out of attend', () => {
  for (const id of ['full', 'kivi-2', 'xquant-1.38', 'asymkv-1.5']) {
    it(`${id}: NaN/Infinity in queries, keys or values is E_NON_FINITE and changes nothing`, () => {
      const cache = createKvCache(id, { layers: 2, kvHeads: H, headDim: D }, id === 'full' ? undefined : { residualLength: 32 });
      cache.prefill(0, t3(randn(H * 40 * D, 1), 40), t3(randn(H * 40 * D, 2), 40));
      const before = snapshot(cache, 0);
      for (const bad of [NaN, Infinity, -Infinity]) {
        const q = randn(QH * D, 3);
        q[5] = bad;
        expect(code(() => cache.attend(0, t3(q, 1, QH)))).toBe('XqNumericError:E_NON_FINITE');
        const k = randn(H * D, 4);
        k[9] = bad;
        expect(code(() => cache.append(0, t3(k, 1), t3(randn(H * D, 5), 1)))).toBe('XqNumericError:E_NON_FINITE');
        expect(code(() => cache.append(0, t3(randn(H * D, 5), 1), t3(k, 1)))).toBe('XqNumericError:E_NON_FINITE');
      }
      expect(snapshot(cache, 0)).toEqual(before);
      cache.dispose();
    });
  }

  it('full: keys near 1e38 — attend is E_NON_FINITE instead of NaN (q·k would overflow float32)', () => {
    const cache = createKvCache('full', { layers: 1, kvHeads: H, headDim: D });
    const k = randn(H * 8 * D, 1).map((x) => x * 1e38);
    cache.prefill(0, t3(k, 8), t3(randn(H * 8 * D, 2), 8));
    const q = t3(randn(QH * D, 3), 1, QH);
    // what plain attention gives on the same data: not finite
    const raw = plainAttention(q, t3(k, 8), t3(randn(H * 8 * D, 2), 8));
    expect((raw.dataSync() as Float32Array).every(Number.isFinite)).toBe(false);
    expect(code(() => cache.attend(0, q))).toBe('XqNumericError:E_NON_FINITE');
    cache.dispose();
  });

  it('fuzz regression: scores above 2^31 (q and k near the fp16 limit) give a finite output, not NaN (js-packed softmax)', () => {
    // the packed kernel took the row max before storing the scaled scores in float32: the largest score then sat
    // more than 104 below it, every exp underflowed to 0 and the output was 0/0
    const P0 = [-1.5, -0.7, -0.1, 0, 0.2, 0.9, 1.3, 2.4];
    const pick = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => P0[(i * 7 + seed) % P0.length]!);
    const cache = createKvCache('kivi-2', { layers: 1, kvHeads: 1, headDim: D }, { residualLength: 32 });
    cache.prefill(0, tf.tensor3d(pick(31 * D, 1), [1, 31, D]), tf.tensor3d(pick(31 * D, 2), [1, 31, D]));
    const big = Float32Array.from({ length: D }, (_, i) => (i % 2 ? 65504 : 60000));
    cache.append(0, tf.tensor3d(big, [1, 1, D]), tf.tensor3d(pick(D, 3), [1, 1, D]));
    cache.attend(0, tf.tensor3d(pick(D, 4), [1, 1, D])).dispose(); // flushes the 32 keys into a block
    const { keys, values } = cache.dequantize(0);
    const o = cache.attend(0, tf.tensor3d(big, [1, 1, D]));
    const got = o.dataSync();
    const ref = refAttention(big, keys.dataSync(), values.dataSync(), 1, 1, 1, 32, D);
    for (let i = 0; i < D; i++) {
      expect(Number.isFinite(got[i])).toBe(true);
      expect(Math.abs(got[i]! - ref[i]!)).toBeLessThan(1e-3);
    }
    tf.dispose([o, keys, values]);
  });

  it('quantized: keys near 1e38 are rejected at append (they overflow fp16), like the full cache rejects NaN', () => {
    const cache = createKvCache('kivi-2', { layers: 1, kvHeads: H, headDim: D }, { residualLength: 32 });
    expect(code(() => cache.prefill(0, t3(randn(H * 8 * D, 1).map((x) => x * 1e38), 8), t3(randn(H * 8 * D, 2), 8)))).toBe('XqNumericError:E_NON_FINITE');
    expect(cache.seqLength(0)).toBe(0);
  });
});

describe('issue 13 items 8a, 9b: named upper limits, typed errors, no allocation before tokens arrive', () => {
  it('layers: 1e7 is E_SHAPE at once (every strategy and resolveCacheConfig)', () => {
    for (const id of ['full', 'kivi-2', 'xquant-1.38']) {
      expect(code(() => createKvCache(id, { layers: 1e7, kvHeads: 2, headDim: 32 }))).toBe('XqShapeError:E_SHAPE');
    }
    expect(code(() => resolveCacheConfig('kivi-2', { layers: CACHE_LIMITS.layers + 1, kvHeads: 2, headDim: 32 }))).toBe('XqShapeError:E_SHAPE');
    expect(code(() => createKvCache('kivi-2', { layers: 1, kvHeads: CACHE_LIMITS.kvHeads + 1, headDim: 32 }))).toBe('XqShapeError:E_SHAPE');
    expect(code(() => createKvCache('kivi-2', { layers: 1, kvHeads: 1, headDim: 2 ** 20 }))).toBe('XqShapeError:E_SHAPE');
    expect(code(() => createKvCache('kivi-2', { layers: CACHE_LIMITS.layers, kvHeads: 1, headDim: 32 }))).toBe('no error');
  });

  it('residualLength 262144 holds 3 tokens in a few KB; 2^30 is E_RESIDUAL (not a RangeError)', () => {
    const cache = createKvCache('kivi-2', { layers: 2, kvHeads: H, headDim: D }, { residualLength: 262144 });
    cache.prefill(0, t3(randn(H * 3 * D, 1), 3), t3(randn(H * 3 * D, 2), 3));
    cache.prefill(1, t3(randn(H * 3 * D, 1), 3), t3(randn(H * 3 * D, 2), 3));
    cache.attend(0, t3(randn(QH * D, 3), 1, QH)).dispose();
    expect(cache.memory().totalBytes).toBeLessThanOrEqual(2 * 2 * 8 * H * D * 4); // ≤ 8 tokens per K/V buffer
    expect(code(() => resolveCacheConfig('kivi-2', { layers: 2, kvHeads: 2, headDim: 32 }, { residualLength: 2 ** 30 }))).toBe('XqConfigError:E_RESIDUAL');
    expect(code(() => createKvCache('xquant-1.38', { layers: 2, kvHeads: 2, headDim: 32 }, { residualLength: 2 ** 30 }))).toBe('XqConfigError:E_RESIDUAL');
    cache.dispose();
  });
});

describe('issue 13 item 9c: chunkedAttention computes the softmax per chunk (no concatenated row sliced back)', () => {
  it('equals float64 attention over the concatenated K/V: 1–7 chunks of uneven length, q = 1…5 with the causal mask across chunks, GQA', () => {
    for (const [lens, nq] of [[[5], 3], [[4, 9, 1], 5], [[16, 16, 16, 3], 1], [[1, 1, 1, 1, 1, 1, 1], 4], [[30, 2], 2]] as [number[], number][]) {
      const T = lens.reduce((a, b) => a + b, 0);
      const k = randn(H * T * D, T), v = randn(H * T * D, T + 1), q = randn(QH * nq * D, T + 2);
      const slice = (x: Float32Array, off: number, n: number) => {
        const out = new Float32Array(H * n * D);
        for (let h = 0; h < H; h++) out.set(x.subarray((h * T + off) * D, (h * T + off + n) * D), h * n * D);
        return tf.tensor3d(out, [H, n, D]);
      };
      let off = 0;
      const ks: tf.Tensor3D[] = [], vs: tf.Tensor3D[] = [];
      for (const n of lens) {
        ks.push(slice(k, off, n));
        vs.push(slice(v, off, n));
        off += n;
      }
      const out = tfjsChunked(tf.tensor3d(q, [QH, nq, D]), ks, vs).dataSync();
      const ref = refAttention(q, k, v, QH, nq, H, T, D);
      for (let i = 0; i < ref.length; i++) expect(Math.abs(out[i]! - ref[i]!)).toBeLessThan(1e-5);
    }
  });
});
