import type { Calibrator } from '@xquant/calibration';
import type { LayerStorage } from '@xquant/cross-layer';
import { XqConfigError, type Precision } from '@xquant/quant';
import { QuantizedKvCache, type QuantizedCacheConfig } from '../quantized/cache.js';
import type { KvCache, KvCacheShape, KvCacheStrategy, QuantizedCacheOptions } from '../types.js';
import { validateCacheShape } from '../validate.js';

/** Default residual length R (tokens kept in full precision). */
export const DEFAULT_RESIDUAL_LENGTH = 128;
/** Default quantization group size. */
export const DEFAULT_GROUP_SIZE = 32;

/** Per-layer storage a quantized strategy resolves for a cache shape. */
export interface QuantizedLayout {
  /** One entry per layer: key bits (16 = full precision) and the layer whose key codes it reads (null = its own). */
  keys: LayerStorage[];
  /** One entry per layer, as for keys. */
  values: LayerStorage[];
  /** Calibrator per layer for keys (null or absent = none). */
  keyCalibrators?: (Calibrator | null)[];
  /** Calibrator per layer for values. */
  valueCalibrators?: (Calibrator | null)[];
}

/** What {@link defineQuantizedStrategy} needs: an id and a function from options and shape to per-layer storage. */
export interface QuantizedStrategyDefinition<O extends QuantizedCacheOptions> {
  /** Stable id of the strategy, e.g. `'kivi'`. */
  id: string;
  /** Checks options once, when the strategy is created; throw an XqConfigError for bad values. */
  validate?(options: Readonly<O>): void;
  /** Per-layer storage for a cache of `shape`. */
  layout(options: Readonly<O>, shape: Readonly<KvCacheShape>): QuantizedLayout;
}

/** Resolved common options with defaults applied (R = 128, group size 32, value group size = group size, fp16). */
export function commonOptions(o: QuantizedCacheOptions): Required<QuantizedCacheOptions> {
  const groupSize = o.groupSize ?? DEFAULT_GROUP_SIZE;
  return {
    residualLength: o.residualLength ?? DEFAULT_RESIDUAL_LENGTH,
    groupSize,
    valueGroupSize: o.valueGroupSize ?? groupSize,
    precision: (o.precision ?? 'fp16') as Precision,
  };
}

/**
 * Turn a storage description into a strategy factory. The returned strategies create {@link QuantizedKvCache}s, which
 * own the residual window, the flush schedule, code sharing, calibration, memory accounting and attention — a new
 * strategy is one small file.
 * @example
 * // keys 4-bit, values 2-bit everywhere, the first layer in full precision
 * const k4v2 = defineQuantizedStrategy<{ residualLength?: number }>({
 *   id: 'k4v2',
 *   layout: (_o, shape) => ({
 *     keys: Array.from({ length: shape.layers }, (_, l) => ({ bits: l === 0 ? 16 : 4, codesFrom: null })),
 *     values: Array.from({ length: shape.layers }, (_, l) => ({ bits: l === 0 ? 16 : 2, codesFrom: null })),
 *   }),
 * });
 * const cache = k4v2({ residualLength: 64 }).createCache({ layers: 8, kvHeads: 2, headDim: 64 });
 */
export function defineQuantizedStrategy<O extends QuantizedCacheOptions>(
  definition: QuantizedStrategyDefinition<O>,
): (options?: O) => KvCacheStrategy<O> {
  if (!definition || typeof definition.id !== 'string' || definition.id.length === 0 || typeof definition.layout !== 'function') {
    throw new XqConfigError('E_CONFIG', 'defineQuantizedStrategy needs { id: non-empty string, layout(options, shape) }');
  }
  return (options = {} as O) => {
    const opts = Object.freeze({ ...options }) as Readonly<O>;
    const common = commonOptions(opts);
    definition.validate?.(opts);
    return {
      specificationVersion: 'v1',
      id: definition.id,
      options: opts,
      createCache(shape: KvCacheShape): KvCache {
        const s = validateCacheShape(shape);
        const layout = definition.layout(opts, s);
        const config: QuantizedCacheConfig = { strategyId: definition.id, ...common, ...layout };
        return new QuantizedKvCache(config, s);
      },
    };
  };
}

/** `n` copies of a storage entry. */
export function uniformLayers(layers: number, bits: LayerStorage['bits']): LayerStorage[] {
  return Array.from({ length: layers }, () => ({ bits, codesFrom: null }));
}

/** Expand one width or a per-layer list to `layers` entries (throws `E_PLAN` on a length mismatch). */
export function perLayerBits(spec: LayerStorage['bits'] | readonly LayerStorage['bits'][], layers: number, what: string): LayerStorage['bits'][] {
  if (typeof spec === 'number') return Array.from({ length: layers }, () => spec);
  if (!Array.isArray(spec)) throw new XqConfigError('E_BITS', `${what} must be a bit width or one per layer; got ${String(spec)}`);
  if (spec.length !== layers) throw new XqConfigError('E_PLAN', `${what}: expected ${layers} per-layer widths (one per layer); got ${spec.length}`);
  return [...spec];
}
