import type { Bits, GroupStats } from '@xquant/quant';

/** What a calibrator may look at besides the group statistics. Nothing here is stored. */
export interface CalibrationContext {
  /** The block's own values, row-major `[rows, cols]` in the quantizer's layout (rows quantized along cols). */
  values?: Float32Array;
  /** The codes the block will be read with (its own, or a donor layer's under cross-layer sharing), `[rows, cols]`. */
  codes?: Uint8Array;
}

/**
 * A rule that adjusts per-group scale and zero-point after quantization. Codes never change, and a calibrator
 * adds no stored bytes. Implement this interface in one file to add a rule.
 */
export interface Calibrator {
  /** Short stable id, e.g. `'eta'` or `'least-squares'`. */
  readonly id: string;
  /** Returns new statistics (same shape, bits, precision); must not mutate `stats`. */
  calibrate(stats: GroupStats, context?: CalibrationContext): GroupStats;
}

export type { Bits };
