import { describe, expect, test } from 'vitest';
import {
  OVERFLOW_AT,
  PRECISION_MAX,
  boundScale,
  dequantizeKv,
  dequantizeRows,
  dequantizeValue,
  groupStats,
  packedKeyScores,
  packedValueMix,
  quantizeKeys,
  quantizeRows,
  quantizeValues,
  roundHalf,
  type Bits,
  type Precision,
} from '@xquant/quant';

// Issue 13 item 2: finite inputs near the top of the precision's range used to dequantize to +Infinity (the scale rounds
// up and q·s + z overflows) while the kernels, which do not round, returned a finite value.

/**
 * |x̂ − x| ≤ s/2 plus a few units in the last place of the magnitudes involved, plus what lies beyond the top level
 * z + m·s when the scale had to be capped (1-bit groups wider than the precision's range).
 */
function bound(s: number, z: number, bits: Bits, x: number, precision: Precision): number {
  const m = (1 << bits) - 1;
  const ulp = precision === 'fp16' ? 2 ** -9 : 2 ** -21;
  return s / 2 + Math.max(0, x - (z + m * s)) + ulp * (Math.abs(x) + Math.abs(z) + m * s) + 1e-30;
}

const BITS: Bits[] = [1, 2, 4, 8];

describe('issue 13 item 2: reconstructions stay finite and within the quantization bound', () => {
  const groups: [string, Precision, number[]][] = [
    ['{65504, 0}', 'fp16', [65504, 0]],
    ['{0, 65504}', 'fp16', [0, 65504]],
    ['{-65504, 0}', 'fp16', [-65504, 0]],
    ['{65504, -65504} (range wider than fp16)', 'fp16', [65504, -65504]],
    ['{65519, -1} (rounds to 65504)', 'fp16', [65519, -1]],
    ['{FLT_MAX, 0}', 'fp32', [3.4028234663852886e38, 0]],
    ['{FLT_MAX, -FLT_MAX}', 'fp32', [3.4028234663852886e38, -3.4028234663852886e38]],
  ];
  for (const [name, precision, vals] of groups) {
    for (const bits of BITS) {
      test(`${name} at ${bits} bits (${precision})`, () => {
        const cols = 32; // one group of 32 values, packed into whole words for every width
        const x = Float32Array.from({ length: cols }, (_, i) => vals[i % vals.length]!);
        const q = quantizeRows(x, 1, cols, { bits, groupSize: cols, precision });
        const deq = dequantizeRows(q.codes, q);
        const r = precision === 'fp16' ? roundHalf : Math.fround;
        for (let i = 0; i < cols; i++) {
          expect(Number.isFinite(deq[i])).toBe(true);
          expect(Math.abs(deq[i]! - r(x[i]!))).toBeLessThanOrEqual(bound(q.scale[0]!, q.zero[0]!, bits, r(x[i]!), precision));
          expect(deq[i]).toBe(dequantizeValue(q.codes[i]!, q.scale[0]!, q.zero[0]!, bits, precision));
        }
        // keys and values of a K/V block, and the kernels on them (which do not round the product)
        const shape = { heads: 1, tokens: 32, headDim: 32 };
        const kv = Float32Array.from({ length: 32 * 32 }, (_, i) => vals[(i + Math.floor(i / 32)) % vals.length]!);
        const K = quantizeKeys(kv, shape, { bits, groupSize: 32, precision });
        const V = quantizeValues(kv, shape, { bits, groupSize: 32, precision });
        const dk = dequantizeKv(K);
        const dv = dequantizeKv(V);
        expect(dk.every(Number.isFinite) && dv.every(Number.isFinite)).toBe(true);
        // one-hot query on channel 3 reads k̂[t, 3]; one-hot p on token 5 reads v̂[5, ·]
        const qv = new Float32Array(32);
        qv[3] = 1;
        const scores = packedKeyScores(qv, K);
        const pv = new Float32Array(32);
        pv[5] = 1;
        const mix = packedValueMix(pv, V);
        const rel = precision === 'fp16' ? 2 ** -10 : 2 ** -22;
        for (let t = 0; t < 32; t++) {
          expect(Number.isFinite(scores[t])).toBe(true);
          expect(Math.abs(scores[t]! - dk[t * 32 + 3]!)).toBeLessThanOrEqual(rel * Math.abs(dk[t * 32 + 3]!) + 1e-30);
        }
        for (let d = 0; d < 32; d++) {
          expect(Number.isFinite(mix[d])).toBe(true);
          expect(Math.abs(mix[d]! - dv[5 * 32 + d]!)).toBeLessThanOrEqual(rel * Math.abs(dv[5 * 32 + d]!) + 1e-30);
        }
      });
    }
  }

  test('boundScale keeps the scale wherever the reference does not overflow, and lowers it otherwise', () => {
    for (const precision of ['fp16', 'fp32'] as const) {
      const r = precision === 'fp16' ? roundHalf : Math.fround;
      const max = PRECISION_MAX[precision];
      for (const bits of BITS) {
        const m = (1 << bits) - 1;
        for (const z of [0, -max, -1, 1, max / 2, -max / 2]) {
          for (const frac of [0.25, 0.5, 0.999, 1, 1.0001, 1.5, 2]) {
            const s = r(Math.min(max, (frac * (max - z)) / m));
            if (!(s >= 0) || !Number.isFinite(s)) continue;
            const b = boundScale(s, z, bits, precision);
            expect(b).toBeLessThanOrEqual(s);
            expect(Number.isFinite(dequantizeValue(m, b, z, bits, precision))).toBe(true);
            const ref = r(r(m * s) + z); // the reference's top reconstruction
            if (Number.isFinite(ref) && m * s < OVERFLOW_AT[precision]) expect(b).toBe(s);
          }
        }
      }
    }
  });

  test('groupStats (the upper layer of a cross-layer group) gives finite statistics for the same groups', () => {
    const x = Float32Array.from({ length: 32 }, (_, i) => (i % 2 ? 65504 : 0));
    const st = groupStats(x, 1, 32, { bits: 2, groupSize: 32 });
    expect(Number.isFinite(dequantizeValue(3, st.scale[0]!, st.zero[0]!, 2, 'fp16'))).toBe(true);
  });
});
