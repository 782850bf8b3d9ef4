/**
 * @packageDocumentation
 * XQuant data-free calibration of per-group scale and zero-point: the η rule of the paper (bit-exact with the
 * authors' fp16 evaluation order), its presets, a least-squares alternative, and the {@link Calibrator} contract
 * for adding your own rule. Calibration never changes codes and adds no stored bytes.
 */
export type { Calibrator, CalibrationContext, Bits } from './types.js';
export {
  ETA_GRID,
  XQUANT_ETA,
  NO_ETA,
  assertEta,
  assertGroupStats,
  calibrateScaleZero,
  calibrateStats,
  etaCalibrator,
  type EtaByBits,
  type EtaCalibratorOptions,
} from './eta.js';
export { leastSquaresStats, leastSquaresCalibrator } from './least-squares.js';
export { roundedMetaCalibrator, type MetaFormat8, type RoundedMetaOptions } from './rounded-meta.js';
