import { describe, expect, test } from 'vitest';
import { fc, test as fcTest } from '@fast-check/vitest';
import { XqConfigError, XqNumericError, XqShapeError, dequantizeRows, quantizeRows, roundHalf, type Bits } from '@xquant/quant';
import { calibrateStats, leastSquaresCalibrator, leastSquaresStats } from '@xquant/calibration';

/** Float64 squared error of each group of `[rows, cols]` reconstructed as `recon`. */
function groupSse(x: ArrayLike<number>, recon: ArrayLike<number>, cols: number, gs: number): number[] {
  const out: number[] = [];
  for (let base = 0; base < x.length; base += gs) {
    let s = 0;
    for (let j = 0; j < gs; j++) s += (x[base + j]! - recon[base + j]!) ** 2;
    out.push(s);
  }
  return out;
}

describe('leastSquaresCalibrator', () => {
  test('recovers scale and zero-point exactly when the values are an affine function of the codes', () => {
    // x = c·0.375 − 1.25 (fp16-exact), codes 0..3 in every group
    const codes = Uint8Array.from({ length: 64 }, (_, i) => (i * 7) % 4);
    const x = Float32Array.from(codes, (c) => c * 0.375 - 1.25);
    const q = quantizeRows(x, 2, 32, { bits: 2, groupSize: 32 });
    // start from deliberately wrong statistics
    const wrong = { ...q, scale: Float32Array.of(1, 1), zero: Float32Array.of(0, 0) };
    const fitted = leastSquaresCalibrator().calibrate(wrong, { values: x, codes });
    expect(Array.from(fitted.scale)).toEqual([0.375, 0.375]);
    expect(Array.from(fitted.zero)).toEqual([-1.25, -1.25]);
  });

  test('matches a float64 normal-equations oracle (then rounded to fp16)', () => {
    const x = Float32Array.from({ length: 32 }, (_, i) => Math.cos(i * 0.7) * 3 + 0.1 * i);
    const q = quantizeRows(x, 1, 32, { bits: 2, groupSize: 32 });
    const out = leastSquaresStats(q, { values: x, codes: q.codes });
    // oracle: solve [Σc² Σc; Σc n] [s z]ᵀ = [Σcx Σx]ᵀ
    let sc = 0, scc = 0, sx = 0, scx = 0;
    for (let j = 0; j < 32; j++) {
      const c = q.codes[j]!, v = roundHalf(x[j]!);
      sc += c; scc += c * c; sx += v; scx += c * v;
    }
    const det = scc * 32 - sc * sc;
    const s = (scx * 32 - sc * sx) / det;
    const z = (scc * sx - sc * scx) / det;
    expect(out.scale[0]).toBe(roundHalf(s));
    expect(Math.abs(out.zero[0]! - z)).toBeLessThanOrEqual(Math.abs(z) * 2 ** -10);
  });

  test('degenerate groups (all codes equal) keep the input statistics', () => {
    const x = Float32Array.from({ length: 64 }, (_, i) => (i < 32 ? 2.5 : i * 0.01));
    const q = quantizeRows(x, 1, 64, { bits: 1, groupSize: 32 });
    expect(q.codes.slice(0, 32).every((c) => c === 0)).toBe(true);
    const out = leastSquaresStats(q, { values: x, codes: q.codes });
    expect(out.scale[0]).toBe(q.scale[0]);
    expect(out.zero[0]).toBe(q.zero[0]);
  });

  fcTest.prop([
    fc.constantFrom<Bits>(1, 2, 4),
    fc.constantFrom<'fp16' | 'fp32'>('fp16', 'fp32'),
    fc.array(fc.double({ min: -8, max: 8, noNaN: true }), { minLength: 128, maxLength: 128 }),
    fc.boolean(),
  ])('never increases any group MSE vs the uncalibrated statistics (within dequantization rounding)', (bits, precision, xs, foreignCodes) => {
    const x = Float32Array.from(xs);
    const q = quantizeRows(x, 2, 64, { bits, groupSize: 32, precision });
    // also with codes that do not belong to the values (cross-layer sharing)
    const codes = foreignCodes ? Uint8Array.from(q.codes, (_, i) => q.codes[(i * 37 + 11) % q.codes.length]!) : q.codes;
    const fitted = leastSquaresStats(q, { values: x, codes });
    expect(fitted.codes).toBe(q.codes);
    const r = precision === 'fp16' ? roundHalf : Math.fround;
    const xr = Float64Array.from(x, r);
    const before = groupSse(xr, dequantizeRows(codes, q), 64, 32);
    const after = groupSse(xr, dequantizeRows(codes, fitted), 64, 32);
    const ulp = precision === 'fp16' ? 2 ** -10 : 2 ** -23;
    for (let g = 0; g < before.length; g++) {
      // slack: one dequantization rounding (two roundings of ≤ |x| magnitude) per element
      const slack = 32 * (2 * 2 * 8 * ulp) ** 2 + 2 * Math.sqrt(before[g]! * 32) * 2 * 2 * 8 * ulp;
      expect(after[g]!).toBeLessThanOrEqual(before[g]! + slack);
    }
  });

  test('beats the η rule on average for 1-bit Gaussian-like data (LS is optimal for fixed codes)', () => {
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const x = Float32Array.from({ length: 32 * 64 }, () => {
      const u = rnd() || 1e-9, v = rnd();
      return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    });
    const q = quantizeRows(x, 64, 32, { bits: 1, groupSize: 32 });
    const ls = leastSquaresStats(q, { values: x, codes: q.codes });
    const eta = calibrateStats(q, 1 / 6);
    const sse = (s: typeof q) => groupSse(Float64Array.from(x, roundHalf), dequantizeRows(q.codes, s), 32, 32).reduce((a, b) => a + b);
    expect(sse(ls)).toBeLessThan(sse(eta));
    expect(sse(eta)).toBeLessThan(sse(q));
  });

  test('typed errors: missing context, wrong lengths, non-finite values, codes out of range', () => {
    const x = Float32Array.from({ length: 32 }, (_, i) => i);
    const q = quantizeRows(x, 1, 32, { bits: 1, groupSize: 32 });
    const cal = leastSquaresCalibrator();
    expect(cal.id).toBe('least-squares');
    expect(() => cal.calibrate(q)).toThrow(XqConfigError);
    expect(() => cal.calibrate(q, { values: x })).toThrow(/codes missing/);
    expect(() => cal.calibrate(q, { values: x.subarray(1), codes: q.codes })).toThrow(XqShapeError);
    const bad = Float32Array.from(x);
    bad[5] = NaN;
    expect(() => cal.calibrate(q, { values: bad, codes: q.codes })).toThrow(XqNumericError);
    expect(() => cal.calibrate(q, { values: x, codes: new Uint8Array(32).fill(2) })).toThrow(/exceeds 1/);
  });
});
