/**
 * Internal quantizer core shared by `quantizeRows` and the K/V quantizers (not exported from the package).
 * Inputs arrive as private Float32Array copies already rounded to the precision.
 */
import { XqNumericError } from './errors.js';
import { bitsToHalf, halfToBits, roundHalf, roundHalfInPlace } from './fp16.js';
import type { GroupStats } from './quantize.js';
import { assertBits, assertDim, assertGroupSize, type Bits, type GroupQuantOptions, type Precision } from './types.js';

/** 2^52: adding and subtracting it rounds a non-negative double below 2^52 to an integer, ties to even. */
const RNE_MAGIC = 4503599627370496;

/** Validates options and shape; returns the precision. */
export function checkOptions(rows: number, cols: number, opts: GroupQuantOptions, axisName = 'cols'): Precision {
  assertDim(rows, 'rows');
  assertDim(cols, 'cols');
  if (opts === null || typeof opts !== 'object') throw new TypeError('options { bits, groupSize, precision? } are required');
  assertBits(opts.bits);
  assertGroupSize(opts.groupSize, cols, opts.bits, axisName);
  const precision = opts.precision ?? 'fp16';
  if (precision !== 'fp16' && precision !== 'fp32') {
    throw new TypeError(`precision must be 'fp16' or 'fp32'; got ${String(precision)}`);
  }
  return precision;
}

/**
 * @internal Rounds `xr` (a private Float32Array copy of the input, already rounded to float32) to the precision in
 * place and throws {@link XqNumericError} at the first NaN/±Infinity, naming the position with `where(i)`.
 * `src(i)` gives the original value, to tell a non-finite input from one that overflows the precision.
 */
export function roundAndCheck(
  xr: Float32Array,
  precision: Precision,
  what: string,
  where: (i: number) => string,
  src: (i: number) => number,
): void {
  if (precision === 'fp16') roundHalfInPlace(xr);
  const u = new Uint32Array(xr.buffer, xr.byteOffset, xr.length);
  for (let i = 0; i < u.length; i++) {
    if ((u[i]! & 0x7f800000) === 0x7f800000) {
      const v = src(i);
      if (v !== v) throw new XqNumericError(`${what} contains NaN at ${where(i)}`);
      if (v === Infinity || v === -Infinity) throw new XqNumericError(`${what} contains ${v > 0 ? 'Infinity' : '-Infinity'} at ${where(i)}`);
      const max = precision === 'fp16' ? '65504' : '3.4028235e38';
      throw new XqNumericError(`${what}: ${v} at ${where(i)} overflows ${precision} (largest finite value ${max})`);
    }
  }
}

/**
 * @internal Group statistics of rows already rounded to the precision (`xr`). `scale = r(r(max − min)·f(1/m))`,
 * `zero = min` (the reference's). Outside the reference's range the result stays finite: a range that overflows the
 * precision is taken exactly, and {@link boundScale} lowers a scale whose top reconstruction would overflow.
 */
export function statsOfRounded(
  xr: Float32Array,
  rows: number,
  cols: number,
  bits: Bits,
  groupSize: number,
  precision: Precision,
): GroupStats {
  const invM = Math.fround(1 / ((1 << bits) - 1));
  const m = (1 << bits) - 1;
  const groups = cols / groupSize;
  const scale = new Float32Array(rows * groups);
  const zero = new Float32Array(rows * groups);
  const half = precision === 'fp16';
  const safe = SAFE_TOP[precision];
  for (let row = 0, k = 0, base = 0; row < rows; row++) {
    for (let g = 0; g < groups; g++, k++, base += groupSize) {
      let mn = xr[base]!;
      let mx = mn;
      for (let j = base + 1, e = base + groupSize; j < e; j++) {
        const v = xr[j]!;
        if (v < mn) mn = v;
        else if (v > mx) mx = v;
      }
      let range = half ? roundHalf(mx - mn) : Math.fround(mx - mn);
      if (range === Infinity) range = mx - mn; // exact (finite in float64); the reference would give Infinity
      let s = half ? roundHalf(range * invM) : Math.fround(range * invM);
      if (!(mn + m * s < safe)) s = boundScale(s, mn, bits, precision);
      scale[k] = s;
      zero[k] = mn;
    }
  }
  return { rows, cols, bits, groupSize, precision, scale, zero };
}

/**
 * @internal Codes of rows already rounded to the precision: `d = r(r(x − min) / scale)`, clamped to `[0, m]`, rounded
 * half to even; NaN (a constant group, 0/0) gives 0. Where `r(x − min)` overflows (a group wider than the precision's
 * range) the difference is taken exactly.
 */
