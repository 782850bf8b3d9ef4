import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqConfigError, XqShapeError } from '@xquant/quant';
import {
  createKvCache,
  hadamardRotation,
  plainAttention,
  randomSigns,
  resolveStrategy,
  rotated,
  walshHadamard,
  type KvCache,
  type RotatedOptions,
} from '@xquant/tfjs';
import { kvLike, maxAbs, maxAbsDiff, randn, refAttention, useCpu } from './helpers.js';

beforeAll(useCpu);

const L = 2, H = 2, QH = 4, D = 64;

/** Naive Sylvester Hadamard entry H[i][j] = (−1)^popcount(i & j). */
function sylvester(i: number, j: number): number {
  let x = i & j;
  let bits = 0;
  while (x) {
    bits += x & 1;
    x >>>= 1;
  }
  return bits % 2 ? -1 : 1;
}

interface Drive {
  keys: Float32Array[]; // per layer, head-major [H, T, D]
  values: Float32Array[];
  /** Per layer: the last step's queries [QH, 1, D] and the cache's attention output. */
  queries: Float32Array[];
  outs: Float32Array[];
  T: number;
}

/** Prefill P tokens then `steps` one-token appends on every layer, attending after each; returns inputs and last outputs. */
function drive(cache: KvCache, P: number, steps: number, seed: number): Drive {
  const T = P + steps;
  const keys = Array.from({ length: L }, (_, l) => kvLike(H, T, D, seed + 10 * l));
  const values = Array.from({ length: L }, (_, l) => randn(H * T * D, seed + 10 * l + 1, 0.8, 0.1));
  const slice = (x: Float32Array, t0: number, n: number) => {
    const out = new Float32Array(H * n * D);
    for (let h = 0; h < H; h++) out.set(x.subarray((h * T + t0) * D, (h * T + t0 + n) * D), h * n * D);
    return tf.tensor3d(out, [H, n, D]);
  };
  const queries: Float32Array[] = [];
  const outs: Float32Array[] = [];
  for (let step = -1; step < steps; step++) {
    for (let l = 0; l < L; l++) {
      const t0 = step < 0 ? 0 : P + step;
      const n = step < 0 ? P : 1;
      const k = slice(keys[l]!, t0, n);
      const v = slice(values[l]!, t0, n);
      if (step < 0) cache.prefill(l, k, v);
      else cache.append(l, k, v);
      k.dispose();
      v.dispose();
      const qd = randn(QH * n * D, seed * 7 + step * 31 + l, 0.5);
      const q = tf.tensor3d(qd, [QH, n, D]);
      const o = cache.attend(l, q);
      queries[l] = qd;
      outs[l] = o.dataSync() as Float32Array;
      q.dispose();
      o.dispose();
    }
  }
  return { keys, values, queries, outs, T };
}

/** Relative max error of the last outputs against float64 attention over the original K/V. */
function relError(run: Drive): number {
  let err = 0;
  for (let l = 0; l < L; l++) {
    const want = refAttention(run.queries[l]!, run.keys[l]!, run.values[l]!, QH, 1, H, run.T, D);
    err = Math.max(err, maxAbsDiff(run.outs[l]!, want) / maxAbs(want));
  }
  return err;
}

describe('Walsh–Hadamard rotation', () => {
  it('walshHadamard equals x·H/√d with the naive Sylvester matrix (float64), and is its own inverse', () => {
    for (const d of [1, 2, 8, 64]) {
      const x = Float64Array.from(randn(3 * d, d));
      const y = Float64Array.from(x);
      walshHadamard(y, d);
      for (let r = 0; r < 3; r++) {
        for (let j = 0; j < d; j++) {
          let acc = 0;
          for (let i = 0; i < d; i++) acc += x[r * d + i]! * sylvester(i, j);
          expect(y[r * d + j]).toBeCloseTo(acc / Math.sqrt(d), 12);
        }
      }
      walshHadamard(y, d);
      expect(maxAbsDiff(y, x)).toBeLessThan(1e-12);
    }
  });

  it('M = D·H/√d is orthogonal (M·Mᵀ = I), ±1/√d entries, signs seeded and reproducible', () => {
    for (const seed of [null, 0, 7, 2 ** 32 - 1]) {
      const m = hadamardRotation(D, seed);
      for (let i = 0; i < D; i++) {
        for (let j = 0; j < D; j++) {
          let acc = 0;
          for (let c = 0; c < D; c++) acc += m[i * D + c]! * m[j * D + c]!;
          expect(Math.abs(acc - (i === j ? 1 : 0))).toBeLessThan(1e-12);
          expect(Math.abs(Math.abs(m[i * D + j]!) - 1 / 8)).toBeLessThan(1e-15);
        }
      }
    }
    const s7 = randomSigns(D, 7);
    expect([...s7]).toEqual([...randomSigns(D, 7)]);
    expect([...s7]).not.toEqual([...randomSigns(D, 8)]);
    expect(s7.some((x) => x < 0) && s7.some((x) => x > 0)).toBe(true);
    expect([...randomSigns(D, null)].every((x) => x === 1)).toBe(true);
  });

  it('rejects a row length that is not a power of two', () => {
    expect(() => walshHadamard(new Float32Array(48), 48)).toThrow(XqShapeError);
    expect(() => walshHadamard(new Float32Array(65), 64)).toThrow(XqShapeError);
    expect(() => hadamardRotation(96)).toThrow(XqShapeError);
  });
});

