import { XqConfigError } from '@xquant/quant';
import { CACHE_OVERRIDE_KEYS } from './config.js';
import { jsPackedAttentionKernel } from './kernels/js-attention.js';
import { findKernel, registerAttentionKernel } from './kernels/registry.js';
import { registerStrategy, strategyIds, type StrategyFactory } from './registry.js';
import { asymkv, type AsymKvOptions } from './strategies/asymkv.js';
import { full } from './strategies/full.js';
import { kivi, type KiviOptions } from './strategies/kivi.js';
import { planned, type PlannedOptions } from './strategies/planned.js';
import { rotated, type RotatedOptions } from './strategies/rotated.js';
import { turboquant, type TurboQuantOptions } from './strategies/turboquant.js';
import { xquant } from './strategies/xquant.js';
import type { KvCacheStrategy, QuantizedCacheOptions } from './types.js';

/** Description of a preset, as in the reference tables (8 layers: reference-fidelity §1). */
export interface PresetInfo {
  /** Name accepted by `createKvCache`. */
  id: string;
  /** One line: what it stores. */
  summary: string;
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

function preset(id: string, make: (o: QuantizedCacheOptions) => KvCacheStrategy): StrategyFactory {
  return (options = {}) => {
    for (const k of Object.keys(options)) {
      if (!(CACHE_OVERRIDE_KEYS as readonly string[]).includes(k)) {
        throw new XqConfigError('E_CONFIG', `preset '${id}' accepts only ${CACHE_OVERRIDE_KEYS.join(', ')} as overrides; got '${k}'`);
      }
    }
    return make(options as QuantizedCacheOptions);
  };
}

const xq = { keyBits: 2, valueBits: 1 } as const;
const BUILTIN_STRATEGIES: Record<string, StrategyFactory> = {
  full: (o) => full(o as Parameters<typeof full>[0]),
  kivi: (o) => kivi(o as unknown as KiviOptions),
  asymkv: (o) => asymkv(o as unknown as AsymKvOptions),
  xquant: (o) => xquant(o as Parameters<typeof xquant>[0]),
  rotated: (o) => rotated(o as unknown as RotatedOptions),
  planned: (o) => planned(o as unknown as PlannedOptions),
  turboquant: (o) => turboquant(o as TurboQuantOptions),
  'kivi-2': preset('kivi-2', (o) => kivi({ ...o, bits: 2 })),
  'kivi-1': preset('kivi-1', (o) => kivi({ ...o, bits: 1 })),
  'asymkv-1.5': preset('asymkv-1.5', (o) => asymkv({ ...o, ...xq })),
  'xquant-1.38': preset('xquant-1.38', (o) => xquant({ ...o, ...xq, valueShareFrom: 'half' })),
  'xquant-nocal': preset('xquant-nocal', (o) => xquant({ ...o, ...xq, valueShareFrom: 'half', eta: null })),
  'xquant-noshare': preset('xquant-noshare', (o) => xquant({ ...o, ...xq, valueShareFrom: null })),
  'xquant-k-share': preset('xquant-k-share', (o) => xquant({ ...o, ...xq, keyShareFrom: 'half', valueShareFrom: 'half' })),
};

/**
 * Register the built-in strategies and presets, and the packed JS/WebAssembly attention kernel on the backends whose
 * tensors can be read synchronously (`cpu`, `wasm`, `tensorflow`). Idempotent, and it never replaces a registration
 * (another copy of this package, or your own): the package calls it when it loads.
 */
export function registerBuiltins(): void {
  const known = new Set(strategyIds());
  for (const [id, factory] of Object.entries(BUILTIN_STRATEGIES)) if (!known.has(id)) registerStrategy(id, factory);
  for (const backend of ['cpu', 'wasm', 'tensorflow']) if (!findKernel(backend, 'attention')) registerAttentionKernel(backend, jsPackedAttentionKernel);
}
