import { XqConfigError, XqShapeError, assertFinite, rounder, type GroupStats } from '@xquant/quant';
import { assertGroupStats } from './eta.js';
import type { CalibrationContext, Calibrator } from './types.js';

/**
 * Squared reconstruction error `Σ (x − (c·s + z))²` of one group, in float64 (no rounding of the reconstruction).
 * `x` must already be rounded to the quantizer's precision.
 */
function groupSse(x: ArrayLike<number>, codes: ArrayLike<number>, base: number, n: number, s: number, z: number): number {
  let sse = 0;
  for (let j = 0; j < n; j++) {
    const e = x[base + j]! - (codes[base + j]! * s + z);
    sse += e * e;
  }
  return sse;
}

/**
 * Least-squares scale and zero-point for every group of a block, given the codes it will be read with (its own, or a
 * donor layer's under cross-layer sharing) and its true values: per group, `(ŝ, ẑ)` minimizes
 * `Σ_j (x_j − (c_j·ŝ + ẑ))²`. Closed form (ordinary least squares of x on c, in float64):
 * `ŝ = Σ(c−c̄)(x−x̄) / Σ(c−c̄)²`, `ẑ = x̄ − ŝ·c̄`, then both rounded to `stats.precision`.
 *
 * - The values are first rounded to the precision, as the quantizer does.
 * - Degenerate groups (all codes equal, so the slope is undetermined) keep the input scale and zero-point.
 * - If rounding makes the fitted pair worse than the input pair on the group (measured in float64), the input pair is
 *   kept, so a group's squared error never increases (up to the dequantizer's own fp16/fp32 roundings).
 * - `ŝ` may be negative when codes and values are anti-correlated (e.g. a donor layer's codes); dequantization
 *   `c·ŝ + ẑ` is unchanged in form, and no stored bits are added.
 *
 * Codes are never changed. `values` and `codes` are `[rows, cols]` in the quantizer's layout (see {@link CalibrationContext}).
 * Throws {@link @xquant/quant!XqConfigError} when either is missing, {@link @xquant/quant!XqShapeError} on a length mismatch, and
 * `XqNumericError` (from `@xquant/quant`) on NaN/Infinity.
 */
export function leastSquaresStats<S extends GroupStats>(stats: S, context: CalibrationContext): S {
  assertGroupStats(stats);
  const { values, codes } = context ?? {};
  if (!values || !codes) {
    throw new XqConfigError(
      'E_CONFIG',
      `least-squares calibration needs context.values and context.codes (${!values ? 'values' : 'codes'} missing)`,
    );
  }
  const { rows, cols, groupSize, bits } = stats;
  if (values.length !== rows * cols) {
    throw new XqShapeError(`context.values: expected ${rows * cols} elements ([${rows}, ${cols}]), got ${values.length}`);
  }
  if (codes.length !== rows * cols) {
    throw new XqShapeError(`context.codes: expected ${rows * cols} elements ([${rows}, ${cols}]), got ${codes.length}`);
  }
  assertFinite(values, 'context.values', (i) => `row ${Math.floor(i / cols)}, column ${i % cols}`);
  const m = (1 << bits) - 1;
  for (let i = 0; i < codes.length; i++) {
    if (codes[i]! > m) throw new XqShapeError(`context.codes: code ${codes[i]} at index ${i} exceeds ${m} for ${bits}-bit codes`);
  }
  const r = rounder(stats.precision);
  const x = new Float64Array(values.length);
  for (let i = 0; i < x.length; i++) x[i] = r(values[i]!);
  const groups = cols / groupSize;
  const scale = Float32Array.from(stats.scale);
  const zero = Float32Array.from(stats.zero);
  for (let row = 0; row < rows; row++) {
    for (let g = 0; g < groups; g++) {
      const base = row * cols + g * groupSize;
      let cMean = 0;
      let xMean = 0;
      for (let j = 0; j < groupSize; j++) {
        cMean += codes[base + j]!;
        xMean += x[base + j]!;
      }
      cMean /= groupSize;
      xMean /= groupSize;
      let scc = 0;
      let scx = 0;
      for (let j = 0; j < groupSize; j++) {
        const dc = codes[base + j]! - cMean;
        scc += dc * dc;
        scx += dc * (x[base + j]! - xMean);
      }
      if (scc === 0) continue; // degenerate: keep the input statistics
      const s = r(scx / scc);
      const z = r(xMean - (scx / scc) * cMean);
      if (!Number.isFinite(s) || !Number.isFinite(z)) continue; // overflow of the precision: keep input
      const k = row * groups + g;
      const before = groupSse(x, codes, base, groupSize, scale[k]!, zero[k]!);
      const after = groupSse(x, codes, base, groupSize, s, z);
      if (after <= before) {
        scale[k] = s;
        zero[k] = z;
      }
    }
  }
  return { ...stats, scale, zero };
}

/**
 * A {@link Calibrator} that fits scale and zero-point by least squares given the codes and values in the context;
 * see {@link leastSquaresStats} for the exact rule. It needs `context.values` and `context.codes`.
 * @example
 * const q = quantizeRows(x, rows, cols, { bits: 1, groupSize: 32 });
 * const fitted = leastSquaresCalibrator().calibrate(q, { values: x, codes: q.codes });
 */
export function leastSquaresCalibrator(): Calibrator {
  return {
    id: 'least-squares',
    calibrate(stats: GroupStats, context?: CalibrationContext): GroupStats {
      return leastSquaresStats(stats, context ?? {});
    },
  };
}
