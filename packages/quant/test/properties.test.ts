import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  dequantizeKv,
  dequantizeRows,
  packCodes,
  quantizeKeys,
  quantizeRows,
  quantizeValues,
  rounder,
  transposeChannelsTokens,
  transposeTokensChannels,
  unpackCodes,
  unpackKv,
  type Bits,
  type Precision,
} from '@xquant/quant';
import { gaussian } from './helpers.js';

const bitsArb = fc.constantFrom<Bits>(1, 2, 4, 8);
const precisionArb = fc.constantFrom<Precision>('fp16', 'fp32');

/**
 * Rounding constants of a precision. `u` bounds the relative error of r = h∘f (fp16: 2^-11 for the fp16 rounding
 * plus 2^-24 for the float32 rounding before it) or f (fp32: 2^-24); `abs` bounds the absolute error of one rounding
 * in the subnormal range (fp16: half of 2^-24; fp32: half of 2^-149).
 */
function roundoff(p: Precision) {
  return p === 'fp16' ? { u: 2 ** -11 + 2 ** -24, abs: 2 ** -25 } : { u: 2 ** -24, abs: 2 ** -150 };
}

/** A block whose groups have assorted magnitudes and offsets, plus one constant group and one two-valued group. */
const blockArb = fc
  .record({
    bits: bitsArb,
    precision: precisionArb,
    rows: fc.integer({ min: 1, max: 4 }),
    words: fc.integer({ min: 1, max: 3 }),
    gsPick: fc.nat(),
    magnitude: fc.constantFrom(1e-6, 1e-3, 0.1, 1, 30, 1000),
    offset: fc.double({ min: -4, max: 4, noNaN: true }),
    seed: fc.integer(),
  })
  .map((c) => {
    const cols = (32 / c.bits) * c.words;
    const divs: number[] = [];
    for (let i = 1; i <= cols; i++) if (cols % i === 0) divs.push(i);
    const groupSize = divs[c.gsPick % divs.length]!;
    const x = gaussian(c.rows * cols, c.seed, c.magnitude);
    for (let i = 0; i < x.length; i++) x[i] = x[i]! + c.offset * c.magnitude;
    if (groupSize > 1) {
      x.fill(x[0]!, 0, groupSize); // constant group
      if (x.length >= 2 * groupSize) for (let j = groupSize; j < 2 * groupSize; j++) x[j] = j % 2 ? 1.25 : -0.5;
    }
    return { ...c, cols, groupSize, x };
  });

describe('packing', () => {
  test('unpack ∘ pack = id on codes, pack ∘ unpack = id on words, for all bits (fast-check)', () => {
    fc.assert(
      fc.property(bitsArb, fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 4 }), fc.integer(), (bits, rows, words, seed) => {
        const cols = (32 / bits) * words;
        const m = (1 << bits) - 1;
        const r = gaussian(rows * cols, seed);
        const codes = Uint8Array.from(r, (v) => Math.floor(Math.abs(v) * 1e6) & m);
        const packed = packCodes(codes, rows, cols, bits);
        expect(packed.length).toBe((rows * cols * bits) / 32);
        expect(unpackCodes(packed, rows, cols, bits)).toEqual(codes);
        const w = Uint32Array.from(r, (v) => Math.floor(Math.abs(v) * 2 ** 31) ^ 0xdeadbeef).subarray(0, packed.length);
        expect(packCodes(unpackCodes(w, rows, cols, bits), rows, cols, bits)).toEqual(w);
      }),
      { numRuns: 200 },
    );
  });
  test('Int32Array words (the reference dtype) unpack like their Uint32 twins', () => {
    const w = new Int32Array([-1, 0x7fffffff, -0x80000000, 12345]);
    for (const bits of [1, 2, 4, 8] as const) {
      expect(unpackCodes(w, 1, (4 * 32) / bits, bits)).toEqual(unpackCodes(new Uint32Array(w.buffer), 1, (4 * 32) / bits, bits));
    }
  });
});

