import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { accountBits } from '@xquant/cross-layer';
import { calibrateStats, leastSquaresCalibrator } from '@xquant/calibration';
import { dequantizeKv, kvStats, quantizeValues, setKernelBackend, shareCodes, unpackCodes, type Bits } from '@xquant/quant';
import {
  createKvCache,
  full,
  plainAttention,
  registerAttentionKernel,
  jsPackedAttentionKernel,
  denseAttentionKernel,
  QuantizedKvCache,
  type KvCache,
  type QuantizedLayerView,
} from '@xquant/tfjs';
import { kvLike, maxAbs, maxAbsDiff, randn, refAttention, useCpu } from './helpers.js';

const PRESETS = ['kivi-2', 'kivi-1', 'asymkv-1.5', 'xquant-1.38', 'xquant-nocal', 'xquant-noshare', 'xquant-k-share'] as const;

beforeAll(useCpu);

interface Run {
  cache: KvCache;
  keys: Float32Array[]; // per layer, head-major [H, T, D] of everything appended
  values: Float32Array[];
  outs: Float32Array[]; // last attend output per layer
}

/** Drive a cache like a model: prefill P tokens, then `steps` decode steps, every layer each step. */
function drive(cache: KvCache, L: number, H: number, D: number, qH: number, P: number, steps: number, seed: number, check?: (layer: number, step: number) => void): Run {
  const T = P + steps;
  const keys: Float32Array[] = [];
  const values: Float32Array[] = [];
  for (let l = 0; l < L; l++) {
    keys.push(kvLike(H, T, D, seed + 10 * l));
    values.push(randn(H * T * D, seed + 10 * l + 1, 0.8, 0.1));
  }
  const slice = (x: Float32Array, t0: number, n: number) => {
    const out = new Float32Array(H * n * D);
    for (let h = 0; h < H; h++) out.set(x.subarray((h * T + t0) * D, (h * T + t0 + n) * D), h * n * D);
    return tf.tensor3d(out, [H, n, D]);
  };
  const outs: Float32Array[] = new Array(L);
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
      check?.(l, step);
      const q = tf.tensor3d(randn(qH * n * D, seed * 7 + step * 31 + l), [qH, n, D]);
      const o = cache.attend(l, q);
      outs[l] = o.dataSync() as Float32Array;
      q.dispose();
      o.dispose();
    }
  }
  return { cache, keys, values, outs };
}

describe('full strategy', () => {
  it('equals plain tfjs attention and a float64 reference (prefill and decode, GQA)', () => {
    const L = 2, H = 2, D = 16, qH = 4, P = 20;
    const cache = createKvCache('full', { layers: L, kvHeads: H, headDim: D });
    // prefill: compare against float64 causal attention
    const k = kvLike(H, P, D, 1);
    const v = randn(H * P * D, 2);
    const q = randn(qH * P * D, 3);
    cache.prefill(0, tf.tensor3d(k, [H, P, D]), tf.tensor3d(v, [H, P, D]));
    const o = cache.attend(0, tf.tensor3d(q, [qH, P, D]));
    const ref = refAttention(q, k, v, qH, P, H, P, D);
    expect(maxAbsDiff(o.dataSync(), ref)).toBeLessThan(1e-5 * Math.max(1, maxAbs(ref)));
    // decode with more chunks than one: chunkTokens small
    const small = full({ chunkTokens: 7 }).createCache({ layers: 1, kvHeads: H, headDim: D });
    const big = createKvCache('full', { layers: 1, kvHeads: H, headDim: D });
    for (const c of [small, big]) c.prefill(0, tf.tensor3d(k, [H, P, D]), tf.tensor3d(v, [H, P, D]));
    const q1 = tf.tensor3d(randn(qH * D, 4), [qH, 1, D]);
    for (let s = 0; s < 10; s++) {
      const kn = tf.tensor3d(randn(H * D, 100 + s), [H, 1, D]);
      const vn = tf.tensor3d(randn(H * D, 200 + s), [H, 1, D]);
      small.append(0, kn, vn);
      big.append(0, kn, vn);
    }
    const a = small.attend(0, q1).dataSync();
    const { keys, values } = big.dequantize(0);
    const b = plainAttention(q1, keys, values).dataSync();
    expect(maxAbsDiff(a, b)).toBeLessThan(1e-6);
    expect(big.seqLength(0)).toBe(P + 10);
  });
});

