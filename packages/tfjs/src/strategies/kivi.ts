import { assertBits, type Bits } from '@xquant/quant';
import type { QuantizedCacheOptions } from '../types.js';
import { defineQuantizedStrategy, uniformLayers } from './define.js';

/** Options of the {@link kivi} strategy. */
export interface KiviOptions extends QuantizedCacheOptions {
  /** Bits of keys and values in every layer (KIVI-2: 2, KIVI-1: 1). */
  bits: Bits;
}

/**
 * KIVI: keys quantized per channel (groups along tokens), values per token, the same bit width in every layer,
 * with a full-precision residual window of R tokens. No calibration, no sharing.
 */
export const kivi = defineQuantizedStrategy<KiviOptions>({
  id: 'kivi',
  validate: (o) => assertBits(o.bits),
  layout: (o, shape) => ({ keys: uniformLayers(shape.layers, o.bits), values: uniformLayers(shape.layers, o.bits) }),
});
