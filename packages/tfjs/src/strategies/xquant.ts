import { etaCalibrator, XQUANT_ETA, type Calibrator, type EtaByBits } from '@xquant/calibration';
import { validatePlan, xquantPlan, type CrossLayerPlan, type LayerBits } from '@xquant/cross-layer';
import { XqConfigError } from '@xquant/quant';
import type { KvCacheShape, QuantizedCacheOptions } from '../types.js';
import { defineQuantizedStrategy } from './define.js';

/** Where cross-layer sharing starts: a layer index, `'half'` (layer ⌊L/2⌋, the reference presets) or null (none). */
export type ShareFrom = number | 'half' | null;

/** Options of the {@link xquant} strategy. */
export interface XQuantOptions extends QuantizedCacheOptions {
  /** Key bits, one width or one per layer. Default 2. */
  keyBits?: LayerBits | readonly LayerBits[];
  /** Value bits, one width or one per layer. Default 1. */
  valueBits?: LayerBits | readonly LayerBits[];
  /** Layers from which odd layers read the previous layer's key codes. Default null (no key sharing). */
  keyShareFrom?: ShareFrom;
  /** Layers from which odd layers read the previous layer's value codes. Default `'half'`. */
  valueShareFrom?: ShareFrom;
  /** Layers per sharing group (2 = the reference's pairs). Default 2. */
  shareGroup?: number;
  /** η per bit width for the data-free calibration; null = uncalibrated. Default {1: 1/6, 2: 0.045}. */
  eta?: EtaByBits | null;
  /** A custom calibrator instead of η (applied to every quantized layer). */
  calibrator?: Calibrator;
  /** A full custom plan (overrides bits and sharing options); validated. */
  plan?: (shape: Readonly<KvCacheShape>) => CrossLayerPlan;
}

function resolveShare(v: ShareFrom | undefined, layers: number, what: string): number | null {
  if (v === undefined || v === null) return null;
  if (v === 'half') return Math.floor(layers / 2);
  if (!Number.isInteger(v) || v < 0) throw new XqConfigError('E_PLAN', `${what} must be a layer index, 'half' or null; got ${String(v)}`);
  return v;
}

/**
 * XQuant: per-layer bit widths (AsymKV), η-calibration of scale and zero-point, and cross-layer code sharing — the upper
 * layer of a group stores only its own scale/zero and reads the donor layer's codes (any group size).
 */
export const xquant = defineQuantizedStrategy<XQuantOptions>({
  id: 'xquant',
  validate: (o) => {
    if (o.eta && o.calibrator) throw new XqConfigError('E_CONFIG', 'give either eta or calibrator, not both');
    if (o.eta) etaCalibrator({ etaByBits: o.eta }); // validates every η
  },
  layout: (o, shape) => {
    const L = shape.layers;
    const plan = o.plan
      ? validatePlan(o.plan(shape), { allowForwardDonors: true })
      : xquantPlan({
          layers: L,
          keyBits: o.keyBits ?? 2,
          valueBits: o.valueBits ?? 1,
          keyShareFrom: resolveShare(o.keyShareFrom, L, 'keyShareFrom'),
          valueShareFrom: resolveShare(o.valueShareFrom === undefined ? 'half' : o.valueShareFrom, L, 'valueShareFrom'),
          groupSizeOfShare: o.shareGroup ?? 2,
        });
    const cal = o.calibrator ?? (o.eta === null ? null : etaCalibrator({ etaByBits: o.eta ?? XQUANT_ETA }));
    const calibrators = Array.from({ length: L }, () => cal);
    return { keys: plan.keys, values: plan.values, keyCalibrators: calibrators, valueCalibrators: calibrators };
  },
});
