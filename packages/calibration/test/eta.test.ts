import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { fc, test as fcTest } from '@fast-check/vitest';
import {
  XqConfigError,
  XqError,
  dequantizeRows,
  dequantizeValue,
  packCodes,
  quantizeRows,
  roundHalf,
  transposeTokensChannels,
  type Bits,
  type GroupStats,
} from '@xquant/quant';
import { ETA_GRID, XQUANT_ETA, calibrateScaleZero, calibrateStats, etaCalibrator } from '@xquant/calibration';

const GOLDEN = '../shared/golden/c_calibration.json';

type Arr = { shape: number[]; dtype: string; b64: string };
function decode(a: Arr): Float32Array | Int32Array {
  const b = Buffer.from(a.b64, 'base64');
  const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  return a.dtype === 'int32' ? new Int32Array(ab) : new Float32Array(ab);
}

describe.skipIf(!existsSync(GOLDEN))('golden family c (calibration), bit-exact — needs ../shared/golden', () => {
  const file = existsSync(GOLDEN) ? JSON.parse(readFileSync(GOLDEN, 'utf8')) : { cases: [] };
  for (const c of file.cases as { name: string; params: any; arrays: Record<string, Arr> }[]) {
    test(c.name, () => {
      const p = c.params;
      const A = Object.fromEntries(Object.entries(c.arrays).map(([k, v]) => [k, decode(v)]));
      const heads = p.B * p.H;
      const keys = p.kind === 'keys';
      const [rows, cols] = keys ? [heads * p.D, p.T] : [heads * p.T, p.D];
      const x = keys ? transposeTokensChannels(A.x!, { heads, tokens: p.T, headDim: p.D }) : A.x!;
      const precision = p.dtype === 'float16' ? 'fp16' : 'fp32';
      const q = quantizeRows(x, rows, cols, { bits: p.bits, groupSize: p.group_size, precision });
      expect(Array.from(new Int32Array(packCodes(q.codes, rows, cols, p.bits).buffer))).toEqual(Array.from(A.packed!));
      expect(Array.from(q.scale)).toEqual(Array.from(A.scale_raw!));
      expect(Array.from(q.zero)).toEqual(Array.from(A.mn_raw!));
      const cal = calibrateStats(q, p.gamma);
      expect(cal.codes).toBe(q.codes);
      expect(Array.from(cal.scale)).toEqual(Array.from(A.scale!));
      expect(Array.from(cal.zero)).toEqual(Array.from(A.mn!));
      expect(Array.from(dequantizeRows(cal.codes, cal))).toEqual(Array.from(A.deq!));
      // the preset calibrator with the same η gives the same statistics
      const viaCalibrator = etaCalibrator({ etaByBits: { [p.bits]: p.gamma } }).calibrate(q);
      expect(Array.from(viaCalibrator.scale)).toEqual(Array.from(cal.scale));
      expect(Array.from(viaCalibrator.zero)).toEqual(Array.from(cal.zero));
    });
  }
});

function stats(bits: Bits, scale: number[], zero: number[], precision: 'fp16' | 'fp32' = 'fp16'): GroupStats {
  return { rows: scale.length, cols: 32, bits, groupSize: 32, precision, scale: Float32Array.from(scale), zero: Float32Array.from(zero) };
}

