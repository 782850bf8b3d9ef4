import type { Calibrator } from '@xquant/calibration';
import { resolveStorageConfig, type StorageConfig } from '@xquant/cross-layer';
import { XqConfigError, type Precision } from '@xquant/quant';
import { resolveStrategy } from './registry.js';
import type { KvCacheShape, KvCacheStrategy, QuantizedCacheOptions } from './types.js';
import { CACHE_LIMITS, validateCacheShape } from './validate.js';

/** Default residual length R (tokens kept in full precision). */
export const DEFAULT_RESIDUAL_LENGTH = 128;
/** Default group size (tokens per key group; also channels per value group unless `valueGroupSize` is set). */
export const DEFAULT_GROUP_SIZE = 32;
/** The options every quantized strategy and preset accepts as overrides ({@link QuantizedCacheOptions}). */
export const CACHE_OVERRIDE_KEYS: readonly (keyof QuantizedCacheOptions)[] = Object.freeze(['residualLength', 'groupSize', 'valueGroupSize', 'precision']);

/**
 * The resolved configuration of a quantized cache: every default applied and every rule checked once (by
 * {@link resolveCacheConfig}), frozen. Caches, kernels (through the layer view), `accountBits` and the evaluation
 * read it; nothing re-derives a default.
 */
export interface CacheConfig extends StorageConfig {
  /** Id of the strategy that resolved it. */
  readonly strategyId: string;
  /** Quantizer arithmetic and metadata storage (`'fp16'`: Uint16 bit patterns). */
  readonly precision: Precision;
  /** Calibrator per layer for the key statistics (null: none). */
  readonly keyCalibrators: readonly (Calibrator | null)[];
  /** Calibrator per layer for the value statistics (null: none). */
  readonly valueCalibrators: readonly (Calibrator | null)[];
}

/** Per-layer storage a quantized strategy describes for a cache shape (see `defineQuantizedStrategy`). */
export interface QuantizedLayout {
  /** One entry per layer: key bits (16 = full precision) and the layer whose key codes it reads (null = its own). */
  keys: StorageConfig['keys'];
  /** One entry per layer, as for keys. */
  values: StorageConfig['values'];
  /** Calibrator per layer for keys (null or absent = none). */
  keyCalibrators?: readonly (Calibrator | null)[];
  /** Calibrator per layer for values. */
  valueCalibrators?: readonly (Calibrator | null)[];
}

/**
 * Build a {@link CacheConfig} from a strategy's options and layout: applies the defaults (R = 128, group size 32,
 * value group size = group size, fp16) and checks them against the shape.
 * @internal
 */
export function buildCacheConfig(strategyId: string, options: QuantizedCacheOptions, layout: QuantizedLayout, shape: Readonly<KvCacheShape>): CacheConfig {
  const residualLength = options.residualLength ?? DEFAULT_RESIDUAL_LENGTH;
  if (!Number.isInteger(residualLength) || residualLength <= 0) {
    throw new XqConfigError('E_RESIDUAL', `residualLength must be a positive integer; got ${String(residualLength)}`);
  }
  if (residualLength > CACHE_LIMITS.residualLength) {
    throw new XqConfigError('E_RESIDUAL', `residualLength ${residualLength} is above the limit CACHE_LIMITS.residualLength = ${CACHE_LIMITS.residualLength}`);
  }
  const precision = options.precision ?? 'fp16';
  if (precision !== 'fp16' && precision !== 'fp32') throw new XqConfigError('E_CONFIG', `precision must be 'fp16' or 'fp32'; got ${String(precision)}`);
  const storage = resolveStorageConfig({ ...layout, residualLength, groupSize: options.groupSize ?? DEFAULT_GROUP_SIZE, valueGroupSize: options.valueGroupSize }, shape.headDim);
  if (storage.keys.length !== shape.layers) {
    throw new XqConfigError('E_PLAN', `expected one storage entry per layer (${shape.layers}); got ${storage.keys.length}`);
  }
  const calibrators = (list: QuantizedLayout['keyCalibrators'], what: string) => {
    if (list !== undefined && list.length !== shape.layers) throw new XqConfigError('E_PLAN', `${what}: expected ${shape.layers} entries; got ${list.length}`);
    return Object.freeze(Array.from({ length: shape.layers }, (_, l) => list?.[l] ?? null));
  };
  return Object.freeze({
    ...storage,
    strategyId,
    precision,
    keyCalibrators: calibrators(layout.keyCalibrators, 'keyCalibrators'),
    valueCalibrators: calibrators(layout.valueCalibrators, 'valueCalibrators'),
  });
}

/**
 * The configuration a cache of `strategy` (a preset or registered id, or a strategy object) with `overrides` would
 * have for `shape`: every default applied and every rule checked once, frozen — what `createKvCache` builds the cache
 * from and `cache.config` returns. Throws `E_CONFIG` for a strategy without quantized storage (e.g. `full`), and the
 * typed error of the first broken rule otherwise.
 * @example
 * const config = resolveCacheConfig('xquant-1.38', { layers: 8, kvHeads: 2, headDim: 64 }, { residualLength: 32 });
 * config.valueGroupSize; // 32: the group size, since none was given
 */
export function resolveCacheConfig(
  strategy: string | KvCacheStrategy,
  shape: KvCacheShape,
  overrides?: QuantizedCacheOptions | Record<string, unknown>,
): CacheConfig {
  const s = resolveStrategy(strategy, overrides);
  if (typeof s.resolveConfig !== 'function') {
    throw new XqConfigError('E_CONFIG', `strategy '${s.id}' keeps no quantized storage, so it has no cache configuration`);
  }
  return s.resolveConfig(validateCacheShape(shape));
}
