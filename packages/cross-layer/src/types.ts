import type { Bits } from '@xquant/quant';

/**
 * How one layer stores one of K or V. `bits: 16` means kept in full precision (not quantized).
 * `codesFrom` is the dominant layer whose codes this layer reads (this layer then stores only its own scale and
 * zero-point), or `null` when the layer stores its own codes.
 */
export interface LayerStorage {
  /** Bits per code (1, 2, 4, 8), or 16 for full precision. */
  bits: Bits | 16;
  /** Donor layer whose codes this layer reads, or `null` when it stores its own. */
  codesFrom: number | null;
}

/** Per-layer storage of keys and values — plain data, validated by `validatePlan`. */
export interface CrossLayerPlan {
  /** Key storage, one entry per layer. */
  keys: LayerStorage[];
  /** Value storage, one entry per layer (same length as `keys`). */
  values: LayerStorage[];
}
