/**
 * @packageDocumentation
 * The WebGPU attention kernel of `@xquant/tfjs`'s quantized caches: the WGSL kernels of this package read the packed
 * codes on the device. `registerWebGpuKernels()` registers it for the tfjs `'webgpu'` backend (explicit and idempotent;
 * `@xquant/tfjs` itself knows no WebGPU code).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor3D } from '@tensorflow/tfjs-core';
import {
  denseAttentionKernel,
  findKernel,
  registerAttentionKernel,
  registerKernel,
  type AttentionKernel,
  type QuantizedLayerView,
  type ValueChunkView,
} from '@xquant/tfjs';
import { webgpuCodebookKernel } from './codebook-tfjs.js';
import { SUPPORTED_HEAD_DIMS } from './layout.js';
import { createWebGpuAttentionKernels, type TfPackedKv, type TfResidual, type WebGpuAttentionKernels, type WebGpuBackendLike } from './tfjs.js';

/** How often each path of {@link webgpuPackedAttentionKernel} ran (process-wide, since load or the last reset). */
export interface WebGpuPackedCounts {
  /** Decode steps (one query position) run by the WGSL packed-code kernel. */
  packed: number;
  /** Calls with several query positions (prefill), run by the dense-upload kernel (the WGSL kernel has no causal mask). */
  prefill: number;
  /** Calls on layers the WGSL kernel cannot read (e.g. 8-bit codes), run by the dense-upload kernel. */
  fallback: number;
  /** Why layers fell back, with how many calls each. */
  fallbackReasons: Record<string, number>;
}

/** The WebGPU packed kernel, with counters of which path ran. */
export interface WebGpuPackedAttentionKernel extends AttentionKernel {
  /** Calls per path since load or {@link WebGpuPackedAttentionKernel.resetCounts}. */
  readonly counts: Readonly<WebGpuPackedCounts>;
  /** Zero the counters. */
  resetCounts(): void;
  /** Why the WGSL kernel cannot serve a decode step of `layer` (null: it can). */
  unsupportedReason(layer: QuantizedLayerView): string | null;
}

/**
 * Device copy of one layer's quantized codes/metadata in the WGSL kernels' layouts: the key blocks
 * (`[blocks, kvHeads, headDim, R·bits/32]`) and the full value chunks (`[chunks·C, kvHeads, headDim·bits/32]`,
 * token-major). They are uploaded again only when a key block is flushed (every R tokens) or a value chunk fills
 * (every C tokens); the tokens of the partly filled value chunk are decoded on the host each step and sent with the
 * float32 residual (fewer than C tokens).
 */
interface Mirror {
  generation: number;
  keyBlocks: number;
  keyCodes: Tensor | null;
  keyMeta: Tensor | null;
  valueChunks: number;
  valueTokens: number;
  valueCodes: Tensor | null;
  valueMeta: Tensor | null;
}

const mirrors = new WeakMap<object, Map<number, Mirror>>();
const providers = new WeakMap<object, WebGpuAttentionKernels>();

const counts: WebGpuPackedCounts = { packed: 0, prefill: 0, fallback: 0, fallbackReasons: {} };
const warned = new Set<string>();

function mirrorTensors(m: Mirror): Tensor[] {
  return [m.keyCodes, m.keyMeta, m.valueCodes, m.valueMeta].filter((t): t is Tensor => t !== null);
}

function kernelsFor(backend: object): WebGpuAttentionKernels {
  let k = providers.get(backend);
  if (!k) providers.set(backend, (k = createWebGpuAttentionKernels(backend as WebGpuBackendLike)));
  return k;
}

/** Interleave stored scale/zero into the kernels' metadata: one u32 `(zero << 16) | scale` (fp16) or float32 pairs. */
function interleave(v: QuantizedLayerView, scale: ArrayLike<number>, zero: ArrayLike<number>, n: number): Int32Array | Float32Array {
  if (v.precision === 'fp16') {
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = scale[i]! | (zero[i]! << 16);
    return out;
  }
  const out = new Float32Array(2 * n);
  for (let i = 0; i < n; i++) {
    out[2 * i] = scale[i]!;
    out[2 * i + 1] = zero[i]!;
  }
  return out;
}

function metaTensor(v: QuantizedLayerView, data: Int32Array | Float32Array, lead: number[]): Tensor {
  return data instanceof Int32Array ? tf.tensor(data, lead, 'int32') : tf.tensor(data, [...lead, 2], 'float32');
}

/**
 * Replace `t` by `next`. (Not `tf.concat` of the old tensor and the new part: tfjs-backend-webgpu's int32 concat does
 * not keep all 32 bits of the packed words.)
 */
