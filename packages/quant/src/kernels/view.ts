import { XqShapeError, type XqConfigError } from '../errors.js';
import { halfToBits } from '../fp16.js';
import type { PackedKv } from '../kv.js';
import { assertBits, type Bits, type QuantAxis } from '../types.js';

/** Stored per-group scales or zero-points: fp16 bit patterns (`Uint16Array`) or float32 values. */
export type PackedMeta = Uint16Array | Float32Array;

/**
 * Where the codes, scale and zero-point of token `t` of KV head `h` of packed K or V storage are: the geometry of a
 * {@link PackedKvView} without its arrays. The CPU kernels read it through {@link PackedKvView}, `@xquant/webgpu`'s
 * GPU layouts extend it, and {@link packedKvStrides} turns it into strides. Codes are packed LSB first: code `i` of a
 * word in bits `[i·bits, (i+1)·bits)`.
 *
 * - Keys (`axis: 'channel'`, grouped along tokens per channel) are stored in blocks of `blockTokens` tokens, block
 *   after block: codes `[capacity/blockTokens][heads, headDim, blockTokens·bits/32]` words, scale/zero
 *   `[capacity/blockTokens][heads, headDim, blockTokens/groupSize]`. Word of (h, t, d), with
 *   {@link PackedKvStrides}: `⌊t/kblk⌋·kbw + (h·headDim + d)·kws + ⌊(t mod kblk)·bits/32⌋`; group:
 *   `⌊t/kblk⌋·kbm + (h·headDim + d)·kgs + ⌊(t mod kblk)/groupSize⌋`.
 * - Values (`axis: 'token'`, grouped along channels per token) are stored in rows of `headDim·bits/32` words and
 *   `headDim/groupSize` groups; row of (h, t) = `h·vhs + t·vts`: head-major `[heads, capacity]` rows by default,
 *   token-major `[capacity, heads]` rows with `tokenMajor` (a cache that appends tokens one at a time).
 *
 * Only the first `tokens` tokens are read. {@link assertPackedKvLayout} checks one.
 */
export interface PackedKvLayout {
  /** `'channel'`: keys; `'token'`: values. */
  readonly axis: QuantAxis;
  /** KV heads. */
  readonly heads: number;
  /** Valid tokens (the first `tokens` of `capacity`). */
  readonly tokens: number;
  /** Tokens the arrays have room for (≥ tokens); default `tokens`. */
  readonly capacity?: number;
  /** Channels per head. */
  readonly headDim: number;
  /** Bits per code. */
  readonly bits: Bits;
  /** Elements per scale/zero-point group: tokens (keys) or channels (values). */
  readonly groupSize: number;
  /** Keys only: tokens per block (a multiple of groupSize and of 32/bits dividing capacity); default: one block. */
  readonly blockTokens?: number;
  /** Values only: rows ordered `[capacity, heads]` instead of `[heads, capacity]`. */
  readonly tokenMajor?: boolean;
}

/**
 * A strided view of packed K or V storage: a {@link PackedKvLayout} and its arrays. Every CPU kernel (JS and
 * WebAssembly SIMD) reads this one description, and `PackedKv` is its simplest case (one block, head-major, float32
 * metadata). Metadata format: a `Uint16Array` holds fp16 bit patterns (what a cache with precision `'fp16'` stores;
 * exact), a `Float32Array` float32 values.
 */
export interface PackedKvView extends PackedKvLayout {
  /** Packed codes. */
  readonly packed: Uint32Array | Int32Array;
  /** Per-group scales (fp16 bit patterns or float32). */
  readonly scale: PackedMeta;
  /** Per-group zero-points, same layout and format as `scale`. */
  readonly zero: PackedMeta;
}

/**
 * Strides of a {@link PackedKvLayout} (32-bit words, groups or rows; the names of the WGSL kernels' parameters):
 * keys use `kws`, `kgs`, `kblk`, `kbw`, `kbm` (values: 0); values use `vhs`, `vts` (keys: 0).
 */
