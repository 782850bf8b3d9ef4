import * as tf from '@tensorflow/tfjs-core';
import type { Tensor2D, Tensor3D } from '@tensorflow/tfjs-core';
import {
  XqConfigError,
  XqShapeError,
  XqStateError,
  assertFinite,
  assertScaleFormat,
  codebookDequantize,
  codebookEncode,
  codebookKeyScores,
  codebookValueMix,
  encodeScale,
  lloydMaxCodebook,
  packCodebookRow,
  scaleDecodeTable,
  scaleFormatBits,
  type CodebookKvView,
  type CodebookSegment,
  type ScaleFormat,
} from '@xquant/quant';
import { plainAttention } from '../attention.js';
import { findKernel, registeredKernels, type CodebookKernel, type CodebookTensorView } from '../kernels/registry.js';
import { DEFAULT_RESIDUAL_LENGTH } from '../config.js';
import { tokenMajorToHeadMajor, headMajorToTokenMajor } from '../quantized/store.js';
import type { KvCache, KvCacheShape, KvCacheStrategy, KvMemoryReport } from '../types.js';
import { OpQueue, checkAlive, checkKv, checkLayer, checkQueries, validateCacheShape } from '../validate.js';
import { randomSigns, walshHadamard } from './rotated.js';

/** Code widths a tensor of the {@link turboquant} cache may have: whole bits, or half bits (outlier split). */
export const TURBOQUANT_BITS: readonly number[] = [1, 1.5, 2, 2.5, 3, 3.5, 4];

/**
 * Options of the {@link turboquant} strategy (plain JSON, so it fits a preset file).
 *
 * Defaults are the TurboQuant paper's MSE quantizer (arXiv 2504.19874, §3.1, no QJL stage): seeded Hadamard × random
 * signs rotation, fp16 norm per vector, Lloyd-Max codebook of the rotated coordinate's distribution. The other
 * settings are this project's dimensions on top of it (issue 14): 8-bit scales, least-squares scales, no rotation.
 */
export interface TurboQuantOptions {
  /** Newest tokens kept in full precision (keys and values; both are quantized per token beyond it). Default 128. */
  residualLength?: number;
  /** Code bits of keys and values (both) unless `keyBits` / `valueBits` say otherwise. Default 2. */
  bits?: number;
  /** Code bits of the keys: one of {@link TURBOQUANT_BITS}, or one per layer. Half bits (2.5) split the channels (below). */
  keyBits?: number | readonly number[];
  /** Code bits of the values, as `keyBits`. */
  valueBits?: number | readonly number[];
  /**
   * Seed of the random signs (one ±1 diagonal per segment length, mulberry32 as `rotated`); the same rotation serves
   * every layer and head. Default 0.
   */
  seed?: number;
  /** `'hadamard'` (default): rotate each segment by D·H/√n; `'none'`: code the raw coordinates (ablation). */
  rotation?: 'hadamard' | 'none';
  /** Storage of the per-segment scale: `'fp16'` (default, 16 bits) or an 8-bit format (`'e4m3'`, `'e5m2'`, `'log8'`). */
  scaleFormat?: ScaleFormat;
  /**
   * What the stored scale is: `'norm'` (default, TurboQuant: ‖y‖, reconstruction ‖y‖·levels[code]) or `'lsq'` (the
   * least-squares scale for the chosen codes, ⟨y, c⟩/⟨c, c⟩: never a larger error than the norm, same bits).
   */
  scaleRule?: 'norm' | 'lsq';
  /**
   * After the scale is rounded to its storage format, choose the codes again for the rounded scale (nearest level of
   * y/ŝ): the rounding is absorbed by the codes instead of scaling the whole vector. Default true.
   */
  recode?: boolean;
  /**
   * How a half-bit width splits the channels: `'outliers'` (default, the paper's outlier treatment: the d/2 channels
   * with the most energy get ⌈b⌉ bits, each half is rotated and normed on its own — two scales per vector) or
   * `'rotated'` (this project's: the whole vector is rotated and normed once, half of the rotated coordinates get
   * ⌈b⌉ bits — one scale per vector, 16 or 8 bits fewer per row).
   */
  split?: 'outliers' | 'rotated';
  /** Accepted and ignored (no groups here), so `xquant eval --group-size` sweeps can include this strategy. */
  groupSize?: number;
  /** Accepted and ignored, as `groupSize`. */
  valueGroupSize?: number;
  /** Accepted and ignored (scales use `scaleFormat`; the residual window is float32 like every cache here). */
  precision?: 'fp16' | 'fp32';
}

const OPTION_KEYS = new Set(['split', 'residualLength', 'bits', 'keyBits', 'valueBits', 'seed', 'rotation', 'scaleFormat', 'scaleRule', 'recode', 'groupSize', 'valueGroupSize', 'precision']);

