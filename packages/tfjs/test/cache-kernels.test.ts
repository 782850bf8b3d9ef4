import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  packedKernelPath,
  packedKeyScores,
  packedValueMix,
  setKernelBackend,
  wasmKernelsAvailable,
  type Bits,
} from '@xquant/quant';
import { asymkv, createKvCache, dequantizeView, layerKvViews, type QuantizedKvCache } from '../src/index.js';
import { kvLike, maxAbs, maxAbsDiff, randn } from './helpers.js';

beforeAll(async () => {
  tf.enableProdMode();
  await tf.setBackend('cpu');
});
afterAll(() => setKernelBackend('auto'));

const H = 2, D = 128, R = 32, T = 150, qH = 8;

/** A 1-layer cache with these key/value bits holding T tokens (fp16 metadata), one token appended per step. */
function filled(keyBits: Bits, valueBits: Bits): QuantizedKvCache {
  const cache = createKvCache(asymkv({ keyBits, valueBits, residualLength: R }), { layers: 1, kvHeads: H, headDim: D }) as QuantizedKvCache;
  const k = kvLike(H, T, D, 3), v = randn(H * T * D, 4, 0.8, 0.1);
  const slice = (x: Float32Array, t0: number, n: number) => {
    const out = new Float32Array(H * n * D);
    for (let h = 0; h < H; h++) out.set(x.subarray((h * T + t0) * D, (h * T + t0 + n) * D), h * n * D);
    return tf.tensor3d(out, [H, n, D]);
  };
  for (let t = 0; t < T; t += t === 0 ? 100 : 1) {
    const n = t === 0 ? 100 : 1;
    const [kt, vt] = [slice(k, t, n), slice(v, t, n)];
    if (t === 0) cache.prefill(0, kt, vt);
    else cache.append(0, kt, vt);
    tf.dispose([kt, vt, cache.attend(0, tf.zeros([qH, n, D]) as tf.Tensor3D)]);
  }
  return cache;
}

/** Float64 q·kᵀ (`keys`) or p·v over head-major `[H, tokens, D]` data. */
function dense(x: Float32Array, a: Float32Array, tokens: number, keys: boolean): Float64Array {
  const rep = qH / H;
  const out = new Float64Array(qH * (keys ? tokens : D));
  for (let h = 0; h < qH; h++) {
    const kv = Math.floor(h / rep);
    for (let t = 0; t < tokens; t++) {
      for (let d = 0; d < D; d++) {
        const xv = x[(kv * tokens + t) * D + d]!;
        const [o, w] = keys ? [h * tokens + t, a[h * D + d]!] : [h * D + d, a[h * tokens + t]!];
        out[o] = out[o]! + w * xv;
      }
    }
  }
  return out;
}

describe("the cache's layers run @xquant/quant's kernels on the cache's own storage", () => {
  it.each([1, 2, 4] as const)('%i-bit key blocks: views share the storage; SIMD (1, 2 bits) and JS give the same scores', (bits) => {
    const cache = filled(bits, 2);
    const view = cache.view(0);
    const { keys } = layerKvViews(view);
    expect(keys.length).toBe(view.keyBlocks.length);
    expect(keys.length).toBeGreaterThan(2);
    keys.forEach((k, i) => {
      expect(k.packed).toBe(view.keyBlocks[i]!.packed);
      expect(k.scale).toBe(view.keyBlocks[i]!.scale);
      expect(k.scale).toBeInstanceOf(Uint16Array); // fp16 bit patterns, as stored
    });
    expect(packedKernelPath(keys, qH)).toBe(wasmKernelsAvailable() && bits <= 2 ? 'wasm-simd' : 'js');
    const q = randn(qH * D, 5);
    const simd = packedKeyScores(q, keys);
    setKernelBackend('js');
    const js = packedKeyScores(q, keys);
    setKernelBackend('auto');
    const Nq = view.quantizedKeys;
    const ref = dense(headMajorPrefix(dequantizeView(view).keys, view.tokens, Nq), q, Nq, true);
    expect(maxAbsDiff(simd, js)).toBeLessThan(1e-5 * maxAbs(js));
    expect(maxAbsDiff(js, ref)).toBeLessThan(2e-3 * maxAbs(ref)); // dequantizeView rounds to fp16
    cache.dispose();
  });

  it.each([1, 2] as const)('%i-bit value chunks (token-major): views share the storage; SIMD and JS give the same mix', (bits) => {
    const cache = filled(2, bits);
    const view = cache.view(0);
    const { values } = layerKvViews(view);
    expect(values.reduce((n, v) => n + v.tokens, 0)).toBe(view.quantizedValues);
    values.forEach((v, i) => {
      expect(v.tokenMajor).toBe(true);
      expect(v.packed).toBe(view.valueChunks[i]!.packed);
      expect(v.zero).toBe(view.valueChunks[i]!.zero);
    });
    expect(packedKernelPath(values, qH)).toBe(wasmKernelsAvailable() ? 'wasm-simd' : 'js');
    const Nq = view.quantizedValues;
    const p = randn(qH * Nq, 6);
    const simd = packedValueMix(p, values);
    setKernelBackend('js');
    const js = packedValueMix(p, values);
    setKernelBackend('auto');
    const ref = dense(headMajorPrefix(dequantizeView(view).values, view.tokens, Nq), p, Nq, false);
    expect(maxAbsDiff(simd, js)).toBeLessThan(1e-5 * maxAbs(js));
    expect(maxAbsDiff(js, ref)).toBeLessThan(2e-3 * maxAbs(ref));
    cache.dispose();
  });
});

/** The first `n` of `N` tokens of head-major `[H, N, D]` data. */
function headMajorPrefix(x: Float32Array, N: number, n: number): Float32Array {
  const out = new Float32Array(H * n * D);
  for (let h = 0; h < H; h++) out.set(x.subarray(h * N * D, (h * N + n) * D), h * n * D);
  return out;
}
