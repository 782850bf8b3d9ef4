import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { fullPrecisionPlan, type CrossLayerPlan } from '@xquant/cross-layer';
import { chunkedAttention } from './attention.js';
import type { AsyncKvCache, KvCacheShape, KvMemoryReport } from './types.js';
import { checkAlive, checkKv, checkLayer, checkQueries, validateCacheShape } from './validate.js';

/** Tokens per sealed K/V chunk of the full-precision cache (the open chunk grows by concatenation up to this). */
export const FULL_CHUNK_TOKENS = 1024;

interface FullLayer {
  keys: Tensor3D[];
  values: Tensor3D[];
  tokens: number;
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

  constructor(
    readonly strategyId: string,
    shape: KvCacheShape,
    private readonly chunkTokens = FULL_CHUNK_TOKENS,
  ) {
    this.shape = validateCacheShape(shape);
    this.layers = Array.from({ length: this.shape.layers }, () => ({ keys: [], values: [], tokens: 0 }));
  }

  /** Every layer's keys and values in full precision (bits 16). */
  get plan(): CrossLayerPlan {
    return fullPrecisionPlan(this.shape.layers);
  }

  private add(layer: number, keys: Tensor3D, values: Tensor3D, single: boolean): void {
    checkAlive(this.disposed, 'prefill/append');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    const n = checkKv(this.shape, keys, values, st.tokens, single);
    for (const [list, x] of [[st.keys, keys], [st.values, values]] as const) {
      const last = list[list.length - 1];
      if (last && last.shape[1] < this.chunkTokens) {
        list[list.length - 1] = tf.concat([last, x], 1);
        last.dispose();
      } else {
        list.push(tf.clone(x));
      }
    }
    st.tokens += n;
  }

  prefill(layer: number, keys: Tensor3D, values: Tensor3D): void {
    this.add(layer, keys, values, false);
  }
  append(layer: number, keys: Tensor3D, values: Tensor3D): void {
    this.add(layer, keys, values, true);
  }
  async prefillAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    this.add(layer, keys, values, false);
  }
  async appendAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    this.add(layer, keys, values, true);
  }

  attend(layer: number, queries: Tensor3D): Tensor3D {
    checkAlive(this.disposed, 'attend');
    checkLayer(layer, this.shape.layers);
    const st = this.layers[layer]!;
    checkQueries(this.shape, layer, queries, st.tokens);
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

  reset(): void {
    checkAlive(this.disposed, 'reset');
    for (const st of this.layers) {
      for (const t of [...st.keys, ...st.values]) t.dispose();
      st.keys = [];
      st.values = [];
      st.tokens = 0;
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.reset();
    this.disposed = true;
  }
}
