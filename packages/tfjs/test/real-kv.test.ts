import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { createKvCache } from '@xquant/tfjs';
import { REFS_DIR, hasRefs, readSafetensors, refAttention, rng, useCpu } from './helpers.js';

const CONFIGS = ['full', 'kivi-2', 'kivi-1', 'asymkv-1.5', 'xquant-1.38', 'xquant-nocal', 'xquant-noshare', 'xquant-k-share'] as const;
const MODELS = ['xq-llama-20m', 'xq-qwen2-30m'] as const;

beforeAll(useCpu);

/**
 * Attention-output error of each strategy on the real post-RoPE K/V of the eval refs (`long.layer{l}.key/value`,
 * fp16 [1, 2, 1000, 64]). The refs store no queries, so each KV head is probed by 8 query heads that are key vectors
 * of the same layer and head at random earlier positions (peaked attention, as real queries give). Tokens 0…998 are
 * prefilled (R = 128), token 999 is appended (which flushes: 896 keys and 871 values quantized), then one attend.
 * Error = ‖o − o_ref‖ / ‖o_ref‖ over all layers, with o_ref a float64 attention over the unquantized K/V.
 */
describe.skipIf(!hasRefs)('real KV from the eval refs — needs ../shared/eval/refs', () => {
  const results: Record<string, Record<string, number>> = {};
  it.each(MODELS)('%s: full < kivi-2 < kivi-1; calibrated < uncalibrated at equal bits', (model) => {
    const st = readSafetensors(`${REFS_DIR}${model}.safetensors`);
    const L = 8, H = 2, T = 1000, D = 64, probes = 8, qH = H * probes;
    const r = rng(model.length);
    const layers = Array.from({ length: L }, (_, l) => {
      const k = st.get(`long.layer${l}.key`)!.data; // [1, 2, 1000, 64] = [H, T, D]
      const v = st.get(`long.layer${l}.value`)!.data;
      const q = new Float32Array(qH * D);
      for (let h = 0; h < qH; h++) {
        const kh = Math.floor(h / probes);
        const pos = Math.floor(r.uniform() * (T - 1));
        q.set(k.subarray((kh * T + pos) * D, (kh * T + pos + 1) * D), h * D);
      }
      return { k, v, q, ref: refAttention(q, k, v, qH, 1, H, T, D) };
    });
    const slice = (x: Float32Array, t0: number, n: number) => {
      const out = new Float32Array(H * n * D);
      for (let h = 0; h < H; h++) out.set(x.subarray((h * T + t0) * D, (h * T + t0 + n) * D), h * n * D);
      return tf.tensor3d(out, [H, n, D]);
    };
    const err: Record<string, number> = {};
    for (const id of CONFIGS) {
      const cache = createKvCache(id, { layers: L, kvHeads: H, headDim: D });
      let num = 0;
      let den = 0;
      for (let l = 0; l < L; l++) {
        const { k, v } = layers[l]!;
        cache.prefill(l, slice(k, 0, T - 1), slice(v, 0, T - 1));
      }
      for (let l = 0; l < L; l++) {
        const { k, v, q, ref } = layers[l]!;
        cache.append(l, slice(k, T - 1, 1), slice(v, T - 1, 1));
        const o = cache.attend(l, tf.tensor3d(q, [qH, 1, D])).dataSync();
        for (let i = 0; i < o.length; i++) {
          num += (o[i]! - ref[i]!) ** 2;
          den += ref[i]! ** 2;
        }
      }
      err[id] = Math.sqrt(num / den);
      cache.dispose();
    }
    results[model] = err;
    console.log(`${model} attention-output relative error: ${CONFIGS.map((c) => `${c} ${err[c]!.toExponential(3)}`).join(', ')}`);
    console.log(`${model} value sharing: xquant-1.38 vs xquant-noshare ${(err['xquant-1.38']! / err['xquant-noshare']!).toFixed(2)}×, vs asymkv-1.5 ${(err['xquant-1.38']! / err['asymkv-1.5']!).toFixed(2)}×`);
    expect(err.full!).toBeLessThan(1e-5);
    expect(err.full!).toBeLessThan(err['kivi-2']!);
    expect(err['kivi-2']!).toBeLessThan(err['kivi-1']!);
    // calibrated < uncalibrated at equal bits
    expect(err['xquant-noshare']!).toBeLessThan(err['asymkv-1.5']!);
    expect(err['xquant-1.38']!).toBeLessThan(err['xquant-nocal']!);
  });
});
