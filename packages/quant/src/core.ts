/**
 * Internal quantizer core shared by `quantizeRows` and the K/V quantizers (not exported from the package).
 * Inputs arrive as private Float32Array copies already rounded to the precision.
 */
import { XqNumericError } from './errors.js';
import { roundHalf, roundHalfInPlace } from './fp16.js';
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
 * `zero = min`. Throws {@link XqNumericError} when a group's range overflows the precision.
 */
export function statsOfRounded(
  xr: Float32Array,
  rows: number,
  cols: number,
  bits: Bits,
  groupSize: number,
  precision: Precision,
  where: (row: number, col: number) => string,
): GroupStats {
  const invM = Math.fround(1 / ((1 << bits) - 1));
  const groups = cols / groupSize;
  const scale = new Float32Array(rows * groups);
  const zero = new Float32Array(rows * groups);
  const half = precision === 'fp16';
  for (let row = 0, k = 0, base = 0; row < rows; row++) {
    for (let g = 0; g < groups; g++, k++, base += groupSize) {
      let mn = xr[base]!;
      let mx = mn;
      for (let j = base + 1, e = base + groupSize; j < e; j++) {
        const v = xr[j]!;
        if (v < mn) mn = v;
        else if (v > mx) mx = v;
      }
      const range = half ? roundHalf(mx - mn) : Math.fround(mx - mn);
      if (range === Infinity) {
        throw new XqNumericError(
          `group range max − min = ${mx} − ${mn} overflows ${precision} at ${where(row, g * groupSize)} (group of ${groupSize})`,
        );
      }
      scale[k] = half ? roundHalf(range * invM) : range * invM;
      zero[k] = mn;
    }
  }
  return { rows, cols, bits, groupSize, precision, scale, zero };
}

/**
 * @internal Codes of rows already rounded to the precision: `d = r(r(x − min) / scale)`, clamped to `[0, m]`, rounded
 * half to even; NaN (a constant group, 0/0) gives 0.
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
        const d = roundHalf(roundHalf(xr[i]! - mn) / s);
        codes[i] = (d < 0 ? 0 : d > m ? m : d) + RNE_MAGIC - RNE_MAGIC;
      }
    }
  } else {
    for (let k = 0, i = 0; k < rows * groups; k++) {
      const mn = zero[k]!, s = scale[k]!;
      for (const e = i + groupSize; i < e; i++) {
        const d = Math.fround(Math.fround(xr[i]! - mn) / s);
        codes[i] = (d < 0 ? 0 : d > m ? m : d) + RNE_MAGIC - RNE_MAGIC;
      }
    }
  }
  return codes;
}

