import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
// Only the public API of the package.
import { createKvCache, defineQuantizedStrategy, plainAttention, registerStrategy, type QuantizedCacheOptions } from '@xquant/tfjs';
import { kvLike, maxAbs, maxAbsDiff, randn, useCpu } from './helpers.js';

beforeAll(useCpu);

/** A user strategy: first and last layer in full precision, keys 4-bit, values 2-bit elsewhere. */
interface SandwichOptions extends QuantizedCacheOptions {
  valueBits?: 1 | 2 | 4;
}
const sandwich = defineQuantizedStrategy<SandwichOptions>({
  id: 'sandwich',
  layout: (o, shape) => {
    const edge = (l: number) => l === 0 || l === shape.layers - 1;
    return {
      keys: Array.from({ length: shape.layers }, (_, l) => ({ bits: edge(l) ? 16 : 4, codesFrom: null })),
      values: Array.from({ length: shape.layers }, (_, l) => ({ bits: edge(l) ? 16 : (o.valueBits ?? 2), codesFrom: null })),
    };
  },
});

describe('user-defined strategy through the public API', () => {
  it('registers, builds, attends like dequantize + plain attention, accounts full-precision layers at 32 bits', () => {
    registerStrategy('sandwich', (o) => sandwich(o as SandwichOptions));
    const L = 3, H = 2, D = 32, P = 70;
    const cache = createKvCache('sandwich', { layers: L, kvHeads: H, headDim: D }, { residualLength: 32, valueBits: 1 });
    expect(cache.strategyId).toBe('sandwich');
    for (let l = 0; l < L; l++) {
      const k = tf.tensor3d(kvLike(H, P, D, l), [H, P, D]);
      const v = tf.tensor3d(randn(H * P * D, 50 + l), [H, P, D]);
      cache.prefill(l, k, v);
      cache.attend(l, tf.tensor3d(randn(4 * P * D, l), [4, P, D])).dispose();
    }
    for (let l = 0; l < L; l++) {
      const q = tf.tensor3d(randn(4 * D, 9 + l), [4, 1, D]);
      const kn = tf.tensor3d(randn(H * D, 90 + l), [H, 1, D]);
      cache.append(l, kn, kn);
      const { keys, values } = cache.dequantize(l);
      const want = plainAttention(q, keys, values).dataSync();
      const got = cache.attend(l, q).dataSync();
      expect(maxAbsDiff(got, want)).toBeLessThan(2e-3 * maxAbs(want) + 1e-5);
    }
    const m = cache.memory();
    expect(m.paperBitsPerElement).toBeCloseTo((16 * 4 + 4 + 1) / 6, 12);
    // full-precision layers hold all 71 tokens in float32: at least 2 layers × 2 tensors × 71 tokens × H × D × 4 bytes
    expect(m.residualBytes).toBeGreaterThanOrEqual(2 * 2 * 71 * H * D * 4);
  });
});