export interface PackedKvStrides {
  /** Words per channel row of a key block (`blockTokens·bits/32`). */
  readonly kws: number;
  /** Groups per channel row of a key block (`blockTokens/groupSize`). */
  readonly kgs: number;
  /** Tokens per key block. */
  readonly kblk: number;
  /** Words per key block (`heads·headDim·kws`). */
  readonly kbw: number;
  /** Groups per key block (`heads·headDim·kgs`). */
  readonly kbm: number;
  /** Value rows between consecutive heads (1 token-major, capacity head-major). */
  readonly vhs: number;
  /** Value rows between consecutive tokens (heads token-major, 1 head-major). */
  readonly vts: number;
}

/** Strides of a layout (see {@link PackedKvLayout}); the layout is not validated. */
export function packedKvStrides(v: PackedKvLayout): PackedKvStrides {
  const cap = v.capacity ?? v.tokens;
  if (v.axis === 'channel') {
    const bt = v.blockTokens ?? cap;
    const kws = (bt * v.bits) / 32;
    const kgs = bt / v.groupSize;
    return { kws, kgs, kblk: bt, kbw: v.heads * v.headDim * kws, kbm: v.heads * v.headDim * kgs, vhs: 0, vts: 0 };
  }
  return { kws: 0, kgs: 0, kblk: 0, kbw: 0, kbm: 0, vhs: v.tokenMajor ? 1 : cap, vts: v.tokenMajor ? v.heads : 1 };
}

/** Options of {@link packedKvSegments}. */
export interface PackedKvSegmentOptions {
  /** Tokens per segment: a key block (a multiple of groupSize and of 32/bits) or a token-major value chunk. */
  segmentTokens: number;
  /** Metadata format of the segments: `'f16'` (fp16 bit patterns, exact for fp16 blocks) or `'f32'`. Default `'f32'`. */
  metaFormat?: 'f16' | 'f32';
}

/**
 * Re-lays a packed block out in a cache's storage order, as a list of segments for the kernels: keys as blocks of
 * `segmentTokens` tokens, values as token-major chunks of `segmentTokens` rows (the last segment may be partly
 * filled). Used to check kernels on the layout a cache keeps.
 * @throws {@link XqShapeError} when `segmentTokens` does not fit the block.
 */
export function packedKvSegments(block: PackedKv, opts: PackedKvSegmentOptions): PackedKvView[] {
  const { heads: H, tokens: T, headDim: D, bits, groupSize: gs, axis } = block;
  const st = opts.segmentTokens;
  const fpw = 32 / bits;
  if (!Number.isInteger(st) || st <= 0 || (axis === 'channel' && (st % gs !== 0 || st % fpw !== 0))) {
    throw new XqShapeError(`segmentTokens must be a positive integer${axis === 'channel' ? ` and a multiple of ${Math.max(gs, fpw)}` : ''}; got ${String(st)}`);
  }
  const meta = (n: number) => (opts.metaFormat === 'f16' ? new Uint16Array(n) : new Float32Array(n));
  const put = (dst: Uint16Array | Float32Array, i: number, v: number) => { dst[i] = dst instanceof Uint16Array ? halfToBits(v) : v; };
  const out: PackedKvView[] = [];
  for (let t0 = 0; t0 < T; t0 += st) {
    const n = Math.min(st, T - t0);
    if (axis === 'channel') {
      const [W, Wb, G, Gb] = [T / fpw, st / fpw, T / gs, st / gs];
      const packed = new Uint32Array(H * D * Wb);
      const scale = meta(H * D * Gb), zero = meta(H * D * Gb);
      for (let r = 0; r < H * D; r++) {
        packed.set(block.packed.subarray(r * W + t0 / fpw, r * W + (t0 + n) / fpw), r * Wb);
        for (let g = 0; g < n / gs; g++) {
          put(scale, r * Gb + g, block.scale[r * G + t0 / gs + g]!);
          put(zero, r * Gb + g, block.zero[r * G + t0 / gs + g]!);
        }
      }
      out.push({ axis, heads: H, tokens: n, capacity: st, headDim: D, bits, groupSize: gs, packed, scale, zero });
    } else {
      const [Wd, G] = [D / fpw, D / gs];
      const packed = new Uint32Array(st * H * Wd);
      const scale = meta(st * H * G), zero = meta(st * H * G);
      for (let t = 0; t < n; t++) {
        for (let h = 0; h < H; h++) {
          const src = h * T + t0 + t, dst = t * H + h;
          packed.set(block.packed.subarray(src * Wd, (src + 1) * Wd), dst * Wd);
          for (let g = 0; g < G; g++) { put(scale, dst * G + g, block.scale[src * G + g]!); put(zero, dst * G + g, block.zero[src * G + g]!); }
        }
      }
      out.push({ axis, heads: H, tokens: n, capacity: st, headDim: D, bits, groupSize: gs, tokenMajor: true, packed, scale, zero });
    }
  }
  return out;
}

