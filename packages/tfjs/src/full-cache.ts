import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { fullPrecisionPlan, type CrossLayerPlan } from '@xquant/cross-layer';
import { chunkedAttention } from './attention.js';
import type { AsyncKvCache, KvCacheShape, KvMemoryReport } from './types.js';
import {
  OpQueue,
  checkAlive,
  checkAttentionBound,
  checkCapacity,
  checkKv,
  checkLayer,
  checkMagnitude,
  checkQueries,
  maxAbsOf,
  maxAbsSync,
  validateCacheShape,
} from './validate.js';

/** Tokens per sealed K/V chunk of the full-precision cache (the open chunk grows by concatenation up to this). */
export const FULL_CHUNK_TOKENS = 1024;

interface FullLayer {
  keys: Tensor3D[];
  values: Tensor3D[];
  tokens: number;
  /** Largest |key| and |value| appended (bounds the attention scores). */
  maxK: number;
  maxV: number;
}

/** `[max|keys|, max|values|]` (NaN for a non-finite element): one reduction each, read together. */
function magnitudes(keys: Tensor3D, values: Tensor3D): tf.Tensor1D {
  return tf.tidy(() => tf.stack([maxAbsOf(keys), maxAbsOf(values)]) as tf.Tensor1D);
}

/**
 * Float32 KV cache held as tfjs tensors on the active backend, in chunks of {@link FULL_CHUNK_TOKENS} tokens so a decode
 * step copies at most one chunk; attention is {@link chunkedAttention} (plain attention, no concatenation of K/V).
 */
export class FullKvCache implements AsyncKvCache {
  /** The shape the cache was created for. */
  readonly shape: Readonly<KvCacheShape>;
  private layers: FullLayer[];
  private disposed = false;
  private readonly ops = new OpQueue();

  constructor(
    readonly strategyId: string,
    shape: KvCacheShape,
    private readonly chunkTokens = FULL_CHUNK_TOKENS,
  ) {
    this.shape = validateCacheShape(shape);
    this.layers = Array.from({ length: this.shape.layers }, () => ({ keys: [], values: [], tokens: 0, maxK: 0, maxV: 0 }));
  }

  /** Every layer's keys and values in full precision (bits 16). */
  get plan(): CrossLayerPlan {
    return fullPrecisionPlan(this.shape.layers);
  }

  private check(layer: number, keys: Tensor3D, values: Tensor3D, single: boolean): number {
    checkAlive(this.disposed, 'prefill/append');
    checkLayer(layer, this.shape.layers);
    return checkKv(this.shape, keys, values, this.layers[layer]!.tokens, single);
  }

  /** Appends after the input policy's checks (finite K/V, see `checkMagnitude`); nothing changes on an error. */
  private add(layer: number, keys: Tensor3D, values: Tensor3D, n: number, mk: number | undefined, mv: number | undefined): void {
    const st = this.layers[layer]!;
    checkCapacity(this.shape, st.tokens, n);
    checkMagnitude(mk, 'keys', layer);
    checkMagnitude(mv, 'values', layer);
    const next: Record<'keys' | 'values', Tensor3D[]> = { keys: st.keys.slice(), values: st.values.slice() };
    const old: Tensor3D[] = [];
    tf.tidy(() => {
      for (const [list, x] of [[next.keys, keys], [next.values, values]] as const) {
        const last = list[list.length - 1];
        if (last && last.shape[1] < this.chunkTokens) {
          list[list.length - 1] = tf.keep(tf.concat([last, x], 1));
          old.push(last);
        } else {
          list.push(tf.keep(tf.clone(x)));
        }
      }
    });
    tf.dispose(old);
    st.keys = next.keys;
    st.values = next.values;
    st.tokens += n;
    // not read (a backend without cheap synchronous reads): unknown, the bound check is off for this layer
    st.maxK = mk === undefined ? NaN : Math.max(st.maxK, mk);
    st.maxV = mv === undefined ? NaN : Math.max(st.maxV, mv);
  }

