import {
  XqConfigError,
  XqShapeError,
  halfToBits,
  type Bits,
  type KvStats,
  type PackedKv,
  type QuantAxis,
} from '@xquant/quant';

/**
 * How per-group scale and zero-point are stored for the GPU.
 * - `'f16'`: one u32 per group, scale in the low 16 bits and zero in the high 16 bits (read with `unpack2x16float`;
 *   needs no `shader-f16`). Exact for blocks quantized with `precision: 'fp16'`.
 * - `'f32'`: two float32 per group (scale, zero), for blocks quantized with `precision: 'fp32'`.
 */
export type MetaFormat = 'f16' | 'f32';

/** Bit widths the WGSL kernels read. */
export type GpuBits = 1 | 2 | 4;

/**
 * A packed K or V block in the layout the kernels read: the codes of `@xquant/quant`'s `PackedKv` unchanged
 * (optionally padded to a token capacity) and scale/zero interleaved per group.
 * Keys (`axis: 'channel'`): `codes` is `[heads, headDim, capacity·bits/32]`, `meta` is `[heads, headDim, capacity/groupSize]` groups.
 * Values (`axis: 'token'`): `codes` is `[heads, capacity, headDim·bits/32]`, `meta` is `[heads, capacity, headDim/groupSize]` groups.
 * Only the first `tokens` tokens are read.
 */
export interface GpuKvLayout {
  axis: QuantAxis;
  heads: number;
  /** Valid tokens. */
  tokens: number;
  /** Tokens the arrays have room for (≥ tokens); rows are strided by it. */
  capacity: number;
  headDim: number;
  bits: GpuBits;
  groupSize: number;
  metaFormat: MetaFormat;
  /** Packed codes, reference bit order (code i of a word in bits [i·bits, (i+1)·bits)). */
  codes: Uint32Array;
  /** `'f16'`: one u32 per group; `'f32'`: two float32 bit patterns per group (scale, zero). */
  meta: Uint32Array;
  /**
   * Keys only: the tokens are stored in blocks of `blockTokens`, one block after another, each block
   * `[heads, headDim, blockTokens·bits/32]` (meta `[heads, headDim, blockTokens/groupSize]`) — the order a cache that
   * appends whole blocks keeps. `capacity` must be a multiple of it. Default: one block (the PackedKv layout).
   */
  blockTokens?: number;
  /** Values only: rows ordered `[capacity, heads]` (token-major) instead of `[heads, capacity]`. */
  tokenMajor?: boolean;
}

/** Where the kernels find token t of head h: key block/row strides, value row strides. @internal */
export interface KvStrides {
  kws: number;
  kgs: number;
  kblk: number;
  kbw: number;
  kbm: number;
  vhs: number;
  vts: number;
}

/** One block holds every token (contiguous layout). @internal */
export const ONE_BLOCK = 0x40000000;

/** Kernel strides of a key or value layout (see {@link GpuKvLayout.blockTokens} / {@link GpuKvLayout.tokenMajor}). @internal */
export function kvStrides(l: Pick<GpuKvLayout, 'axis' | 'heads' | 'capacity' | 'headDim' | 'bits' | 'groupSize' | 'blockTokens' | 'tokenMajor'>): KvStrides {
  if (l.axis === 'channel') {
    const bt = l.blockTokens ?? l.capacity;
    const kws = (bt * l.bits) / 32;
    const kgs = bt / l.groupSize;
    return { kws, kgs, kblk: l.blockTokens ? bt : ONE_BLOCK, kbw: l.heads * l.headDim * kws, kbm: l.heads * l.headDim * kgs, vhs: 0, vts: 0 };
  }
  return { kws: 0, kgs: 0, kblk: ONE_BLOCK, kbw: 0, kbm: 0, vhs: l.tokenMajor ? 1 : l.capacity, vts: l.tokenMajor ? l.heads : 1 };
}

/** Throws unless the block/token-major options of a layout are consistent. @internal */
export function assertStorageOrder(l: Pick<GpuKvLayout, 'axis' | 'capacity' | 'bits' | 'groupSize' | 'blockTokens' | 'tokenMajor'>, what: string): void {
  if (l.blockTokens !== undefined) {
    if (l.axis !== 'channel') throw new XqShapeError(`${what}: blockTokens applies to keys only`);
    const bt = l.blockTokens;
    const unit = Math.max(l.groupSize, 32 / l.bits, 16);
    if (!Number.isInteger(bt) || bt <= 0 || bt % unit !== 0 || l.capacity % bt !== 0) {
      throw new XqShapeError(`${what}: blockTokens must be a positive multiple of ${unit} dividing capacity ${l.capacity}; got ${String(bt)}`);
    }
  }
  if (l.tokenMajor && l.axis !== 'token') throw new XqShapeError(`${what}: tokenMajor applies to values only`);
}