/** One tensor's storage (keys or values of one layer). */
interface TensorLayout {
  bits: number;
  /** Channel segments (one, or ⌈b⌉-bit then ⌊b⌋-bit channels). */
  segments: CodebookSegment[];
  /** Channel ranges rotated on their own (each its own Hadamard and sign vector). */
  blocks: { start: number; length: number }[];
  /** Dimension of the unit vector each scale slot normalizes (the codebooks' `dim`). */
  slotDims: number[];
  /** True when the ⌈b⌉-bit channels are chosen by energy (the paper's outliers) rather than fixed rotated coordinates. */
  outliers: boolean;
  rowWords: number;
}

/** The resolved per-layer layout of a cache: what {@link turboquantBits} accounts and the cache allocates. */
export interface TurboQuantLayout {
  residualLength: number;
  scaleFormat: ScaleFormat;
  keys: readonly number[];
  values: readonly number[];
}

function checkBits(b: unknown, what: string): number {
  if (typeof b !== 'number' || !TURBOQUANT_BITS.includes(b)) {
    throw new XqConfigError('E_BITS', `turboquant: ${what} must be one of ${TURBOQUANT_BITS.join(', ')}; got ${JSON.stringify(b)}`);
  }
  return b;
}

function perLayer(spec: number | readonly number[] | undefined, fallback: number, layers: number, what: string): number[] {
  if (spec === undefined) return Array.from({ length: layers }, () => fallback);
  if (typeof spec === 'number') return Array.from({ length: layers }, () => checkBits(spec, what));
  if (!Array.isArray(spec)) throw new XqConfigError('E_BITS', `turboquant: ${what} must be a bit width or one per layer; got ${JSON.stringify(spec)}`);
  if (spec.length !== layers) throw new XqConfigError('E_PLAN', `turboquant: ${what}: expected ${layers} per-layer widths; got ${spec.length}`);
  return spec.map((b, i) => checkBits(b, `${what}[${i}]`));
}

function validate(o: TurboQuantOptions): void {
  if (typeof o !== 'object' || o === null) throw new XqConfigError('E_CONFIG', `turboquant: options must be an object; got ${String(o)}`);
  for (const k of Object.keys(o)) if (!OPTION_KEYS.has(k)) throw new XqConfigError('E_CONFIG', `turboquant: unknown option '${k}'; expected ${[...OPTION_KEYS].join(', ')}`);
  const R = o.residualLength;
  if (R !== undefined && !(Number.isInteger(R) && R >= 0)) throw new XqConfigError('E_RESIDUAL', `turboquant: residualLength must be an integer ≥ 0; got ${JSON.stringify(R)}`);
  if (o.bits !== undefined) checkBits(o.bits, 'bits');
  for (const k of ['keyBits', 'valueBits'] as const) {
    const v = o[k];
    if (typeof v === 'number') checkBits(v, k);
    else if (v !== undefined) {
      if (!Array.isArray(v)) throw new XqConfigError('E_BITS', `turboquant: ${k} must be a bit width or one per layer; got ${JSON.stringify(v)}`);
      v.forEach((b, i) => checkBits(b, `${k}[${i}]`));
    }
  }
  if (o.seed !== undefined && !(Number.isInteger(o.seed) && o.seed >= 0 && o.seed < 2 ** 32)) throw new XqConfigError('E_CONFIG', `turboquant: seed must be an integer in [0, 2^32); got ${JSON.stringify(o.seed)}`);
  if (o.rotation !== undefined && o.rotation !== 'hadamard' && o.rotation !== 'none') throw new XqConfigError('E_CONFIG', `turboquant: rotation must be 'hadamard' or 'none'; got ${JSON.stringify(o.rotation)}`);
  if (o.scaleFormat !== undefined) assertScaleFormat(o.scaleFormat);
  if (o.scaleRule !== undefined && o.scaleRule !== 'norm' && o.scaleRule !== 'lsq') throw new XqConfigError('E_CONFIG', `turboquant: scaleRule must be 'norm' or 'lsq'; got ${JSON.stringify(o.scaleRule)}`);
  if (o.split !== undefined && o.split !== 'outliers' && o.split !== 'rotated') throw new XqConfigError('E_CONFIG', `turboquant: split must be 'outliers' or 'rotated'; got ${JSON.stringify(o.split)}`);
  if (o.recode !== undefined && typeof o.recode !== 'boolean') throw new XqConfigError('E_CONFIG', `turboquant: recode must be true or false; got ${JSON.stringify(o.recode)}`);
}

/** The per-layer widths and sizes of a cache of `shape` (validates the per-layer lists against the layer count). */
export function turboquantLayout(options: TurboQuantOptions, shape: KvCacheShape): TurboQuantLayout {
  validate(options);
  const s = validateCacheShape(shape);
  const both = options.bits ?? 2;
  return {
    residualLength: options.residualLength ?? DEFAULT_RESIDUAL_LENGTH,
    scaleFormat: options.scaleFormat ?? 'fp16',
    keys: perLayer(options.keyBits, both, s.layers, 'keyBits'),
    values: perLayer(options.valueBits, both, s.layers, 'valueBits'),
  };
}

/**
 * Layout of a tensor of `bits` code bits over `d` channels: one segment; or (half bits) d/2 channels at ⌈b⌉ then d/2
 * at ⌊b⌋ — with `split: 'outliers'` two independent instances (own rotation block, own scale), with `'rotated'` one
 * rotation and one scale over both.
 */
