import {
  XqConfigError,
  XqShapeError,
  assertBits,
  assertFinite,
  boundScale,
  rounder,
  type Bits,
  type GroupStats,
  type Precision,
} from '@xquant/quant';
import type { Calibrator } from './types.js';

/**
 * The η values the XQuant paper and the authors' code search over, by bit width: 1-bit `{0, 1/6, 1/3}`,
 * 2-bit `{0, 0.045, 0.09}` (the reference's `g1` / `g2`, indexed by the last two annotation fields).
 */
export const ETA_GRID: Readonly<{
  /** 1-bit grid `[0, 1/6, 1/3]`. */
  1: readonly number[];
  /** 2-bit grid `[0, 0.045, 0.09]`. */
  2: readonly number[];
}> = Object.freeze({
  1: Object.freeze([0, 1 / 6, 2 / 6]),
  2: Object.freeze([0, 0.045, 0.09]),
});

/** η per bit width: bit widths that are absent are left uncalibrated (η = 0). */
export type EtaByBits = Readonly<Partial<Record<Bits, number>>>;

/** The default XQuant preset: η = 1/6 for 1-bit tensors, η = 0.045 for 2-bit tensors (annotation fields `…_1_1`). */
export const XQUANT_ETA: EtaByBits = Object.freeze({ 1: 1 / 6, 2: 0.045 });

/** No calibration at any bit width (KIVI / AsymKV behaviour). */
export const NO_ETA: EtaByBits = Object.freeze({});

/** Throws {@link @xquant/quant!XqConfigError} (`E_CONFIG`) unless `eta` is a finite number in `[0, 0.5)`. */
export function assertEta(eta: number, what = 'eta'): void {
  if (typeof eta !== 'number' || !Number.isFinite(eta) || eta < 0 || eta >= 0.5) {
    throw new XqConfigError('E_CONFIG', `${what} must be a finite number in [0, 0.5); got ${String(eta)}`);
  }
}

/**
 * XQuant calibration of one group's scale `s` and zero-point `z` for `bits`-bit codes, in the reference's exact
 * evaluation order (`mn += rev·scale·γ; scale *= (1−2γ)`, rev = 2^bits − 1). With h the rounding of `precision`:
 * `t1 = h(s·rev)`, `t2 = h(t1·f(η))`, `z′ = h(z + t2)`, `s′ = h(s·f(1−2η))` (f = float32 rounding; z is updated with the
 * uncalibrated scale). Outside the reference's range the result stays finite: `t1` is left unrounded where it overflows,
 * and the scale is lowered by {@link @xquant/quant!boundScale} where the top code would dequantize to ±Infinity (never for
 * statistics the reference calibrates without overflow). Does not validate its arguments; see {@link calibrateStats}.
 */
export function calibrateScaleZero(
  scale: number,
  zero: number,
  bits: Bits,
  eta: number,
  precision: Precision = 'fp16',
): {
  /** Calibrated scale `ŝ`. */
  scale: number;
  /** Calibrated zero-point `ẑ`. */
  zero: number;
} {
  const r = rounder(precision);
  const rev = (1 << bits) - 1;
  const etaF = Math.fround(eta);
  const shrinkF = Math.fround(1 - 2 * eta);
  let t1 = r(scale * rev);
  if (t1 === Infinity) t1 = scale * rev;
  const t2 = r(t1 * etaF);
  const z = r(zero + t2);
  return { scale: boundScale(r(scale * shrinkF), z, bits, precision), zero: z };
}