/** A validated segment: the view plus its strides and metadata format. @internal */
export interface Segment extends PackedKvStrides {
  readonly view: PackedKvView;
  readonly tokens: number;
  /** Position of its first token in the concatenation of all segments. */
  readonly offset: number;
  /** Metadata are fp16 bit patterns. */
  readonly f16: boolean;
}

/** Checked geometry of a kernel call over one or more segments. @internal */
export interface KernelGeometry {
  readonly kvHeads: number;
  readonly headDim: number;
  readonly bits: Bits;
  readonly groupSize: number;
  /** Tokens of all segments. */
  readonly tokens: number;
  /** Query heads; a multiple of `kvHeads`. */
  readonly qHeads: number;
  /** Query heads per KV head. */
  readonly rep: number;
  /** Row stride of the `[qHeads, tokens]` operand (scores or probabilities). */
  readonly stride: number;
  readonly segments: readonly Segment[];
}

function positiveInt(n: unknown, what: string, fn: string): number {
  if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0) {
    throw new XqShapeError(`${fn}: ${what} must be a positive integer; got ${String(n)}`);
  }
  return n;
}

function checkMeta(fn: string, arr: unknown, k: string, groups: number, layout: () => string): boolean {
  if (!(arr instanceof Float32Array) && !(arr instanceof Uint16Array)) throw new XqShapeError(`${fn}: ${k} is missing (a Float32Array, or a Uint16Array of fp16 bit patterns)`);
  if (arr.length !== groups) throw new XqShapeError(`${fn}: ${k} ${layout()}: expected ${groups} elements, got ${arr.length}`);
  return arr instanceof Uint16Array;
}

/**
 * Throws unless a layout is consistent: positive integer `heads`, `headDim` and `groupSize`, supported `bits`,
 * `0 ≤ tokens ≤ capacity`, `blockTokens` on keys only and `tokenMajor` on values only, and rows (a key block of
 * `blockTokens` or `capacity` tokens, a value row of `headDim` channels) that hold whole groups and whole 32-bit
 * words, key blocks dividing the capacity.
 * @param what - prefixes the message (the caller's name).
 * @throws {@link XqShapeError}, or {@link XqConfigError} `E_BITS` for unsupported bits.
 */