describe('rotated cache with the full inner cache', () => {
  for (const [keys, values] of [[true, false], [false, true], [true, true]] as const) {
    it(`attention equals plain float64 attention (keys ${keys}, values ${values}, GQA, prefill + appends)`, () => {
      const cache = createKvCache('rotated', { layers: L, kvHeads: H, headDim: D }, { inner: 'full', keys, values, seed: 3 });
      const run = drive(cache, 20, 5, 11);
      expect(relError(run)).toBeLessThan(2e-5);
      cache.dispose();
    });
  }

  it('dequantize returns K/V in the original basis (round trip)', () => {
    const cache = createKvCache('rotated', { layers: L, kvHeads: H, headDim: D }, { inner: 'full', keys: true, values: true });
    const run = drive(cache, 9, 3, 5);
    for (let l = 0; l < L; l++) {
      const { keys, values } = cache.dequantize(l);
      expect(keys.shape).toEqual([H, run.T, D]);
      expect(maxAbsDiff(keys.dataSync(), run.keys[l]!)).toBeLessThan(1e-5 * maxAbs(run.keys[l]!));
      expect(maxAbsDiff(values.dataSync(), run.values[l]!)).toBeLessThan(1e-5 * maxAbs(run.values[l]!));
      keys.dispose();
      values.dispose();
    }
    cache.dispose();
  });

  it('prefillAsync / appendAsync give the same attention as the sync calls', async () => {
    const k = tf.tensor3d(kvLike(H, 6, D, 1), [H, 6, D]);
    const v = tf.tensor3d(randn(H * 6 * D, 2), [H, 6, D]);
    const k1 = tf.tensor3d(randn(H * D, 3), [H, 1, D]);
    const q = tf.tensor3d(randn(QH * D, 4), [QH, 1, D]);
    const opts = { inner: 'full', keys: true, values: true };
    const a = createKvCache('rotated', { layers: 1, kvHeads: H, headDim: D }, opts) as KvCache & { prefillAsync: KvCache['prefill']; appendAsync: KvCache['append'] };
    const b = createKvCache('rotated', { layers: 1, kvHeads: H, headDim: D }, opts);
    await a.prefillAsync(0, k, v);
    await a.appendAsync(0, k1, k1);
    b.prefill(0, k, v);
    b.append(0, k1, k1);
    const oa = a.attend(0, q);
    const ob = b.attend(0, q);
    expect(maxAbsDiff(oa.dataSync(), ob.dataSync())).toBe(0);
    for (const t of [k, v, k1, q, oa, ob]) t.dispose();
    a.dispose();
    b.dispose();
  });
});

