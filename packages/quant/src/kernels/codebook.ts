import { XqShapeError } from '../errors.js';
import { getKernelBackend, type PackedKernelPath } from './packed-attention.js';
import { prepareCodebook, wasmCodebookApplies, wasmCodebookKeyScores, wasmCodebookValueMix } from './wasm/codebook-runtime.js';

/**
 * One channel range of a codebook row: channels `start … start+length−1` coded with `bits` bits each against the
 * level table `levels` (2^bits entries), all sharing one stored scale per row. Codes are packed LSB first as one bit
 * stream per row starting at bit `bitOffset` (a code may straddle two words, so 3-bit codes cost exactly 3 bits).
 */
export interface CodebookSegment {
  /** First channel. */
  readonly start: number;
  /** Channels. */
  readonly length: number;
  /** Bits per code (1–8). */
  readonly bits: number;
  /** Reconstruction levels, indexed by code (`2^bits` of them). */
  readonly levels: Float32Array;
  /** Bit position of the segment's first code within its row. */
  readonly bitOffset: number;
  /** Which of the row's `scalesPerRow` scales the segment reads (segments may share one). */
  readonly scaleSlot: number;
}

/**
 * Packed K or V storage of a codebook (TurboQuant-style) cache: every (token, head) row holds `headDim` codes and one
 * scale per segment; x̂[c] = scale(segment of c) · levels[code(c)]. Rows are token-major: codes at words
 * `(t·heads + h)·rowWords …`, scales at `(t·heads + h)·scalesPerRow + segment.scaleSlot`, stored as codes of a scale format and
 * read through `scaleTable` (e.g. `scaleDecodeTable('e4m3')`). Keys and values use the same layout (no grouping along
 * tokens), so the kernels are one pair for both. Only the first `tokens` rows are read.
 */
export interface CodebookKvView {
  /** KV heads. */
  readonly heads: number;
  /** Valid tokens. */
  readonly tokens: number;
  /** Channels per head (the sum of the segments' lengths). */
  readonly headDim: number;
  /** Channel ranges, in channel order, covering 0 … headDim−1. */
  readonly segments: readonly CodebookSegment[];
  /** 32-bit words per (token, head) row (≥ ⌈Σ length·bits / 32⌉). */
  readonly rowWords: number;
  /** Scales per (token, head) row. */
  readonly scalesPerRow: number;
  /** Codes, `[tokens, heads, rowWords]`. */
  readonly packed: Uint32Array;
  /** Scale codes, `[tokens, heads, scalesPerRow]`. */
  readonly scales: Uint8Array | Uint16Array;
  /** Value of each scale code. */
  readonly scaleTable: Float32Array;
}

/** Throws {@link XqShapeError} unless the view is consistent. */
export function assertCodebookView(v: CodebookKvView): void {
  const bad = (m: string): never => {
    throw new XqShapeError(`codebook view: ${m}`);
  };
  if (!(v.heads > 0 && Number.isInteger(v.heads)) || !(v.tokens >= 0 && Number.isInteger(v.tokens)) || !(v.headDim > 0)) bad(`heads/tokens/headDim must be positive integers; got ${v.heads}/${v.tokens}/${v.headDim}`);
  let c = 0;
  let bitsEnd = 0;
  for (const s of v.segments) {
    if (s.start !== c) bad(`segments must cover channels in order; segment at ${s.start}, expected ${c}`);
    if (!(s.bits >= 1 && s.bits <= 8 && Number.isInteger(s.bits))) bad(`segment bits must be 1…8; got ${s.bits}`);
    if (s.levels.length !== 1 << s.bits) bad(`segment at ${s.start}: ${s.levels.length} levels for ${s.bits} bits`);
    if (s.bitOffset < bitsEnd) bad(`segment at ${s.start} overlaps the previous one's codes`);
    if (!(Number.isInteger(s.scaleSlot) && s.scaleSlot >= 0 && s.scaleSlot < v.scalesPerRow)) bad(`segment at ${s.start}: scaleSlot ${s.scaleSlot} outside 0…${v.scalesPerRow - 1}`);
    bitsEnd = s.bitOffset + s.length * s.bits;
    c += s.length;
  }
  if (c !== v.headDim) bad(`segments cover ${c} channels; headDim is ${v.headDim}`);
  if (v.rowWords * 32 < bitsEnd) bad(`rowWords ${v.rowWords} holds ${v.rowWords * 32} bits; the codes need ${bitsEnd}`);
  if (v.packed.length < v.tokens * v.heads * v.rowWords) bad(`packed has ${v.packed.length} words; ${v.tokens * v.heads * v.rowWords} needed`);
  if (v.scales.length < v.tokens * v.heads * v.scalesPerRow) bad(`scales has ${v.scales.length} entries; ${v.tokens * v.heads * v.scalesPerRow} needed`);
}