export function assertPackedKvLayout(l: PackedKvLayout, what = 'packed K/V layout'): void {
  if (l === null || typeof l !== 'object') throw new XqShapeError(`${what}: expected a packed K/V layout; got ${String(l)}`);
  const { axis, tokens } = l;
  if (axis !== 'channel' && axis !== 'token') throw new XqShapeError(`${what}: axis must be 'channel' (keys) or 'token' (values); got ${String(axis)}`);
  positiveInt(l.heads, 'heads', what);
  if (typeof tokens !== 'number' || !Number.isInteger(tokens) || tokens < 0) throw new XqShapeError(`${what}: tokens must be a non-negative integer; got ${String(tokens)}`);
  const D = positiveInt(l.headDim, 'headDim', what);
  assertBits(l.bits);
  const gs = positiveInt(l.groupSize, 'groupSize', what);
  const fpw = 32 / l.bits;
  const cap = l.capacity ?? tokens;
  if (!Number.isInteger(cap) || cap < tokens) throw new XqShapeError(`${what}: capacity must be an integer ≥ tokens (${tokens}); got ${String(cap)}`);
  if (axis === 'token' && l.blockTokens !== undefined) throw new XqShapeError(`${what}: blockTokens applies to keys only`);
  if (axis === 'channel' && l.tokenMajor) throw new XqShapeError(`${what}: tokenMajor applies to values only`);
  const len = axis === 'channel' ? l.blockTokens ?? cap : D;
  if (len % gs !== 0 || len % fpw !== 0 || !(len > 0) || (axis === 'channel' && cap % len !== 0)) {
    const name = axis === 'token' ? 'headDim' : l.blockTokens !== undefined ? 'blockTokens' : l.capacity !== undefined ? 'capacity' : 'tokens';
    positiveInt(len, name, what);
    if (len % gs !== 0) throw new XqShapeError(`${what}: groupSize ${gs} does not divide ${name} (${len})`);
    if (len % fpw !== 0) throw new XqShapeError(`${what}: ${name} (${len}) must be a multiple of ${fpw} for ${l.bits}-bit codes`);
    throw new XqShapeError(`${what}: blockTokens (${len}) must divide capacity (${cap})`);
  }
}

function checkView(fn: string, v: PackedKvView, axis: QuantAxis, offset: number): Segment {
  if (v === null || typeof v !== 'object') throw new XqShapeError(`${fn}: expected a packed K/V view; got ${String(v)}`);
  if (v.axis !== axis) {
    const want = axis === 'channel' ? "keys quantized per channel (axis 'channel')" : "values quantized per token (axis 'token')";
    throw new XqShapeError(`${fn}: needs ${want}; got axis '${String(v.axis)}'`);
  }
  assertPackedKvLayout(v, fn);
  const { heads, headDim: D, groupSize: gs, bits } = v;
  const tokens = positiveInt(v.tokens, 'tokens', fn);
  const cap = v.capacity ?? tokens;
  const words = (heads * cap * D * bits) / 32;
  const groups = (heads * cap * D) / gs;
  const layout = () => (axis === 'channel' ? '[blocks][heads, headDim, ·]' : v.tokenMajor ? '[capacity, heads, ·]' : '[heads, capacity, ·]');
  if (!(v.packed instanceof Uint32Array) && !(v.packed instanceof Int32Array)) throw new XqShapeError(`${fn}: packed must be a Uint32Array or Int32Array`);
  if (v.packed.length !== words) throw new XqShapeError(`${fn}: packed ${layout()}: expected ${words} words, got ${v.packed.length}`);
  const f16 = checkMeta(fn, v.scale, 'scale', groups, layout);
  if (checkMeta(fn, v.zero, 'zero', groups, layout) !== f16) throw new XqShapeError(`${fn}: scale and zero must have the same format`);
  const st = packedKvStrides(v);
  return { kws: st.kws, kgs: st.kgs, kblk: st.kblk, kbw: st.kbw, kbm: st.kbm, vhs: st.vhs, vts: st.vts, view: v, tokens, offset, f16 };
}

/**
 * Validates one view or a list of views (segments, concatenated along tokens) and the `[qHeads, ·]` operand `a`
 * (`q` `[qHeads, headDim]` for keys, `p` `[qHeads, stride]` for values) and `out`. Throws {@link XqShapeError}.
 * @internal
 */
