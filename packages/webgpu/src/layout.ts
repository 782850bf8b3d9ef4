import {
  XqConfigError,
  XqShapeError,
  assertPackedKvLayout,
  halfToBits,
  packedKvStrides,
  type Bits,
  type KvStats,
  type PackedKv,
  type PackedKvLayout,
  type PackedKvStrides,
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
 * The geometry the kernels read: `@xquant/quant`'s {@link @xquant/quant!PackedKvLayout} (key blocks of `blockTokens`,
 * head-major or `tokenMajor` value rows, the first `tokens` of `capacity` valid), with an explicit capacity, the bit
 * widths the WGSL kernels read and the metadata format. {@link GpuKvLayout}, `GpuKv` and `TfPackedKv` add the arrays,
 * buffers or tensors.
 */
export interface GpuKvGeometry extends Omit<PackedKvLayout, 'bits' | 'capacity'> {
  /** Bits per code. */
  readonly bits: GpuBits;
  /** Tokens the arrays have room for (≥ tokens); rows are strided by it. */
  readonly capacity: number;
  /** How scale and zero-point are stored. */
  readonly metaFormat: MetaFormat;
}

/**
 * A packed K or V block in the layout the kernels read: the codes of `@xquant/quant`'s `PackedKv` unchanged
 * (optionally padded to a token capacity, or in a cache's key blocks / token-major value rows) and scale/zero
 * interleaved per group. Default storage order: keys `codes` `[heads, headDim, capacity·bits/32]`, `meta`
 * `[heads, headDim, capacity/groupSize]` groups; values `codes` `[heads, capacity, headDim·bits/32]`, `meta`
 * `[heads, capacity, headDim/groupSize]` groups.
 */
export interface GpuKvLayout extends GpuKvGeometry {
  /** Packed codes, reference bit order (code i of a word in bits [i·bits, (i+1)·bits)). */
  readonly codes: Uint32Array;
  /** `'f16'`: one u32 per group; `'f32'`: two float32 bit patterns per group (scale, zero). */
  readonly meta: Uint32Array;
}

/**
 * `kblk` of a key layout stored as one block (no `blockTokens`), and of no keys: larger than any token index, so the
 * kernels' block index `⌊t/kblk⌋` is 0 and never a division by zero (an empty block has capacity 0). @internal
 */
export const ONE_BLOCK = 0x40000000;

/**
 * The kernels' strides of a layout: `@xquant/quant`'s {@link @xquant/quant!packedKvStrides}, with {@link ONE_BLOCK}
 * for a single key block; all zero (and `ONE_BLOCK`) when there is no layout. @internal
 */
export function kvStrides(l: GpuKvGeometry | undefined): PackedKvStrides {
  if (!l) return { kws: 0, kgs: 0, kblk: ONE_BLOCK, kbw: 0, kbm: 0, vhs: 0, vts: 0 };
  const s = packedKvStrides(l);
  return l.axis === 'channel' && l.blockTokens === undefined ? { ...s, kblk: ONE_BLOCK } : s;
}

/**
 * Throws unless the kernels can read a layout whose arrays have `codes` words and `meta` metadata elements:
 * {@link assertGpuSupported}, a consistent storage order ({@link @xquant/quant!assertPackedKvLayout}) and the array
 * lengths it implies. @internal
 */
export function assertGpuLayout(l: GpuKvGeometry, codes: number, meta: number, what: string = l.axis === 'channel' ? 'keys' : 'values'): void {
  assertGpuSupported(l.bits, l.groupSize, l.headDim, what);
  assertPackedKvLayout(l, what);
  const d = layoutDims(l);
  const want = { codes: d.rows * d.wordsPerRow, meta: d.rows * d.groupsPerRow * metaWordsPerGroup(l.metaFormat) };
  if (codes !== want.codes) throw new XqShapeError(`${what}.codes: expected ${want.codes} words, got ${codes}`);
  if (meta !== want.meta) throw new XqShapeError(`${what}.meta: expected ${want.meta} elements, got ${meta}`);
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
export function layoutDims(l: Pick<GpuKvGeometry, 'axis' | 'heads' | 'capacity' | 'headDim' | 'bits' | 'groupSize'>): {
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
  assertPackedKvLayout({ ...block, capacity }, block.axis === 'channel' ? 'keys' : 'values');
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
export function sharedMeta(stats: KvStats, donor: Pick<GpuKvGeometry, 'axis' | 'heads' | 'tokens' | 'headDim' | 'bits' | 'groupSize' | 'metaFormat'>): Uint32Array {
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
export function packedBytes(l: Pick<GpuKvGeometry, 'heads' | 'tokens' | 'headDim' | 'bits' | 'groupSize' | 'metaFormat'>): number {
  const elems = l.heads * l.tokens * l.headDim;
  return (elems * l.bits) / 8 + (elems / l.groupSize) * 4 * metaWordsPerGroup(l.metaFormat);
}

/** The bits value as the kernels' type, after {@link assertGpuSupported}. */
export function gpuBits(bits: Bits): GpuBits {
  if (bits !== 1 && bits !== 2 && bits !== 4) throw new XqConfigError('E_BITS', `the WebGPU kernels read 1-, 2- or 4-bit codes; got ${bits}`);
  return bits;
}