/** The bits of the row at word `base` from bit `pos` on (at least `bits` of them, a code straddling two words joined). */
function bitsAt(w: Uint32Array, base: number, pos: number, bits: number): number {
  const wi = base + (pos >>> 5);
  const sh = pos & 31;
  return sh + bits > 32 ? (w[wi]! >>> sh) | (w[wi + 1]! << (32 - sh)) : w[wi]! >>> sh;
}

/** Decode the codes of one row into `codes` (channel order). */
function decodeRow(v: CodebookKvView, base: number, codes: Uint8Array): void {
  const w = v.packed;
  for (const s of v.segments) {
    const mask = (1 << s.bits) - 1;
    let pos = s.bitOffset;
    for (let c = s.start, end = s.start + s.length; c < end; c++, pos += s.bits) codes[c] = bitsAt(w, base, pos, s.bits) & mask;
  }
}

/** Write `codes` (channel order) into one row of `packed` at word `base` (the row's words are overwritten). */
export function packCodebookRow(segments: readonly CodebookSegment[], rowWords: number, codes: ArrayLike<number>, packed: Uint32Array, base: number): void {
  packed.fill(0, base, base + rowWords);
  for (const s of segments) {
    let pos = s.bitOffset;
    for (let c = s.start, end = s.start + s.length; c < end; c++, pos += s.bits) {
      const code = codes[c]! >>> 0;
      const wi = base + (pos >>> 5);
      const sh = pos & 31;
      packed[wi] = (packed[wi]! | (code << sh)) >>> 0;
      if (sh + s.bits > 32) packed[wi + 1] = (packed[wi + 1]! | (code >>> (32 - sh))) >>> 0;
    }
  }
}

/** The reconstruction x̂ of every stored row, head-major `[heads, tokens, headDim]` (the oracle of the kernels). */
export function codebookDequantize(v: CodebookKvView): Float32Array {
  assertCodebookView(v);
  const { heads: H, tokens: T, headDim: D, segments: S } = v;
  const out = new Float32Array(H * T * D);
  const codes = new Uint8Array(D);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const r = t * H + h;
      decodeRow(v, r * v.rowWords, codes);
      const o = (h * T + t) * D;
      for (let si = 0; si < S.length; si++) {
        const s = S[si]!;
        const sc = v.scaleTable[v.scales[r * v.scalesPerRow + s.scaleSlot]!]!;
        for (let c = s.start; c < s.start + s.length; c++) out[o + c] = sc * s.levels[codes[c]!]!;
      }
    }
  }
  return out;
}

function checkRows(name: string, v: CodebookKvView, rows: number, need: number, got: number, what: string): void {
  if (rows <= 0 || !Number.isInteger(rows) || rows % v.heads !== 0) {
    throw new XqShapeError(`${name}: query rows (${rows}) must be a positive multiple of kvHeads (${v.heads})`);
  }
  if (got < need) throw new XqShapeError(`${name}: ${what} has ${got} elements; ${need} needed`);
}

/** Flat per-segment tables of a view (monomorphic typed arrays for the hot loops). */
interface Flat {
  n: number;
  start: Int32Array;
  end: Int32Array;
  bits: Int32Array;
  off: Int32Array;
  slot: Int32Array;
  /** Level table of segment i at `levelOff[i]`. */
  levelOff: Int32Array;
  levels: Float32Array;
}

/** Flat tables of the segment lists seen so far (a cache keeps one list per layout and calls once per chunk). */
const flatCache = new WeakMap<readonly CodebookSegment[], Flat>();

/** Whether `f` still describes `S` (a list may have been edited in place since it was flattened). */
function flatMatches(f: Flat, S: readonly CodebookSegment[]): boolean {
  if (f.n !== S.length) return false;
  for (let i = 0; i < f.n; i++) {
    const s = S[i]!;
    if (f.start[i] !== s.start || f.end[i] !== s.start + s.length || f.bits[i] !== s.bits || f.off[i] !== s.bitOffset || f.slot[i] !== s.scaleSlot) return false;
    const lo = f.levelOff[i]!;
    const len = (i + 1 < f.n ? f.levelOff[i + 1]! : f.levels.length) - lo;
    if (len !== s.levels.length) return false;
    for (let k = 0; k < len; k++) if (f.levels[lo + k] !== Math.fround(s.levels[k]!)) return false;
  }
  return true;
}

