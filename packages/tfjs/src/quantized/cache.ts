import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { accountBits, type CrossLayerPlan } from '@xquant/cross-layer';
import {
  PRECISION_MAX,
  XqConfigError,
  XqNumericError,
  XqStateError,
  dequantizeValue,
  dequantizeKv,
  dequantizeRows,
  kvStats,
  quantizeKeys,
  quantizeValues,
  transposeTokensChannels,
  unpackCodes,
  unpackKv,
  type Bits,
  type GroupStats,
} from '@xquant/quant';
import type { CacheConfig } from '../config.js';
import { allAttentionKernels, attentionKernelFor, type QuantizedLayerView } from '../kernels/registry.js';
import type { AsyncKvCache, KvCacheShape, KvMemoryReport } from '../types.js';
import {
  OpQueue,
  checkAlive,
  checkAttentionBound,
  checkCapacity,
  checkKv,
  checkLayer,
  checkMagnitude,
  checkQueries,
  maxAbsArray,
  maxAbsSync,
  validateCacheShape,
} from '../validate.js';
import {
  ResidualBuffer,
  allocMeta,
  headMajorToTokenMajor,
  readMeta,
  tokenMajorToHeadMajor,
  writeMeta,
  type KeyBlock,
  type ValueChunk,
} from './store.js';

interface LayerState {
  kRes: ResidualBuffer;
  vRes: ResidualBuffer;
  keyBlocks: KeyBlock[];
  valueChunks: ValueChunk[];
  quantizedKeys: number;
  quantizedValues: number;
  tokens: number;
  /** New tokens arrived since the last flush. */
  pending: boolean;
  version: number;
  /** Largest |key| and |value| ever appended (bounds the attention scores, see `checkAttentionBound`). */
  maxK: number;
  maxV: number;
}

/** What a flush will do, computed without touching the layer (applied by `applyFlush`, which cannot fail). */
interface FlushPlan {
  keyBlocks: KeyBlock[];
  values: { start: number; n: number; packed: Uint32Array | null; stats: GroupStats; own: boolean } | null;
}

/**
 * The generic quantized KV cache: owns the residual window, the flush schedule (the reference's), code sharing between
 * layers, calibration, memory accounting and disposal. Strategies only describe per-layer storage, resolved into a
 * {@link CacheConfig} (see `defineQuantizedStrategy` and `resolveCacheConfig`).
 *
 * Schedule: new tokens are held in float32; after `attend` (or before the next append when attend was skipped) keys
 * are quantized in blocks of exactly R tokens (the remainder stays float32) and values beyond the newest R tokens are
 * quantized, one token per decode step. The quantizer gets fp16 copies (precision `'fp16'`), as in the reference.
 * Quantized data lives in JS typed arrays; attention runs through the kernel registered for the active backend.
 */
/** Tokens per allocated chunk of quantized values. */
const VALUE_CHUNK_TOKENS = 32;

export class QuantizedKvCache implements AsyncKvCache {
  /** The shape the cache was created for. */
  readonly shape: Readonly<KvCacheShape>;
  /** Id of the strategy that created this cache. */
  readonly strategyId: string;
  /** The resolved configuration (from `resolveCacheConfig`): everything the cache, its kernels and the accounting read. */
  readonly config: CacheConfig;
  private layers: LayerState[];
  private disposed = false;
  private readonly ops = new OpQueue();
  private generation = 0;
  private readonly rowSize: number;
  private readonly chunkTokens = VALUE_CHUNK_TOKENS;

  /** @param config a resolved configuration for `shape` (`resolveCacheConfig`, or a strategy's `resolveConfig`). */
  constructor(config: CacheConfig, shape: KvCacheShape) {
    this.shape = validateCacheShape(shape);
    if (!Object.isFrozen(config) || config.keys.length !== this.shape.layers) {
      throw new XqConfigError('E_CONFIG', `QuantizedKvCache needs the resolved configuration of a ${this.shape.layers}-layer cache (resolveCacheConfig)`);
    }
    this.config = config;
    this.strategyId = config.strategyId;
    this.rowSize = this.shape.kvHeads * this.shape.headDim;
    this.layers = Array.from({ length: this.shape.layers }, () => this.freshLayer());
  }

  private freshLayer(): LayerState {
    const R = this.config.residualLength;
    return {
      kRes: new ResidualBuffer(this.rowSize, 8, 0),
      vRes: new ResidualBuffer(this.rowSize, R + 1, R + 1), // grows geometrically up to R + 1 as tokens arrive
      keyBlocks: [],
      valueChunks: [],
      quantizedKeys: 0,
      quantizedValues: 0,
      tokens: 0,
      pending: false,
      version: 0,
      maxK: 0,
      maxV: 0,
    };
  }

