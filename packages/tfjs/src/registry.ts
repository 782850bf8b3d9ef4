import { XqConfigError } from '@xquant/quant';
import { globalRegistry } from './global-registry.js';
import type { KvCache, KvCacheShape, KvCacheStrategy, QuantizedCacheOptions } from './types.js';

/** Makes a strategy from options (a preset applies its fixed options and accepts {@link QuantizedCacheOptions}). */
export type StrategyFactory = (options?: Record<string, unknown>) => KvCacheStrategy;

/** The strategy registry: one per process (on `globalThis`), filled with the built-ins when the package loads. */
const registry = () => globalRegistry<StrategyFactory>('strategies/v1');

/**
 * Register a strategy (or preset) under `id` so `createKvCache(id, shape, options)` can build it.
 * Throws `E_CONFIG` if `id` is taken, unless `replace` is set.
 */
export function registerStrategy(id: string, factory: StrategyFactory, options: { replace?: boolean } = {}): void {
  if (typeof id !== 'string' || id.length === 0) throw new XqConfigError('E_CONFIG', `strategy id must be a non-empty string; got ${String(id)}`);
  if (typeof factory !== 'function') throw new XqConfigError('E_CONFIG', `factory for '${id}' must be a function (options) => KvCacheStrategy`);
  if (registry().has(id) && !options.replace) throw new XqConfigError('E_CONFIG', `strategy '${id}' is already registered (pass { replace: true } to replace it)`);
  registry().set(id, factory);
}

/** Ids accepted by {@link createKvCache}: built-in strategies, presets and registered ones. */
export function strategyIds(): string[] {
  return [...registry().keys()];
}

function checkStrategy(s: KvCacheStrategy): KvCacheStrategy {
  if (typeof s !== 'object' || s === null || typeof s.createCache !== 'function') {
    throw new XqConfigError('E_CONFIG', 'a strategy must be an object with createCache(shape)');
  }
  if (s.specificationVersion !== 'v1') {
    throw new XqConfigError('E_STRATEGY_VERSION', `strategy '${String(s.id)}' implements specification ${String(s.specificationVersion)}; this package supports 'v1'`);
  }
  return s;
}

/**
 * The strategy for a registered id or preset name with `options`, or a strategy object with `options` applied over
 * its own (none: the object itself). Unknown ids throw `E_STRATEGY_UNKNOWN` listing the known ones.
 */
export function resolveStrategy(strategy: string | KvCacheStrategy, options?: QuantizedCacheOptions | Record<string, unknown>): KvCacheStrategy {
  if (typeof strategy !== 'string') {
    const s = checkStrategy(strategy);
    if (!options || Object.keys(options).length === 0) return s;
    return resolveStrategy(s.id, { ...(s.options as Record<string, unknown>), ...options });
  }
  const factory = registry().get(strategy);
  if (!factory) {
    throw new XqConfigError('E_STRATEGY_UNKNOWN', `unknown KV cache strategy or preset '${String(strategy)}'; known: ${strategyIds().join(', ')}`);
  }
  return checkStrategy(factory(options as Record<string, unknown> | undefined));
}

/**
 * Create a KV cache from a preset name (`'kivi-2'`, `'xquant-1.38'`, …), a registered strategy id with its options
 * (`'kivi'` + `{ bits: 2 }`), or a strategy object. `overrides` are the strategy's options; presets accept
 * `residualLength`, `groupSize`, `valueGroupSize` and `precision`.
 * @example
 * const cache = createKvCache('xquant-1.38', { layers: 8, kvHeads: 2, headDim: 64 }, { residualLength: 32 });
 */
export function createKvCache(strategy: string | KvCacheStrategy, shape: KvCacheShape, overrides?: QuantizedCacheOptions | Record<string, unknown>): KvCache {
  return resolveStrategy(strategy, overrides).createCache(shape);
}
