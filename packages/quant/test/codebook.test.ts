import { describe, expect, it } from 'vitest';
import {
  SCALE_FORMATS,
  XqConfigError,
  codebookEncode,
  encodeScale,
  lloydMaxCodebook,
  roundScale,
  scaleDecodeTable,
  sphereCoordinateLogDensity,
} from '@xquant/quant';

/** ∫ g over [a, b] by composite Simpson with n panels (independent of the codebook's own tables). */
function simpson(g: (x: number) => number, a: number, b: number, n = 4000): number {
  const h = (b - a) / n;
  let s = g(a) + g(b);
  for (let i = 1; i < n; i++) s += (i % 2 ? 4 : 2) * g(a + i * h);
  return (s * h) / 3;
}

/** Moments of the sphere-coordinate density over a cell [lo, hi] (clipped to the support), by direct integration. */
function cellMoments(d: number | null, lo: number, hi: number): { m0: number; m1: number } {
  const edge = d === null ? 14 : Math.min(1, 14 / Math.sqrt(d));
  const a = Math.max(lo, -edge);
  const b = Math.min(hi, edge);
  const f = (x: number) => Math.exp(sphereCoordinateLogDensity(x, d));
  const z = simpson(f, -edge, edge, 20000);
  return { m0: simpson(f, a, b) / z, m1: simpson((x) => x * f(x), a, b) / z };
}

describe('lloydMaxCodebook', () => {
  it('meets both Lloyd conditions (boundaries at midpoints, levels at the conditional means), checked by independent integration', () => {
    for (const d of [null, 16, 32, 64, 128]) {
      for (const bits of [1, 2, 3, 4]) {
        const cb = lloydMaxCodebook(bits, d);
        const L = 1 << bits;
        expect(cb.levels.length).toBe(L);
        const sd = d === null ? 1 : 1 / Math.sqrt(d);
        for (let i = 0; i < L - 1; i++) {
          expect(cb.levels[i + 1]!).toBeGreaterThan(cb.levels[i]!);
          expect(cb.boundaries[i]!).toBeCloseTo((cb.levels[i]! + cb.levels[i + 1]!) / 2, 14);
        }
        for (let i = 0; i < L; i++) {
          const { m0, m1 } = cellMoments(d, i === 0 ? -Infinity : cb.boundaries[i - 1]!, i === L - 1 ? Infinity : cb.boundaries[i]!);
          expect(Math.abs(m1 / m0 - cb.levels[i]!) / sd).toBeLessThan(1e-5);
        }
      }
    }
  });

  it('reproduces the published Gaussian Lloyd-Max quantizers (Max 1960) in the limit d → ∞', () => {
    // levels (positive half) and MSE of the optimum quantizer for N(0, 1)
    const table: Record<number, { levels: number[]; mse: number }> = {
      1: { levels: [0.7979], mse: 0.3634 },
      2: { levels: [0.4528, 1.5104], mse: 0.1175 },
      3: { levels: [0.2451, 0.756, 1.3439, 2.1519], mse: 0.03454 },
      4: { levels: [0.1284, 0.388, 0.6568, 0.9423, 1.2562, 1.618, 2.069, 2.7326], mse: 0.009497 },
    };
    for (const [b, want] of Object.entries(table)) {
      const cb = lloydMaxCodebook(Number(b), null);
      const pos = Array.from(cb.levels).slice(cb.levels.length / 2);
      pos.forEach((l, i) => expect(Math.abs(l - want.levels[i]!)).toBeLessThan(6e-4));
      expect(Math.abs(cb.mse - want.mse) / want.mse).toBeLessThan(2e-3);
    }
    // and a large sphere approaches it after scaling by √d
    const big = lloydMaxCodebook(2, 100000);
    expect(Math.abs(big.levels[3]! * Math.sqrt(100000) - 1.5104)).toBeLessThan(1e-3);
  });

  it('is the uniform quantizer for d = 3 (the coordinate is uniform on [−1, 1]) and the exact 1-bit centroid for any d', () => {
    for (const bits of [1, 2, 3]) {
      const cb = lloydMaxCodebook(bits, 3);
      const L = 1 << bits;
      for (let i = 0; i < L; i++) expect(Math.abs(cb.levels[i]! - (-1 + (2 * i + 1) / L))).toBeLessThan(1e-5);
      expect(Math.abs(cb.mse - 1 / (3 * L * L))).toBeLessThan(1e-6); // (2/L)²/12
    }
    // 1 bit: the level is E|x| = Γ(d/2) / (√π Γ((d+1)/2))
    const lgamma = (x: number): number => {
      // Lanczos (g = 7), accurate to ~1e-13 here
      const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
      x -= 1;
      let a = c[0]!;
      const t = x + 7.5;
      for (let i = 1; i < 9; i++) a += c[i]! / (x + i);
      return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
    };
    for (const d of [8, 32, 64, 128]) {
      const want = Math.exp(lgamma(d / 2) - lgamma((d + 1) / 2)) / Math.sqrt(Math.PI);
      expect(Math.abs(lloydMaxCodebook(1, d).levels[1]! - want) / want).toBeLessThan(1e-6);
    }
  });

  it('has a lower MSE with every extra bit, and encodes to the nearest level', () => {
    let prev = Infinity;
    for (const bits of [1, 2, 3, 4]) {
      const cb = lloydMaxCodebook(bits, 64);
      expect(cb.mse).toBeLessThan(prev);
      prev = cb.mse;
      for (let k = 0; k < 500; k++) {
        const y = (k / 500 - 0.5) * 0.8;
        const c = codebookEncode(cb, y);
        let best = 0;
        for (let i = 1; i < cb.levels.length; i++) if (Math.abs(y - cb.levels[i]!) < Math.abs(y - cb.levels[best]!)) best = i;
        expect(Math.abs(y - cb.levels[c]!)).toBeCloseTo(Math.abs(y - cb.levels[best]!), 15);
      }
    }
  });

  it('rejects bad widths and dimensions with typed errors', () => {
    expect(() => lloydMaxCodebook(5, 64)).toThrow(XqConfigError);
    expect(() => lloydMaxCodebook(2, 2)).toThrow(XqConfigError);
    expect(() => lloydMaxCodebook(2, 64.5)).toThrow(XqConfigError);
  });
});