describe.each(PRESETS)('%s', (preset) => {
  it('attention equals dequantize() then plain attention (fp16 and fp32 quantizer)', () => {
    // GQA 3:1 (like xq-llama-20m): SIMD groups of four vectors are zero-padded
    const L = 4, H = 2, D = 64, qH = preset.startsWith('xquant') ? 6 : 8, R = 32;
    for (const precision of ['fp16', 'fp32'] as const) {
      const cache = createKvCache(preset, { layers: L, kvHeads: H, headDim: D }, { residualLength: R, precision });
      const { outs } = drive(cache, L, H, D, qH, 45, 40, 11, (l, step) => {
        if (step < 5 || step % 9 !== 0) return;
        // before attend: compare the kernels (WebAssembly SIMD and plain JS) against dequantize + plain attention,
        // for one query row and for three (causal mask inside the query block)
        for (const [rows, simd] of [[1, true], [3, true], [1, false], [3, false]] as const) {
          const q = tf.tensor3d(randn(qH * rows * D, 999 + step + rows), [qH, rows, D]);
          const view = (cache as QuantizedKvCache).view(l);
          setKernelBackend(simd ? 'auto' : 'js');
          const a = jsPackedAttentionKernel.attend(view, q).dataSync();
          setKernelBackend('auto');
          const { keys, values } = cache.dequantize(l);
          const b = plainAttention(q, keys, values).dataSync();
          // The kernels use exact code·scale + zero; dequantize() rounds to fp16 as the reference does (≤ 2^-11 relative).
          const tol = precision === 'fp16' ? 2e-3 * maxAbs(b) + 1e-5 : 1e-5 * maxAbs(b) + 1e-6;
          expect(maxAbsDiff(a, b)).toBeLessThan(tol);
          tf.dispose([q, keys, values]);
        }
      });
      expect(outs.every((o) => o.every(Number.isFinite))).toBe(true);
      const m = cache.memory();
      expect(m.tokens).toBe(85);
      cache.dispose();
    }
  });
});

describe('flush schedule (reference-fidelity §2)', () => {
  it('keys in whole multiples of R, values beyond the newest R, one per step; flushed after attend', () => {
    const seen: { layer: number; tokens: number; qk: number; qv: number }[] = [];
    const spy = {
      id: 'spy',
      attend(v: QuantizedLayerView, q: tf.Tensor3D) {
        seen.push({ layer: v.layer, tokens: v.tokens, qk: v.quantizedKeys, qv: v.quantizedValues });
        return jsPackedAttentionKernel.attend(v, q);
      },
    };
    const previous = registerAttentionKernel('cpu', spy);
    try {
      const R = 32, P = 50, steps = 80;
      const cache = createKvCache('kivi-2', { layers: 2, kvHeads: 1, headDim: 32 }, { residualLength: R });
      drive(cache, 2, 1, 32, 2, P, steps, 5);
      // first attend is the prefill: nothing quantized yet
      expect(seen[0]).toEqual({ layer: 0, tokens: P, qk: 0, qv: 0 });
      for (const s of seen.slice(2)) {
        const p = s.tokens - 1; // position of the token fed this step
        expect(s.qk).toBe(Math.floor(p / R) * R);
        expect(s.qv).toBe(Math.max(0, p - R));
      }
      expect(seen.length).toBe(2 * (steps + 1));
    } finally {
      registerAttentionKernel('cpu', previous!);
    }
  });

  it('flushes before the next append when attend was skipped', () => {
    const R = 32;
    const cache = createKvCache('kivi-2', { layers: 1, kvHeads: 1, headDim: 32 }, { residualLength: R }) as QuantizedKvCache;
    const x = tf.tensor3d(randn(40 * 32, 1), [1, 40, 32]);
    cache.prefill(0, x, x);
    expect(cache.view(0).quantizedKeys).toBe(0); // pending until attend or next append
    const t = tf.tensor3d(randn(32, 2), [1, 1, 32]);
    cache.append(0, t, t);
    expect(cache.view(0).quantizedKeys).toBe(32);
    expect(cache.view(0).quantizedValues).toBe(8);
  });
});

