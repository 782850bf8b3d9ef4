import { XqConfigError, XqNumericError, XqShapeError } from './errors.js';

/** Bit widths the quantizer supports. */
export type Bits = 1 | 2 | 4 | 8;

/** All supported bit widths, in ascending order. */
export const SUPPORTED_BITS: readonly Bits[] = [1, 2, 4, 8];

/**
 * Arithmetic of the quantizer.
 * - `'fp16'` (default): inputs are rounded to fp16 and every step rounds to fp16 exactly as the authors'
 *   CUDA code does; scale and zero-point are fp16 values, so they are stored in 16 bits each.
 * - `'fp32'`: the same recipe with float32 rounding (the authors' code on float32 tensors); metadata is float32.
 */
export type Precision = 'fp16' | 'fp32';

/** Which axis groups run along. Keys are quantized per channel (groups of tokens), values per token (groups of channels). */
export type QuantAxis = 'channel' | 'token';

/** Options of a group quantizer. */
export interface GroupQuantOptions {
  /** Bits per code: 1, 2, 4 or 8. */
  bits: Bits;
  /** Number of consecutive elements that share one scale and zero-point. */
  groupSize: number;
  /** Arithmetic; default `'fp16'`. */
  precision?: Precision;
}

/** Number of codes in one 32-bit word for a bit width. */
export function codesPerWord(bits: Bits): number {
  return 32 / bits;
}

/** Throws {@link XqConfigError} unless `bits` is one of {@link SUPPORTED_BITS}. */
export function assertBits(bits: number): asserts bits is Bits {
  if (!(SUPPORTED_BITS as readonly number[]).includes(bits)) {
    throw new XqConfigError('E_BITS', `bits must be one of ${SUPPORTED_BITS.join(', ')}; got ${String(bits)}`);
  }
}

/** Throws unless `groupSize` is a positive integer dividing `axisLength`, and the axis packs into whole words. */
export function assertGroupSize(groupSize: number, axisLength: number, bits: Bits, axisName = 'the quantized axis'): void {
  if (!Number.isInteger(groupSize) || groupSize <= 0) {
    throw new XqConfigError('E_GROUP_SIZE', `groupSize must be a positive integer; got ${String(groupSize)}`);
  }
  if (axisLength % groupSize !== 0) {
    throw new XqConfigError(
      'E_GROUP_SIZE',
      `groupSize ${groupSize} does not divide ${axisName} (length ${axisLength})`,
    );
  }
  const fpw = codesPerWord(bits);
  if (axisLength % fpw !== 0) {
    throw new XqConfigError(
      'E_GROUP_SIZE',
      `${axisName} (length ${axisLength}) must be a multiple of ${fpw} to pack ${bits}-bit codes into 32-bit words`,
    );
  }
}

/** Throws {@link XqShapeError} unless `n` is a positive integer. */
export function assertDim(n: number, name: string): void {
  if (!Number.isInteger(n) || n <= 0) throw new XqShapeError(`${name} must be a positive integer; got ${String(n)}`);
}

/** Throws {@link XqShapeError} unless `arr.length === expected`. */
export function assertLength(arr: ArrayLike<number>, expected: number, what: string): void {
  if (arr.length !== expected) {
    throw new XqShapeError(`${what}: expected ${expected} elements, got ${arr.length}`);
  }
}

/**
 * Throws {@link XqNumericError} at the first NaN or ±Infinity; `where(i)` turns the flat index into a readable position.
 */
export function assertFinite(x: ArrayLike<number>, what: string, where: (i: number) => string = (i) => `index ${i}`): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    if (v - v !== 0) {
      throw new XqNumericError(`${what} contains ${v !== v ? 'NaN' : v > 0 ? 'Infinity' : '-Infinity'} at ${where(i)}`);
    }
  }
}
