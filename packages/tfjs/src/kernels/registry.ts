import type { Tensor2D, Tensor3D } from '@tensorflow/tfjs-core';
import { XqBackendError, XqConfigError, type Bits, type CodebookKvView, type Precision } from '@xquant/quant';
import { globalRegistry } from '../global-registry.js';
import type { StoredMeta } from '../quantized/store.js';

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

/**
 * One layer's codebook-coded keys or values (the `turboquant` cache) as a {@link CodebookKernel} sees them: every
 * quantized token in one token-major view, in the cache's rotated and permuted channel order.
 */
export interface CodebookTensorView {
  /** The rows of every quantized token, position order. */
  readonly view: CodebookKvView;
  /** Layer index. */
  readonly layer: number;
  /** Which tensor of the layer. */
  readonly kind: 'keys' | 'values';
  /** Increases whenever the rows change (lets a kernel keep a device copy up to date). */
  readonly version: number;
  /** The cache the view belongs to: a stable key for per-cache kernel state (see {@link CodebookKernel.release}). */
  readonly owner: object;
}

/**
 * The two products of codebook attention on one tfjs backend (e.g. WGSL kernels from `@xquant/webgpu`). A cache with
 * such a kernel for the active backend runs the rest of attention (rotation, residual window, softmax) as tfjs ops, so
 * nothing is read back to the host; without one it attends on the host (cpu, wasm, tensorflow backends).
 */
export interface CodebookKernel {
  /** Short id, e.g. `'webgpu-codebook'`. */
  readonly id: string;
  /**
   * `q·k̂ᵀ` (no softmax scale) for `rows` query rows grouped by KV head (row j reads KV head ⌊j / (rows/heads)⌋):
   * q float32 `[rows, headDim]` in the keys' channel order → `[rows, keys.view.tokens]`.
   */
  keyScores(q: Tensor2D, keys: CodebookTensorView): Tensor2D;
  /** `Σ_t p[j, t]·v̂[t]`: p float32 `[rows, values.view.tokens]` → `[rows, headDim]` in the values' channel order. */
  valueMix(p: Tensor2D, values: CodebookTensorView): Tensor2D;
  /** Free any state kept for `owner`. */
  release?(owner: object): void;
  /** Bytes the kernel holds for `owner` (device copies); added to the cache's `memory().kernelBytes`. */
  heldBytes?(owner: object): number;
}

/**
 * The kernels a quantized cache runs, by name. Another package adds a kernel name by declaration merging:
 * `declare module '@xquant/tfjs' { interface KernelTypes { myKernel: MyKernel } }`.
 */
export interface KernelTypes {
  /** Quantized attention over one layer (what `cache.attend` runs). */
  attention: AttentionKernel;
  /** Key scores and value mix over codebook-coded layers (what the `turboquant` cache runs off the host). */
  codebook: CodebookKernel;
}

/** Name of a registered kind of kernel. */
export type KernelName = keyof KernelTypes & string;

/** The kernel registry: one per process (on `globalThis`), keyed `backend/name`. */
const kernels = () => globalRegistry<KernelTypes[KernelName]>('kernels/v1');

/**
 * Use `kernel` for `name` whenever tfjs backend `backend` (e.g. `'webgpu'`) is active; returns the kernel it replaces.
 * Typed errors on a bad backend name or a kernel without its methods.
 */
export function registerKernel<N extends KernelName>(backend: string, name: N, kernel: KernelTypes[N]): KernelTypes[N] | undefined {
  if (typeof backend !== 'string' || backend.length === 0) throw new XqConfigError('E_CONFIG', `backend must be a non-empty string; got ${String(backend)}`);
  if (name === 'attention' && typeof (kernel as AttentionKernel | undefined)?.attend !== 'function') {
    throw new XqConfigError('E_CONFIG', 'an attention kernel must have an attend(layer, queries) method');
  }
  if (name === 'codebook') {
    const k = kernel as Partial<CodebookKernel> | undefined;
    if (typeof k?.keyScores !== 'function' || typeof k.valueMix !== 'function') throw new XqConfigError('E_CONFIG', 'a codebook kernel must have keyScores(q, keys) and valueMix(p, values) methods');
  }
  const prev = findKernel(backend, name);
  kernels().set(`${backend}/${name}`, kernel);
  return prev;
}

/** Remove the `name` kernel of `backend`. */
export function unregisterKernel(backend: string, name: KernelName): void {
  kernels().delete(`${backend}/${name}`);
}

/** The `name` kernel registered for `backend`, or undefined. */
export function findKernel<N extends KernelName>(backend: string | null, name: N): KernelTypes[N] | undefined {
  return backend === null ? undefined : (kernels().get(`${backend}/${name}`) as KernelTypes[N] | undefined);
}

/** Every registered `name` kernel with its backend. */
export function registeredKernels<N extends KernelName>(name: N): { backend: string; kernel: KernelTypes[N] }[] {
  const out: { backend: string; kernel: KernelTypes[N] }[] = [];
  for (const [key, kernel] of kernels()) if (key.endsWith(`/${name}`)) out.push({ backend: key.slice(0, -name.length - 1), kernel: kernel as KernelTypes[N] });
  return out;
}

/**
 * The `name` kernel of `backend`. Throws `XqBackendError('E_KERNEL_MISSING')` naming the backends that have one and
 * how to add it (`registerWebGpuKernels()` of `@xquant/webgpu/kv-cache` on `'webgpu'`).
 */
export function getKernel<N extends KernelName>(backend: string | null, name: N): KernelTypes[N] {
  const k = findKernel(backend, name);
  if (k) return k;
  const have = registeredKernels(name).map((r) => r.backend);
  const hint = backend === 'webgpu' ? "import { registerWebGpuKernels } from '@xquant/webgpu/kv-cache' and call it" : `register one with registerKernel('${String(backend)}', '${name}', kernel)`;
  throw new XqBackendError(
    'E_KERNEL_MISSING',
    `no '${name}' kernel is registered for tfjs backend '${String(backend)}' (registered on: ${have.join(', ') || 'none'}); ${hint}, or use denseAttentionKernel, which dequantizes and runs plain tfjs attention`,
  );
}

/** Use `kernel` for quantized attention whenever tfjs backend `backend` is active. Returns the previous one. */
export function registerAttentionKernel(backend: string, kernel: AttentionKernel): AttentionKernel | undefined {
  return registerKernel(backend, 'attention', kernel);
}

/** Remove the attention kernel registered for `backend`. */
export function unregisterAttentionKernel(backend: string): void {
  unregisterKernel(backend, 'attention');
}

/** Every registered attention kernel (each once): the ones that may hold state for a cache. */
export function allAttentionKernels(): AttentionKernel[] {
  return [...new Set(registeredKernels('attention').map((r) => r.kernel))];
}

/** The attention kernel of `backend` (see {@link getKernel}). */
export function attentionKernelFor(backend: string | null): AttentionKernel {
  return getKernel(backend, 'attention');
}