describe('cross-layer sharing', () => {
  it('a borrowing layer dequantizes as donor codes × its own calibrated scale/zero', () => {
    const L = 4, H = 2, D = 64, R = 32, P = 70;
    const cache = createKvCache('xquant-1.38', { layers: L, kvHeads: H, headDim: D }, { residualLength: R });
    const run = drive(cache, L, H, D, 4, P, 0, 21);
    const qv = P - R; // quantized values after the prefill flush
    const take = (x: Float32Array) => {
      const out = new Float32Array(H * qv * D);
      for (let h = 0; h < H; h++) out.set(x.subarray(h * P * D, (h * P + qv) * D), h * qv * D);
      return out;
    };
    const shape = { heads: H, tokens: qv, headDim: D };
    const opts = { bits: 1 as const, groupSize: 32, precision: 'fp16' as const };
    const donor = quantizeValues(take(run.values[2]!), shape, opts);
    const own = calibrateStats(kvStats(take(run.values[3]!), shape, 'token', opts), 1 / 6);
    const expected = dequantizeKv(shareCodes(own, donor));
    const got = cache.dequantize(3).values.dataSync();
    const gotQ = take(got as Float32Array);
    expect(maxAbsDiff(gotQ, expected)).toBe(0);
    // and layer 3 holds no value codes of its own: code bytes of values = layers 0..2 only
    const plain = createKvCache('xquant-noshare', { layers: L, kvHeads: H, headDim: D }, { residualLength: R });
    drive(plain, L, H, D, 4, P, 0, 21);
    // values are allocated in chunks of 32 tokens: 38 quantized → two chunks of 1-bit codes of layer 3
    expect(plain.memory().codeBytes - cache.memory().codeBytes).toBe(64 * H * (D / 32) * 4);
  });

  it('supports any share-group size and a group size other than 32 (the reference needs gs = 32)', () => {
    const L = 6, H = 1, D = 64, R = 64;
    const cache = createKvCache('xquant', { layers: L, kvHeads: H, headDim: D }, {
      residualLength: R, groupSize: 64, keyShareFrom: 0, valueShareFrom: 0, shareGroup: 3,
    }) as QuantizedKvCache;
    expect(cache.plan.keys.map((k) => k.codesFrom)).toEqual([null, 0, 0, null, 3, 3]);
    drive(cache, L, H, D, 2, 130, 3, 8, (l, step) => {
      if (step !== 2) return;
      const q = tf.tensor3d(randn(2 * D, 77), [2, 1, D]);
      const a = jsPackedAttentionKernel.attend(cache.view(l), q).dataSync();
      const { keys, values } = cache.dequantize(l);
      const b = plainAttention(q, keys, values).dataSync();
      expect(maxAbsDiff(a, b)).toBeLessThan(2e-3 * maxAbs(b) + 1e-5);
    });
  });
});

describe('memory accounting', () => {
  it.each(PRESETS)('%s: reported bytes are the allocated typed arrays and match accountBits', (preset) => {
    const L = 8, H = 2, D = 64, R = 32;
    const cache = createKvCache(preset, { layers: L, kvHeads: H, headDim: D }, { residualLength: R }) as QuantizedKvCache;
    drive(cache, L, H, D, 2, 128, 70, 3); // T = 198: 192 keys and 166 values quantized
    const m = cache.memory();
    const T = 198;
    expect(m.tokens).toBe(T);
    const acc = accountBits({ config: cache.config, kvHeads: H, headDim: D, tokens: T, residualBits: 32 });
    expect(m.paperBitsPerElement).toBeCloseTo(acc.paperBits, 12);
    expect(m.elements).toBe(acc.elements);
    // values are allocated in chunks of 32 tokens (166 quantized → 192 allocated); the value window holds R+1 slots;
    // the key window grows 8 tokens at a time (6 held → 8 allocated)
    const slackTokens = Math.ceil((T - R) / 32) * 32 - (T - R);
    const valueSlack = (quantBits: number[], borrow: boolean[]) =>
      quantBits.reduce((s, b, l) => s + slackTokens * H * ((borrow[l] ? 0 : (D * b) / 8) + (2 * 2 * D) / 32), 0);
    const vb = cache.plan.values.map((v) => v.bits as number);
    const vborrow = cache.plan.values.map((v) => v.codesFrom !== null);
    const residualSlot = L * H * D * 4 * (1 + 2); // fp32 tokens: one extra value slot, two extra key slots per layer
    expect(m.totalBytes).toBe(acc.totalBytes + valueSlack(vb, vborrow) + residualSlot);
    expect(m.codeBytes + m.metadataBytes + m.residualBytes).toBe(m.totalBytes);
    expect(m.trueBitsPerElement).toBeCloseTo((8 * m.totalBytes) / m.elements, 12);
  });

  it('8-layer presets have the paper bits of the reference table', () => {
    const expected: Record<string, number> = {
      'kivi-2': 2, 'kivi-1': 1, 'asymkv-1.5': 1.5, 'xquant-1.38': 1.375, 'xquant-nocal': 1.375, 'xquant-noshare': 1.5, 'xquant-k-share': 1.125, full: 16,
    };
    for (const [id, bits] of Object.entries(expected)) {
      expect(createKvCache(id, { layers: 8, kvHeads: 2, headDim: 64 }).memory().paperBitsPerElement).toBe(bits);
    }
    const x = createKvCache('xquant-1.38', { layers: 8, kvHeads: 2, headDim: 64 }) as QuantizedKvCache;
    expect(x.plan.values.map((v) => v.codesFrom)).toEqual([null, null, null, null, null, 4, null, 6]);
    expect(x.plan.keys.every((k) => k.bits === 2 && k.codesFrom === null)).toBe(true);
    const ks = createKvCache('xquant-k-share', { layers: 8, kvHeads: 2, headDim: 64 }) as QuantizedKvCache;
    expect(ks.plan.keys.map((v) => v.codesFrom)).toEqual([null, null, null, null, null, 4, null, 6]);
  });
});