describe('scale formats', () => {
  it('decode the fp8 encodings as specified (E4M3FN max 448, E5M2 max 57344, subnormals)', () => {
    const e4 = scaleDecodeTable('e4m3');
    expect(e4[0x7e]).toBe(448);
    expect(Number.isNaN(e4[0x7f]!)).toBe(true);
    expect(e4[0x01]).toBe(2 ** -9);
    expect(e4[0x38]).toBe(1);
    const e5 = scaleDecodeTable('e5m2');
    expect(e5[0x7b]).toBe(57344);
    expect(e5[0x7c]).toBe(Infinity);
    expect(e5[0x01]).toBe(2 ** -16);
    expect(e5[0x3c]).toBe(1);
  });

  it('round to the nearest representable value (brute force over the table) and stay within the relative bound', () => {
    const bound: Record<string, number> = { fp16: 2 ** -11, e4m3: 2 ** -4, e5m2: 2 ** -3, log8: 2 ** (10 / 254) - 1 };
    for (const f of SCALE_FORMATS) {
      const table = scaleDecodeTable(f);
      for (let k = 0; k < 400; k++) {
        const x = 2 ** (-4 + (k / 400) * 12) * (1 + 0.37 * Math.sin(k)); // normal range of every format
        const got = roundScale(f, x);
        if (f !== 'fp16') {
          let best = Infinity;
          for (const v of table) if (Number.isFinite(v) && v >= 0) best = Math.min(best, f === 'log8' ? Math.abs(Math.log(v) - Math.log(x)) : Math.abs(v - x));
          expect(f === 'log8' ? Math.abs(Math.log(got) - Math.log(x)) : Math.abs(got - x)).toBeCloseTo(best, 12);
        }
        expect(Math.abs(got - x) / x).toBeLessThanOrEqual(bound[f]! * (1 + 1e-9));
      }
      expect(roundScale(f, 0)).toBe(0);
      expect(encodeScale(f, -1)).toBe(0);
    }
  });
});
