import { XqConfigError, roundScale, type GroupStats } from '@xquant/quant';
import type { CalibrationContext, Calibrator } from './types.js';

/** 8-bit formats {@link roundedMetaCalibrator} rounds scale and zero-point to (signed values: sign + magnitude). */
export type MetaFormat8 = 'e4m3' | 'e5m2';

/** Options of {@link roundedMetaCalibrator}. */
export interface RoundedMetaOptions {
  /** Storage format of scale and zero-point. */
  format: MetaFormat8;
  /** Calibration applied before rounding (e.g. `etaCalibrator()`); null = none. */
  inner?: Calibrator | null;
  /**
   * Re-derive the zero-point for the rounded scale (default true): after ŝ is rounded to s_r, the zero-point is
   * chosen so that the reconstruction range keeps its centre, ẑ′ = ẑ + (ŝ − s_r)·(2^B − 1)/2 — the η shift that the
   * rounded scale implies — and only then rounded. Without it, scale and zero are rounded independently.
   */
  rederive?: boolean;
}

/** `x` rounded to the nearest value of an fp8 format, sign kept. */
function roundSigned(format: MetaFormat8, x: number): number {
  return x < 0 ? -roundScale(format, -x) : roundScale(format, x);
}

/**
 * A {@link Calibrator} whose output scale and zero-point are values an 8-bit store (fp8 E4M3 or E5M2, sign and
 * magnitude) can hold, with the η calibration re-derived for the rounded metadata (see {@link RoundedMetaOptions}).
 * Codes are untouched. Every fp8 value is exactly an fp16 value, so a cache with precision `'fp16'` holds these
 * scales and zero-points unchanged; its accounting at 8 metadata bits is `accountBits({ …, metadataBits: 8 })`.
 * @throws `XqConfigError` for an unknown format.
 * @example
 * const cal = roundedMetaCalibrator({ format: 'e4m3', inner: etaCalibrator() });
 */
export function roundedMetaCalibrator(options: RoundedMetaOptions): Calibrator {
  const { format, inner = null, rederive = true } = options;
  if (format !== 'e4m3' && format !== 'e5m2') throw new XqConfigError('E_CONFIG', `metadata format must be 'e4m3' or 'e5m2'; got ${JSON.stringify(format)}`);
  return {
    id: `rounded-${format}${inner ? `-${inner.id}` : ''}${rederive ? '' : '-plain'}`,
    calibrate(stats: GroupStats, context?: CalibrationContext): GroupStats {
      const s = inner ? inner.calibrate(stats, context) : stats;
      const half = ((1 << s.bits) - 1) / 2;
      const scale = new Float32Array(s.scale.length);
      const zero = new Float32Array(s.zero.length);
      for (let i = 0; i < scale.length; i++) {
        const sr = roundScale(format, Math.max(0, s.scale[i]!));
        const z = rederive ? s.zero[i]! + (s.scale[i]! - sr) * half : s.zero[i]!;
        scale[i] = sr;
        zero[i] = roundSigned(format, z);
      }
      return { ...s, scale, zero };
    },
  };
}