export function codesOfRounded(xr: Float32Array, stats: GroupStats): Uint8Array {
  const { rows, cols, bits, groupSize, precision, scale, zero } = stats;
  const m = (1 << bits) - 1;
  const groups = cols / groupSize;
  const half = precision === 'fp16';
  const codes = new Uint8Array(rows * cols);
  // clamp before rounding; NaN (0/0 of a constant group) passes the clamp and is stored as code 0
  if (half) {
    for (let k = 0, i = 0; k < rows * groups; k++) {
      const mn = zero[k]!, s = scale[k]!;
      for (const e = i + groupSize; i < e; i++) {
        let u = roundHalf(xr[i]! - mn);
        if (u === Infinity) u = xr[i]! - mn;
        const d = roundHalf(u / s);
        codes[i] = (d < 0 ? 0 : d > m ? m : d) + RNE_MAGIC - RNE_MAGIC;
      }
    }
  } else {
    for (let k = 0, i = 0; k < rows * groups; k++) {
      const mn = zero[k]!, s = scale[k]!;
      for (const e = i + groupSize; i < e; i++) {
        let u = Math.fround(xr[i]! - mn);
        if (u === Infinity) u = xr[i]! - mn;
        const d = Math.fround(u / s);
        codes[i] = (d < 0 ? 0 : d > m ? m : d) + RNE_MAGIC - RNE_MAGIC;
      }
    }
  }
  return codes;
}

/** Largest finite value of each precision. */
export const PRECISION_MAX: Readonly<Record<Precision, number>> = Object.freeze({ fp16: 65504, fp32: 3.4028234663852886e38 });

/** Smallest magnitude that rounds to Infinity in each precision (fp16: 65520; float32: 2^128 − 2^103). */
export const OVERFLOW_AT: Readonly<Record<Precision, number>> = Object.freeze({ fp16: 65520, fp32: 3.4028235677973366e38 });

/** Below this exact top `zero + m·scale`, the rounded reconstruction of every code is finite (fast path of boundScale). */
const SAFE_TOP: Readonly<Record<Precision, number>> = Object.freeze({ fp16: 65504 - 128, fp32: 3.4028234663852886e38 * (1 - 2 ** -20) });

/**
 * The dequantized value of code `c` in a group with scale `s` and zero-point `z`, m = 2^bits − 1, r the rounding of the
 * precision: `r(r(c·s) + z)` (the reference's two roundings); in a group where `r(m·s)` overflows (wider than the
 * precision's range, which the reference cannot represent), one rounding: `r(c·s + z)`.
 */
export function dequantizeValue(c: number, s: number, z: number, bits: Bits, precision: Precision): number {
  const r = precision === 'fp16' ? roundHalf : Math.fround;
  return ((1 << bits) - 1) * s >= OVERFLOW_AT[precision] ? r(c * s + z) : r(r(c * s) + z);
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);
function toBits(s: number, precision: Precision): number {
  if (precision === 'fp16') return halfToBits(s);
  F32[0] = s;
  return U32[0]!;
}
function fromBits(b: number, precision: Precision): number {
  if (precision === 'fp16') return bitsToHalf(b);
  U32[0] = b;
  return F32[0]!;
}

/**
 * The largest scale `≤ s`, representable in the precision, with which the top code `2^bits − 1` of a group with zero-point
 * `z` dequantizes to a finite value ({@link dequantizeValue}); `s` itself when it already does (always, for data the
 * reference quantizes without overflow, so bit-exactness is kept). Every lower code is then finite too. With precision
 * `'fp32'` the product `(2^bits − 1)·scale` is kept finite as well (no wide float32 groups).
 * `s` and `z` must be finite, `s ≥ 0` and `z` representable in the precision.
 */
export function boundScale(s: number, z: number, bits: Bits, precision: Precision): number {
  const m = (1 << bits) - 1;
  const max = PRECISION_MAX[precision];
  if (s > max) s = max;
  // float32 groups are never wide (m·s must stay finite): the float32 SIMD kernels form code·scale in float32
  const finite = (x: number) => Number.isFinite(dequantizeValue(m, x, z, bits, precision)) && (precision === 'fp16' || m * x < OVERFLOW_AT.fp32);
  if (finite(s)) return s;
  // binary search over the bit patterns of [0, s] (ordered like the values): the largest that passes
  let lo = 0;
  let hi = toBits(s, precision);
  while (hi - lo > 1) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (finite(fromBits(mid, precision))) lo = mid;
    else hi = mid;
  }
  s = fromBits(lo, precision);
  return s;
}
