import { OVERFLOW_AT, checkOptions, codesOfRounded, roundAndCheck, statsOfRounded } from './core.js';
import { roundHalf, roundHalfInPlace } from './fp16.js';
import { assertLength, type Bits, type GroupQuantOptions, type Precision } from './types.js';

/** Per-group scale and zero-point (the group minimum) of a `[rows, cols]` block quantized along `cols`. */
export interface GroupStats {
  /** Number of rows (each row is quantized independently). */
  rows: number;
  /** Length of the quantized axis. */
  cols: number;
  /** Bits per code. */
  bits: Bits;
  /** Consecutive elements of a row that share one scale and zero-point. */
  groupSize: number;
  /** Arithmetic the statistics were computed (and are dequantized) in. */
  precision: Precision;
  /** `[rows, cols / groupSize]` */
  scale: Float32Array;
  /** `[rows, cols / groupSize]`, the zero-point `z` in `x̂ = q·s + z` */
  zero: Float32Array;
}

/** Codes plus their group statistics, unpacked (one byte per code). */
export interface QuantizedRows extends GroupStats {
  /** `[rows, cols]`, each in `[0, 2^bits − 1]` */
  codes: Uint8Array;
}

/** Codes packed into 32-bit words (see {@link packCodes}) plus their group statistics. */
export interface PackedRows extends GroupStats {
  /** `[rows, cols·bits/32]` */
  packed: Uint32Array;
}

/** The rounding function of a precision: fp16 (`h∘f`) or float32 (`f`). */
export function rounder(precision: Precision): (x: number) => number {
  return precision === 'fp16' ? roundHalf : Math.fround;
}

function roundedCopy(x: ArrayLike<number>, n: number, precision: Precision, cols: number): Float32Array {
  const xr = new Float32Array(n);
  xr.set(x);
  roundAndCheck(xr, precision, 'input', (i) => `row ${Math.floor(i / cols)}, column ${i % cols}`, (i) => x[i]!);
  return xr;
}

/**
 * Scale and zero-point of every group, without codes (the reference's `anno=1`), used by the upper
 * layer of a cross-layer group. `scale = (max − min)/(2^bits − 1)` computed as `R · (1/m)`, `zero = min`.
 * @throws {@link XqConfigError} for unsupported bits or group size, {@link XqShapeError} for a length mismatch,
 * {@link XqNumericError} for NaN/±Infinity or a value that overflows the precision. A group wider than the precision's
 * range is quantized all the same (its range taken exactly, see {@link boundScale}): finite inputs give finite statistics.
 */
export function groupStats(x: ArrayLike<number>, rows: number, cols: number, opts: GroupQuantOptions): GroupStats {
  const precision = checkOptions(rows, cols, opts);
  assertLength(x, rows * cols, 'input');
  const xr = roundedCopy(x, rows * cols, precision, cols);
  return statsOfRounded(xr, rows, cols, opts.bits, opts.groupSize, precision);
}

/**
 * Asymmetric min/max quantization of a row-major `[rows, cols]` block along `cols`, in groups of `groupSize`.
 * Follows the reference arithmetic exactly: `d = r(r(x − min) / scale)`, clamp to `[0, 2^bits − 1]`,
 * round half to even; a constant group (scale 0) gives code 0.
 * @throws {@link XqConfigError} for unsupported bits or group size, {@link XqShapeError} for a length mismatch,
 * {@link XqNumericError} for NaN/±Infinity or a value that overflows the precision. A group wider than the precision's
 * range is quantized all the same (its range taken exactly, see {@link boundScale}): finite inputs give finite statistics.
 */
export function quantizeRows(x: ArrayLike<number>, rows: number, cols: number, opts: GroupQuantOptions): QuantizedRows {
  const precision = checkOptions(rows, cols, opts);
  assertLength(x, rows * cols, 'input');
  const xr = roundedCopy(x, rows * cols, precision, cols);
  const stats = statsOfRounded(xr, rows, cols, opts.bits, opts.groupSize, precision);
  return { ...stats, codes: codesOfRounded(xr, stats) };
}

/**
 * Dequantize codes with group statistics: `x̂ = r(r(code·scale) + zero)` (two roundings, no FMA, as the reference).
 * In a group where `r((2^bits − 1)·scale)` overflows the precision (a range the reference cannot represent) the
 * product is not rounded on its own: `x̂ = r(code·scale + zero)`, finite for statistics from this package's quantizers.
 * `codes` may come from another block (cross-layer sharing) as long as the shapes agree.
 * @throws {@link XqShapeError} when `codes` does not have `rows·cols` elements.
 */
export function dequantizeRows(codes: Uint8Array, stats: GroupStats): Float32Array {
  const { rows, cols, groupSize } = stats;
  assertLength(codes, rows * cols, 'codes');
  const half = stats.precision === 'fp16';
  const groups = cols / groupSize;
  const out = new Float32Array(rows * cols);
  const { scale, zero } = stats;
  for (let k = 0, i = 0; k < rows * groups; k++) {
    const s = scale[k]!;
    for (const e = i + groupSize; i < e; i++) out[i] = codes[i]! * s;
  }
  if (half) roundHalfInPlace(out);
  for (let k = 0, i = 0; k < rows * groups; k++) {
    const z = zero[k]!;
    for (const e = i + groupSize; i < e; i++) out[i] = out[i]! + z;
  }
  if (half) roundHalfInPlace(out);
  // groups wider than the precision's range: one rounding
  const m = (1 << stats.bits) - 1;
  const ovf = OVERFLOW_AT[stats.precision];
  const r = rounder(stats.precision);
  for (let k = 0; k < rows * groups; k++) {
    const s = scale[k]!;
    if (!(m * s >= ovf)) continue;
    const z = zero[k]!;
    for (let i = k * groupSize, e = i + groupSize; i < e; i++) out[i] = r(codes[i]! * s + z);
  }
  return out;
}