function replace(t: Tensor | null, next: Tensor): Tensor {
  t?.dispose();
  return next;
}

function sync(v: QuantizedLayerView): Mirror {
  let layers = mirrors.get(v.owner);
  if (!layers) mirrors.set(v.owner, (layers = new Map()));
  let m = layers.get(v.layer);
  const full = v.valueChunks.findIndex((c) => c.filled < c.capacity);
  const sealed = full < 0 ? v.valueChunks.length : full;
  if (!m || m.generation !== v.generation || m.keyBlocks > v.keyBlocks.length || m.valueChunks > sealed) {
    if (m) tf.dispose(mirrorTensors(m));
    m = { generation: v.generation, keyBlocks: 0, keyCodes: null, keyMeta: null, valueChunks: 0, valueTokens: 0, valueCodes: null, valueMeta: null };
    layers.set(v.layer, m);
  }
  const { kvHeads: H, headDim: D, keyGroupSize: gs, valueGroupSize: gv } = v;
  if (v.keyBits !== 16 && v.keyBlocks.length > m.keyBlocks) {
    const fresh = v.keyBlocks;
    const R = fresh[0]!.tokens;
    const w = (R * v.keyBits) / 32;
    const g = R / gs;
    const codes = new Int32Array(fresh.length * H * D * w);
    const metaN = H * D * g;
    const scale = new Float32Array(fresh.length * metaN);
    const zero = new Float32Array(fresh.length * metaN);
    fresh.forEach((b, i) => {
      codes.set(new Int32Array(b.packed.buffer, b.packed.byteOffset, H * D * w), i * H * D * w);
      scale.set(b.scale.subarray(0, metaN), i * metaN);
      zero.set(b.zero.subarray(0, metaN), i * metaN);
    });
    m.keyCodes = replace(m.keyCodes, tf.tensor(codes, [fresh.length, H, D, w], 'int32'));
    m.keyMeta = replace(m.keyMeta, metaTensor(v, interleave(v, scale, zero, fresh.length * metaN), [fresh.length, H, D, g]));
    m.keyBlocks = v.keyBlocks.length;
  }
  if (v.valueBits !== 16 && sealed > m.valueChunks) {
    const fresh = v.valueChunks.slice(0, sealed);
    const w = (D * v.valueBits) / 32;
    const g = D / gv;
    const rows = fresh.reduce((s, c) => s + c.capacity, 0);
    const codes = new Int32Array(rows * H * w);
    const scale = new Float32Array(rows * H * g);
    const zero = new Float32Array(rows * H * g);
    let r = 0;
    for (const c of fresh) {
      codes.set(new Int32Array(c.packed.buffer, c.packed.byteOffset, c.capacity * H * w), r * H * w);
      scale.set(c.scale.subarray(0, c.capacity * H * g), r * H * g);
      zero.set(c.zero.subarray(0, c.capacity * H * g), r * H * g);
      r += c.capacity;
    }
    m.valueCodes = replace(m.valueCodes, tf.tensor(codes, [rows, H, w], 'int32'));
    m.valueMeta = replace(m.valueMeta, metaTensor(v, interleave(v, scale, zero, rows * H * g), [rows, H, g]));
    m.valueChunks = sealed;
    m.valueTokens = rows;
  }
  return m;
}

/** Values of a partly filled chunk, token-major `[filled, kvHeads, headDim]`: `code·scale + zero` in float32 (as the kernels compute). */
function decodeChunk(v: QuantizedLayerView, c: ValueChunkView): Float32Array {
  const { kvHeads: H, headDim: D, valueGroupSize: gs } = v;
  const bits = v.valueBits as number;
  const w = (D * bits) / 32;
  const G = D / gs;
  const n = c.filled * H;
  const scale = v.decodeMeta(c.scale, 0, n * G);
  const zero = v.decodeMeta(c.zero, 0, n * G);
  const out = new Float32Array(n * D);
  const mask = (1 << bits) - 1;
  const perWord = 32 / bits;
  for (let row = 0; row < n; row++) {
    for (let d = 0; d < D; d++) {
      const code = (c.packed[row * w + Math.floor(d / perWord)]! >>> ((d % perWord) * bits)) & mask;
      const gi = row * G + Math.floor(d / gs);
      out[row * D + d] = Math.fround(Math.fround(code * scale[gi]!) + zero[gi]!);
    }
  }
  return out;
}

