import type { Bits } from '@xquant/quant';

/**
 * How one layer stores one of K or V. `bits: 16` means kept in full precision (not quantized).
 * `codesFrom` is the dominant layer whose codes this layer reads (this layer then stores only its own scale and
 * zero-point), or `null` when the layer stores its own codes.
 */
export interface LayerStorage {
  bits: Bits | 16;
  codesFrom: number | null;
}

/** Per-layer storage of keys and values — plain data, validated by `validatePlan`. */
export interface CrossLayerPlan {
  keys: LayerStorage[];
  values: LayerStorage[];
}