  private addSync(what: string, layer: number, keys: Tensor3D, values: Tensor3D, single: boolean): void {
    this.ops.assertIdle(what);
    const n = this.check(layer, keys, values, single);
    this.add(layer, keys, values, n, maxAbsSync(keys), maxAbsSync(values));
  }

  private addAsync(what: string, layer: number, keys: Tensor3D, values: Tensor3D, single: boolean): Promise<void> {
    let n: number;
    let read: Promise<Float32Array>;
    let snapshot: [Tensor3D, Tensor3D];
    try {
      n = this.check(layer, keys, values, single);
      snapshot = [tf.clone(keys), tf.clone(values)]; // the tensors as they are now (the caller may dispose them)
      const m = magnitudes(keys, values);
      read = (m.data() as Promise<Float32Array>).finally(() => m.dispose());
    } catch (e) {
      return Promise.reject(e);
    }
    return this.ops
      .run(what, async (live) => {
        const [mk, mv] = await read;
        live();
        this.add(layer, snapshot[0], snapshot[1], n, mk!, mv!);
      })
      .finally(() => tf.dispose(snapshot));
  }

  prefill(layer: number, keys: Tensor3D, values: Tensor3D): void {
    this.addSync('prefill', layer, keys, values, false);
  }
  append(layer: number, keys: Tensor3D, values: Tensor3D): void {
    this.addSync('append', layer, keys, values, true);
  }
  /** {@link prefill} validating the input asynchronously; a cache's async operations run one at a time, in call order. */
  prefillAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    return this.addAsync('prefillAsync', layer, keys, values, false);
  }
  /** {@link append} validating the input asynchronously; a cache's async operations run one at a time, in call order. */
  appendAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    return this.addAsync('appendAsync', layer, keys, values, true);
  }

  attend(layer: number, queries: Tensor3D): Tensor3D {
    checkAlive(this.disposed, 'attend');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    this.ops.assertIdle('attend');
    checkQueries(this.shape, layer, queries, st.tokens);
    const maxQ = maxAbsSync(queries);
    checkAttentionBound(layer, this.shape.headDim, maxQ, st.maxK, st.maxV);
    return chunkedAttention(queries, st.keys, st.values);
  }

  seqLength(layer = 0): number {
    checkAlive(this.disposed, 'seqLength');
    checkLayer(layer, this.shape.layers);
    return this.layers[layer]!.tokens;
  }

  memory(): KvMemoryReport {
    checkAlive(this.disposed, 'memory');
    let bytes = 0;
    for (const st of this.layers) for (const t of [...st.keys, ...st.values]) bytes += t.size * 4;
    const tokens = this.layers[0]!.tokens;
    const elements = 2 * this.shape.layers * this.shape.kvHeads * this.shape.headDim * tokens;
    return {
      codeBytes: 0,
      metadataBytes: 0,
      residualBytes: bytes,
      totalBytes: bytes,
      tokens,
      elements,
      paperBitsPerElement: 16,
      trueBitsPerElement: elements === 0 ? 0 : (8 * bytes) / elements,
    };
  }

  dequantize(layer: number): { keys: Tensor3D; values: Tensor3D } {
    checkAlive(this.disposed, 'dequantize');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    const { kvHeads, headDim } = this.shape;
    if (st.tokens === 0) return { keys: tf.zeros([kvHeads, 0, headDim]) as Tensor3D, values: tf.zeros([kvHeads, 0, headDim]) as Tensor3D };
    return { keys: tf.concat(st.keys, 1), values: tf.concat(st.values, 1) };
  }

  /** Drops every token; pending `prefillAsync`/`appendAsync` calls reject with `E_STATE`. */
  reset(): void {
    checkAlive(this.disposed, 'reset');
    this.ops.cancel();
    for (const st of this.layers) {
      for (const t of [...st.keys, ...st.values]) t.dispose();
      st.keys = [];
      st.values = [];
      st.tokens = 0;
      st.maxK = 0;
      st.maxV = 0;
    }
  }

  /** Frees everything; pending `prefillAsync`/`appendAsync` calls reject with `E_STATE`. */
  dispose(): void {
    if (this.disposed) return;
    this.reset();
    this.disposed = true;
  }
}
