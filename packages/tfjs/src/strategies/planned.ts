import { XQUANT_ETA, etaCalibrator, leastSquaresCalibrator, roundedMetaCalibrator, type Calibrator } from '@xquant/calibration';
import { validatePlan, type LayerStorage } from '@xquant/cross-layer';
import { XqConfigError } from '@xquant/quant';
import type { QuantizedCacheOptions } from '../types.js';
import { defineQuantizedStrategy } from './define.js';

/**
 * How a tensor's scale and zero-point are calibrated after quantization: `'none'`; `'eta'` (XQuant's η: 1/6 for
 * 1-bit, 0.045 for 2-bit, none otherwise); `{ eta }` (one η for this tensor); `'least-squares'` (fit scale and zero to
 * the group's own values given the codes it is read with — its own, or a donor layer's under sharing).
 */
export type CalibrationChoice =
  | 'none'
  | 'eta'
  | 'least-squares'
  | {
      /** η for every bit width, in [0, 0.5). */
      eta: number;
    }
  | {
      /**
       * Scale and zero-point rounded to an 8-bit fp format after `base` (issue 14; the values stay exact in fp16
       * storage, account them with `metadataBits: 8`).
       */
      meta: 'e4m3' | 'e5m2';
      /** Calibration before rounding. Default `'eta'`. */
      base?: 'none' | 'eta' | 'least-squares';
      /** Re-centre the zero-point for the rounded scale (default true; see `roundedMetaCalibrator`). */
      rederive?: boolean;
    };

/** Options of the {@link planned} strategy: plain JSON, so a plan can be saved and reused. */
export interface PlannedOptions extends QuantizedCacheOptions {
  /** Per layer: key bits (16 = full precision) and the donor layer whose key codes it reads (null = own codes). */
  keys: LayerStorage[];
  /** Per layer, as for keys. */
  values: LayerStorage[];
  /** One choice for every layer's keys, or one per layer. Default `'eta'`. */
  keyCalibration?: CalibrationChoice | CalibrationChoice[];
  /** As for keys. Default `'eta'`. */
  valueCalibration?: CalibrationChoice | CalibrationChoice[];
}

/** The calibrator for a choice (null for `'none'`). */
export function calibratorFor(choice: CalibrationChoice): Calibrator | null {
  if (choice === 'none') return null;
  if (choice === 'eta') return etaCalibrator({ etaByBits: XQUANT_ETA });
  if (choice === 'least-squares') return leastSquaresCalibrator();
  if (typeof choice === 'object' && choice !== null && 'meta' in choice) {
    const base = choice.base ?? 'eta';
    if (base !== 'none' && base !== 'eta' && base !== 'least-squares') throw new XqConfigError('E_CONFIG', `calibration base must be 'none', 'eta' or 'least-squares'; got ${JSON.stringify(base)}`);
    if (choice.rederive !== undefined && typeof choice.rederive !== 'boolean') throw new XqConfigError('E_CONFIG', `calibration rederive must be true or false; got ${JSON.stringify(choice.rederive)}`);
    return roundedMetaCalibrator({ format: choice.meta, inner: calibratorFor(base), rederive: choice.rederive ?? true });
  }
  if (typeof choice === 'object' && choice !== null && 'eta' in choice && typeof choice.eta === 'number') {
    const eta = choice.eta;
    return etaCalibrator({ etaByBits: { 1: eta, 2: eta, 4: eta, 8: eta } });
  }
  throw new XqConfigError('E_CONFIG', `calibration must be 'none', 'eta', 'least-squares', { eta: number } or { meta: 'e4m3' | 'e5m2', base?, rederive? }; got ${JSON.stringify(choice)}`);
}

function perLayer(choice: CalibrationChoice | CalibrationChoice[] | undefined, layers: number, what: string): (Calibrator | null)[] {
  const list = Array.isArray(choice) ? choice : Array.from({ length: layers }, () => choice ?? 'eta');
  if (list.length !== layers) throw new XqConfigError('E_PLAN', `${what}: expected ${layers} per-layer calibration choices; got ${list.length}`);
  const made = new Map<string, Calibrator | null>();
  return list.map((c) => {
    const key = JSON.stringify(c);
    if (!made.has(key)) made.set(key, calibratorFor(c));
    return made.get(key)!;
  });
}

/**
 * A fully explicit per-layer strategy (what `planForBudget` of `@xquant/eval` returns; registered as `'planned'`): bits and code donors per layer for keys
 * and values, and a calibration rule per tensor. Donors must be earlier layers (the model fills layers in order).
 * @example
 * const s = planned({ residualLength: 32, keys: [...], values: [...], valueCalibration: 'least-squares' });
 * const cache = s.createCache(model.cacheShape);
 */
export const planned = defineQuantizedStrategy<PlannedOptions>({
  id: 'planned',
  validate: (o) => {
    if (!Array.isArray(o.keys) || !Array.isArray(o.values)) throw new XqConfigError('E_PLAN', 'planned: keys and values must be per-layer storage lists');
    validatePlan({ keys: o.keys, values: o.values });
    for (const c of [o.keyCalibration, o.valueCalibration].flat()) if (c !== undefined) calibratorFor(c);
  },
  layout: (o, shape) => {
    if (o.keys.length !== shape.layers) throw new XqConfigError('E_PLAN', `planned: the plan has ${o.keys.length} layers, the model ${shape.layers}`);
    return {
      keys: o.keys.map((s) => ({ ...s })),
      values: o.values.map((s) => ({ ...s })),
      keyCalibrators: perLayer(o.keyCalibration, shape.layers, 'keyCalibration'),
      valueCalibrators: perLayer(o.valueCalibration, shape.layers, 'valueCalibration'),
    };
  },
});