describe('dense-upload fallback kernel (the WebGPU default), run on cpu', () => {
  it('keeps an incremental device copy that matches dequantize + plain attention, reports it, frees it', () => {
    const previous = registerAttentionKernel('cpu', denseAttentionKernel);
    try {
      const L = 2, H = 2, D = 64, qH = 4, R = 32;
      const before = tf.memory().numTensors;
      const cache = createKvCache('xquant-1.38', { layers: L, kvHeads: H, headDim: D }, { residualLength: R });
      drive(cache, L, H, D, qH, 40, 50, 13, (l, step) => {
        if (step % 7 !== 3) return;
        const q = tf.tensor3d(randn(qH * D, 5 + step), [qH, 1, D]);
        const at = denseAttentionKernel.attend((cache as QuantizedKvCache).view(l), q);
        const { keys, values } = cache.dequantize(l);
        const bt = plainAttention(q, keys, values);
        const b = bt.dataSync();
        expect(maxAbsDiff(at.dataSync(), b)).toBeLessThan(1e-5 * maxAbs(b) + 1e-6);
        tf.dispose([q, keys, values, at, bt]);
      });
      // device copy as of the last attend (before its flush): 64 keys and 89 − 32 = 57 values per layer, float32
      expect(cache.memory().kernelBytes).toBe(L * H * D * 4 * (64 + 57));
      cache.reset();
      expect(cache.memory().kernelBytes).toBe(0);
      drive(cache, L, H, D, qH, 40, 3, 14);
      cache.dispose();
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      registerAttentionKernel('cpu', previous!);
    }
  });
});

describe('calibration context', () => {
  it('a calibrator that reads context.values/codes gets the block and the codes it will be read with (donor codes when borrowing)', () => {
    const L = 4, H = 2, D = 64, R = 32, P = 100;
    const errs: Record<string, number[]> = {};
    for (const [name, opts] of [
      ['eta', {}],
      ['least-squares', { calibrator: leastSquaresCalibrator(), eta: undefined }],
    ] as const) {
      const cache = createKvCache('xquant', { layers: L, kvHeads: H, headDim: D }, { residualLength: R, valueShareFrom: 2, keyShareFrom: 2, ...opts });
      const run = drive(cache, L, H, D, 4, P, 0, 31);
      const qv = P - R; // quantized values; keys: 96
      errs[name] = [];
      for (let l = 0; l < L; l++) {
        const { keys, values } = cache.dequantize(l);
        const k = keys.dataSync(), v = values.dataSync();
        let num = 0, den = 0;
        for (let h = 0; h < H; h++) {
          for (let i = 0; i < qv * D; i++) {
            const j = h * P * D + i;
            num += (v[j]! - run.values[l]![j]!) ** 2 + (k[j]! - run.keys[l]![j]!) ** 2;
            den += run.values[l]![j]! ** 2 + run.keys[l]![j]! ** 2;
          }
        }
        errs[name]!.push(Math.sqrt(num / den));
        tf.dispose([keys, values]);
      }
    }
    console.log(`K/V relative reconstruction error per layer, eta: ${errs.eta!.map((e) => e.toFixed(3)).join(' ')}; least squares: ${errs['least-squares']!.map((e) => e.toFixed(3)).join(' ')}`);
    // least squares minimises the reconstruction error of the codes it is given: lower in every layer, and much
    // lower in the borrowing layers 3 (donor 2), where those codes are the donor's
    for (let l = 0; l < L; l++) expect(errs['least-squares']![l]!).toBeLessThan(errs.eta![l]!);
    expect(errs['least-squares']![3]!).toBeLessThan(0.8 * errs.eta![3]!);
  });
});

