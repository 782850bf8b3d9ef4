import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { accountBits, xquantPlan } from '@xquant/cross-layer';
import { XqConfigError, dequantizeKv, quantizeKeys, quantizeValues, setKernelBackend, unpackCodes, type Bits } from '@xquant/quant';
import {
  asymkv,
  createKvCache,
  jsPackedAttentionKernel,
  kivi,
  plainAttention,
  selectBackend,
  xquant,
  type KvCache,
  type QuantizedKvCache,
  type QuantizedLayerView,
} from '@xquant/tfjs';
import { kvLike, maxAbs, maxAbsDiff, randn, refAttention, useCpu } from './helpers.js';

beforeAll(useCpu);

const H = 2, D = 64;

/** Head-major `[H, n, D]` slice of `[H, T, D]` data. */
function slice(x: Float32Array, T: number, t0: number, n: number): Float32Array {
  const out = new Float32Array(H * n * D);
  for (let h = 0; h < H; h++) out.set(x.subarray((h * T + t0) * D, (h * T + t0 + n) * D), h * n * D);
  return out;
}

/** Fill every layer with the same prefill + decode schedule; the last attend leaves everything due flushed. */
function fill(cache: KvCache, L: number, keys: Float32Array[], values: Float32Array[], T: number, P: number): void {
  for (let t = P - 1; t < T; t++) {
    for (let l = 0; l < L; l++) {
      const t0 = t < P ? 0 : t;
      const n = t < P ? P : 1;
      const k = tf.tensor3d(slice(keys[l]!, T, t0, n), [H, n, D]);
      const v = tf.tensor3d(slice(values[l]!, T, t0, n), [H, n, D]);
      if (t < P) cache.prefill(l, k, v);
      else cache.append(l, k, v);
      tf.dispose([k, v]);
      const q = tf.tensor3d(randn(4 * D, 50 + t + l), [4, 1, D]);
      tf.dispose([q, cache.attend(l, q)]);
    }
  }
}

/** Float64 K/V exactly as the packed kernels read them: code·scale + zero, each kind with its own group size. */
function exactView(v: QuantizedLayerView): { keys: Float64Array; values: Float64Array } {
  const { kvHeads: Hh, headDim: Dd, tokens: N, keyGroupSize: gk, valueGroupSize: gv } = v;
  const keys = new Float64Array(Hh * N * Dd);
  const values = new Float64Array(Hh * N * Dd);
  for (const b of v.keyBlocks) {
    const G = b.tokens / gk;
    const codes = unpackCodes(b.packed, Hh * Dd, b.tokens, v.keyBits as Bits);
    const s = v.decodeMeta(b.scale, 0, Hh * Dd * G), z = v.decodeMeta(b.zero, 0, Hh * Dd * G);
    for (let h = 0; h < Hh; h++) for (let d = 0; d < Dd; d++) for (let t = 0; t < b.tokens; t++) {
      const row = h * Dd + d, g = Math.floor(t / gk);
      keys[(h * N + b.start + t) * Dd + d] = codes[row * b.tokens + t]! * s[row * G + g]! + z[row * G + g]!;
    }
  }
  const G = Dd / gv;
  for (const c of v.valueChunks) {
    const rows = c.filled * Hh;
    const codes = unpackCodes(c.packed.subarray(0, (rows * Dd * (v.valueBits as number)) / 32), rows, Dd, v.valueBits as Bits);
    const s = v.decodeMeta(c.scale, 0, rows * G), z = v.decodeMeta(c.zero, 0, rows * G);
    for (let t = 0; t < c.filled; t++) for (let h = 0; h < Hh; h++) for (let d = 0; d < Dd; d++) {
      const row = t * Hh + h, g = Math.floor(d / gv);
      values[(h * N + c.start + t) * Dd + d] = codes[row * Dd + d]! * s[row * G + g]! + z[row * G + g]!;
    }
  }
  const rk = v.residualKeys.length / (Hh * Dd), rv = v.residualValues.length / (Hh * Dd);
  for (let t = 0; t < rk; t++) for (let h = 0; h < Hh; h++) for (let d = 0; d < Dd; d++) keys[(h * N + v.quantizedKeys + t) * Dd + d] = v.residualKeys[(t * Hh + h) * Dd + d]!;
  for (let t = 0; t < rv; t++) for (let h = 0; h < Hh; h++) for (let d = 0; d < Dd; d++) values[(h * N + v.quantizedValues + t) * Dd + d] = v.residualValues[(t * Hh + h) * Dd + d]!;
  return { keys, values };
}