/** Options of {@link toGpuLayout}. */
export interface GpuLayoutOptions {
  /** Default: `'f16'` for fp16 blocks, `'f32'` for fp32 blocks. `'f16'` on an fp32 block rounds scale/zero to fp16. */
  metaFormat?: MetaFormat;
  /** Token capacity of the arrays (default: the block's token count). A multiple of groupSize and of 32/bits. */
  capacity?: number;
}

/** Throws unless `bits`, `groupSize` and `headDim` are ones the kernels support. */
export function assertGpuSupported(bits: number, groupSize: number, headDim: number, what = 'block'): asserts bits is GpuBits {
  if (bits !== 1 && bits !== 2 && bits !== 4) {
    throw new XqConfigError('E_BITS', `${what}: the WebGPU kernels read 1-, 2- or 4-bit codes; got ${String(bits)}`);
  }
  if (!Number.isInteger(groupSize) || groupSize <= 0 || groupSize % 16 !== 0) {
    throw new XqConfigError('E_GROUP_SIZE', `${what}: the WebGPU kernels need a group size that is a multiple of 16; got ${String(groupSize)}`);
  }
  if (!SUPPORTED_HEAD_DIMS.includes(headDim)) {
    throw new XqShapeError(`${what}: the WebGPU kernels support headDim ${SUPPORTED_HEAD_DIMS.join(', ')}; got ${String(headDim)}`);
  }
}

/** Head dimensions the kernels are generated for. */
export const SUPPORTED_HEAD_DIMS: readonly number[] = [16, 32, 64, 128, 256];

function checkCapacity(capacity: number, block: { axis: QuantAxis; tokens: number; bits: number; groupSize: number }, what: string): void {
  if (!Number.isInteger(capacity) || capacity < block.tokens) {
    throw new XqShapeError(`${what}: capacity must be an integer ≥ tokens (${block.tokens}); got ${String(capacity)}`);
  }
  if (block.axis === 'token') return;
  const unit = Math.max(block.groupSize, 32 / block.bits);
  if (capacity % block.groupSize !== 0 || capacity % (32 / block.bits) !== 0) {
    throw new XqShapeError(`${what}: capacity ${capacity} must be a multiple of ${unit} (group size and codes per word)`);
  }
}

/** Interleave scale/zero into the GPU metadata format. */
export function packMeta(scale: Float32Array, zero: Float32Array, format: MetaFormat): Uint32Array {
  if (scale.length !== zero.length) throw new XqShapeError(`scale has ${scale.length} groups but zero has ${zero.length}`);
  if (format === 'f16') {
    const out = new Uint32Array(scale.length);
    for (let i = 0; i < scale.length; i++) out[i] = (halfToBits(scale[i]!) | (halfToBits(zero[i]!) << 16)) >>> 0;
    return out;
  }
  const f = new Float32Array(scale.length * 2);
  for (let i = 0; i < scale.length; i++) {
    f[2 * i] = scale[i]!;
    f[2 * i + 1] = zero[i]!;
  }
  return new Uint32Array(f.buffer);
}

/** u32 words of metadata per group. */
export function metaWordsPerGroup(format: MetaFormat): number {
  return format === 'f16' ? 1 : 2;
}

/** Rows and per-row sizes of a layout: `[rows, wordsPerRow, groupsPerRow]` at the layout's capacity. */
export function layoutDims(l: Pick<GpuKvLayout, 'axis' | 'heads' | 'capacity' | 'headDim' | 'bits' | 'groupSize'>): {
  rows: number;
  wordsPerRow: number;
  groupsPerRow: number;
} {
  if (l.axis === 'channel') {
    return { rows: l.heads * l.headDim, wordsPerRow: (l.capacity * l.bits) / 32, groupsPerRow: l.capacity / l.groupSize };
  }
  return { rows: l.heads * l.capacity, wordsPerRow: (l.headDim * l.bits) / 32, groupsPerRow: l.headDim / l.groupSize };
}

