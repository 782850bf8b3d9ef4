import type { Tensor3D } from '@tensorflow/tfjs-core';
import { XqConfigError, type Bits, type Precision } from '@xquant/quant';
import type { StoredMeta } from '../quantized/store.js';
import { denseAttentionKernel } from './dense.js';
import { jsPackedAttentionKernel } from './js-attention.js';
import { webgpuPackedAttentionKernel } from './webgpu-packed.js';

/** A flushed key block with its codes resolved (the donor's codes when the layer borrows them). */
export interface KeyBlockView {
  /** Position of the first token. */
  readonly start: number;
  /** Tokens in the block (R). */
  readonly tokens: number;
  /** `[kvHeads, headDim, tokens·bits/32]`, codes along tokens per channel, LSB first (the reference layout). */
  readonly packed: Uint32Array;
  /** `[kvHeads, headDim, tokens/keyGroupSize]`, fp16 bit patterns (Uint16Array) or float32. */
  readonly scale: StoredMeta;
  /** Zero-points, same layout as `scale`. */
  readonly zero: StoredMeta;
}

/** A chunk of quantized values with codes resolved: token-major `packed` `[capacity, kvHeads, headDim·bits/32]`. */
export interface ValueChunkView {
  /** Position of the first token. */
  readonly start: number;
  /** Token rows allocated. */
  readonly capacity: number;
  /** Valid tokens (the first `filled` rows). */
  readonly filled: number;
  /** Codes, `[capacity, kvHeads, headDim·bits/32]` (the donor's when borrowed). */
  readonly packed: Uint32Array;
  /** `[capacity, kvHeads, headDim/valueGroupSize]`, fp16 bit patterns or float32. */
  readonly scale: StoredMeta;
  /** Zero-points, same layout as `scale`. */
  readonly zero: StoredMeta;
}

/**
 * What an attention kernel sees of one layer of a quantized cache. Positions `0 … quantizedKeys−1` of the keys are in
 * `keyBlocks`, the rest (`residualKeys`, token-major `[n, kvHeads, headDim]` float32) follow; values likewise.
 */
export interface QuantizedLayerView {
  /** Layer index. */
  readonly layer: number;
  /** KV heads. */
  readonly kvHeads: number;
  /** Channels per head. */
  readonly headDim: number;
  /** Tokens per scale/zero group of the keys (key blocks are grouped along tokens, per channel). */
  readonly keyGroupSize: number;
  /** Channels per scale/zero group of the values (value rows are grouped along channels, per token). */
  readonly valueGroupSize: number;
  /** Precision of the stored scales/zeros (`'fp16'`: Uint16 bit patterns). */
  readonly precision: Precision;
  /** Tokens held. */
  readonly tokens: number;
  /** 16 = the layer keeps this tensor in full precision (no blocks). */
  readonly keyBits: Bits | 16;
  /** Value bits (16 = full precision). */
  readonly valueBits: Bits | 16;
  /** Keys held quantized (positions 0 … quantizedKeys−1). */
  readonly quantizedKeys: number;
  /** Values held quantized. */
  readonly quantizedValues: number;
  /** Quantized keys, in position order. */
  readonly keyBlocks: readonly KeyBlockView[];
  /** Quantized values, in position order. */
  readonly valueChunks: readonly ValueChunkView[];
  /** Float32 keys after the quantized ones, token-major `[n, kvHeads, headDim]`. */
  readonly residualKeys: Float32Array;
  /** Float32 values after the quantized ones, token-major. */
  readonly residualValues: Float32Array;
  /** Increases whenever the layer's storage changes (lets a kernel keep device-side mirrors up to date). */
  readonly version: number;
  /** The cache this layer belongs to: a stable key for per-cache kernel state (see {@link AttentionKernel.release}). */
  readonly owner: object;
  /** Increases on every `reset()` of the owner: state built for an older generation is stale. */
  readonly generation: number;
  /** Decode `n` stored scales/zeros from `offset` to float32. */
  decodeMeta(meta: StoredMeta, offset: number, n: number, out?: Float32Array): Float32Array;
}

/**
 * Attention over a quantized layer: causal, 1/√headDim, GQA; `queries` `[qHeads, q, headDim]` are the last `q` positions.
 * Register one per tfjs backend with {@link registerAttentionKernel} (e.g. WGSL kernels from `@xquant/webgpu`).
 */
export interface AttentionKernel {
  /** Short id, e.g. `'js-packed'`. */
  readonly id: string;
  /** Attention output `[qHeads, q, headDim]` for `queries` over the layer. */
  attend(layer: QuantizedLayerView, queries: Tensor3D): Tensor3D;
  /** Free any state kept for `owner` (called by the cache on `reset()` and `dispose()`). */
  release?(owner: object): void;
  /** Bytes the kernel holds for `owner` (e.g. device mirrors); added to the cache's `memory().kernelBytes`. */
  heldBytes?(owner: object): number;
}

const kernels = new Map<string, AttentionKernel>();
/** Backends whose tensors can be read synchronously, where the packed JS kernels run. */
const SYNC_READABLE = new Set(['cpu', 'wasm', 'tensorflow']);

/** Use `kernel` for quantized attention whenever tfjs backend `backend` (e.g. `'webgpu'`) is active. Returns the previous one. */
export function registerAttentionKernel(backend: string, kernel: AttentionKernel): AttentionKernel | undefined {
  if (typeof backend !== 'string' || backend.length === 0) throw new XqConfigError('E_CONFIG', `backend must be a non-empty string; got ${String(backend)}`);
  if (!kernel || typeof kernel.attend !== 'function') throw new XqConfigError('E_CONFIG', 'kernel must have an attend(layer, queries) method');
  const prev = kernels.get(backend);
  kernels.set(backend, kernel);
  return prev;
}

/** Remove the kernel registered for `backend` (the default applies again). */
export function unregisterAttentionKernel(backend: string): void {
  kernels.delete(backend);
}

/** Every kernel that may hold state for a cache: the registered ones and the defaults. */
export function allAttentionKernels(): AttentionKernel[] {
  return [...new Set([...kernels.values(), jsPackedAttentionKernel, webgpuPackedAttentionKernel, denseAttentionKernel])];
}

/**
 * The kernel used on `backend`: the registered one, else the default — packed JS kernels where tensors can be read
 * synchronously, the WGSL packed kernels of `@xquant/webgpu` on `'webgpu'` (falling back to dequantize-then-attend
 * for prefill and unsupported layers), dequantize-then-attend elsewhere.
 */
export function attentionKernelFor(backend: string | null): AttentionKernel {
  const registered = backend !== null ? kernels.get(backend) : undefined;
  if (registered) return registered;
  if (backend === 'webgpu') return webgpuPackedAttentionKernel;
  return backend !== null && !SYNC_READABLE.has(backend) ? denseAttentionKernel : jsPackedAttentionKernel;
}

