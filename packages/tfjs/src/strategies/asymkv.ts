import type { LayerBits } from '@xquant/cross-layer';
import { XqConfigError } from '@xquant/quant';
import type { QuantizedCacheOptions } from '../types.js';
import { defineQuantizedStrategy, perLayerBits } from './define.js';

/** Options of the {@link asymkv} strategy. */
export interface AsymKvOptions extends QuantizedCacheOptions {
  /** Key bits: one width for all layers or one per layer (16 = full precision). */
  keyBits: LayerBits | readonly LayerBits[];
  /** Value bits: one width for all layers or one per layer. */
  valueBits: LayerBits | readonly LayerBits[];
}

/** AsymKV: KIVI with separate (and per-layer) bit widths for keys and values, e.g. keys 2-bit / values 1-bit. */
export const asymkv = defineQuantizedStrategy<AsymKvOptions>({
  id: 'asymkv',
  validate: (o) => {
    if (o.keyBits === undefined || o.valueBits === undefined) {
      throw new XqConfigError('E_CONFIG', 'asymkv needs keyBits and valueBits (a width or one per layer)');
    }
  },
  layout: (o, shape) => ({
    keys: perLayerBits(o.keyBits, shape.layers, 'keyBits').map((bits) => ({ bits, codesFrom: null })),
    values: perLayerBits(o.valueBits, shape.layers, 'valueBits').map((bits) => ({ bits, codesFrom: null })),
  }),
});
