import type { Tensor3D } from '@tensorflow/tfjs-core';
import type { CrossLayerPlan } from '@xquant/cross-layer';
import type { CacheConfig } from './config.js';

/** Shape of the cache a model needs: number of layers, KV heads per layer, head dimension. */
export interface KvCacheShape {
  /** Decoder layers. */
  layers: number;
  /** KV heads per layer. */
  kvHeads: number;
  /** Channels per head. */
  headDim: number;
  /** Largest number of tokens the cache may hold; appending past it throws `E_CAPACITY`. Default: unlimited. */
  maxTokens?: number;
}

/** Bytes held by a cache, split by kind, plus the two bit accountings. */
export interface KvMemoryReport {
  /** Bytes of packed integer codes. */
  codeBytes: number;
  /** Bytes of per-group scales and zero-points. */
  metadataBytes: number;
  /** Bytes of full-precision K/V (the residual window, or everything for `full`). */
  residualBytes: number;
  /** codeBytes + metadataBytes + residualBytes. */
  totalBytes: number;
  /** Tokens held (per layer). */
  tokens: number;
  /** K/V elements represented: 2 · layers · kvHeads · headDim · tokens. */
  elements: number;
  /** Paper-style equivalent bits: code bits only, averaged over K, V and layers (borrowed codes count 0). */
  paperBitsPerElement: number;
  /** True stored bits per element: 8 · totalBytes / elements. */
  trueBitsPerElement: number;
  /**
   * Bytes an attention kernel holds for this cache besides the above (e.g. the WebGPU fallback's device copy of the
   * dequantized K/V); not part of totalBytes. Absent or 0 when none.
   */
  kernelBytes?: number;
}

/**
 * A KV cache for one sequence (batch 1). The model calls, for every layer at every step:
 * `append` (or `prefill`) with the new keys/values (after RoPE), then `attend` with the queries.
 *
 * Scheduling (the reference's): while a step runs, the new tokens are held in full precision; after `attend`
 * (or before the next append), keys are quantized in whole multiples of the residual length R and values
 * beyond the most recent R tokens, one token at a time.
 */
export interface KvCache {
  /** Id of the strategy that created this cache. */
  readonly strategyId: string;
  /** The shape the cache was created for. */
  readonly shape: Readonly<KvCacheShape>;
  /** The resolved configuration of a quantized cache (see `resolveCacheConfig`); absent for caches without quantized storage (`full`). */
  readonly config?: CacheConfig;
  /** Per-layer storage (bits and code donors of keys and values); absent for caches that do not say (a full-precision one is all 16 bits). */
  readonly plan?: CrossLayerPlan;
  /** Append many tokens at once. `keys`/`values`: `[kvHeads, tokens, headDim]` float32. */
  prefill(layer: number, keys: Tensor3D, values: Tensor3D): void;
  /** Append one token. `keys`/`values`: `[kvHeads, 1, headDim]` float32. */
  append(layer: number, keys: Tensor3D, values: Tensor3D): void;
  /**
   * Causal attention of `queries` (`[qHeads, q, headDim]`, the last `q` positions) over everything the layer holds,
   * scaled by 1/√headDim, GQA when qHeads > kvHeads. Returns `[qHeads, q, headDim]`.
   */
  attend(layer: number, queries: Tensor3D): Tensor3D;
  /** Tokens held by `layer` (default 0). */
  seqLength(layer?: number): number;
  /** Bytes actually held and both bit accountings. */
  memory(): KvMemoryReport;
  /** The layer's K/V as the attention sees them (quantized part dequantized), `[kvHeads, tokens, headDim]`; the caller disposes them. */
  dequantize(layer: number): { keys: Tensor3D; values: Tensor3D };
  /** Drop every token (keeps the configuration). */
  reset(): void;
  /** Free all memory; the cache is unusable afterwards. */
  dispose(): void;
}

/** A way of storing the KV cache. Implement this (one file) to add a strategy. */
export interface KvCacheStrategy<Options = unknown> {
  /** Version of this interface the strategy implements. */
  readonly specificationVersion: 'v1';
  /** Short stable id, e.g. `'kivi'`. */
  readonly id: string;
  /** The options the strategy was created with. */
  readonly options: Readonly<Options>;
  /** A new, empty cache for `shape`. */
  createCache(shape: KvCacheShape): KvCache;
  /** The configuration `createCache(shape)` would use (quantized strategies; see `resolveCacheConfig`). */
  resolveConfig?(shape: KvCacheShape): CacheConfig;
  /**
   * Paper bits and true stored bits per K/V element at `tokens` tokens (fp16 residual window, the convention of
   * `accountBits` of @xquant/cross-layer), for a strategy whose storage a {@link CacheConfig} does not describe (e.g.
   * `turboquant`); strategies with `resolveConfig` are accounted from their configuration instead.
   */
  accountBits?(shape: KvCacheShape, tokens: number): { paperBits: number; storedBitsPerElement: number };
}

// ---------------------------------------------------------------------------------------------------------------
// Extensions (additive; the interfaces above are the contract the models package codes against).

/** Options shared by every quantized strategy. */
export interface QuantizedCacheOptions {
  /** Residual length R: keys are quantized in whole blocks of R tokens, the newest R values stay full precision. Default 128 (`DEFAULT_RESIDUAL_LENGTH`). */
  residualLength?: number;
  /** Elements sharing one scale and zero-point (tokens for keys, channels for values). Default 32 (`DEFAULT_GROUP_SIZE`). */
  groupSize?: number;
  /**
   * Channels sharing one scale and zero-point in the values (values are grouped along channels, per token), when it
   * should differ from `groupSize` (which then applies to keys only). Must divide headDim. Default: `groupSize`.
   */
  valueGroupSize?: number;
  /** Quantizer arithmetic and metadata storage: `'fp16'` (default, the reference's) or `'fp32'`. */
  precision?: 'fp16' | 'fp32';
}

/** A KV cache that can also read its inputs asynchronously (needed on WebGPU, where tensors cannot be read synchronously). */
export interface AsyncKvCache extends KvCache {
  /** {@link KvCache.prefill} that reads the tensors with `await data()`. */
  prefillAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void>;
  /** {@link KvCache.append} that reads the tensors with `await data()`. */
  appendAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void>;
}