function tensorLayout(bits: number, d: number, split: 'outliers' | 'rotated'): TensorLayout {
  const half = !Number.isInteger(bits);
  const parts: [number, number][] = half ? [[d / 2, Math.ceil(bits)], [d / 2, Math.floor(bits)]] : [[d, bits]];
  const shared = !half || split === 'rotated';
  const slotDims = shared ? [d] : [d / 2, d / 2];
  const segments: CodebookSegment[] = [];
  let start = 0;
  let bitOffset = 0;
  parts.forEach(([length, b], i) => {
    const slot = shared ? 0 : i;
    const cb = lloydMaxCodebook(b, slotDims[slot]!);
    segments.push({ start, length, bits: b, levels: Float32Array.from(cb.levels), bitOffset, scaleSlot: slot });
    start += length;
    bitOffset += length * b;
  });
  const blocks = shared ? [{ start: 0, length: d }] : segments.map((s) => ({ start: s.start, length: s.length }));
  return { bits, segments, blocks, slotDims, outliers: half && !shared, rowWords: Math.ceil(bitOffset / 32) };
}

/** Code bits and scale count of one stored row of a tensor of `bits` over `d` channels. */
function rowCost(bits: number, d: number, scaleBits: number, split: 'outliers' | 'rotated'): { codeBits: number; scaleBits: number } {
  const t = tensorLayout(bits, d, split);
  return { codeBits: t.rowWords * 32, scaleBits: t.slotDims.length * scaleBits };
}

/**
 * Paper bits and true stored bits per K/V element of a {@link turboquant} cache at `tokens` tokens: codes (whole 32-bit
 * words per row) and scales (one per segment per row, in the scale format) of the `tokens − R` quantized tokens, plus
 * an fp16 residual window of min(R, tokens) tokens (the convention of `accountBits`). Paper bits = the mean code
 * width. `memory()` reports the same code and scale bytes (its residual window is float32).
 */
export function turboquantBits(options: TurboQuantOptions, shape: KvCacheShape, tokens: number): { paperBits: number; storedBitsPerElement: number } {
  const lay = turboquantLayout(options, shape);
  const { layers: L, kvHeads: H, headDim: D } = shape;
  const q = Math.max(0, tokens - lay.residualLength);
  const sb = scaleFormatBits(lay.scaleFormat);
  let bits = 0;
  let paper = 0;
  for (const b of [...lay.keys, ...lay.values]) {
    const c = rowCost(b, D, sb, options.split ?? 'outliers');
    bits += q * H * (c.codeBits + c.scaleBits);
    paper += b;
  }
  bits += (tokens - q) * 2 * L * H * D * 16;
  return { paperBits: paper / (2 * L), storedBitsPerElement: tokens > 0 ? bits / (2 * L * H * D * tokens) : 0 };
}

/**
 * A TurboQuant-style KV cache (Zandieh et al., arXiv 2504.19874; the MSE stage, data-free): every key and value vector
 * beyond the newest R tokens is rotated by a fixed orthogonal matrix (seeded random signs × normalized Walsh–Hadamard),
 * stored as one scale (its norm) and one Lloyd-Max code per coordinate against the codebook of a rotated unit
 * vector's coordinate (`lloydMaxCodebook` of `@xquant/quant`), and attended without dequantizing (queries rotated the same way,
 * `codebookKeyScores` / `codebookValueMix` of `@xquant/quant`, the mixed values rotated back). Half-bit widths follow
 * the paper's outlier treatment: the half of the channels with the most energy in the first quantized tokens of each
 * (layer, head) get one bit more, and each half is its own instance (own rotation, own norm). Options add the
 * project's variants: 8-bit scales, least-squares scales, per-layer widths (see {@link TurboQuantOptions}).
 * headDim must be a power of two (the Hadamard transform).
 * @example
 * const s = turboquant({ keyBits: 2.5, valueBits: 2.5, residualLength: 32 });
 * const cache = s.createCache({ layers: 8, kvHeads: 2, headDim: 64 });
 */
export function turboquant(options: TurboQuantOptions = {}): KvCacheStrategy<TurboQuantOptions> & { accountBits(shape: KvCacheShape, tokens: number): { paperBits: number; storedBitsPerElement: number } } {
  validate(options);
  const opts = Object.freeze({ ...options });
  return {
    specificationVersion: 'v1',
    id: 'turboquant',
    options: opts,
    accountBits: (shape, tokens) => turboquantBits(opts, shape, tokens),
    createCache: (shape: KvCacheShape) => new TurboQuantKvCache(opts, shape),
  };
}

/** Growable chunked storage of one tensor's quantized rows. */
interface Chunk {
  packed: Uint32Array;
  scales: Uint8Array | Uint16Array;
  filled: number;
}

const CHUNK_TOKENS = 32;