  // ---- input -----------------------------------------------------------------------------------------------
  // Every operation validates everything before it changes anything: on an error the cache is as it was.

  private begin(layer: number, keys: Tensor3D, values: Tensor3D, single: boolean): number {
    checkAlive(this.disposed, 'prefill/append');
    checkLayer(layer, this.shape.layers);
    return checkKv(this.shape, keys, values, this.layers[layer]!.tokens, single);
  }

  /** Validates the data (the cache's input policy, see `checkMagnitude`), runs a pending flush, then appends. */
  private commit(layer: number, k: Float32Array, v: Float32Array, n: number): void {
    const { kvHeads, headDim } = this.shape;
    const st = this.layers[layer]!;
    checkCapacity(this.shape, st.tokens, n);
    const fp16 = this.config.precision === 'fp16';
    const mk = maxAbsArray(k);
    const mv = maxAbsArray(v);
    const half = (bits: number) => fp16 && bits !== 16; // stored quantized with fp16 arithmetic
    const kh = half(this.config.keys[layer]!.bits);
    const vh = half(this.config.values[layer]!.bits);
    const pos = { n, headDim, first: st.tokens };
    checkMagnitude(mk, 'keys', layer, kh ? PRECISION_MAX.fp16 : PRECISION_MAX.fp32, kh ? 'fp16' : 'float32', { data: k, ...pos });
    checkMagnitude(mv, 'values', layer, vh ? PRECISION_MAX.fp16 : PRECISION_MAX.fp32, vh ? 'fp16' : 'float32', { data: v, ...pos });
    if (st.pending) this.applyFlush(layer, this.planFlush(layer));
    st.kRes.push(headMajorToTokenMajor(k, n, kvHeads, headDim), n);
    st.vRes.push(headMajorToTokenMajor(v, n, kvHeads, headDim), n);
    st.tokens += n;
    st.pending = true;
    st.version++;
    if (mk > st.maxK) st.maxK = mk;
    if (mv > st.maxV) st.maxV = mv;
  }

  private readSync(x: Tensor3D, what: string): Float32Array {
    try {
      return x.dataSync() as Float32Array;
    } catch (e) {
      throw new XqStateError('E_STATE', `${what} cannot be read synchronously on the '${tf.getBackend()}' backend; use prefillAsync/appendAsync there`, { cause: e });
    }
  }