function flatten(v: CodebookKvView): Flat {
  const cached = flatCache.get(v.segments);
  if (cached && flatMatches(cached, v.segments)) return cached;
  const f = flattenNew(v);
  flatCache.set(v.segments, f);
  return f;
}

function flattenNew(v: CodebookKvView): Flat {
  const S = v.segments;
  const n = S.length;
  const f: Flat = { n, start: new Int32Array(n), end: new Int32Array(n), bits: new Int32Array(n), off: new Int32Array(n), slot: new Int32Array(n), levelOff: new Int32Array(n), levels: new Float32Array(S.reduce((a, s) => a + s.levels.length, 0)) };
  let lo = 0;
  S.forEach((s, i) => {
    f.start[i] = s.start;
    f.end[i] = s.start + s.length;
    f.bits[i] = s.bits;
    f.off[i] = s.bitOffset;
    f.slot[i] = s.scaleSlot;
    f.levelOff[i] = lo;
    f.levels.set(s.levels, lo);
    lo += s.levels.length;
  });
  return f;
}

/** Up to 4 consecutive query rows of one KV head: their offsets (a missing row points at `missing`, by default at the first row: computed, never written). */
interface RowQuad {
  n: number;
  o0: number;
  o1: number;
  o2: number;
  o3: number;
}

function quads(per: number, h: number, stride: number, missing?: number): RowQuad[] {
  const out: RowQuad[] = [];
  for (let j0 = 0; j0 < per; j0 += 4) {
    const o = (k: number) => (j0 + k < per ? (h * per + j0 + k) * stride : (missing ?? (h * per + j0) * stride));
    out.push({ n: Math.min(4, per - j0), o0: o(0), o1: o(1), o2: o(2), o3: o(3) });
  }
  return out;
}

/**
 * `Σ_c x_k[c]·level(code_c)` for 4 vectors `x_k` (offsets `o0…o3` into `x`, channel-indexed) over one segment of a
 * row: codes read from the bit stream once (word by word when no code straddles two words), each level used 4 times.
 * Returns the 4 sums in `sum[0…3]`.
 */
function segmentDots(f: Flat, si: number, w: Uint32Array, base: number, x: Float32Array, o0: number, o1: number, o2: number, o3: number, sum: Float64Array): void {
  const b = f.bits[si]!;
  const mask = (1 << b) - 1;
  const lv = f.levels;
  const lo = f.levelOff[si]!;
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let pos = f.off[si]!;
  const end = f.end[si]!;
  let c = f.start[si]!;
  if ((32 % b === 0) && pos % b === 0) {
    // no code straddles a word: one load per word, shifts within it
    while (c < end) {
      let word = w[base + (pos >>> 5)]! >>> (pos & 31);
      const n = Math.min((32 - (pos & 31)) / b, end - c);
      for (let k = 0; k < n; k++, c++, word >>>= b) {
        const l = lv[lo + (word & mask)]!;
        s0 += x[o0 + c]! * l;
        s1 += x[o1 + c]! * l;
        s2 += x[o2 + c]! * l;
        s3 += x[o3 + c]! * l;
      }
      pos += n * b;
    }
  } else {
    for (; c < end; c++, pos += b) {
      const l = lv[lo + (bitsAt(w, base, pos, b) & mask)]!;
      s0 += x[o0 + c]! * l;
      s1 += x[o1 + c]! * l;
      s2 += x[o2 + c]! * l;
      s3 += x[o3 + c]! * l;
    }
  }
  sum[0] = s0;
  sum[1] = s1;
  sum[2] = s2;
  sum[3] = s3;
}

/** Views with fewer tokens run in JS under the `'auto'` backend (staging and table building would cost more). */
const AUTO_MIN_TOKENS = 8;

function useWasm(v: CodebookKvView): boolean {
  const b = getKernelBackend();
  if (b === 'js' || (b === 'auto' && v.tokens < AUTO_MIN_TOKENS)) return false;
  return wasmCodebookApplies(v);
}

/**
 * Compiles the WebAssembly kernels of these codebook layouts (views, or anything with their `segments`) ahead of
 * time, asynchronously. Optional: a layout's kernels are otherwise compiled synchronously on first use, which some
 * browsers refuse on the main thread (the calls then run in JS). Resolves to true when every layout has SIMD kernels;
 * rejects with {@link XqShapeError} for a layout that is not one (segments out of order, bits outside 1…8, …).
 */