function unsupportedReason(v: QuantizedLayerView): string | null {
  for (const [what, bits] of [['key', v.keyBits], ['value', v.valueBits]] as const) {
    if (bits !== 16 && bits !== 1 && bits !== 2 && bits !== 4) return `${bits}-bit ${what} codes (the WGSL kernels read 1/2/4 bits)`;
  }
  if (v.keyBits !== 16 && v.keyGroupSize % 16 !== 0) return `key group size ${v.keyGroupSize} (the WGSL kernels need a multiple of 16)`;
  // Any value group size that is a multiple of 16 and divides headDim works (each thread reads 16 channels of one group,
  // so a group as wide as headDim, e.g. 64, means one scale/zero per token and head); others take the dense path.
  if (v.valueBits !== 16 && v.valueGroupSize % 16 !== 0) return `value group size ${v.valueGroupSize} (the WGSL kernels need a multiple of 16)`;
  if (!SUPPORTED_HEAD_DIMS.includes(v.headDim)) return `headDim ${v.headDim} (the WGSL kernels support ${SUPPORTED_HEAD_DIMS.join(', ')})`;
  return null;
}

function fallback(reason: string, v: QuantizedLayerView, queries: Tensor3D): Tensor3D {
  counts.fallback++;
  counts.fallbackReasons[reason] = (counts.fallbackReasons[reason] ?? 0) + 1;
  if (!warned.has(reason)) {
    warned.add(reason);
    console.warn(`@xquant/webgpu: WebGPU packed attention cannot read ${reason}; using the dense-upload kernel`);
  }
  return denseAttentionKernel.attend(v, queries);
}

/**
 * Quantized attention on the tfjs WebGPU backend with the WGSL kernels of `@xquant/webgpu`, which read the 1/2/4-bit
 * codes in place. Each layer's codes and interleaved scale/zero are mirrored on the device and refreshed only when a key
 * block is flushed or a value chunk fills (reported as `memory().kernelBytes`); other decode steps upload only the
 * float32 residual and the tokens of the current, partly filled value chunk. Decode steps (one query position)
 * run the fused kernel (keys and values with their own group sizes); prefill (several positions, causal) and layers it
 * cannot read (8-bit codes, key or value group sizes that are not multiples of 16, other head sizes) run `denseAttentionKernel` of `@xquant/tfjs`, counted in `counts` and warned once per reason.
 */