  prefill(layer: number, keys: Tensor3D, values: Tensor3D): void {
    this.ops.assertIdle('prefill');
    const n = this.begin(layer, keys, values, false);
    this.commit(layer, this.readSync(keys, 'keys'), this.readSync(values, 'values'), n);
  }
  append(layer: number, keys: Tensor3D, values: Tensor3D): void {
    this.ops.assertIdle('append');
    const n = this.begin(layer, keys, values, true);
    this.commit(layer, this.readSync(keys, 'keys'), this.readSync(values, 'values'), n);
  }
  /** {@link prefill} reading the tensors asynchronously; a cache's async operations run one at a time, in call order. */
  prefillAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    return this.readAsync('prefillAsync', layer, keys, values, false);
  }
  /** {@link append} reading the tensors asynchronously; a cache's async operations run one at a time, in call order. */
  appendAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    return this.readAsync('appendAsync', layer, keys, values, true);
  }

  private readAsync(what: string, layer: number, keys: Tensor3D, values: Tensor3D, single: boolean): Promise<void> {
    let n: number;
    let read: Promise<[Float32Array, Float32Array]>;
    try {
      n = this.begin(layer, keys, values, single);
      read = Promise.all([keys.data() as Promise<Float32Array>, values.data() as Promise<Float32Array>]); // the tensors as they are now
    } catch (e) {
      return Promise.reject(e);
    }
    return this.ops.run(what, async (live) => {
      const [k, v] = await read;
      live();
      this.commit(layer, k, v, n);
    });
  }

  // ---- attention -------------------------------------------------------------------------------------------

  attend(layer: number, queries: Tensor3D): Tensor3D {
    checkAlive(this.disposed, 'attend');
    this.ops.assertIdle('attend');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    checkQueries(this.shape, layer, queries, st.tokens);
    const maxQ = maxAbsSync(queries);
    checkAttentionBound(layer, this.shape.headDim, maxQ, st.maxK, st.maxV);
    const out = attentionKernelFor(tf.getBackend()).attend(this.view(layer), queries);
    let plan: FlushPlan;
    try {
      plan = this.planFlush(layer);
    } catch (e) {
      out.dispose();
      throw e;
    }
    this.applyFlush(layer, plan);
    return out;
  }

  /** The per-layer storage plan (bits and code donors of keys and values), e.g. for `accountBits` of @xquant/cross-layer. */
  get plan(): CrossLayerPlan {
    return { keys: this.config.keys.map((s) => ({ ...s })), values: this.config.values.map((s) => ({ ...s })) };
  }

  /** A read-only view of a layer's storage, with borrowed codes resolved, for attention kernels. */
  view(layer: number): QuantizedLayerView {
    checkAlive(this.disposed, 'view');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    const cfg = this.config;
    const ks = cfg.keys[layer]!;
    const vs = cfg.values[layer]!;
    const keyBlocks = st.keyBlocks.map((b, i) => ({ ...b, packed: b.packed ?? this.donorKeyCodes(ks.codesFrom!, i, b, layer) }));
    const valueChunks = st.valueChunks.map((c, i) => ({
      start: c.start,
      filled: c.filled,
      capacity: c.capacity,
      scale: c.scale,
      zero: c.zero,
      packed: c.packed ?? this.donorValueCodes(vs.codesFrom!, i, c, layer),
    }));
    return {
      layer,
      kvHeads: this.shape.kvHeads,
      headDim: this.shape.headDim,
      keyGroupSize: cfg.groupSize,
      valueGroupSize: cfg.valueGroupSize,
      precision: cfg.precision,
      tokens: st.tokens,
      keyBits: ks.bits,
      valueBits: vs.bits,
      quantizedKeys: st.quantizedKeys,
      quantizedValues: st.quantizedValues,
      keyBlocks,
      valueChunks,
      residualKeys: st.kRes.data.subarray(0, st.kRes.count * this.rowSize),
      residualValues: st.vRes.data.subarray(0, st.vRes.count * this.rowSize),
      version: st.version,
      decodeMeta: (m, off, n, out) => readMeta(m, off, n, out),
      owner: this,
      generation: this.generation,
    };
  }

  private donorKeyCodes(donor: number, i: number, b: KeyBlock, layer: number): Uint32Array {
    const db = this.layers[donor]!.keyBlocks[i];
    if (!db || db.start !== b.start || db.tokens !== b.tokens || !db.packed) {
      throw new XqStateError('E_STATE', `layer ${layer} reads key codes of layer ${donor}, which has not quantized tokens ${b.start}…${b.start + b.tokens - 1} yet (layers must advance together)`);
    }
    return db.packed;
  }

  private donorValueCodes(donor: number, i: number, c: ValueChunk, layer: number): Uint32Array {
    const dc = this.layers[donor]!.valueChunks[i];
    if (!dc || dc.start !== c.start || dc.filled < c.filled || !dc.packed) {
      throw new XqStateError('E_STATE', `layer ${layer} reads value codes of layer ${donor}, which has not quantized tokens ${c.start}…${c.start + c.filled - 1} yet (layers must advance together)`);
    }
    return dc.packed;
  }

  // ---- flush -----------------------------------------------------------------------------------------------

  private calibrate(
    kind: 'keys' | 'values',
    layer: number,
    stats: GroupStats,
    values: () => Float32Array | undefined,
    codes: () => Uint8Array | undefined,
  ): GroupStats {
    const cal = (kind === 'keys' ? this.config.keyCalibrators : this.config.valueCalibrators)[layer];
    if (!cal) return stats;
    // computed only if the calibrator reads them (η-calibration does not)
    let v: Float32Array | undefined | null = null;
    let c: Uint8Array | undefined | null = null;
    const context = {
      get values() {
        if (v === null) v = values();
        return v;
      },
      get codes() {
        if (c === null) c = codes();
        return c;
      },
    };
    const out = cal.calibrate(stats, context);
    // a calibrator's statistics are stored as they are: they must be finite and keep every code finite
    const where = `${kind} of layer ${layer} (calibrator)`;
    if (!out || !out.scale || !out.zero || out.scale.length !== stats.scale.length || out.zero.length !== stats.zero.length) {
      throw new XqConfigError('E_CONFIG', `${where}: calibrate() must return statistics of the same shape as it was given`);
    }
    const m = (1 << stats.bits) - 1;
    for (let i = 0; i < out.scale.length; i++) {
      const sc = out.scale[i]!, z = out.zero[i]!;
      if (!Number.isFinite(sc) || !Number.isFinite(z) || !Number.isFinite(dequantizeValue(m, sc, z, stats.bits, stats.precision))) {
        throw new XqNumericError(`${where}: group ${i} has scale ${sc}, zero ${z}, whose codes do not dequantize to finite values`);
      }
    }
    return out;
  }

  /** What the schedule says is due for `layer` (after attend, or before the next append), quantized; changes nothing. */
  private planFlush(layer: number): FlushPlan {
    const st = this.layers[layer]!;
    const { kvHeads: H, headDim: D } = this.shape;
    const { residualLength: R, groupSize, precision } = this.config;
    const ks = this.config.keys[layer]!;
    const vs = this.config.values[layer]!;
    const plan: FlushPlan = { keyBlocks: [], values: null };
    if (ks.bits !== 16) {
      const blocks = Math.floor(st.kRes.count / R);
      const due = blocks > 0 ? st.kRes.peek(blocks * R) : null; // one copy for all due blocks (token-major)
      for (let bi = 0; bi < blocks; bi++) {
        const start = st.kRes.start + bi * R;
        const x = tokenMajorToHeadMajor(due!.subarray(bi * R * this.rowSize, (bi + 1) * R * this.rowSize), R, H, D);
        const blockShape = { heads: H, tokens: R, headDim: D };
        const opts = { bits: ks.bits as Bits, groupSize, precision };
        let stats: GroupStats;
        let packed: Uint32Array | null = null;
        if (ks.codesFrom === null) {
          const pk = quantizeKeys(x, blockShape, opts);
          packed = pk.packed;
          stats = this.calibrate('keys', layer, pk, () => transposeTokensChannels(x, blockShape), () => unpackKv(pk));
        } else {
          const raw = kvStats(x, blockShape, 'channel', opts);
          const db = this.layers[ks.codesFrom]!.keyBlocks[st.keyBlocks.length + bi];
          const codes = () => (db?.packed && db.start === start ? unpackCodes(db.packed, raw.rows, raw.cols, ks.bits as Bits) : undefined);
          stats = this.calibrate('keys', layer, raw, () => transposeTokensChannels(x, blockShape), codes);
        }
        const scale = allocMeta(stats.scale.length, precision);
        const zero = allocMeta(stats.zero.length, precision);
        writeMeta(scale, 0, stats.scale);
        writeMeta(zero, 0, stats.zero);
        plan.keyBlocks.push({ start, tokens: R, packed, scale, zero });
      }
    }
    if (vs.bits !== 16 && st.vRes.count > R) {
      const n = st.vRes.count - R;
      const start = st.vRes.start;
      const x = tokenMajorToHeadMajor(st.vRes.peek(n), n, H, D);
      const blockShape = { heads: H, tokens: n, headDim: D };
      const opts = { bits: vs.bits as Bits, groupSize: this.config.valueGroupSize, precision };
      let stats: GroupStats;
      let packed: Uint32Array | null = null;
      if (vs.codesFrom === null) {
        const pv = quantizeValues(x, blockShape, opts);
        packed = pv.packed;
        stats = this.calibrate('values', layer, pv, () => x, () => unpackKv(pv));
      } else {
        const raw = kvStats(x, blockShape, 'token', opts);
        const donor = vs.codesFrom;
        stats = this.calibrate('values', layer, raw, () => x, () => this.donorValueCodesFor(donor, start, n, vs.bits as Bits));
      }
      plan.values = { start, n, packed, stats, own: vs.codesFrom === null };
    }
    return plan;
  }

  /** Applies a flush computed by {@link planFlush} (allocation aside, nothing here can fail). */
  private applyFlush(layer: number, plan: FlushPlan): void {
    const st = this.layers[layer]!;
    if (plan.keyBlocks.length > 0) {
      st.kRes.drop(plan.keyBlocks.length * this.config.residualLength);
      for (const b of plan.keyBlocks) st.keyBlocks.push(b);
      st.quantizedKeys += plan.keyBlocks.length * this.config.residualLength;
    }
    if (plan.values) {
      const { start, n, packed, stats, own } = plan.values;
      st.vRes.drop(n);
      this.writeValues(st, start, n, packed, stats, own);
      st.quantizedValues += n;
    }
    st.pending = false;
    st.version++;
  }

  /** Donor's value codes for tokens start…start+n−1 in the quantizer layout `[heads, n, D]` (undefined if not there yet). */
  private donorValueCodesFor(donor: number, start: number, n: number, bits: Bits): Uint8Array | undefined {
    const { kvHeads: H, headDim: D } = this.shape;
    const ds = this.layers[donor]!;
    if (ds.quantizedValues < start + n) return undefined;
    const wpr = (D * bits) / 32;
    const out = new Uint8Array(H * n * D);
    const m = (1 << bits) - 1;
    for (let t = 0; t < n; t++) {
      const pos = start + t;
      const c = ds.valueChunks[Math.floor(pos / this.chunkTokens)]!;
      const row = pos - c.start;
      for (let h = 0; h < H; h++) {
        const wo = (row * H + h) * wpr;
        for (let d = 0; d < D; d++) out[(h * n + t) * D + d] = (c.packed![wo + Math.floor((d * bits) / 32)]! >>> ((d % (32 / bits)) * bits)) & m;
      }
    }
    return out;
  }

  private writeValues(st: LayerState, start: number, n: number, packed: Uint32Array | null, stats: GroupStats, own: boolean): void {
    const { kvHeads: H, headDim: D } = this.shape;
    const { precision } = this.config;
    const bits = stats.bits;
    const wpr = (D * bits) / 32;
    const G = D / this.config.valueGroupSize;
    const C = this.chunkTokens;
    for (let t = 0; t < n; t++) {
      const pos = start + t;
      const ci = Math.floor(pos / C);
      while (st.valueChunks.length <= ci) {
        const cs = st.valueChunks.length * C;
        st.valueChunks.push({
          start: cs,
          capacity: C,
          filled: 0,
          packed: own ? new Uint32Array(C * H * wpr) : null,
          scale: allocMeta(C * H * G, precision),
          zero: allocMeta(C * H * G, precision),
        });
      }
      const c = st.valueChunks[ci]!;
      const row = pos - c.start;
      for (let h = 0; h < H; h++) {
        const src = h * n + t; // [heads, n, …] row of the quantizer output
        if (packed && c.packed) c.packed.set(packed.subarray(src * wpr, (src + 1) * wpr), (row * H + h) * wpr);
        writeMeta(c.scale, (row * H + h) * G, stats.scale, src * G, G);
        writeMeta(c.zero, (row * H + h) * G, stats.zero, src * G, G);
      }
      c.filled = row + 1;
    }
  }

  // ---- inspection ------------------------------------------------------------------------------------------

  seqLength(layer = 0): number {
    checkAlive(this.disposed, 'seqLength');
    checkLayer(layer, this.shape.layers);
    return this.layers[layer]!.tokens;
  }

  memory(): KvMemoryReport {
    checkAlive(this.disposed, 'memory');
    let codeBytes = 0;
    let metadataBytes = 0;
    let residualBytes = 0;
    for (const st of this.layers) {
      for (const b of st.keyBlocks) {
        codeBytes += b.packed?.byteLength ?? 0;
        metadataBytes += b.scale.byteLength + b.zero.byteLength;
      }
      for (const c of st.valueChunks) {
        codeBytes += c.packed?.byteLength ?? 0;
        metadataBytes += c.scale.byteLength + c.zero.byteLength;
      }
      residualBytes += st.kRes.data.byteLength + st.vRes.data.byteLength;
    }
    const totalBytes = codeBytes + metadataBytes + residualBytes;
    const tokens = this.layers[0]!.tokens;
    const kernelBytes = allAttentionKernels().reduce((s, k) => s + (k.heldBytes?.(this) ?? 0), 0);
    const elements = 2 * this.shape.layers * this.shape.kvHeads * this.shape.headDim * tokens;
    return {
      codeBytes,
      metadataBytes,
      residualBytes,
      totalBytes,
      tokens,
      elements,
      paperBitsPerElement: accountBits({ config: this.config, kvHeads: this.shape.kvHeads, headDim: this.shape.headDim, tokens: 1 }).paperBits,
      trueBitsPerElement: elements === 0 ? 0 : (8 * totalBytes) / elements,
      kernelBytes,
    };
  }

  /**
   * The layer's K/V as attention sees them, `[kvHeads, tokens, headDim]`: the quantized part dequantized with the
   * reference formula `r(r(code·scale) + zero)` (r = rounding of the precision), the rest as held.
   */
  dequantize(layer: number): { keys: Tensor3D; values: Tensor3D } {
    checkAlive(this.disposed, 'dequantize');
    const v = this.view(layer);
    const { keys, values } = dequantizeView(v);
    const { kvHeads: H, headDim: D } = this.shape;
    return { keys: tf.tensor3d(keys, [H, v.tokens, D]), values: tf.tensor3d(values, [H, v.tokens, D]) };
  }

  /** Drops every token; pending `prefillAsync`/`appendAsync` calls reject with `E_STATE`. */
  reset(): void {
    checkAlive(this.disposed, 'reset');
    this.ops.cancel();
    this.releaseKernelState();
    this.generation++;
    this.layers = this.layers.map(() => this.freshLayer());
  }

  /** Frees everything; pending `prefillAsync`/`appendAsync` calls reject with `E_STATE`. */
  dispose(): void {
    if (this.disposed) return;
    this.ops.cancel();
    this.releaseKernelState();
    this.layers = [];
    this.disposed = true;
  }

  private releaseKernelState(): void {
    for (const k of allAttentionKernels()) k.release?.(this);
  }
}