function metaOf(stats: KvStats, format: MetaFormat): Uint32Array {
  return packMeta(stats.scale, stats.zero, format);
}

/**
 * Convert a `PackedKv` block (keys or values) to the GPU layout: the codes are copied as they are (padded to
 * `capacity` tokens when asked) and scale/zero are interleaved per group.
 */
export function toGpuLayout(block: PackedKv, opts: GpuLayoutOptions = {}): GpuKvLayout {
  assertGpuSupported(block.bits, block.groupSize, block.headDim, block.axis === 'channel' ? 'keys' : 'values');
  const metaFormat = opts.metaFormat ?? (block.precision === 'fp32' ? 'f32' : 'f16');
  if (metaFormat !== 'f16' && metaFormat !== 'f32') {
    throw new XqConfigError('E_CONFIG', `metaFormat must be 'f16' or 'f32'; got ${String(metaFormat)}`);
  }
  const capacity = opts.capacity ?? block.tokens;
  checkCapacity(capacity, block, block.axis === 'channel' ? 'keys' : 'values');
  const bits = block.bits as GpuBits;
  const base = { axis: block.axis, heads: block.heads, tokens: block.tokens, capacity, headDim: block.headDim, bits, groupSize: block.groupSize, metaFormat };
  const meta = metaOf(block, metaFormat);
  if (capacity === block.tokens) return { ...base, codes: new Uint32Array(block.packed), meta };
  const mw = metaWordsPerGroup(metaFormat);
  const full = layoutDims(base);
  const codes = new Uint32Array(full.rows * full.wordsPerRow);
  const metaOut = new Uint32Array(full.rows * full.groupsPerRow * mw);
  if (block.axis === 'channel') {
    const w = (block.tokens * bits) / 32;
    const g = (block.tokens / block.groupSize) * mw;
    for (let r = 0; r < full.rows; r++) {
      codes.set(block.packed.subarray(r * w, (r + 1) * w), r * full.wordsPerRow);
      metaOut.set(meta.subarray(r * g, (r + 1) * g), r * full.groupsPerRow * mw);
    }
  } else {
    const rowsPerHead = block.tokens;
    const w = full.wordsPerRow;
    const g = full.groupsPerRow * mw;
    for (let h = 0; h < block.heads; h++) {
      codes.set(block.packed.subarray(h * rowsPerHead * w, (h + 1) * rowsPerHead * w), h * capacity * w);
      metaOut.set(meta.subarray(h * rowsPerHead * g, (h + 1) * rowsPerHead * g), h * capacity * g);
    }
  }
  return { ...base, codes, meta: metaOut };
}

/**
 * Cross-layer sharing in the GPU layout: `stats` (this layer's scale/zero) over `donor`'s codes. Returns the metadata
 * array only; pair it with the donor's codes buffer. Shapes, axis, bits and group size must match.
 */
export function sharedMeta(stats: KvStats, donor: Pick<GpuKvLayout, 'axis' | 'heads' | 'tokens' | 'headDim' | 'bits' | 'groupSize' | 'metaFormat'>): Uint32Array {
  for (const k of ['axis', 'heads', 'tokens', 'headDim', 'bits', 'groupSize'] as const) {
    if (stats[k] !== donor[k]) {
      const msg = `cannot share codes: ${k} differs (own ${String(stats[k])}, donor ${String(donor[k])})`;
      if (k === 'bits') throw new XqConfigError('E_SHARE_BITS_MISMATCH', msg);
      throw new XqShapeError(msg);
    }
  }
  return metaOf(stats, donor.metaFormat);
}

/** Bytes of codes plus metadata the kernels read for the valid tokens of a layout. */
export function packedBytes(l: Pick<GpuKvLayout, 'heads' | 'tokens' | 'headDim' | 'bits' | 'groupSize' | 'metaFormat'>): number {
  const elems = l.heads * l.tokens * l.headDim;
  return (elems * l.bits) / 8 + (elems / l.groupSize) * 4 * metaWordsPerGroup(l.metaFormat);
}

/** The bits value as the kernels' type, after {@link assertGpuSupported}. */
export function gpuBits(bits: Bits): GpuBits {
  if (bits !== 1 && bits !== 2 && bits !== 4) throw new XqConfigError('E_BITS', `the WebGPU kernels read 1-, 2- or 4-bit codes; got ${bits}`);
  return bits;
}