export function prepareCodebookKernels(layouts: readonly { readonly segments: readonly CodebookSegment[] }[]): Promise<boolean> {
  try {
    if (!Array.isArray(layouts)) throw new XqShapeError(`prepareCodebookKernels: expected a list of layouts; got ${String(layouts)}`);
    layouts.forEach((l, i) => {
      const segs = (l as { segments?: unknown } | null)?.segments;
      if (!Array.isArray(segs) || segs.length === 0) throw new XqShapeError(`prepareCodebookKernels: layout ${i} has no segments`);
      // the checks of a view, on an empty view of this layout
      const bitsEnd = Math.max(...segs.map((s: CodebookSegment) => s.bitOffset + s.length * s.bits));
      const headDim = segs.reduce((n: number, s: CodebookSegment) => n + s.length, 0);
      const scalesPerRow = Math.max(...segs.map((s: CodebookSegment) => s.scaleSlot)) + 1;
      assertCodebookView({ heads: 1, tokens: 0, headDim, segments: segs, rowWords: Math.ceil(bitsEnd / 32), scalesPerRow, packed: new Uint32Array(0), scales: new Uint8Array(0), scaleTable: new Float32Array(256) });
    });
  } catch (e) {
    return Promise.reject(e);
  }
  return prepareCodebook(layouts);
}

/**
 * Which implementation {@link codebookKeyScores} and {@link codebookValueMix} take for this view and `rows` query
 * rows under the current kernel backend (see `setKernelBackend`): `'wasm-simd'` where the runtime has WebAssembly
 * SIMD and the layout SIMD kernels (any valid layout whose segments split into at most 2048 code units, i.e. every
 * layout up to headDim 2048), else `'js'`. Under `'auto'`, views of fewer than 8 tokens take JS (no slower there);
 * `'wasm'` takes the SIMD kernels for every non-empty view.
 * @throws {@link XqShapeError} for an inconsistent view or a row count that is not a positive multiple of its heads.
 */
export function codebookKernelPath(view: CodebookKvView, rows: number): PackedKernelPath {
  assertCodebookView(view);
  checkRows('codebookKernelPath', view, rows, 0, 0, 'q');
  return useWasm(view) ? 'wasm-simd' : 'js';
}

/**
 * `out[j·rowStride + t] = Σ_c q[j, c]·k̂[kv(j), t, c]` for the `rows` query vectors `q` (`[rows, headDim]`), over
 * codebook-coded keys; query row j reads KV head ⌊j / (rows/heads)⌋ (GQA: rows are grouped by KV head). Per segment
 * of a key row, 4 query rows at a time take `Σ_c q[c]·level(code_c)` from one pass over the codes, times the
 * segment's scale (the row is never dequantized). With WebAssembly SIMD (see `setKernelBackend` and
 * {@link codebookKernelPath}) the codes are read in units of up to 8 bits (e.g. 4 codes at 2 bits): per call, KV head
 * and 4 query rows a table of `Σ q·level` over every value of each unit is built, and a key row costs one f32x4
 * lookup per unit (float32 accumulation; the JS path accumulates in float64).
 * @throws {@link XqShapeError} for an inconsistent view or short arrays.
 */
export function codebookKeyScores(q: Float32Array, rows: number, keys: CodebookKvView, out: Float32Array, rowStride = keys.tokens): Float32Array {
  assertCodebookView(keys);
  const { tokens: T, headDim: D } = keys;
  checkRows('codebookKeyScores', keys, rows, rows * D, q.length, 'q');
  if (rowStride < T) throw new XqShapeError(`codebookKeyScores: rowStride ${rowStride} < tokens ${T}`);
  if (out.length < (rows - 1) * rowStride + T) throw new XqShapeError(`codebookKeyScores: out has ${out.length} elements; ${(rows - 1) * rowStride + T} needed`);
  if (useWasm(keys)) wasmCodebookKeyScores(q, rows, keys, out, rowStride);
  else keyScoresJs(q, rows, keys, out, rowStride);
  return out;
}

function keyScoresJs(q: Float32Array, rows: number, keys: CodebookKvView, out: Float32Array, rowStride: number): void {
  const { heads: H, tokens: T, headDim: D } = keys;
  const per = rows / H;
  const f = flatten(keys);
  const qs = Array.from({ length: H }, (_, h) => quads(per, h, D));
  const w = keys.packed as Uint32Array;
  const spr = keys.scalesPerRow;
  const sum = new Float64Array(4);
  const acc = new Float64Array(4);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const r = t * H + h;
      const base = r * keys.rowWords;
      for (const g of qs[h]!) {
        acc.fill(0);
        for (let si = 0; si < f.n; si++) {
          const sc = keys.scaleTable[keys.scales[r * spr + f.slot[si]!]!]!;
          segmentDots(f, si, w, base, q, g.o0, g.o1, g.o2, g.o3, sum);
          for (let k = 0; k < 4; k++) acc[k] = acc[k]! + sc * sum[k]!;
        }
        const j0 = g.o0 / D;
        for (let k = 0; k < g.n; k++) out[(j0 + k) * rowStride + t] = acc[k]!;
      }
    }
  }
}