/** Throws unless `stats` is well-formed: bits, precision, positive dims, group size dividing cols, array lengths, finite values. */
export function assertGroupStats(stats: GroupStats, what = 'stats'): void {
  assertBits(stats.bits);
  if (stats.precision !== 'fp16' && stats.precision !== 'fp32') {
    throw new XqConfigError('E_CONFIG', `${what}.precision must be 'fp16' or 'fp32'; got ${String(stats.precision)}`);
  }
  const { rows, cols, groupSize } = stats;
  if (!Number.isInteger(rows) || rows <= 0 || !Number.isInteger(cols) || cols <= 0) {
    throw new XqShapeError(`${what}: rows and cols must be positive integers; got rows=${String(rows)}, cols=${String(cols)}`);
  }
  if (!Number.isInteger(groupSize) || groupSize <= 0 || cols % groupSize !== 0) {
    throw new XqConfigError('E_GROUP_SIZE', `${what}: groupSize ${String(groupSize)} must be a positive divisor of cols (${cols})`);
  }
  const n = rows * (cols / groupSize);
  if (!stats.scale || stats.scale.length !== n) {
    throw new XqShapeError(`${what}.scale: expected ${n} elements ([${rows}, ${cols / groupSize}]), got ${stats.scale?.length}`);
  }
  if (!stats.zero || stats.zero.length !== n) {
    throw new XqShapeError(`${what}.zero: expected ${n} elements ([${rows}, ${cols / groupSize}]), got ${stats.zero?.length}`);
  }
  const groups = cols / groupSize;
  const where = (i: number) => `row ${Math.floor(i / groups)}, group ${i % groups}`;
  assertFinite(stats.scale, `${what}.scale`, where);
  assertFinite(stats.zero, `${what}.zero`, where);
}

/**
 * XQuant's data-free calibration of a whole block: every group gets `ẑ = z + η·s·(2^B − 1)` and `ŝ = (1 − 2η)·s`,
 * evaluated in the reference's fp16 order (or the same order in float32 when `stats.precision` is `'fp32'`), see
 * {@link calibrateScaleZero}. The reconstruction levels move from `[min, max]` to `[min + ηR, max − ηR]`.
 * Codes are untouched, `stats` is not mutated, and any bit width is accepted. `η = 0` returns equal statistics.
 */
export function calibrateStats<S extends GroupStats>(stats: S, eta: number): S {
  assertEta(eta);
  assertGroupStats(stats);
  const { bits, precision } = stats;
  const scale = new Float32Array(stats.scale.length);
  const zero = new Float32Array(stats.zero.length);
  for (let i = 0; i < scale.length; i++) {
    const c = calibrateScaleZero(stats.scale[i]!, stats.zero[i]!, bits, eta, precision);
    scale[i] = c.scale;
    zero[i] = c.zero;
  }
  return { ...stats, scale, zero };
}

/** Options of {@link etaCalibrator}. */
export interface EtaCalibratorOptions {
  /** η per bit width, each in `[0, 0.5)`; bit widths that are absent are not calibrated. Default {@link XQUANT_ETA}. */
  etaByBits?: EtaByBits;
}

/**
 * A {@link Calibrator} applying {@link calibrateStats} with the η of the block's bit width. Unlike the reference
 * (which only defines η for 1 and 2 bits), any bit width may have an η. Validates every η up front.
 * @example
 * const cal = etaCalibrator({ etaByBits: { 1: 1 / 6, 2: 0.045, 4: 0.01 } });
 * const calibrated = cal.calibrate(stats);
 */
export function etaCalibrator(options: EtaCalibratorOptions = {}): Calibrator & {
  /** The validated, frozen η table this calibrator uses. */
  readonly etaByBits: EtaByBits;
} {
  const etaByBits = options.etaByBits === undefined ? XQUANT_ETA : options.etaByBits;
  if (typeof etaByBits !== 'object' || etaByBits === null) {
    throw new XqConfigError('E_CONFIG', `etaByBits must be an object mapping bit widths to η; got ${String(etaByBits)}`);
  }
  const copy: Partial<Record<Bits, number>> = {};
  for (const [k, v] of Object.entries(etaByBits)) {
    const bits = Number(k);
    assertBits(bits);
    if (v === undefined) continue;
    assertEta(v, `etaByBits[${k}]`);
    copy[bits] = v;
  }
  const frozen = Object.freeze(copy);
  return {
    id: 'eta',
    etaByBits: frozen,
    calibrate(stats: GroupStats): GroupStats {
      return calibrateStats(stats, frozen[stats.bits] ?? 0);
    },
  };
}
