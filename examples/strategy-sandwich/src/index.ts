/**
 * @packageDocumentation
 * An example KV-cache strategy package for `@xquant/tfjs`, written against its public API only: the first and last
 * layers keep full-precision K/V (the "bread"), the layers between store keys at 4 bits and values at 2 bits (the
 * "filling"). It shows the three things a strategy package does: define the strategy, register it (also as an
 * `xquant --plugin`), and prove it with `@xquant/tfjs/testing` (see test/).
 */
import { defineQuantizedStrategy, registerStrategy, strategyIds, type KvCacheStrategy, type QuantizedCacheOptions } from '@xquant/tfjs';
import { XqConfigError } from '@xquant/quant';

/** Options of {@link sandwich}: the quantized-cache options (R, group sizes, precision) plus the layout. */
export interface SandwichOptions extends QuantizedCacheOptions {
  /** Layers kept in full precision at each end (default 1). */
  edgeLayers?: number;
  /** Key bits in the middle layers (default 4). */
  keyBits?: 1 | 2 | 4 | 8;
  /** Value bits in the middle layers (default 2). */
  valueBits?: 1 | 2 | 4 | 8;
}

/** The id the strategy registers under. */
export const SANDWICH_ID = 'sandwich';

/**
 * The sandwich strategy: `sandwich(options).createCache(shape)`, or through the registry once {@link register} ran:
 * `createKvCache('sandwich', shape, options)`.
 * @example
 * const cache = sandwich({ residualLength: 32 }).createCache(model.cacheShape);
 */
export const sandwich = defineQuantizedStrategy<SandwichOptions>({
  id: SANDWICH_ID,
  validate(o) {
    const edge = o.edgeLayers ?? 1;
    if (!Number.isInteger(edge) || edge < 0) throw new XqConfigError('E_CONFIG', `sandwich: edgeLayers must be an integer ≥ 0; got ${String(edge)}`);
  },
  layout(o, shape) {
    const edge = o.edgeLayers ?? 1;
    const bread = (l: number) => l < edge || l >= shape.layers - edge;
    return {
      keys: Array.from({ length: shape.layers }, (_, l) => ({ bits: bread(l) ? 16 : (o.keyBits ?? 4), codesFrom: null })),
      values: Array.from({ length: shape.layers }, (_, l) => ({ bits: bread(l) ? 16 : (o.valueBits ?? 2), codesFrom: null })),
    };
  },
});

/** The registry functions {@link register} needs: `@xquant/tfjs` itself, or the API an `xquant --plugin` is given. */
export interface RegistryApi {
  /** `registerStrategy` of `@xquant/tfjs`. */
  registerStrategy(id: string, factory: (options?: Record<string, unknown>) => KvCacheStrategy, options?: { replace?: boolean }): void;
  /** `strategyIds` of `@xquant/tfjs`. */
  strategyIds(): string[];
}

/**
 * Register `'sandwich'` (idempotent). `xquant generate --plugin <this module>` calls it with the CLI's `@xquant/tfjs`;
 * in your own code call it with no argument.
 */
export function register(api: RegistryApi = { registerStrategy, strategyIds }): void {
  if (!api.strategyIds().includes(SANDWICH_ID)) api.registerStrategy(SANDWICH_ID, (o) => sandwich(o as SandwichOptions));
}

export default register;
