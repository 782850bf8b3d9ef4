import { describe, expect, test } from 'vitest';
import { bitsToHalf, halfBitsArray, halfTable, halfToBits, roundHalf, roundHalfInPlace } from '@xquant/quant';
import { rng } from './helpers.js';

/** Oracle: round to float32, then to fp16 by exact float64 arithmetic (scale to an integer, ties to even). */
function roundHalfRef(x: number): number {
  const f = Math.fround(x);
  if (!Number.isFinite(f)) return f;
  const a = Math.abs(f);
  if (a === 0) return f;
  const e = Math.max(Math.floor(Math.log2(a)), -14);
  // correct log2 rounding near powers of two
  const ee = 2 ** e > a ? e - 1 : 2 ** (e + 1) <= a ? e + 1 : e;
  const ulp = 2 ** (Math.max(ee, -14) - 10);
  const q = a / ulp; // exact: a is a float32, ulp a power of two
  let r = Math.round(q);
  if (r - q === 0.5 && r % 2 !== 0) r -= 1;
  const v = r * ulp;
  const out = v > 65504 ? Infinity : v;
  return f < 0 ? -out : out;
}

describe('fp16 rounding', () => {
  test('every fp16 value is fixed; every midpoint rounds to even; neighbours round to the nearer value', () => {
    for (let b = 0; b < 0x7c00; b++) {
      const v = bitsToHalf(b);
      for (const s of [1, -1]) {
        const next = bitsToHalf(b + 1);
        const mid = (v + next) / 2; // exact in float32 (one more bit than fp16)
        const even = b % 2 === 0 ? v : next;
        const below = Math.fround(mid * (1 - 2 ** -23));
        const got = [roundHalf(s * v), roundHalf(s * mid), roundHalf(s * below)];
        const want = [s * v, s * even, s * roundHalfRef(below)];
        if (!got.every((g, i) => Object.is(g, want[i]))) throw new Error(`half bits ${b}: got ${got}, want ${want}`);
      }
    }
  });

  test('agrees with the float64 oracle on 200k random float32 bit patterns; in-place variant agrees', () => {
    const r = rng(42);
    const n = 200_000;
    const u = new Uint32Array(n);
    for (let i = 0; i < n; i++) u[i] = Math.floor(r() * 2 ** 32);
    // bias half of the samples towards the fp16 range (exponents 100..150)
    for (let i = 0; i < n; i += 2) u[i] = (u[i]! & 0x807fffff) | ((100 + Math.floor(r() * 50)) << 23);
    const f = new Float32Array(u.buffer);
    const copy = f.slice();
    roundHalfInPlace(copy);
    for (let i = 0; i < n; i++) {
      const x = f[i]!;
      const want = roundHalfRef(x);
      if (Number.isNaN(x)) {
        expect(Number.isNaN(roundHalf(x))).toBe(true);
        expect(Number.isNaN(copy[i]!)).toBe(true);
        continue;
      }
      if (!Object.is(roundHalf(x), want) || !Object.is(copy[i], want)) {
        throw new Error(`x = ${x} (bits ${u[i]!.toString(16)}): roundHalf ${roundHalf(x)}, in place ${copy[i]}, oracle ${want}`);
      }
    }
  });

  test('signed zeros, subnormals, overflow', () => {
    expect(Object.is(roundHalf(-0), -0)).toBe(true);
    expect(Object.is(roundHalf(-1e-10), -0)).toBe(true);
    expect(roundHalf(2 ** -25)).toBe(0); // tie between 0 and 2^-24 → even (0)
    expect(roundHalf(3 * 2 ** -25)).toBe(2 ** -23); // tie between 2^-24 and 2^-23 → even
    expect(roundHalf(65519.99)).toBe(65504);
    expect(roundHalf(65520)).toBe(Infinity);
    expect(roundHalf(-1e6)).toBe(-Infinity);
  });

  test('halfToBits ∘ bitsToHalf = id on all non-NaN patterns', () => {
    for (let b = 0; b < 65536; b++) {
      const e = (b >>> 10) & 0x1f;
      if (e === 31 && (b & 0x3ff) !== 0) continue;
      if (halfToBits(bitsToHalf(b)) !== b) throw new Error(`pattern ${b}: ${halfToBits(bitsToHalf(b))}`);
    }
  });

  test('halfBitsArray equals halfToBits element by element (every fp16 value, midpoints, random floats, edges)', () => {
    const xs: number[] = [0, -0, 65504, -65504, 65519.99, 65520, 1e6, -1e6, Infinity, -Infinity, 2 ** -25, 3 * 2 ** -25, 2 ** -14, 2 ** -14 * 0.999, 1e-10];
    const t = halfTable();
    for (let b = 0; b < 0x7c00; b++) {
      xs.push(t[b]!, -t[b]!);
      if (b + 1 < 0x7c00) xs.push((t[b]! + t[b + 1]!) / 2); // ties
    }
    let s = 12345;
    for (let i = 0; i < 20000; i++) {
      s = (s * 1103515245 + 12345) >>> 0;
      xs.push((s / 2 ** 32 - 0.5) * 2 ** ((s % 40) - 20));
    }
    const x = Float32Array.from(xs);
    const got = halfBitsArray(x);
    for (let i = 0; i < x.length; i++) {
      if (got[i] !== halfToBits(x[i]!)) throw new Error(`${x[i]}: ${got[i]} vs ${halfToBits(x[i]!)}`);
    }
    expect(halfBitsArray(Float32Array.of(NaN))[0]).toBe(0x7e00);
  });
});