/**
 * `out[j·headDim + c] = Σ_t p[j·rowStride + t]·v̂[kv(j), t, c]` over codebook-coded values (`out` is overwritten),
 * the rows grouped by KV head as in {@link codebookKeyScores}. Each value row is decoded once per 4 query rows
 * (codes → level → × scale) and mixed into their float64 accumulators. With WebAssembly SIMD the transposed scheme:
 * every token adds `p·scale` (an f32x4 of 4 query rows) to one accumulator entry per code unit, and the entries are
 * expanded through the levels once at the end (float32 accumulation).
 * @throws {@link XqShapeError} for an inconsistent view or short arrays.
 */
export function codebookValueMix(p: Float32Array, rows: number, values: CodebookKvView, out: Float32Array, rowStride = values.tokens): Float32Array {
  assertCodebookView(values);
  const { tokens: T, headDim: D } = values;
  checkRows('codebookValueMix', values, rows, (rows - 1) * rowStride + T, p.length, 'p');
  if (out.length < rows * D) throw new XqShapeError(`codebookValueMix: out has ${out.length} elements; ${rows * D} needed`);
  if (useWasm(values)) wasmCodebookValueMix(p, rows, values, out, rowStride);
  else valueMixJs(p, rows, values, out, rowStride);
  return out;
}

function valueMixJs(p: Float32Array, rows: number, values: CodebookKvView, out: Float32Array, rowStride: number): void {
  const { heads: H, tokens: T, headDim: D } = values;
  const per = rows / H;
  const f = flatten(values);
  // one accumulator row per query row plus a scratch row for the missing rows of a quad
  const acc = new Float64Array(rows * D + D);
  const qs = Array.from({ length: H }, (_, h) => quads(per, h, D, rows * D));
  const w = values.packed as Uint32Array;
  const spr = values.scalesPerRow;
  const lv = f.levels;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const r = t * H + h;
      const base = r * values.rowWords;
      for (const g of qs[h]!) {
        const j0 = g.o0 / D;
        const p0 = p[j0 * rowStride + t]!;
        const p1 = g.n > 1 ? p[(j0 + 1) * rowStride + t]! : 0;
        const p2 = g.n > 2 ? p[(j0 + 2) * rowStride + t]! : 0;
        const p3 = g.n > 3 ? p[(j0 + 3) * rowStride + t]! : 0;
        if (p0 === 0 && p1 === 0 && p2 === 0 && p3 === 0) continue;
        const { o0, o1, o2, o3 } = g;
        for (let si = 0; si < f.n; si++) {
          const sc = values.scaleTable[values.scales[r * spr + f.slot[si]!]!]!;
          const w0 = p0 * sc, w1 = p1 * sc, w2 = p2 * sc, w3 = p3 * sc;
          const b = f.bits[si]!;
          const mask = (1 << b) - 1;
          const lo = f.levelOff[si]!;
          let pos = f.off[si]!;
          const end = f.end[si]!;
          let c = f.start[si]!;
          if (32 % b === 0 && pos % b === 0) {
            // no code straddles a word: one load per word, shifts within it
            while (c < end) {
              let word = w[base + (pos >>> 5)]! >>> (pos & 31);
              const n = Math.min((32 - (pos & 31)) / b, end - c);
              for (let k = 0; k < n; k++, c++, word >>>= b) {
                const l = lv[lo + (word & mask)]!;
                acc[o0 + c] = acc[o0 + c]! + w0 * l;
                acc[o1 + c] = acc[o1 + c]! + w1 * l;
                acc[o2 + c] = acc[o2 + c]! + w2 * l;
                acc[o3 + c] = acc[o3 + c]! + w3 * l;
              }
              pos += n * b;
            }
          } else {
            for (; c < end; c++, pos += b) {
              const l = lv[lo + (bitsAt(w, base, pos, b) & mask)]!;
              acc[o0 + c] = acc[o0 + c]! + w0 * l;
              acc[o1 + c] = acc[o1 + c]! + w1 * l;
              acc[o2 + c] = acc[o2 + c]! + w2 * l;
              acc[o3 + c] = acc[o3 + c]! + w3 * l;
            }
          }
        }
      }
    }
  }
  for (let i = 0; i < rows * D; i++) out[i] = acc[i]!;
}