describe('quantizer invariants (uncalibrated, fp16 and fp32)', () => {
  test('dequantized values lie in [min, max] of their group, up to the top code overshoot', () => {
    // deq = r(r(c·s) + min) ≥ min exactly (monotone rounding, c·s ≥ 0, min representable). For c = m,
    // s = r(r(max − min)·f(1/m)) may round up: m·s ≤ (max − min)(1 + u)^3(1 + 2^-24) + m·abs (abs: subnormal s),
    // and two more roundings give deq ≤ max + (max − min)·5u + u·(|max| + (max − min)) + (m + 2)·abs·(1 + u).
    fc.assert(
      fc.property(blockArb, (c) => {
        const q = quantizeRows(c.x, c.rows, c.cols, { bits: c.bits, groupSize: c.groupSize, precision: c.precision });
        const deq = dequantizeRows(q.codes, q);
        const r = rounder(c.precision);
        const { u, abs } = roundoff(c.precision);
        for (let g = 0; g < (c.rows * c.cols) / c.groupSize; g++) {
          let mn = Infinity, mx = -Infinity;
          for (let j = g * c.groupSize; j < (g + 1) * c.groupSize; j++) {
            mn = Math.min(mn, r(c.x[j]!));
            mx = Math.max(mx, r(c.x[j]!));
          }
          expect(q.zero[g] === mn).toBe(true); // ±0 compare equal: which zero is the minimum is unspecified
          const slack = (mx - mn) * 5 * u + u * (Math.abs(mx) + (mx - mn)) + ((1 << c.bits) + 1) * abs * (1 + u);
          for (let j = g * c.groupSize; j < (g + 1) * c.groupSize; j++) {
            expect(deq[j]!).toBeGreaterThanOrEqual(mn);
            expect(deq[j]!).toBeLessThanOrEqual(mx + slack);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  test('|x − x̂| ≤ s/2 + rounding slack per element (x rounded to the precision first)', () => {
    // With A = r(x) − min (exact), the code step computes a = r(A), d = r(a/s), c = round(clamp(d)):
    //   |c·s − A| ≤ s/2 + 2u(1 + u)|A| + s·abs + abs + (clamp loss A − m·s when d > m).
    // The clamp loss is ≤ R − m·s with R = max − min and s ≥ (R/m)(1 − 3u) − abs, so ≤ 3u·R + m·abs, and
    // R ≤ m(s + abs)(1 + 4u). Dequantization adds |x̂ − (c·s + min)| ≤ u(1 + u)(c·s + |x̂|) + 2·abs.
    fc.assert(
      fc.property(blockArb, (c) => {
        const q = quantizeRows(c.x, c.rows, c.cols, { bits: c.bits, groupSize: c.groupSize, precision: c.precision });
        const deq = dequantizeRows(q.codes, q);
        const r = rounder(c.precision);
        const { u, abs } = roundoff(c.precision);
        const m = (1 << c.bits) - 1;
        for (let i = 0; i < deq.length; i++) {
          const g = Math.floor(i / c.groupSize);
          const s = q.scale[g]!;
          const xr = r(c.x[i]!);
          const A = Math.abs(xr - q.zero[g]!);
          const cs = q.codes[i]! * s;
          const clampLoss = 3 * u * m * (s + abs) * (1 + 4 * u) + m * abs;
          const bound = s / 2 + 2 * u * (1 + u) * A + s * abs + abs + clampLoss + u * (1 + u) * (cs + Math.abs(deq[i]!)) + 2 * abs;
          const err = Math.abs(xr - deq[i]!);
          if (!(err <= bound)) throw new Error(`element ${i}: |x − x̂| = ${err} > ${bound} (s = ${s}, code ${q.codes[i]})`);
        }
      }),
      { numRuns: 300 },
    );
  });

  // Exact as a number: a group of −0 comes back as +0 (0·0 + (−0) = +0), as in the reference arithmetic.
  test('a constant group reconstructs exactly (scale 0, codes 0), next to non-constant groups', () => {
    fc.assert(
      fc.property(bitsArb, precisionArb, fc.double({ min: -1000, max: 1000, noNaN: true }), fc.integer(), (bits, precision, v, seed) => {
        const cols = 32 / bits * 2;
        const gs = cols / 2;
        const x = gaussian(2 * cols, seed);
        x.fill(v, 0, gs);
        x.fill(v, cols + gs, 2 * cols);
        const q = quantizeRows(x, 2, cols, { bits, groupSize: gs, precision });
        const deq = dequantizeRows(q.codes, q);
        const r = rounder(precision);
        for (const g of [0, 3]) {
          expect(q.scale[g]).toBe(0);
          for (let j = g * gs; j < (g + 1) * gs; j++) {
            expect(q.codes[j]).toBe(0);
            expect(deq[j] === r(v)).toBe(true);
          }
        }
      }),
      { numRuns: 100 },
    );
  });

  test('all-zero rows give codes 0, scale 0, zero 0 and exact zeros', () => {
    const q = quantizeRows(new Float32Array(64), 2, 32, { bits: 2, groupSize: 16 });
    expect(Array.from(q.scale)).toEqual([0, 0, 0, 0]);
    expect(Array.from(q.zero)).toEqual([0, 0, 0, 0]);
    expect(Array.from(dequantizeRows(q.codes, q))).toEqual(new Array(64).fill(0));
  });
});

describe('K/V layouts', () => {
  const kvArb = fc
    .record({
      bits: bitsArb,
      precision: precisionArb,
      heads: fc.integer({ min: 1, max: 3 }),
      tWords: fc.integer({ min: 1, max: 2 }),
      dWords: fc.integer({ min: 1, max: 2 }),
      seed: fc.integer(),
    })
    .map((c) => {
      const fpw = 32 / c.bits;
      return { ...c, tokens: fpw * c.tWords, headDim: fpw * c.dWords, groupSize: fpw };
    });

  test('transposes are inverse to each other', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max: 40 }), fc.integer(), (heads, tokens, headDim, seed) => {
        const x = gaussian(heads * tokens * headDim, seed);
        const s = { heads, tokens, headDim };
        const t = transposeTokensChannels(x, s);
        expect(t[((heads - 1) * headDim + (headDim - 1)) * tokens + 0]).toBe(x[((heads - 1) * tokens + 0) * headDim + headDim - 1]);
        expect(transposeChannelsTokens(t, s)).toEqual(x);
      }),
      { numRuns: 100 },
    );
  });

  test('quantizeKeys = quantizeRows on the [heads, headDim, tokens] transpose; dequantizeKv transposes back', () => {
    fc.assert(
      fc.property(kvArb, (c) => {
        const shape = { heads: c.heads, tokens: c.tokens, headDim: c.headDim };
        const x = gaussian(c.heads * c.tokens * c.headDim, c.seed, 2);
        const opts = { bits: c.bits, groupSize: c.groupSize, precision: c.precision };
        const k = quantizeKeys(x, shape, opts);
        const rows = quantizeRows(transposeTokensChannels(x, shape), c.heads * c.headDim, c.tokens, opts);
        expect(k.axis).toBe('channel');
        expect([k.rows, k.cols]).toEqual([c.heads * c.headDim, c.tokens]);
        expect(unpackKv(k)).toEqual(rows.codes);
        expect(k.packed).toEqual(packCodes(rows.codes, k.rows, k.cols, c.bits));
        expect(k.scale).toEqual(rows.scale);
        expect(k.zero).toEqual(rows.zero);
        expect(dequantizeKv(k)).toEqual(transposeChannelsTokens(dequantizeRows(rows.codes, rows), shape));
      }),
      { numRuns: 100 },
    );
  });

  test('quantizeValues = quantizeRows on [heads·tokens, headDim]; dequantizeKv keeps the layout', () => {
    fc.assert(
      fc.property(kvArb, (c) => {
        const shape = { heads: c.heads, tokens: c.tokens, headDim: c.headDim };
        const x = gaussian(c.heads * c.tokens * c.headDim, c.seed, 2);
        const opts = { bits: c.bits, groupSize: c.groupSize, precision: c.precision };
        const v = quantizeValues(x, shape, opts);
        const rows = quantizeRows(x, c.heads * c.tokens, c.headDim, opts);
        expect(v.axis).toBe('token');
        expect(unpackKv(v)).toEqual(rows.codes);
        expect(v.scale).toEqual(rows.scale);
        expect(v.zero).toEqual(rows.zero);
        expect(dequantizeKv(v)).toEqual(dequantizeRows(rows.codes, rows));
      }),
      { numRuns: 100 },
    );
  });
});