/** Dequantize one key block of a view: `[kvHeads, tokens, headDim]` (reference formula). */
export function dequantizeKeyBlock(v: QuantizedLayerView, b: QuantizedLayerView['keyBlocks'][number]): Float32Array {
  const { kvHeads: H, headDim: D, keyGroupSize: groupSize, precision } = v;
  const G = b.tokens / groupSize;
  return dequantizeKv({
    axis: 'channel', heads: H, tokens: b.tokens, headDim: D, rows: H * D, cols: b.tokens,
    bits: v.keyBits as Bits, groupSize, precision, packed: b.packed,
    scale: readMeta(b.scale, 0, H * D * G), zero: readMeta(b.zero, 0, H * D * G),
  });
}

/** Dequantize quantized values at positions `from … to−1` of a view: `[kvHeads, to − from, headDim]`. */
export function dequantizeValueRange(v: QuantizedLayerView, from: number, to: number): Float32Array {
  const { kvHeads: H, headDim: D, valueGroupSize: groupSize, precision } = v;
  const n = to - from;
  const out = new Float32Array(H * n * D);
  const bits = v.valueBits as Bits;
  const G = D / groupSize;
  for (const c of v.valueChunks) {
    const a = Math.max(from, c.start);
    const e = Math.min(to, c.start + c.filled);
    if (a >= e) continue;
    const r0 = a - c.start;
    const rows = (e - a) * H;
    const wpr = (D * bits) / 32;
    const codes = unpackCodes(c.packed.subarray(r0 * H * wpr, r0 * H * wpr + rows * wpr), rows, D, bits);
    const deq = dequantizeRows(codes, {
      rows, cols: D, bits, groupSize, precision,
      scale: readMeta(c.scale, r0 * H * G, rows * G), zero: readMeta(c.zero, r0 * H * G, rows * G),
    }); // token-major [e − a, H, D]
    for (let t = 0; t < e - a; t++) {
      for (let h = 0; h < H; h++) out.set(deq.subarray((t * H + h) * D, (t * H + h + 1) * D), (h * n + a - from + t) * D);
    }
  }
  return out;
}