describe('valueGroupSize: values grouped apart from keys', () => {
  it.each([
    [2, 2, 32, 64],
    [2, 1, 32, 64],
    [4, 4, 32, 16],
    [1, 2, 64, 32],
  ] as const)('keys %i-bit / values %i-bit, key group %i, value group %i: dequantize() = quantizeKeys/quantizeValues at those group sizes', (kb, vb, gk, gv) => {
    const L = 2, R = 64, P = 70, T = 140;
    const cache = asymkv({ keyBits: kb, valueBits: vb, residualLength: R, groupSize: gk, valueGroupSize: gv }).createCache({ layers: L, kvHeads: H, headDim: D });
    const keys = [kvLike(H, T, D, 1), kvLike(H, T, D, 2)];
    const values = [randn(H * T * D, 3, 0.8, 0.1), randn(H * T * D, 4, 0.8, 0.1)];
    fill(cache, L, keys, values, T, P);
    const nk = Math.floor(T / R) * R; // keys in whole blocks of R
    const nv = T - R; // values beyond the newest R
    for (let l = 0; l < L; l++) {
      const v = (cache as QuantizedKvCache).view(l);
      expect([v.keyGroupSize, v.valueGroupSize, v.quantizedKeys, v.quantizedValues]).toEqual([gk, gv, nk, nv]);
      const got = cache.dequantize(l);
      const gotK = got.keys.dataSync(), gotV = got.values.dataSync();
      tf.dispose([got.keys, got.values]);
      // oracle: @xquant/quant on the same tokens (keys one R-block at a time, values all at once: per token anyway)
      const wantV = dequantizeKv(quantizeValues(slice(values[l]!, T, 0, nv), { heads: H, tokens: nv, headDim: D }, { bits: vb, groupSize: gv, precision: 'fp16' }));
      expect(Float32Array.from(slice(gotV as Float32Array, T, 0, nv))).toEqual(wantV);
      for (let b = 0; b < nk / R; b++) {
        const wantK = dequantizeKv(quantizeKeys(slice(keys[l]!, T, b * R, R), { heads: H, tokens: R, headDim: D }, { bits: kb, groupSize: gk, precision: 'fp16' }));
        expect(Float32Array.from(slice(gotK as Float32Array, T, b * R, R))).toEqual(wantK);
      }
      // the full-precision rest is kept as given
      expect(slice(gotV as Float32Array, T, nv, R)).toEqual(slice(values[l]!, T, nv, R));
    }
    // a value group of 64 differs from 32 (the option is not ignored)
    if (gv === 64) {
      const v32 = dequantizeKv(quantizeValues(slice(values[0]!, T, 0, nv), { heads: H, tokens: nv, headDim: D }, { bits: vb, groupSize: 32, precision: 'fp16' }));
      const got = cache.dequantize(0);
      expect(Float32Array.from(slice(got.values.dataSync() as Float32Array, T, 0, nv))).not.toEqual(v32);
      tf.dispose([got.keys, got.values]);
    }
    cache.dispose();
  });

  it.each([
    ['kivi-2', 32, 64],
    ['kivi-1', 32, 64],
    ['xquant-1.38', 32, 64],
    ['xquant-1.38', 64, 32],
    ['kivi-2', 32, 8], // value group not a multiple of 16: the SIMD path does not apply, the JS kernel runs
  ] as const)('%s, key group %i, value group %i: SIMD and JS kernels = float64 attention over code·scale + zero, and ≈ dequantize() + plain attention', (preset, gk, gv) => {
    const L = 2, qH = 6, R = 64, T = 150;
    const cache = createKvCache(preset, { layers: L, kvHeads: H, headDim: D }, { residualLength: R, groupSize: gk, valueGroupSize: gv }) as QuantizedKvCache;
    const keys = [kvLike(H, T, D, 5), kvLike(H, T, D, 6)];
    const values = [randn(H * T * D, 7, 0.8, 0.1), randn(H * T * D, 8, 0.8, 0.1)];
    fill(cache, L, keys, values, T, 90);
    for (let l = 0; l < L; l++) {
      const v = cache.view(l);
      const ex = exactView(v);
      for (const rows of [1, 3]) {
        const qd = randn(qH * rows * D, 60 + rows + l);
        const q = tf.tensor3d(qd, [qH, rows, D]);
        const ref = refAttention(qd, ex.keys, ex.values, qH, rows, H, v.tokens, D);
        const { keys: dk, values: dv } = cache.dequantize(l);
        const plain = plainAttention(q, dk, dv).dataSync();
        for (const simd of [true, false]) {
          setKernelBackend(simd ? 'auto' : 'js');
          const o = jsPackedAttentionKernel.attend(v, q);
          setKernelBackend('auto');
          expect(maxAbsDiff(o.dataSync(), ref)).toBeLessThan(2e-6 * maxAbs(ref) + 1e-6);
          // dequantize() rounds code·scale + zero to fp16 as the reference does (≤ 2^-11 relative)
          expect(maxAbsDiff(o.dataSync(), plain)).toBeLessThan(2e-3 * maxAbs(plain) + 1e-5);
          o.dispose();
        }
        tf.dispose([q, dk, dv]);
      }
    }
    cache.dispose();
  });

  it.each(['kivi-2', 'xquant-1.38'])('%s with value group 64 on wasm gives the same attention as on cpu and as dequantize() + plain attention', async (id) => {
    const P = 150, qH = 8;
    const k = kvLike(H, P + 1, D, 3);
    const v = randn(H * (P + 1) * D, 4);
    const q = randn(qH * D, 5);
    const outs: Float32Array[] = [];
    try {
      for (const b of ['cpu', 'wasm'] as const) {
        await selectBackend({ prefer: b });
        expect(tf.getBackend()).toBe(b);
        const cache = createKvCache(id, { layers: 2, kvHeads: H, headDim: D }, { residualLength: 32, valueGroupSize: 64 });
        const kt = tf.tensor3d(k, [H, P + 1, D]);
        const vt = tf.tensor3d(v, [H, P + 1, D]);
        for (const l of [0, 1]) {
          cache.prefill(l, tf.slice(kt, [0, 0, 0], [H, P, D]), tf.slice(vt, [0, 0, 0], [H, P, D]));
          cache.append(l, tf.slice(kt, [0, P, 0], [H, 1, D]), tf.slice(vt, [0, P, 0], [H, 1, D]));
        }
        cache.attend(0, tf.tensor3d(q, [qH, 1, D])).dispose(); // layer 1 may read layer 0's value codes
        const view = (cache as QuantizedKvCache).view(1);
        expect(view.valueGroupSize).toBe(64);
        expect(view.quantizedValues).toBeGreaterThan(0);
        const { keys, values } = cache.dequantize(1);
        outs.push((await cache.attend(1, tf.tensor3d(q, [qH, 1, D])).data()) as Float32Array);
        const plain = (await plainAttention(tf.tensor3d(q, [qH, 1, D]), keys, values).data()) as Float32Array;
        expect(maxAbsDiff(outs[outs.length - 1]!, plain)).toBeLessThan(2e-3 * maxAbs(plain) + 1e-5);
        cache.dispose();
      }
      expect(maxAbsDiff(outs[0]!, outs[1]!)).toBeLessThan(1e-5 * maxAbs(outs[0]!) + 1e-6);
    } finally {
      await useCpu();
    }
  });

  it('memory() and accountBits: value metadata is one fp16 scale + zero per valueGroupSize channels of a token', () => {
    const L = 4, R = 32, P = 128, T = 198, gk = 32, gv = 64;
    const cache = kivi({ bits: 2, residualLength: R, groupSize: gk, valueGroupSize: gv }).createCache({ layers: L, kvHeads: H, headDim: D });
    const keys = Array.from({ length: L }, (_, l) => kvLike(H, T, D, 20 + l));
    const values = Array.from({ length: L }, (_, l) => randn(H * T * D, 30 + l));
    fill(cache, L, keys, values, T, P);
    const m = cache.memory();
    const nk = Math.floor(T / R) * R, nv = T - R;
    const allocatedV = Math.ceil(nv / 32) * 32; // value chunks of 32 tokens
    // keys: per channel, one group per gk tokens; values: per token and head, one group per gv channels; 2 × 2 bytes each
    const keyMeta = H * D * (nk / gk) * 4, valueMeta = allocatedV * H * (D / gv) * 4;
    expect(m.metadataBytes).toBe(L * (keyMeta + valueMeta));
    expect(m.codeBytes).toBe(L * ((nk * H * D * 2) / 8 + (allocatedV * H * D * 2) / 8));
    const { config, plan } = cache as QuantizedKvCache;
    const acc = accountBits({ config, kvHeads: H, headDim: D, tokens: T, residualBits: 32 });
    for (const p of acc.perLayer) {
      expect(p.keys.metadataBytes).toBe(keyMeta);
      expect(p.values.metadataBytes).toBe(nv * H * (D / gv) * 4);
    }
    const slack = L * (allocatedV - nv) * H * ((D * 2) / 8 + (D / gv) * 4);
    const residualSlot = L * H * D * 4 * (1 + 2); // as in cache.test.ts: one extra value slot, two extra key slots per layer
    expect(m.totalBytes).toBe(acc.totalBytes + slack + residualSlot);
    // against the same plan with values at group 32: exactly (T − R)·H·(D/32 − D/64) fp16 pairs fewer per layer
    const acc32 = accountBits({ plan, kvHeads: H, headDim: D, tokens: T, residualLength: R, groupSize: gk, residualBits: 32 });
    expect(acc32.totalBytes - acc.totalBytes).toBe(L * nv * H * (D / 32 - D / 64) * 4);
    // an 8-layer xquant-1.38 at T = 2048, R = 32: values at group 64 save 0.5 stored bit per quantized value element
    const x = xquantPlan({ layers: 8, keyBits: 2, valueBits: 1, valueShareFrom: 4 });
    const a = accountBits({ plan: x, kvHeads: 2, headDim: 64, tokens: 2048, residualLength: 32, groupSize: 32 });
    const b = accountBits({ plan: x, kvHeads: 2, headDim: 64, tokens: 2048, residualLength: 32, groupSize: 32, valueGroupSize: 64 });
    expect(a.storedBitsPerElement - b.storedBitsPerElement).toBeCloseTo((0.5 * (2048 - 32)) / (2 * 2048), 12);
    // the default is the group size, bit for bit
    expect(accountBits({ plan: x, kvHeads: 2, headDim: 64, tokens: 2048, residualLength: 32, groupSize: 32, valueGroupSize: 32 })).toEqual(a);
    cache.dispose();
  });

  it('defaults to groupSize: the same cache, bit for bit', () => {
    const L = 2, R = 32, T = 100;
    const keys = [kvLike(H, T, D, 40), kvLike(H, T, D, 41)];
    const values = [randn(H * T * D, 42), randn(H * T * D, 43)];
    const a = xquant({ residualLength: R }).createCache({ layers: L, kvHeads: H, headDim: D });
    const b = xquant({ residualLength: R, valueGroupSize: 32 }).createCache({ layers: L, kvHeads: H, headDim: D });
    fill(a, L, keys, values, T, 40);
    fill(b, L, keys, values, T, 40);
    for (let l = 0; l < L; l++) {
      const [da, db] = [a.dequantize(l), b.dequantize(l)];
      expect(da.values.dataSync()).toEqual(db.values.dataSync());
      expect(da.keys.dataSync()).toEqual(db.keys.dataSync());
      tf.dispose([da.keys, da.values, db.keys, db.values]);
    }
    expect(a.memory()).toEqual(b.memory());
    a.dispose();
    b.dispose();
  });

  it('bad valueGroupSize → XqConfigError E_GROUP_SIZE (at createCache, with expected vs got); presets accept it as an override', () => {
    const shape = { layers: 2, kvHeads: H, headDim: D };
    const code = (f: () => unknown): string | undefined => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(XqConfigError);
        return `${(e as XqConfigError).code}: ${(e as Error).message}`;
      }
      return undefined;
    };
    expect(code(() => createKvCache('kivi-2', shape, { valueGroupSize: 48 }))).toMatch(/^E_GROUP_SIZE: headDim 64 must be a multiple of valueGroupSize 48/);
    expect(code(() => createKvCache('xquant-1.38', shape, { valueGroupSize: 128 }))).toMatch(/^E_GROUP_SIZE: .*valueGroupSize 128/);
    for (const bad of [0, -64, 1.5, Number.NaN, '64' as unknown as number]) {
      expect(code(() => createKvCache('kivi-2', shape, { valueGroupSize: bad }))).toMatch(/^E_GROUP_SIZE: valueGroupSize must be a positive integer; got /);
    }
    const config = { ...xquantPlan({ layers: 2, keyBits: 2, valueBits: 1 }), residualLength: 32, groupSize: 32 };
    expect(code(() => accountBits({ config: { ...config, valueGroupSize: 48 }, kvHeads: 2, headDim: 64, tokens: 64 }))).toMatch(
      /^E_GROUP_SIZE: headDim 64 must be a multiple of valueGroupSize 48/,
    );
    expect(code(() => accountBits({ config: { ...config, valueGroupSize: 0 }, kvHeads: 2, headDim: 64, tokens: 64 }))).toMatch(
      /^E_GROUP_SIZE: valueGroupSize must be a positive integer/,
    );
    // the value group size needs only divide headDim, not R (keys keep the R constraint)
    const ok = createKvCache('xquant-1.38', shape, { residualLength: 32, valueGroupSize: 64 }) as QuantizedKvCache;
    expect(ok.config.valueGroupSize).toBe(64);
    ok.dispose();
    expect(code(() => createKvCache('kivi-2', shape, { residualLength: 32, groupSize: 64 }))).toMatch(/^E_RESIDUAL/);
  });
});
