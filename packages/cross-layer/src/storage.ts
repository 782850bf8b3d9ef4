import { XqConfigError } from '@xquant/quant';
import { validatePlan } from './plan.js';
import type { LayerStorage } from './types.js';

/**
 * How a whole cache stores its keys and values: the per-layer plan plus the residual window and the group sizes
 * every layer shares. Produced (validated, frozen) by {@link resolveStorageConfig}; `resolveCacheConfig` of
 * `@xquant/tfjs` returns a superset of it, so a cache's `config` can be passed to `accountBits` as it is.
 */
export interface StorageConfig {
  /** Key storage per layer: bits (16 = full precision) and the donor layer whose codes it reads (null = own codes). */
  readonly keys: readonly LayerStorage[];
  /** Value storage per layer, as for keys. */
  readonly values: readonly LayerStorage[];
  /** Residual window R: keys are quantized in whole blocks of R tokens, the newest R values stay full precision. */
  readonly residualLength: number;
  /** Tokens per key scale/zero-point group (keys are grouped along tokens, per channel). */
  readonly groupSize: number;
  /** Channels per value scale/zero-point group (values are grouped along channels, per token). */
  readonly valueGroupSize: number;
}

/** What {@link resolveStorageConfig} accepts: a storage description whose value group size may be left out. */
export type StorageInput = Omit<StorageConfig, 'valueGroupSize'> & {
  /** Channels per value group; default: `groupSize`. */
  readonly valueGroupSize?: number;
};

/**
 * Applies the one storage default (the value group size is the key group size unless given) and checks every rule a
 * cache relies on, against the head size: the plan is valid (forward donors allowed), group sizes are positive
 * integers, R is a non-negative multiple of the key group size and of the codes per 32-bit word of every quantized
 * key layer, and headDim is a multiple of the value group size and of the codes per word of every quantized value
 * layer. Returns a frozen copy. Throws `XqConfigError` (`E_GROUP_SIZE`, `E_RESIDUAL`, `E_PLAN`, `E_BITS`).
 */
export function resolveStorageConfig(input: StorageInput, headDim: number): StorageConfig {
  const { residualLength: R, groupSize: gs } = input;
  const gv = input.valueGroupSize ?? gs;
  const plan = validatePlan({ keys: [...input.keys], values: [...input.values] }, { allowForwardDonors: true });
  if (!Number.isInteger(gs) || gs <= 0) throw new XqConfigError('E_GROUP_SIZE', `groupSize must be a positive integer; got ${String(gs)}`);
  if (!Number.isInteger(gv) || gv <= 0) throw new XqConfigError('E_GROUP_SIZE', `valueGroupSize must be a positive integer; got ${String(gv)}`);
  if (!Number.isInteger(R) || R < 0 || R % gs !== 0) {
    throw new XqConfigError('E_RESIDUAL', `residualLength must be 0 or a positive multiple of groupSize (${gs}); got ${String(R)}`);
  }
  for (const s of plan.keys) {
    if (s.bits !== 16 && R % (32 / s.bits) !== 0) {
      throw new XqConfigError('E_RESIDUAL', `residualLength ${R} must be a multiple of ${32 / s.bits} (${s.bits}-bit keys are packed along blocks of R tokens)`);
    }
  }
  for (const s of plan.values) {
    if (s.bits !== 16 && (headDim % gv !== 0 || headDim % (32 / s.bits) !== 0)) {
      const what = input.valueGroupSize === undefined ? `groupSize ${gs}` : `valueGroupSize ${gv}`;
      throw new XqConfigError('E_GROUP_SIZE', `headDim ${headDim} must be a multiple of ${what} and of ${32 / s.bits} (${s.bits}-bit values are grouped along channels)`);
    }
  }
  const freeze = (side: LayerStorage[]) => Object.freeze(side.map((s) => Object.freeze({ bits: s.bits, codesFrom: s.codesFrom })));
  return Object.freeze({ keys: freeze(plan.keys), values: freeze(plan.values), residualLength: R, groupSize: gs, valueGroupSize: gv });
}