interface TensorState {
  layout: TensorLayout;
  /** Per head: stored position i holds original channel perm[i] (null until the first flush chooses outliers). */
  perm: Int32Array[] | null;
  chunks: Chunk[];
  /** Increases whenever rows are added. */
  version: number;
  /** Per head the matrix T of the stored basis (y = T·x), `[heads, D, D]` row-major; built once `perm` is set. */
  rotation: Float32Array | null;
}

interface LayerState {
  keys: TensorState;
  values: TensorState;
  /** Full-precision tokens not yet quantized, token-major `[n, H, D]` (keys and values). */
  kRes: Float32Array;
  vRes: Float32Array;
  resCount: number;
  /** Tokens quantized (the first `quantized` positions). */
  quantized: number;
  pending: boolean;
}

/** The cache of the {@link turboquant} strategy. */
export class TurboQuantKvCache implements KvCache {
  readonly strategyId = 'turboquant';
  readonly shape: Readonly<KvCacheShape>;
  /** The resolved per-layer widths. */
  readonly layout: TurboQuantLayout;
  private readonly opts: Readonly<TurboQuantOptions>;
  private readonly layers: LayerState[];
  private readonly signs = new Map<number, Float64Array>();
  private readonly scaleTable: Float32Array;
  private disposed = false;
  /** The `prefillAsync`/`appendAsync` calls, one after another; reset and dispose cancel them. */
  private readonly ops = new OpQueue();

  constructor(options: TurboQuantOptions, shape: KvCacheShape) {
    this.shape = validateCacheShape(shape);
    const D = this.shape.headDim;
    if (!(D > 0 && (D & (D - 1)) === 0) || D < 8) throw new XqShapeError(`turboquant: headDim must be a power of two ≥ 8; got ${D}`);
    this.opts = options;
    this.layout = turboquantLayout(options, this.shape);
    this.scaleTable = scaleDecodeTable(this.layout.scaleFormat);
    this.layers = Array.from({ length: this.shape.layers }, (_, l) => this.freshLayer(l));
  }

  private freshLayer(l: number): LayerState {
    const D = this.shape.headDim;
    const t = (b: number): TensorState => ({ layout: tensorLayout(b, D, this.opts.split ?? 'outliers'), perm: null, chunks: [], version: 0, rotation: null });
    return { keys: t(this.layout.keys[l]!), values: t(this.layout.values[l]!), kRes: new Float32Array(0), vRes: new Float32Array(0), resCount: 0, quantized: 0, pending: false };
  }

  private signsFor(n: number, segment: number): Float64Array {
    const key = n * 16 + segment;
    let s = this.signs.get(key);
    if (!s) {
      s = randomSigns(n, (this.opts.seed ?? 0) + segment);
      this.signs.set(key, s);
    }
    return s;
  }

  /** y = T(x) for one head's vector (permute into segments, then rotate each rotation block); in place on `y`. */
  private forward(x: Float32Array | Float64Array, xo: number, perm: Int32Array | null, segs: readonly { start: number; length: number }[], y: Float64Array): void {
    const D = this.shape.headDim;
    for (let i = 0; i < D; i++) y[i] = x[xo + (perm ? perm[i]! : i)]!;
    if (this.opts.rotation === 'none') return;
    segs.forEach((s, si) => {
      const sg = this.signsFor(s.length, si);
      const v = y.subarray(s.start, s.start + s.length);
      for (let i = 0; i < s.length; i++) v[i] = v[i]! * sg[i]!;
      walshHadamard(v, s.length);
    });
  }

  /** x = T⁻¹(y), written to `x` at `xo` (original channel order). `y` is overwritten. */
  private inverse(y: Float64Array, perm: Int32Array | null, segs: readonly { start: number; length: number }[], x: Float32Array, xo: number, add = false): void {
    const D = this.shape.headDim;
    if (this.opts.rotation !== 'none') {
      segs.forEach((s, si) => {
        const sg = this.signsFor(s.length, si);
        const v = y.subarray(s.start, s.start + s.length);
        walshHadamard(v, s.length);
        for (let i = 0; i < s.length; i++) v[i] = v[i]! * sg[i]!;
      });
    }
    for (let i = 0; i < D; i++) {
      const c = xo + (perm ? perm[i]! : i);
      x[c] = add ? x[c]! + y[i]! : y[i]!;
    }
  }

  // ---- input -----------------------------------------------------------------------------------------------

  private push(layer: number, keys: Tensor3D, values: Tensor3D, single: boolean): void {
    checkAlive(this.disposed, 'prefill/append');
    this.ops.assertIdle(single ? 'append' : 'prefill');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    if (st.pending) this.flush(layer);
    const n = checkKv(this.shape, keys, values, st.quantized + st.resCount, single);
    let k: Float32Array;
    let v: Float32Array;
    try {
      k = keys.dataSync() as Float32Array;
      v = values.dataSync() as Float32Array;
    } catch (e) {
      throw new XqStateError('E_STATE', `turboquant: keys/values cannot be read synchronously on the '${tf.getBackend()}' backend; use prefillAsync/appendAsync there`, { cause: e });
    }
    this.store(layer, k, v, n);
  }

