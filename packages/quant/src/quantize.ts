import { roundHalf, roundHalfEven } from './fp16.js';
import { packCodes } from './pack.js';
import {
  assertBits,
  assertDim,
  assertFinite,
  assertGroupSize,
  assertLength,
  type Bits,
  type GroupQuantOptions,
  type Precision,
} from './types.js';

/** Per-group scale and zero-point (the group minimum) of a `[rows, cols]` block quantized along `cols`. */
export interface GroupStats {
  rows: number;
  cols: number;
  bits: Bits;
  groupSize: number;
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

function validate(x: ArrayLike<number>, rows: number, cols: number, opts: GroupQuantOptions): Precision {
  assertDim(rows, 'rows');
  assertDim(cols, 'cols');
  assertBits(opts.bits);
  assertGroupSize(opts.groupSize, cols, opts.bits, 'cols');
  assertLength(x, rows * cols, 'input');
  const precision = opts.precision ?? 'fp16';
  if (precision !== 'fp16' && precision !== 'fp32') {
    throw new TypeError(`precision must be 'fp16' or 'fp32'; got ${String(precision)}`);
  }
  return precision;
}

/**
 * Scale and zero-point of every group, without codes (the reference's `anno=1`), used by the upper
 * layer of a cross-layer group. `scale = (max − min)/(2^bits − 1)` computed as `R · (1/m)`, `zero = min`.
 */
export function groupStats(x: ArrayLike<number>, rows: number, cols: number, opts: GroupQuantOptions): GroupStats {
  const precision = validate(x, rows, cols, opts);
  assertFinite(x, 'input', (i) => `row ${Math.floor(i / cols)}, column ${i % cols}`);
  const { bits, groupSize } = opts;
  const r = rounder(precision);
  const invM = Math.fround(1 / ((1 << bits) - 1));
  const groups = cols / groupSize;
  const scale = new Float32Array(rows * groups);
  const zero = new Float32Array(rows * groups);
  for (let row = 0; row < rows; row++) {
    for (let g = 0; g < groups; g++) {
      const base = row * cols + g * groupSize;
      let mn = Infinity;
      let mx = -Infinity;
      for (let j = 0; j < groupSize; j++) {
        const v = r(x[base + j]!);
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      const range = r(mx - mn);
      scale[row * groups + g] = r(range * invM);
      zero[row * groups + g] = mn;
    }
  }
  return { rows, cols, bits, groupSize, precision, scale, zero };
}

/**
 * Asymmetric min/max quantization of a row-major `[rows, cols]` block along `cols`, in groups of `groupSize`.
 * Follows the reference arithmetic exactly: `d = r(r(x − min) / scale)`, clamp to `[0, 2^bits − 1]`,
 * round half to even; a constant group (scale 0) gives code 0.
 */
export function quantizeRows(x: ArrayLike<number>, rows: number, cols: number, opts: GroupQuantOptions): QuantizedRows {
  const stats = groupStats(x, rows, cols, opts);
  const r = rounder(stats.precision);
  const m = (1 << opts.bits) - 1;
  const { groupSize } = opts;
  const groups = cols / groupSize;
  const codes = new Uint8Array(rows * cols);
  for (let row = 0; row < rows; row++) {
    for (let g = 0; g < groups; g++) {
      const s = stats.scale[row * groups + g]!;
      const mn = stats.zero[row * groups + g]!;
      const base = row * cols + g * groupSize;
      for (let j = 0; j < groupSize; j++) {
        const d = r(r(r(x[base + j]!) - mn) / s);
        // clamp before rounding; NaN (0/0 of a constant group) maps to 0
        const c = roundHalfEven(d < 0 ? 0 : d > m ? m : d);
        codes[base + j] = c === c ? c : 0;
      }
    }
  }
  return { ...stats, codes };
}

/** {@link quantizeRows} followed by {@link packCodes}. */
export function quantizeAndPackRows(x: ArrayLike<number>, rows: number, cols: number, opts: GroupQuantOptions): PackedRows {
  const q = quantizeRows(x, rows, cols, opts);
  const { codes, ...stats } = q;
  return { ...stats, packed: packCodes(codes, rows, cols, opts.bits) };
}

/**
 * Dequantize codes with group statistics: `x̂ = r(r(code·scale) + zero)` (two roundings, no FMA, as the reference).
 * `codes` may come from another block (cross-layer sharing) as long as the shapes agree.
 */
export function dequantizeRows(codes: Uint8Array, stats: GroupStats): Float32Array {
  const { rows, cols, groupSize } = stats;
  assertLength(codes, rows * cols, 'codes');
  const r = rounder(stats.precision);
  const groups = cols / groupSize;
  const out = new Float32Array(rows * cols);
  for (let row = 0; row < rows; row++) {
    for (let g = 0; g < groups; g++) {
      const s = stats.scale[row * groups + g]!;
      const z = stats.zero[row * groups + g]!;
      const base = row * cols + g * groupSize;
      for (let j = 0; j < groupSize; j++) out[base + j] = r(r(codes[base + j]! * s) + z);
    }
  }
  return out;
}