describe('rotated cache with a quantized inner cache', () => {
  it('attention equals plain attention over its own dequantize() (original basis), for kivi-2 keys+values rotated', () => {
    const cache = createKvCache('rotated', { layers: L, kvHeads: H, headDim: D }, { inner: 'kivi-2', keys: true, values: true, residualLength: 32 });
    drive(cache, 70, 7, 21);
    for (let l = 0; l < L; l++) {
      const kn = tf.tensor3d(randn(H * D, 90 + l), [H, 1, D]);
      cache.append(l, kn, kn);
      const q = tf.tensor3d(randn(QH * D, 9 + l), [QH, 1, D]);
      const { keys, values } = cache.dequantize(l);
      const want = plainAttention(q, keys, values).dataSync();
      const got = cache.attend(l, q).dataSync();
      expect(maxAbsDiff(got, want)).toBeLessThan(2e-3 * maxAbs(want) + 1e-5);
      for (const t of [kn, q, keys, values]) t.dispose();
    }
    cache.dispose();
  });

  for (const [inner, keys, values] of [['kivi-2', true, false], ['kivi-2', true, true], ['xquant-noshare', true, false], ['asymkv-1.5', false, true]] as const) {
    it(`${inner} (keys ${keys}, values ${values}): error vs exact attention is finite and of the order of the unrotated cache's`, () => {
      const shape = { layers: L, kvHeads: H, headDim: D };
      const plain = createKvCache(inner, shape, { residualLength: 32 });
      const rot = createKvCache('rotated', shape, { inner, keys, values, residualLength: 32 });
      const ePlain = relError(drive(plain, 80, 6, 31));
      const eRot = relError(drive(rot, 80, 6, 31));
      expect(Number.isFinite(eRot)).toBe(true);
      expect(eRot).toBeGreaterThan(1e-4); // quantization happened
      expect(eRot).toBeLessThan(4 * ePlain);
      expect(eRot).toBeGreaterThan(ePlain / 4);
      plain.dispose();
      rot.dispose();
    });
  }

  it('memory and plan are the inner cache’s (rotation matrices counted in kernelBytes only)', () => {
    const shape = { layers: L, kvHeads: H, headDim: D };
    const plain = createKvCache('xquant-noshare', shape, { residualLength: 32 });
    const rot = createKvCache('rotated', shape, { inner: 'xquant-noshare', residualLength: 32 });
    drive(plain, 70, 3, 1);
    drive(rot, 70, 3, 1);
    const mp = plain.memory();
    const mr = rot.memory();
    expect({ ...mr, kernelBytes: 0 }).toEqual({ ...mp, kernelBytes: 0 });
    expect(mr.kernelBytes).toBe((mp.kernelBytes ?? 0) + 2 * D * D * 4);
    expect((rot as unknown as { plan: unknown }).plan).toEqual((plain as unknown as { plan: unknown }).plan);
    plain.dispose();
    rot.dispose();
  });

  it('holds no tfjs tensors beyond its own after many steps; reset and dispose release them', () => {
    const before = tf.memory().numTensors;
    const cache = createKvCache('rotated', { layers: L, kvHeads: H, headDim: D }, { inner: 'kivi-2', keys: true, values: true, residualLength: 32 });
    expect(tf.memory().numTensors).toBe(before + 2);
    drive(cache, 40, 30, 4);
    const { keys, values } = cache.dequantize(0);
    keys.dispose();
    values.dispose();
    expect(tf.memory().numTensors).toBe(before + 2);
    cache.reset();
    expect(cache.seqLength(0)).toBe(0);
    cache.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('rotated strategy options', () => {
  const shape = { layers: L, kvHeads: H, headDim: D };

  it('top-level residualLength / groupSize reach the inner strategy (as `xquant eval` passes them) and options round-trip', () => {
    const s = resolveStrategy('rotated', { inner: 'kivi', innerOptions: { bits: 2, residualLength: 128 }, keys: true, residualLength: 32, groupSize: 32, valueGroupSize: 64 });
    const cache = s.createCache(shape);
    const inner = (cache as unknown as { inner: { config: { residualLength: number; groupSize: number; valueGroupSize: number } } }).inner;
    expect(inner.config.residualLength).toBe(32);
    expect(inner.config.groupSize).toBe(32);
    expect(inner.config.valueGroupSize).toBe(64);
    cache.dispose();
    // a strategy object plus overrides is rebuilt from its options
    const again = createKvCache(rotated({ inner: 'kivi-2', keys: true }), shape, { residualLength: 64 });
    expect((again as unknown as { inner: { config: { residualLength: number } } }).inner.config.residualLength).toBe(64);
    again.dispose();
  });

  const bad: [string, unknown][] = [
    ['no inner', { keys: true }],
    ['empty inner', { inner: '' }],
    ['unknown inner', { inner: 'kivi-3' }],
    ['bad inner options', { inner: 'kivi', innerOptions: { bits: 3 } }],
    ['innerOptions not an object', { inner: 'kivi-2', innerOptions: [1] }],
    ['keys not boolean', { inner: 'kivi-2', keys: 'yes' }],
    ['nothing rotated', { inner: 'kivi-2', keys: false, values: false }],
    ['negative seed', { inner: 'kivi-2', seed: -1 }],
    ['fractional seed', { inner: 'kivi-2', seed: 1.5 }],
    ['unknown option', { inner: 'kivi-2', inerOptions: {} }],
    ['preset override not accepted', { inner: 'kivi-2', innerOptions: { bits: 2 } }],
  ];
  for (const [what, o] of bad) {
    it(`bad options → XqConfigError: ${what}`, () => {
      expect(() => createKvCache('rotated', shape, o as Record<string, unknown>)).toThrow(XqConfigError);
      expect(() => rotated(o as RotatedOptions)).toThrow(XqConfigError);
    });
  }

  it('headDim that is not a power of two → XqShapeError; wrong K/V shapes → XqShapeError before rotating', () => {
    expect(() => createKvCache('rotated', { layers: 1, kvHeads: 1, headDim: 48 }, { inner: 'full' })).toThrow(XqShapeError);
    const cache = createKvCache('rotated', shape, { inner: 'full' });
    const k = tf.zeros([H, 2, 32]) as tf.Tensor3D;
    expect(() => cache.prefill(0, k, k)).toThrow(XqShapeError);
    expect(() => cache.prefill(5, k, k)).toThrow(XqShapeError);
    k.dispose();
    cache.dispose();
  });
});