/** Dequantize a layer view into head-major float32 arrays `[kvHeads, tokens, headDim]` (keys, values). */
export function dequantizeView(v: QuantizedLayerView): { keys: Float32Array; values: Float32Array } {
  const { kvHeads: H, headDim: D, tokens: N } = v;
  const keys = new Float32Array(H * N * D);
  const values = new Float32Array(H * N * D);
  for (const b of v.keyBlocks) {
    const deq = dequantizeKeyBlock(v, b); // [H, R, D]
    for (let h = 0; h < H; h++) keys.set(deq.subarray(h * b.tokens * D, (h + 1) * b.tokens * D), (h * N + b.start) * D);
  }
  const deqV = dequantizeValueRange(v, 0, v.quantizedValues);
  const nq = v.quantizedValues;
  for (let h = 0; h < H; h++) values.set(deqV.subarray(h * nq * D, (h + 1) * nq * D), h * N * D);
  const rk = v.residualKeys.length / (H * D);
  for (let t = 0; t < rk; t++) {
    for (let h = 0; h < H; h++) keys.set(v.residualKeys.subarray((t * H + h) * D, (t * H + h + 1) * D), (h * N + v.quantizedKeys + t) * D);
  }
  const rv = v.residualValues.length / (H * D);
  for (let t = 0; t < rv; t++) {
    for (let h = 0; h < H; h++) values.set(v.residualValues.subarray((t * H + h) * D, (t * H + h + 1) * D), (h * N + v.quantizedValues + t) * D);
  }
  return { keys, values };
}