describe('calibrateStats', () => {
  test('reference fp16 order: z is shifted with the uncalibrated scale, scale shrinks by (1 − 2η)', () => {
    // hand-computed: s = 0.5, z = -1, 2 bits, η = 0.09 → t1 = h(1.5) = 1.5, t2 = h(f(1.5·f(0.09))),
    // z′ = h(−1 + t2), s′ = h(f(0.5·f(0.82)))
    const out = calibrateStats(stats(2, [0.5], [-1]), 0.09);
    const t2 = roundHalf(Math.fround(1.5 * Math.fround(0.09)));
    expect(out.zero[0]).toBe(roundHalf(-1 + t2));
    expect(out.scale[0]).toBe(roundHalf(Math.fround(0.5 * Math.fround(0.82))));
    expect(out.zero[0]).toBeCloseTo(-1 + 0.135, 3);
    expect(out.scale[0]).toBeCloseTo(0.41, 3);
  });

  test('η = 0 leaves scale and zero-point bit-identical', () => {
    const s = stats(1, [0.123, 7.5, 0], [-3.25, 0.001, 2]);
    const out = calibrateStats(s, 0);
    expect(Array.from(out.scale)).toEqual(Array.from(s.scale).map(roundHalf));
    expect(Array.from(out.zero)).toEqual(Array.from(s.zero).map(roundHalf));
  });

  test('does not mutate its input and keeps every other field (codes included)', () => {
    const x = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i));
    const q = quantizeRows(x, 2, 32, { bits: 2, groupSize: 32 });
    const before = [Array.from(q.scale), Array.from(q.zero), Array.from(q.codes)];
    const out = calibrateStats(q, 0.045);
    expect([Array.from(q.scale), Array.from(q.zero), Array.from(q.codes)]).toEqual(before);
    expect(out.codes).toBe(q.codes);
    expect(out).toMatchObject({ rows: 2, cols: 32, bits: 2, groupSize: 32, precision: 'fp16' });
  });

  test('any bit width may be calibrated (4 and 8 bits use rev = 2^b − 1)', () => {
    for (const bits of [4, 8] as const) {
      const m = (1 << bits) - 1;
      const out = calibrateStats(stats(bits, [0.25], [1], 'fp32'), 0.1);
      expect(out.zero[0]).toBeCloseTo(1 + 0.1 * 0.25 * m, 5);
      expect(out.scale[0]).toBeCloseTo(0.25 * 0.8, 6);
    }
  });

  fcTest.prop([
    fc.constantFrom<Bits>(1, 2, 4, 8),
    fc.double({ min: 0, max: 0.49, noNaN: true }),
    fc.array(fc.tuple(fc.double({ min: -50, max: 50, noNaN: true }), fc.double({ min: 0, max: 20, noNaN: true })), { minLength: 1, maxLength: 8 }),
    fc.constantFrom<'fp16' | 'fp32'>('fp16', 'fp32'),
  ])('range shrinks symmetrically into [min + ηR, max − ηR] (float64 oracle, within rounding)', (bits, eta, groups, precision) => {
    const r = precision === 'fp16' ? roundHalf : Math.fround;
    const m = (1 << bits) - 1;
    const zero = groups.map(([z]) => r(z));
    const scale = groups.map(([, s]) => r(s));
    const out = calibrateStats(stats(bits, scale, zero, precision), eta);
    const ulp = precision === 'fp16' ? 2 ** -10 : 2 ** -23;
    for (let i = 0; i < groups.length; i++) {
      const R = scale[i]! * m;
      const lo = out.zero[i]!;
      const hi = out.zero[i]! + m * out.scale[i]!;
      const tol = 4 * ulp * (Math.abs(zero[i]!) + R) + 1e-7;
      expect(Math.abs(lo - (zero[i]! + eta * R))).toBeLessThanOrEqual(tol);
      expect(Math.abs(hi - (zero[i]! + R - eta * R))).toBeLessThanOrEqual(tol * (m + 1));
      // symmetric: the distance from each old end to the new end is the same
      expect(Math.abs(lo - zero[i]! - (zero[i]! + R - hi))).toBeLessThanOrEqual(tol * (m + 2));
    }
  });

  test('calibrateScaleZero matches calibrateStats element by element', () => {
    const s = stats(1, [0.75, 2], [-1, 3]);
    const out = calibrateStats(s, 1 / 6);
    for (let i = 0; i < 2; i++) {
      expect(calibrateScaleZero(s.scale[i]!, s.zero[i]!, 1, 1 / 6)).toEqual({ scale: out.scale[i], zero: out.zero[i] });
    }
  });

  test('rejects η outside [0, 0.5), non-finite η, and malformed statistics with typed errors', () => {
    const s = stats(1, [1], [0]);
    for (const bad of [-0.01, 0.5, 0.7, NaN, Infinity]) {
      expect(() => calibrateStats(s, bad)).toThrow(XqConfigError);
    }
    try {
      calibrateStats(s, 0.5);
    } catch (e) {
      expect(XqError.isInstance(e) && e.code).toBe('E_CONFIG');
      expect(String((e as Error).message)).toMatch(/\[0, 0\.5\).*0\.5/);
    }
    expect(() => calibrateStats({ ...s, scale: new Float32Array(2) }, 0.1)).toThrow(/expected 1 elements/);
    expect(() => calibrateStats({ ...s, zero: Float32Array.of(NaN) }, 0.1)).toThrow(/NaN at row 0, group 0/);
    expect(() => calibrateStats({ ...s, bits: 3 as Bits }, 0.1)).toThrow(XqConfigError);
  });
});

