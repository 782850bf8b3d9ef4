import { describe, expect, it } from 'vitest';
import { XqConfigError, bitsToHalf, halfToBits, quantizeRows, roundScale } from '@xquant/quant';
import { etaCalibrator, roundedMetaCalibrator } from '@xquant/calibration';

function rows(n: number, cols: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const u = () => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return a / 2 ** 32;
  };
  return Float32Array.from({ length: n * cols }, (_, i) => (u() - 0.5) * 4 + ((i / cols) | 0) % 3 * 2.5 - 2);
}

describe('roundedMetaCalibrator', () => {
  for (const format of ['e4m3', 'e5m2'] as const) {
    for (const bits of [1, 2, 4] as const) {
      it(`${format}, ${bits}-bit: stores fp8 values exactly (also exact in fp16) and keeps the η range centre up to the zero's rounding`, () => {
        const x = rows(24, 64, bits * 7);
        const q = quantizeRows(x, 24, 64, { bits, groupSize: 32 });
        const eta = etaCalibrator();
        const ref = eta.calibrate(q);
        const out = roundedMetaCalibrator({ format, inner: eta }).calibrate(q);
        expect(out.bits).toBe(q.bits);
        expect(out.scale.length).toBe(q.scale.length);
        const half = ((1 << bits) - 1) / 2;
        const ulp = format === 'e4m3' ? 2 ** -4 : 2 ** -3;
        for (let i = 0; i < out.scale.length; i++) {
          for (const v of [out.scale[i]!, out.zero[i]!]) {
            expect(Math.sign(v) * roundScale(format, Math.abs(v))).toBe(v);
            expect(bitsToHalf(halfToBits(v))).toBe(v);
          }
          const want = ref.zero[i]! + ref.scale[i]! * half;
          const got = out.zero[i]! + out.scale[i]! * half;
          const zBefore = ref.zero[i]! + (ref.scale[i]! - out.scale[i]!) * half;
          expect(Math.abs(got - want)).toBeLessThanOrEqual(ulp * Math.abs(zBefore) + 1e-6);
          expect(Math.abs(out.scale[i]! - ref.scale[i]!)).toBeLessThanOrEqual(ulp * ref.scale[i]! + 1e-9);
        }
      });
    }
  }

  it('without re-derivation rounds scale and zero independently; rejects unknown formats', () => {
    const q = quantizeRows(rows(4, 32, 3), 4, 32, { bits: 2, groupSize: 32 });
    const out = roundedMetaCalibrator({ format: 'e4m3', inner: null, rederive: false }).calibrate(q);
    for (let i = 0; i < out.zero.length; i++) {
      expect(out.scale[i]).toBe(roundScale('e4m3', q.scale[i]!));
      expect(out.zero[i]).toBe(Math.sign(q.zero[i]!) * roundScale('e4m3', Math.abs(q.zero[i]!)));
    }
    expect(() => roundedMetaCalibrator({ format: 'fp4' as never })).toThrow(XqConfigError);
  });
});