export function checkCall(
  fn: string,
  views: PackedKvView | readonly PackedKvView[],
  axis: QuantAxis,
  a: ArrayLike<number>,
  aName: string,
  out: ArrayLike<number> | undefined,
  rowStride: number | undefined,
): KernelGeometry {
  const list: readonly PackedKvView[] = Array.isArray(views) ? views : [views as PackedKvView];
  if (list.length === 0) throw new XqShapeError(`${fn}: needs at least one packed K/V view`);
  const segments: Segment[] = [];
  let tokens = 0;
  for (const v of list) {
    const f = segments[0]?.view;
    for (const k of ['heads', 'headDim', 'bits', 'groupSize'] as const) {
      if (f && v && v[k] !== f[k]) throw new XqShapeError(`${fn}: segment ${segments.length} has ${k} ${v[k]}, segment 0 has ${k} ${f[k]}`);
    }
    const s = checkView(fn, v, axis, tokens);
    segments.push(s);
    tokens += s.tokens;
  }
  const { heads: kvHeads, headDim, bits, groupSize } = list[0]!;
  const stride = rowStride ?? tokens;
  if (!Number.isInteger(stride) || stride < tokens) throw new XqShapeError(`${fn}: rowStride must be an integer ≥ tokens (${tokens}); got ${String(stride)}`);
  const per = axis === 'channel' ? headDim : stride;
  if (!a || typeof a.length !== 'number') throw new XqShapeError(`${fn}: ${aName} must be an array of numbers`);
  if (a.length === 0 || a.length % per !== 0) {
    throw new XqShapeError(`${fn}: ${aName} must be [qHeads, ${per}] (a positive multiple of ${per} elements); got ${a.length}`);
  }
  const qHeads = a.length / per;
  if (qHeads % kvHeads !== 0) throw new XqShapeError(`${fn}: ${qHeads} query heads is not a multiple of ${kvHeads} KV heads (GQA)`);
  const cols = axis === 'channel' ? stride : headDim;
  if (out !== undefined && out.length !== qHeads * cols) {
    throw new XqShapeError(`${fn}: out must have ${qHeads * cols} elements ([${qHeads}, ${cols}]); got ${out.length}`);
  }
  return { kvHeads, headDim, bits, groupSize, tokens, qHeads, rep: qHeads / kvHeads, stride, segments };
}

/** Validates the dense baselines' shapes: `x` is `[kvHeads, tokens, headDim]`, `a` is `[qHeads, per]`. @internal */
export function checkDense(
  fn: string,
  a: ArrayLike<number>,
  aName: string,
  x: ArrayLike<number>,
  xName: string,
  kvHeads: number,
  headDim: number,
  axis: QuantAxis,
  out: ArrayLike<number> | undefined,
): { tokens: number; qHeads: number; rep: number } {
  positiveInt(kvHeads, 'kvHeads', fn);
  positiveInt(headDim, 'headDim', fn);
  if (!x || typeof x.length !== 'number' || x.length === 0 || x.length % (kvHeads * headDim) !== 0) {
    throw new XqShapeError(`${fn}: ${xName} must be [kvHeads=${kvHeads}, tokens, headDim=${headDim}] with tokens ≥ 1; got ${x?.length} elements`);
  }
  const tokens = x.length / (kvHeads * headDim);
  const per = axis === 'channel' ? headDim : tokens;
  if (!a || typeof a.length !== 'number' || a.length === 0 || a.length % per !== 0) {
    throw new XqShapeError(`${fn}: ${aName} must be [qHeads, ${per}]; got ${a?.length} elements`);
  }
  const qHeads = a.length / per;
  if (qHeads % kvHeads !== 0) throw new XqShapeError(`${fn}: ${qHeads} query heads is not a multiple of ${kvHeads} KV heads (GQA)`);
  const outLen = qHeads * (axis === 'channel' ? tokens : headDim);
  if (out !== undefined && out.length !== outLen) throw new XqShapeError(`${fn}: out must have ${outLen} elements; got ${out.length}`);
  return { tokens, qHeads, rep: qHeads / kvHeads };
}

/** Splits `rep` query heads into chunks of 4, 2 and 1 (the widths the kernels specialize). @internal */
export function headChunks(rep: number): Array<[start: number, width: 1 | 2 | 4]> {
  const chunks: Array<[number, 1 | 2 | 4]> = [];
  let h = 0;
  for (; h + 4 <= rep; h += 4) chunks.push([h, 4]);
  if (h + 2 <= rep) {
    chunks.push([h, 2]);
    h += 2;
  }
  if (h < rep) chunks.push([h, 1]);
  return chunks;
}