export const webgpuPackedAttentionKernel: WebGpuPackedAttentionKernel = {
  id: 'webgpu-packed',
  counts,
  resetCounts(): void {
    counts.packed = 0;
    counts.prefill = 0;
    counts.fallback = 0;
    counts.fallbackReasons = {};
  },
  unsupportedReason,
  attend(v: QuantizedLayerView, queries: Tensor3D): Tensor3D {
    const reason = unsupportedReason(v);
    if (reason !== null) return fallback(reason, v, queries);
    const [qHeads, nq, D] = queries.shape;
    if (nq !== 1) {
      counts.prefill++;
      return denseAttentionKernel.attend(v, queries);
    }
    const m = sync(v);
    const kernels = kernelsFor(tf.backend());
    const H = v.kvHeads;
    const base = { heads: H, headDim: D, metaFormat: v.precision === 'fp16' ? ('f16' as const) : ('f32' as const) };
    const gk = v.keyGroupSize;
    const gv = v.valueGroupSize;
    // Not in tf.tidy: the kernels keep a small helper tensor created on first use.
    const owned: Tensor[] = [];
    const own = <T extends Tensor>(t: T): T => (owned.push(t), t);
    const metaOf = (lead: number[]) => {
      const n = lead.reduce((x, y) => x * y, 1);
      return own(base.metaFormat === 'f16' ? tf.tensor(new Int32Array(n), lead, 'int32') : tf.tensor(new Float32Array(2 * n), [...lead, 2], 'float32'));
    };
    const zeros = (lead: number[]) => own(tf.tensor(new Int32Array(lead.reduce((x, y) => x * y, 1)), lead, 'int32'));
    // Layers in full precision, or before their first flush, pass an empty block of the layer's bit width: one
    // shader per layer configuration (tfjs compiles a program per variant, slow on software adapters).
    const keys = (): TfPackedKv | undefined => {
      if (v.keyBits === 16) return undefined;
      const bits = v.keyBits as 1 | 2 | 4;
      if (m.keyCodes && m.keyMeta) {
        const R = v.keyBlocks[0]!.tokens;
        return { ...base, groupSize: gk, axis: 'channel', bits, tokens: v.quantizedKeys, capacity: v.quantizedKeys, blockTokens: R, codes: m.keyCodes, meta: m.keyMeta };
      }
      // the smallest block of whole groups and whole 32-bit words (e.g. 96 tokens for 1-bit codes in groups of 48)
      let cap = gk;
      while (cap % (32 / bits) !== 0) cap += gk;
      return { ...base, groupSize: gk, axis: 'channel', bits, tokens: 0, capacity: cap, blockTokens: cap, codes: zeros([1, H, D, (cap * bits) / 32]), meta: metaOf([1, H, D, cap / gk]) };
    };
    const values = (): TfPackedKv | undefined => {
      if (v.valueBits === 16) return undefined;
      const bits = v.valueBits as 1 | 2 | 4;
      if (m.valueCodes && m.valueMeta) {
        return { ...base, groupSize: gv, axis: 'token', bits, tokens: m.valueTokens, capacity: m.valueTokens, tokenMajor: true, codes: m.valueCodes, meta: m.valueMeta };
      }
      return { ...base, groupSize: gv, axis: 'token', bits, tokens: 0, capacity: 1, tokenMajor: true, codes: zeros([1, H, (D * bits) / 32]), meta: metaOf([1, H, D / gv]) };
    };
    const rowSize = H * D;
    const rk = v.residualKeys.length / rowSize;
    const partial = v.valueBits !== 16 ? v.valueChunks.slice(m.valueChunks).filter((c) => c.filled > 0) : [];
    const pTokens = partial.reduce((s, c) => s + c.filled, 0);
    const rv = pTokens + v.residualValues.length / rowSize;
    let resValues: Float32Array = v.residualValues;
    if (pTokens > 0) {
      resValues = new Float32Array(rv * rowSize);
      let o = 0;
      for (const c of partial) {
        const d = decodeChunk(v, c);
        resValues.set(d, o);
        o += d.length;
      }
      resValues.set(v.residualValues, o);
    }
    try {
      // padded to a multiple of 16 rows: fewer distinct input shapes (and compiled variants)
      const residual = (data: Float32Array, n: number): TfResidual => {
        const cap = Math.ceil(n / 16) * 16;
        const padded = cap === n ? data : new Float32Array(cap * rowSize);
        if (padded !== data) padded.set(data);
        return { tensor: own(tf.tensor3d(padded, [cap, H, D])), tokens: n, tokenMajor: true };
      };
      const k = keys();
      const vv = values();
      const out = own(
        kernels.decodeAttention({
          q: own(tf.reshape(queries, [qHeads, D])),
          ...(k ? { keys: k } : {}),
          ...(vv ? { values: vv } : {}),
          ...(rk > 0 ? { residualKeys: residual(v.residualKeys, rk) } : {}),
          ...(rv > 0 ? { residualValues: residual(resValues, rv) } : {}),
          kvHeads: H,
        }),
      );
      counts.packed++;
      return tf.reshape(out, [qHeads, 1, D]) as Tensor3D;
    } finally {
      tf.dispose(owned);
    }
  },
  release(owner: object): void {
    const layers = mirrors.get(owner);
    if (layers) for (const m of layers.values()) tf.dispose(mirrorTensors(m));
    mirrors.delete(owner);
    denseAttentionKernel.release?.(owner);
  },
  heldBytes(owner: object): number {
    // the dense-upload fallback's device copies too (it need not be registered itself)
    let b = denseAttentionKernel.heldBytes?.(owner) ?? 0;
    for (const m of mirrors.get(owner)?.values() ?? []) for (const t of mirrorTensors(m)) b += 4 * t.size;
    return b;
  },
};

export { webgpuCodebookKernel, type WebGpuCodebookKernel, type WebGpuCodebookCounts } from './codebook-tfjs.js';

/**
 * Register {@link webgpuPackedAttentionKernel} as the attention kernel of the tfjs `'webgpu'` backend, so quantized
 * caches of `@xquant/tfjs` run the WGSL packed-code kernels there, and {@link webgpuCodebookKernel} as its codebook
 * kernel, so the `turboquant` cache attends on the GPU too. Idempotent; kernels registered for `'webgpu'` before are
 * kept unless `replace` is set. Returns the attention kernel now registered.
 * @example
 * import { registerWebGpuKernels } from '@xquant/webgpu/kv-cache';
 * registerWebGpuKernels();
 * await selectBackend({ prefer: 'webgpu' });
 */
export function registerWebGpuKernels(options: { replace?: boolean } = {}): AttentionKernel {
  if (!findKernel('webgpu', 'codebook') || options.replace) registerKernel('webgpu', 'codebook', webgpuCodebookKernel);
  const current = findKernel('webgpu', 'attention');
  if (current && !options.replace) return current;
  registerAttentionKernel('webgpu', webgpuPackedAttentionKernel);
  return webgpuPackedAttentionKernel;
}
