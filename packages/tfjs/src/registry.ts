import { XqConfigError } from '@xquant/quant';
import { asymkv } from './strategies/asymkv.js';
import { full } from './strategies/full.js';
import { kivi } from './strategies/kivi.js';
import { rotated, type RotatedOptions } from './strategies/rotated.js';
import { xquant } from './strategies/xquant.js';
import type { KvCache, KvCacheShape, KvCacheStrategy, PresetOverrides } from './types.js';

/** Makes a strategy from options (a preset applies its fixed options and accepts {@link PresetOverrides}). */
export type StrategyFactory = (options?: Record<string, unknown>) => KvCacheStrategy;

/** Description of a preset, as in the reference tables (8 layers: reference-fidelity §1). */
export interface PresetInfo {
  /** Name accepted by {@link createKvCache}. */
  id: string;
  /** One line: what it stores. */
  summary: string;
}

const OVERRIDE_KEYS = new Set(['residualLength', 'groupSize', 'valueGroupSize', 'precision']);

function presetFactory(id: string, make: (o: PresetOverrides) => KvCacheStrategy): StrategyFactory {
  return (options = {}) => {
    for (const k of Object.keys(options)) {
      if (!OVERRIDE_KEYS.has(k)) {
        throw new XqConfigError('E_CONFIG', `preset '${id}' accepts only ${[...OVERRIDE_KEYS].join(', ')} as overrides; got '${k}'`);
      }
    }
    return make(options as PresetOverrides);
  };
}

/** The named configurations people use, resolved for any number of layers L. */
export const PRESETS: readonly PresetInfo[] = Object.freeze([
  { id: 'full', summary: 'float32 K/V, no quantization' },
  { id: 'kivi-2', summary: 'KIVI: keys and values 2-bit in every layer' },
  { id: 'kivi-1', summary: 'KIVI: keys and values 1-bit in every layer' },
  { id: 'asymkv-1.5', summary: 'AsymKV: keys 2-bit, values 1-bit' },
  { id: 'xquant-1.38', summary: 'XQuant: keys 2-bit, values 1-bit, odd layers ≥ L/2 read layer l−1 value codes, η = 1/6 (1-bit), 0.045 (2-bit)' },
  { id: 'xquant-nocal', summary: 'xquant-1.38 without calibration' },
  { id: 'xquant-noshare', summary: 'xquant-1.38 without cross-layer sharing' },
  { id: 'xquant-k-share', summary: 'xquant-1.38 sharing key codes as well as value codes from layer L/2' },
]);

const registry = new Map<string, StrategyFactory>();

function builtins(): void {
  registry.set('full', (o) => full(o as Parameters<typeof full>[0]));
  registry.set('kivi', (o) => kivi(o as unknown as Parameters<typeof kivi>[0]));
  registry.set('asymkv', (o) => asymkv(o as unknown as Parameters<typeof asymkv>[0]));
  registry.set('xquant', (o) => xquant(o as Parameters<typeof xquant>[0]));
  registry.set('rotated', (o) => rotated(o as unknown as RotatedOptions));
  registry.set('kivi-2', presetFactory('kivi-2', (o) => kivi({ ...o, bits: 2 })));
  registry.set('kivi-1', presetFactory('kivi-1', (o) => kivi({ ...o, bits: 1 })));
  registry.set('asymkv-1.5', presetFactory('asymkv-1.5', (o) => asymkv({ ...o, keyBits: 2, valueBits: 1 })));
  registry.set('xquant-1.38', presetFactory('xquant-1.38', (o) => xquant({ ...o, keyBits: 2, valueBits: 1, valueShareFrom: 'half' })));
  registry.set('xquant-nocal', presetFactory('xquant-nocal', (o) => xquant({ ...o, keyBits: 2, valueBits: 1, valueShareFrom: 'half', eta: null })));
  registry.set('xquant-noshare', presetFactory('xquant-noshare', (o) => xquant({ ...o, keyBits: 2, valueBits: 1, valueShareFrom: null })));
  registry.set('xquant-k-share', presetFactory('xquant-k-share', (o) => xquant({ ...o, keyBits: 2, valueBits: 1, keyShareFrom: 'half', valueShareFrom: 'half' })));
}
builtins();

/**
 * Register a strategy (or preset) under `id` so `createKvCache(id, shape, options)` can build it.
 * Throws `E_CONFIG` if `id` is taken, unless `replace` is set.
 */
export function registerStrategy(id: string, factory: StrategyFactory, options: { replace?: boolean } = {}): void {
  if (typeof id !== 'string' || id.length === 0) throw new XqConfigError('E_CONFIG', `strategy id must be a non-empty string; got ${String(id)}`);
  if (typeof factory !== 'function') throw new XqConfigError('E_CONFIG', `factory for '${id}' must be a function (options) => KvCacheStrategy`);
  if (registry.has(id) && !options.replace) throw new XqConfigError('E_CONFIG', `strategy '${id}' is already registered (pass { replace: true } to replace it)`);
  registry.set(id, factory);
}

/** Ids accepted by {@link createKvCache}: built-in strategies, presets and registered ones. */
export function strategyIds(): string[] {
  return [...registry.keys()];
}

/** The strategy for a registered id or preset name; unknown ids throw `E_STRATEGY_UNKNOWN` listing the known ones. */
export function resolveStrategy(id: string, options?: Record<string, unknown>): KvCacheStrategy {
  const factory = registry.get(id);
  if (!factory) {
    throw new XqConfigError('E_STRATEGY_UNKNOWN', `unknown KV cache strategy or preset '${String(id)}'; known: ${strategyIds().join(', ')}`);
  }
  return checkStrategy(factory(options));
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
 * Create a KV cache from a preset name (`'kivi-2'`, `'xquant-1.38'`, …), a registered strategy id with its options
 * (`'kivi'` + `{ bits: 2 }`), or a strategy object. `overrides` are the strategy's options; presets accept
 * `residualLength`, `groupSize`, `valueGroupSize` and `precision`.
 * @example
 * const cache = createKvCache('xquant-1.38', { layers: 8, kvHeads: 2, headDim: 64 }, { residualLength: 32 });
 */
export function createKvCache(
  strategy: string | KvCacheStrategy,
  shape: KvCacheShape,
  overrides?: PresetOverrides | Record<string, unknown>,
): KvCache {
  let s: KvCacheStrategy;
  if (typeof strategy === 'string') s = resolveStrategy(strategy, overrides as Record<string, unknown> | undefined);
  else {
    s = checkStrategy(strategy);
    if (overrides && Object.keys(overrides).length > 0) {
      s = resolveStrategy(s.id, { ...(s.options as Record<string, unknown>), ...overrides });
    }
  }
  return s.createCache(shape);
}