  /** Queue the tensors' data (read now, asynchronously) and store it once earlier async calls are done. */
  private pushAsync(what: string, layer: number, keys: Tensor3D, values: Tensor3D, single: boolean): Promise<void> {
    let read: Promise<[Float32Array, Float32Array]>;
    try {
      checkAlive(this.disposed, what);
      checkLayer(layer, this.shape.layers);
      checkKv(this.shape, keys, values, 0, single);
      read = Promise.all([keys.data() as Promise<Float32Array>, values.data() as Promise<Float32Array>]);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.ops.run(what, async (live) => {
      const [k, v] = await read;
      live();
      const st = this.layers[layer]!;
      if (st.pending) this.flush(layer);
      this.store(layer, k, v, checkKv(this.shape, keys, values, st.quantized + st.resCount, single));
    });
  }

  /** {@link prefill} reading the tensors asynchronously (e.g. on WebGPU); async calls run one at a time, in call order. */
  prefillAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    return this.pushAsync('prefillAsync', layer, keys, values, false);
  }
  /** {@link append} reading the tensors asynchronously; async calls run one at a time, in call order. */
  appendAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    return this.pushAsync('appendAsync', layer, keys, values, true);
  }

  /** Hold `n` new tokens (head-major `[H, n, D]` data) in the residual window of a layer. */
  private store(layer: number, k: Float32Array, v: Float32Array, n: number): void {
    const st = this.layers[layer]!;
    const { kvHeads: H, headDim: D } = this.shape;
    const where = (i: number) => `layer ${layer}, head ${Math.floor(i / (n * D))}, token ${st.quantized + st.resCount + (Math.floor(i / D) % n)}, channel ${i % D}`;
    assertFinite(k, 'keys', where);
    assertFinite(v, 'values', where);
    const row = H * D;
    const grow = (old: Float32Array, add: Float32Array) => {
      const out = new Float32Array((st.resCount + n) * row);
      out.set(old.subarray(0, st.resCount * row));
      out.set(headMajorToTokenMajor(add, n, H, D), st.resCount * row);
      return out;
    };
    st.kRes = grow(st.kRes, k);
    st.vRes = grow(st.vRes, v);
    st.resCount += n;
    st.pending = true;
  }

  prefill(layer: number, keys: Tensor3D, values: Tensor3D): void {
    this.push(layer, keys, values, false);
  }
  append(layer: number, keys: Tensor3D, values: Tensor3D): void {
    this.push(layer, keys, values, true);
  }

  // ---- flush -----------------------------------------------------------------------------------------------

  /** Quantize every held token beyond the newest R (keys and values alike, one row per token and head). */
  private flush(layer: number): void {
    const st = this.layers[layer]!;
    st.pending = false;
    const R = this.layout.residualLength;
    const n = st.resCount - R;
    if (n <= 0) return;
    const { kvHeads: H, headDim: D } = this.shape;
    const row = H * D;
    this.quantizeRows(st.keys, st.kRes, n);
    this.quantizeRows(st.values, st.vRes, n);
    st.kRes = st.kRes.slice(n * row, st.resCount * row);
    st.vRes = st.vRes.slice(n * row, st.resCount * row);
    st.resCount -= n;
    st.quantized += n;
  }

  /** Choose each head's outlier channels (most energy over `n` tokens) when the tensor splits channels. */
  private choosePerm(t: TensorState, x: Float32Array, n: number): void {
    const { kvHeads: H, headDim: D } = this.shape;
    if (!t.layout.outliers) {
      t.perm = Array.from({ length: H }, () => Int32Array.from({ length: D }, (_, i) => i));
      return;
    }
    const nOut = t.layout.segments[0]!.length;
    t.perm = [];
    for (let h = 0; h < H; h++) {
      const e = new Float64Array(D);
      for (let i = 0; i < n; i++) for (let c = 0; c < D; c++) e[c] = e[c]! + x[(i * H + h) * D + c]! ** 2;
      const order = Array.from({ length: D }, (_, c) => c).sort((a, b) => e[b]! - e[a]! || a - b);
      const out = order.slice(0, nOut).sort((a, b) => a - b);
      const inSet = new Set(out);
      const rest = Array.from({ length: D }, (_, c) => c).filter((c) => !inSet.has(c));
      t.perm.push(Int32Array.from([...out, ...rest]));
    }
  }

  private quantizeRows(t: TensorState, x: Float32Array, n: number): void {
    const { kvHeads: H, headDim: D } = this.shape;
    if (t.perm === null) this.choosePerm(t, x, n);
    const { segments: S, rowWords, blocks, slotDims } = t.layout;
    const slots = slotDims.length;
    const fmt = this.layout.scaleFormat;
    const rule = this.opts.scaleRule ?? 'norm';
    const recode = this.opts.recode ?? true;
    const cbs = S.map((s) => lloydMaxCodebook(s.bits, slotDims[s.scaleSlot]!));
    const y = new Float64Array(D);
    const codes = new Uint8Array(D);
    const encode = (slot: number, mul: number) => {
      S.forEach((s, si) => {
        if (s.scaleSlot !== slot) return;
        for (let c = s.start; c < s.start + s.length; c++) codes[c] = codebookEncode(cbs[si]!, y[c]! * mul);
      });
    };
    for (let i = 0; i < n; i++) {
      let ch = t.chunks[t.chunks.length - 1];
      if (!ch || ch.filled === CHUNK_TOKENS) {
        ch = { packed: new Uint32Array(CHUNK_TOKENS * H * rowWords), scales: fmt === 'fp16' ? new Uint16Array(CHUNK_TOKENS * H * slots) : new Uint8Array(CHUNK_TOKENS * H * slots), filled: 0 };
        t.chunks.push(ch);
      }
      for (let h = 0; h < H; h++) {
        this.forward(x, (i * H + h) * D, t.perm![h]!, blocks, y);
        const r = ch.filled * H + h;
        for (let slot = 0; slot < slots; slot++) {
          let nn = 0;
          for (const s of S) if (s.scaleSlot === slot) for (let c = s.start; c < s.start + s.length; c++) nn += y[c]! * y[c]!;
          const norm = Math.sqrt(nn);
          encode(slot, norm > 0 ? 1 / norm : 0);
          let scale = norm;
          if (rule === 'lsq') {
            let yc = 0;
            let cc = 0;
            for (const s of S) {
              if (s.scaleSlot !== slot) continue;
              for (let c = s.start; c < s.start + s.length; c++) {
                const l = s.levels[codes[c]!]!;
                yc += y[c]! * l;
                cc += l * l;
              }
            }
            scale = cc > 0 ? Math.max(0, yc / cc) : 0;
          }
          const code = encodeScale(fmt, scale);
          const stored = this.scaleTable[code]!;
          if (recode && stored > 0 && stored !== scale) encode(slot, 1 / stored);
          ch.scales[r * slots + slot] = code;
        }
        packCodebookRow(S, rowWords, codes, ch.packed, r * rowWords);
      }
      ch.filled++;
    }
    t.version++;
  }

  // ---- attention -------------------------------------------------------------------------------------------

  private views(t: TensorState): { view: CodebookKvView; start: number }[] {
    const { kvHeads: H, headDim: D } = this.shape;
    let start = 0;
    return t.chunks.map((c) => {
      const v = { view: { heads: H, tokens: c.filled, headDim: D, segments: t.layout.segments, rowWords: t.layout.rowWords, scalesPerRow: t.layout.slotDims.length, packed: c.packed, scales: c.scales, scaleTable: this.scaleTable }, start };
      start += c.filled;
      return v;
    });
  }

  attend(layer: number, queries: Tensor3D): Tensor3D {
    checkAlive(this.disposed, 'attend');
    this.ops.assertIdle('attend');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    const N = st.quantized + st.resCount;
    checkQueries(this.shape, layer, queries, N);
    const { kvHeads: H, headDim: D } = this.shape;
    const kernel = findKernel(tf.getBackend(), 'codebook');
    let out: Tensor3D;
    if (kernel && st.quantized > 0) {
      out = this.attendWithKernel(kernel, layer, queries);
    } else if (st.quantized === 0) {
      const n = st.resCount;
      out = tf.tidy(() => plainAttention(queries, tf.tensor3d(tokenMajorToHeadMajor(st.kRes, n, H, D), [H, n, D]), tf.tensor3d(tokenMajorToHeadMajor(st.vRes, n, H, D), [H, n, D])));
    } else {
      out = tf.tensor3d(this.attendQuantized(st, queries.dataSync() as Float32Array, queries.shape[0], queries.shape[1]), queries.shape);
    }
    this.flush(layer);
    return out;
  }

  /** Every quantized row of a tensor as one view (a copy: built only when a kernel asks for it). */
  private mergedView(t: TensorState): CodebookKvView {
    const { kvHeads: H, headDim: D } = this.shape;
    const { rowWords, slotDims, segments } = t.layout;
    const slots = slotDims.length;
    const tokens = t.chunks.reduce((n, c) => n + c.filled, 0);
    const packed = new Uint32Array(tokens * H * rowWords);
    const scales = this.layout.scaleFormat === 'fp16' ? new Uint16Array(tokens * H * slots) : new Uint8Array(tokens * H * slots);
    let r = 0;
    for (const c of t.chunks) {
      packed.set(c.packed.subarray(0, c.filled * H * rowWords), r * H * rowWords);
      scales.set(c.scales.subarray(0, c.filled * H * slots), r * H * slots);
      r += c.filled;
    }
    return { heads: H, tokens, headDim: D, segments, rowWords, scalesPerRow: slots, packed, scales, scaleTable: this.scaleTable };
  }

  /** Per head the matrix T with y = T·x (permutation, then the rotation blocks), `[heads, D, D]` row-major. */
  private rotationOf(t: TensorState): Float32Array {
    if (t.rotation) return t.rotation;
    const { kvHeads: H, headDim: D } = this.shape;
    const m = new Float32Array(H * D * D);
    const e = new Float32Array(D);
    const y = new Float64Array(D);
    for (let h = 0; h < H; h++) {
      for (let c = 0; c < D; c++) {
        e.fill(0);
        e[c] = 1;
        this.forward(e, 0, t.perm![h]!, t.layout.blocks, y);
        for (let i = 0; i < D; i++) m[(h * D + i) * D + c] = y[i]!;
      }
    }
    t.rotation = m;
    return m;
  }

  /**
   * Attention as tfjs ops around a backend's {@link CodebookKernel} (nothing read back to the host): queries rotated
   * per KV head, key scores of the quantized rows by the kernel and of the residual window by a matMul, causal
   * softmax, the value mix of the quantized rows by the kernel rotated back, plus the window's values.
   */
  private attendWithKernel(kernel: CodebookKernel, layer: number, queries: Tensor3D): Tensor3D {
    const st = this.layers[layer]!;
    const { kvHeads: H, headDim: D } = this.shape;
    const [qHeads, nq] = queries.shape;
    const M = qHeads * nq;
    const per = M / H;
    const Nq = st.quantized;
    const nr = st.resCount;
    const N = Nq + nr;
    // the merged copy of the rows is made only if the kernel reads `view` (e.g. when its device copy is stale)
    const self = this;
    const view = (t: TensorState, kind: 'keys' | 'values'): CodebookTensorView => ({
      get view() {
        return self.mergedView(t);
      },
      layer,
      kind,
      version: t.version,
      owner: this,
    });
    const keys = view(st.keys, 'keys');
    const values = view(st.values, 'values');
    return tf.tidy(() => {
      const q3 = tf.reshape(queries, [H, per, D]) as Tensor3D;
      const qr = tf.reshape(tf.matMul(q3, tf.tensor3d(this.rotationOf(st.keys), [H, D, D]), false, true), [M, D]) as Tensor2D;
      let s: Tensor2D = kernel.keyScores(qr, keys);
      if (nr > 0) {
        const kr = tf.tensor3d(tokenMajorToHeadMajor(st.kRes, nr, H, D), [H, nr, D]);
        s = tf.concat([s, tf.reshape(tf.matMul(q3, kr, false, true), [M, nr]) as Tensor2D], 1);
      }
      s = tf.mul(s, 1 / Math.sqrt(D));
      if (nq > 1) {
        // row j = (head, position i = j mod nq) sees positions ≤ N − nq + i
        const last = tf.reshape(tf.add(tf.mod(tf.range(0, M, 1, 'int32'), nq), N - nq), [M, 1]);
        s = tf.where(tf.lessEqual(tf.reshape(tf.range(0, N, 1, 'int32'), [1, N]), last), s, tf.fill([M, N], -Infinity));
      }
      const p = tf.softmax(s);
      const mix = kernel.valueMix(nr > 0 ? tf.slice(p, [0, 0], [M, Nq]) : p, values);
      let out = tf.matMul(tf.reshape(mix, [H, per, D]) as Tensor3D, tf.tensor3d(this.rotationOf(st.values), [H, D, D]));
      if (nr > 0) {
        const vr = tf.tensor3d(tokenMajorToHeadMajor(st.vRes, nr, H, D), [H, nr, D]);
        out = tf.add(out, tf.matMul(tf.reshape(tf.slice(p, [0, Nq], [M, nr]), [H, per, nr]) as Tensor3D, vr));
      }
      return tf.reshape(out, [qHeads, nq, D]) as Tensor3D;
    });
  }

  private attendQuantized(st: LayerState, q: Float32Array, qHeads: number, nq: number): Float32Array {
    const { kvHeads: H, headDim: D } = this.shape;
    const Nq = st.quantized;
    const N = Nq + st.resCount;
    const M = qHeads * nq; // row j = query head ⌊j/nq⌋, position i = j mod nq; KV head ⌊j/(M/H)⌋
    const per = M / H;
    const scale = 1 / Math.sqrt(D);
    // rotated queries for the quantized keys (per KV head's permutation)
    const qr = new Float32Array(M * D);
    const y = new Float64Array(D);
    for (let j = 0; j < M; j++) {
      const h = Math.floor(j / per);
      this.forward(q, j * D, st.keys.perm![h]!, st.keys.layout.blocks, y);
      for (let c = 0; c < D; c++) qr[j * D + c] = y[c]!;
    }
    const S = new Float32Array(M * N);
    // one kernel call over every quantized row (a copy of the chunks' rows; per-chunk calls would each stage and
    // build the SIMD kernels' tables again)
    codebookKeyScores(qr, M, this.mergedView(st.keys), S, N);
    for (let j = 0; j < M; j++) {
      const h = Math.floor(j / per);
      for (let t = 0; t < st.resCount; t++) {
        let a = 0;
        for (let c = 0, o = (t * H + h) * D; c < D; c++) a += q[j * D + c]! * st.kRes[o + c]!;
        S[j * N + Nq + t] = a;
      }
    }
    // causal softmax (row j sees positions ≤ N − nq + j mod nq)
    const sums = new Float64Array(M);
    for (let j = 0; j < M; j++) {
      const last = N - nq + (j % nq);
      let mx = -Infinity;
      for (let t = 0; t <= last; t++) mx = Math.max(mx, S[j * N + t]! * scale);
      let sum = 0;
      for (let t = 0; t < N; t++) {
        const e = t <= last ? Math.exp(S[j * N + t]! * scale - mx) : 0;
        S[j * N + t] = e;
        sum += e;
      }
      sums[j] = sum;
    }
    // quantized values: mixed in the rotated basis, rotated back per row
    const mixR = codebookValueMix(S, M, this.mergedView(st.values), new Float32Array(M * D), N);
    const out = new Float32Array(M * D);
    for (let j = 0; j < M; j++) {
      const h = Math.floor(j / per);
      for (let c = 0; c < D; c++) y[c] = mixR[j * D + c]!;
      this.inverse(y, st.values.perm![h]!, st.values.layout.blocks, out, j * D);
      for (let t = 0; t < st.resCount; t++) {
        const p = S[j * N + Nq + t]!;
        if (p === 0) continue;
        for (let c = 0, o = (t * H + h) * D; c < D; c++) out[j * D + c] = out[j * D + c]! + p * st.vRes[o + c]!;
      }
      const inv = 1 / sums[j]!;
      for (let c = 0; c < D; c++) out[j * D + c] = out[j * D + c]! * inv;
    }
    return out; // rows j = h·nq + i: exactly [qHeads, nq, D]
  }

  seqLength(layer = 0): number {
    checkAlive(this.disposed, 'seqLength');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    return st.quantized + st.resCount;
  }

  /**
   * Bytes held: codes and scales of the allocated chunks (32 tokens each; equal to {@link turboquantBits}'s count when
   * the quantized tokens fill whole chunks), the float32 residual window, and in `kernelBytes` the per-head channel
   * permutations (4 bytes per channel); level tables and sign vectors are constants of the format, not counted.
   */
  memory(): KvMemoryReport {
    checkAlive(this.disposed, 'memory');
    const { layers: L, kvHeads: H, headDim: D } = this.shape;
    let codeBytes = 0;
    let metadataBytes = 0;
    let residualBytes = 0;
    let kernelBytes = 0;
    let paper = 0;
    for (const st of this.layers) {
      for (const t of [st.keys, st.values]) {
        for (const c of t.chunks) {
          codeBytes += c.packed.byteLength;
          metadataBytes += c.scales.byteLength;
        }
        if (t.perm) kernelBytes += t.perm.length * D * 4;
        if (t.rotation) kernelBytes += t.rotation.byteLength;
        paper += t.layout.bits;
      }
      residualBytes += st.kRes.byteLength + st.vRes.byteLength;
    }
    for (const { kernel } of registeredKernels('codebook')) kernelBytes += kernel.heldBytes?.(this) ?? 0;
    const tokens = this.layers[0]!.quantized + this.layers[0]!.resCount;
    const elements = 2 * L * H * D * tokens;
    const totalBytes = codeBytes + metadataBytes + residualBytes;
    return { codeBytes, metadataBytes, residualBytes, totalBytes, tokens, elements, paperBitsPerElement: paper / (2 * L), trueBitsPerElement: elements > 0 ? (8 * totalBytes) / elements : 0, kernelBytes };
  }

  /** The layer's K/V as the attention sees them (quantized rows decoded and rotated back), `[kvHeads, tokens, headDim]`. */
  dequantize(layer: number): { keys: Tensor3D; values: Tensor3D } {
    checkAlive(this.disposed, 'dequantize');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    const { kvHeads: H, headDim: D } = this.shape;
    const N = st.quantized + st.resCount;
    const one = (t: TensorState, res: Float32Array): Tensor3D => {
      const out = new Float32Array(H * N * D);
      const y = new Float64Array(D);
      for (const { view, start } of this.views(t)) {
        const x = codebookDequantize(view);
        for (let h = 0; h < H; h++) {
          for (let i = 0; i < view.tokens; i++) {
            for (let c = 0; c < D; c++) y[c] = x[(h * view.tokens + i) * D + c]!;
            this.inverse(y, t.perm![h]!, t.layout.blocks, out, (h * N + start + i) * D);
          }
        }
      }
      const r = tokenMajorToHeadMajor(res, st.resCount, H, D);
      for (let h = 0; h < H; h++) out.set(r.subarray(h * st.resCount * D, (h + 1) * st.resCount * D), (h * N + st.quantized) * D);
      return tf.tensor3d(out, [H, N, D]);
    };
    return { keys: one(st.keys, st.kRes), values: one(st.values, st.vRes) };
  }

  /** Drops every token; pending `prefillAsync`/`appendAsync` calls reject with `E_STATE`. */
  reset(): void {
    checkAlive(this.disposed, 'reset');
    this.ops.cancel();
    this.releaseKernels();
    for (let l = 0; l < this.layers.length; l++) this.layers[l] = this.freshLayer(l);
  }

  dispose(): void {
    this.ops.cancel();
    if (!this.disposed) this.releaseKernels();
    this.disposed = true;
  }

  private releaseKernels(): void {
    for (const { kernel } of registeredKernels('codebook')) kernel.release?.(this);
  }
}
