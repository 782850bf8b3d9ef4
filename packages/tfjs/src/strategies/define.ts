import type { LayerStorage } from '@xquant/cross-layer';
import { XqConfigError } from '@xquant/quant';
import { buildCacheConfig, type QuantizedLayout } from '../config.js';
import { QuantizedKvCache } from '../quantized/cache.js';
import type { KvCacheShape, KvCacheStrategy, QuantizedCacheOptions } from '../types.js';
import { validateCacheShape } from '../validate.js';

/** What {@link defineQuantizedStrategy} needs: an id and a function from options and shape to per-layer storage. */
export interface QuantizedStrategyDefinition<O extends QuantizedCacheOptions> {
  /** Stable id of the strategy, e.g. `'kivi'`. */
  id: string;
  /** Checks options once, when the strategy is created; throw an XqConfigError for bad values. */
  validate?(options: Readonly<O>): void;
  /** Per-layer storage for a cache of `shape`. */
  layout(options: Readonly<O>, shape: Readonly<KvCacheShape>): QuantizedLayout;
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
): (options?: O) => KvCacheStrategy<O> & Required<Pick<KvCacheStrategy<O>, 'resolveConfig'>> {
  if (!definition || typeof definition.id !== 'string' || definition.id.length === 0 || typeof definition.layout !== 'function') {
    throw new XqConfigError('E_CONFIG', 'defineQuantizedStrategy needs { id: non-empty string, layout(options, shape) }');
  }
  return (options = {} as O) => {
    const opts = Object.freeze({ ...options }) as Readonly<O>;
    definition.validate?.(opts);
    const resolveConfig = (shape: KvCacheShape) => {
      const s = validateCacheShape(shape);
      return buildCacheConfig(definition.id, opts, definition.layout(opts, s), s);
    };
    return {
      specificationVersion: 'v1',
      id: definition.id,
      options: opts,
      resolveConfig,
      createCache: (shape: KvCacheShape) => new QuantizedKvCache(resolveConfig(shape), shape),
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