describe('presets and etaCalibrator', () => {
  test('the paper grids and the default preset', () => {
    expect(ETA_GRID[1]).toEqual([0, 1 / 6, 1 / 3]);
    expect(ETA_GRID[2]).toEqual([0, 0.045, 0.09]);
    expect(XQUANT_ETA).toEqual({ 1: ETA_GRID[1][1], 2: ETA_GRID[2][1] });
    expect(etaCalibrator().etaByBits).toEqual(XQUANT_ETA);
    expect(etaCalibrator().id).toBe('eta');
  });

  test('uses the η of the block bit width; absent bit widths are left uncalibrated', () => {
    const cal = etaCalibrator({ etaByBits: { 1: 0.25, 4: 0.1 } });
    const s1 = stats(1, [2], [0]);
    expect(Array.from(cal.calibrate(s1).scale)).toEqual(Array.from(calibrateStats(s1, 0.25).scale));
    const s4 = stats(4, [2], [0]);
    expect(Array.from(cal.calibrate(s4).zero)).toEqual(Array.from(calibrateStats(s4, 0.1).zero));
    const s2 = stats(2, [2], [0.5]);
    const out2 = cal.calibrate(s2);
    expect(Array.from(out2.scale)).toEqual([2]);
    expect(Array.from(out2.zero)).toEqual([0.5]);
  });

  test('validates every η and bit width up front', () => {
    expect(() => etaCalibrator({ etaByBits: { 2: 0.6 } })).toThrow(/etaByBits\[2\] must be a finite number in \[0, 0\.5\)/);
    expect(() => etaCalibrator({ etaByBits: { 3: 0.1 } as never })).toThrow(XqConfigError);
    expect(() => etaCalibrator({ etaByBits: null as never })).toThrow(XqConfigError);
  });
});

describe('issue 13 item 2: calibrated statistics of groups at the top of the range dequantize finite', () => {
  for (const [name, vals] of [['{65504, 0}', [65504, 0]], ['{65504, -65504}', [65504, -65504]], ['{-65504, 0}', [-65504, 0]]] as const) {
    for (const bits of [1, 2, 4, 8] as const) {
      test(`${name}, ${bits} bits`, () => {
        const x = Float32Array.from({ length: 32 }, (_, i) => vals[i % 2]!);
        const q = quantizeRows(x, 1, 32, { bits, groupSize: 32 });
        for (const eta of [0, 0.045, 1 / 6, 0.49]) {
          const c = calibrateStats(q, eta);
          const deq = dequantizeRows(q.codes, c);
          expect(deq.every(Number.isFinite)).toBe(true);
          expect(Number.isFinite(dequantizeValue((1 << bits) - 1, c.scale[0]!, c.zero[0]!, bits, 'fp16'))).toBe(true);
        }
      });
    }
  }
});