/** K/V of a view with the quantized part as exact code·scale + zero (float64 arithmetic, no fp16 rounding of x̂). */
function exactView(v: QuantizedLayerView): { keys: Float64Array; values: Float64Array } {
  const { kvHeads: H, headDim: D, tokens: N, keyGroupSize: gs, valueGroupSize: gv } = v;
  const keys = new Float64Array(H * N * D);
  const values = new Float64Array(H * N * D);
  for (const b of v.keyBlocks) {
    const G = b.tokens / gs;
    const codes = unpackCodes(b.packed, H * D, b.tokens, v.keyBits as Bits);
    const s = v.decodeMeta(b.scale, 0, H * D * G), z = v.decodeMeta(b.zero, 0, H * D * G);
    for (let h = 0; h < H; h++) for (let d = 0; d < D; d++) for (let t = 0; t < b.tokens; t++) {
      const row = h * D + d, g = Math.floor(t / gs);
      keys[(h * N + b.start + t) * D + d] = codes[row * b.tokens + t]! * s[row * G + g]! + z[row * G + g]!;
    }
  }
  for (const c of v.valueChunks) {
    const G = D / gv;
    const rows = c.filled * H;
    const codes = unpackCodes(c.packed.subarray(0, (rows * D * (v.valueBits as number)) / 32), rows, D, v.valueBits as Bits);
    const s = v.decodeMeta(c.scale, 0, rows * G), z = v.decodeMeta(c.zero, 0, rows * G);
    for (let t = 0; t < c.filled; t++) for (let h = 0; h < H; h++) for (let d = 0; d < D; d++) {
      const row = t * H + h, g = Math.floor(d / gv);
      values[(h * N + c.start + t) * D + d] = codes[row * D + d]! * s[row * G + g]! + z[row * G + g]!;
    }
  }
  const rk = v.residualKeys.length / (H * D), rv = v.residualValues.length / (H * D);
  for (let t = 0; t < rk; t++) for (let h = 0; h < H; h++) for (let d = 0; d < D; d++) keys[(h * N + v.quantizedKeys + t) * D + d] = v.residualKeys[(t * H + h) * D + d]!;
  for (let t = 0; t < rv; t++) for (let h = 0; h < H; h++) for (let d = 0; d < D; d++) values[(h * N + v.quantizedValues + t) * D + d] = v.residualValues[(t * H + h) * D + d]!;
  return { keys, values };
}

describe('packed kernels are exact', () => {
  it.each(['kivi-2', 'kivi-1', 'xquant-1.38'])('%s: SIMD and JS kernels = float64 attention over code·scale + zero (fp16 metadata)', (preset) => {
    const L = 2, H = 2, D = 64, qH = 6, R = 32;
    const cache = createKvCache(preset, { layers: L, kvHeads: H, headDim: D }, { residualLength: R }) as QuantizedKvCache;
    drive(cache, L, H, D, qH, 70, 9, 41, (l, step) => {
      if (step !== 8) return;
      const v = cache.view(l);
      const { keys, values } = exactView(v);
      for (const rows of [1, 2]) {
        const qd = randn(qH * rows * D, 60 + rows);
        const ref = refAttention(qd, keys, values, qH, rows, H, v.tokens, D);
        for (const simd of [true, false]) {
          setKernelBackend(simd ? 'auto' : 'js');
          const o = jsPackedAttentionKernel.attend(v, tf.tensor3d(qd, [qH, rows, D]));
          setKernelBackend('auto');
          expect(maxAbsDiff(o.dataSync(), ref)).toBeLessThan(2e-6 * maxAbs(ref) + 1e-6);
          o.dispose();
        }
      }
    });
  });
});
