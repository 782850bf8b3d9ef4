import * as tf from '@tensorflow/tfjs-core';
import { XqShapeError } from '@xquant/quant';
import { createKvCache, type KvCache, type KvCacheShape } from '@xquant/tfjs';
import type { EvalModel } from './protocol.js';

/** K, V and the last queries of every layer after a full-precision prefill of a prompt. */
export interface CapturedLayers {
  /** Cache shape of the model. */
  shape: KvCacheShape;
  /** Prompt length. */
  tokens: number;
  /** Query heads. */
  qHeads: number;
  /** Query rows kept per layer (the last positions of the prompt). */
  queryRows: number;
  /** Per layer `[kvHeads, tokens, headDim]`, float32 (after RoPE). */
  keys: Float32Array[];
  /** Per layer `[kvHeads, tokens, headDim]`, float32. */
  values: Float32Array[];
  /** Per layer `[qHeads, queryRows, headDim]` (after RoPE). */
  queries: Float32Array[];
}

/**
 * `inner` with the queries of every `attend` handed to `onQueries` first (everything else goes to `inner` as it is):
 * lets the evaluation see a model's real queries through the public cache interface.
 */
export function recordQueries(inner: KvCache, onQueries: (layer: number, queries: tf.Tensor3D) => void): KvCache {
  const attend = (layer: number, queries: tf.Tensor3D) => (onQueries(layer, queries), inner.attend(layer, queries));
  return new Proxy(inner, { get: (t, p) => (p === 'attend' ? attend : typeof Reflect.get(t, p) === 'function' ? Reflect.get(t, p).bind(t) : Reflect.get(t, p)) });
}

/** Prefill `ids` at full precision and keep every layer's K, V and its last `queryRows` queries. */
export async function captureLayers(model: EvalModel, ids: readonly number[], options: { queryRows?: number } = {}): Promise<CapturedLayers> {
  const T = ids.length;
  const queryRows = Math.min(options.queryRows ?? 32, T);
  if (T < 2) throw new XqShapeError(`captureLayers: the prompt needs at least 2 tokens; got ${T}`);
  const shape = model.cacheShape;
  const queries: Float32Array[] = [];
  let qHeads = 0;
  const full = createKvCache('full', shape);
  const rec = recordQueries(full, (layer, q) => {
    qHeads = q.shape[0];
    const rows = q.shape[1];
    const last = tf.slice(q, [0, rows - queryRows, 0], [qHeads, queryRows, shape.headDim]);
    queries[layer] = last.dataSync() as Float32Array;
    last.dispose();
  });
  try {
    const logits = model.forward(ids, rec);
    logits.dispose();
    const keys: Float32Array[] = [];
    const values: Float32Array[] = [];
    for (let l = 0; l < shape.layers; l++) {
      const kv = full.dequantize(l);
      keys.push((await kv.keys.data()) as Float32Array);
      values.push((await kv.values.data()) as Float32Array);
      kv.keys.dispose();
      kv.values.dispose();
    }
    return { shape, tokens: T, qHeads, queryRows, keys, values, queries };
  } finally {
    rec.dispose();
  }
}

/** Relative errors of one layer: ‖x̂ − x‖ / ‖x‖ (Frobenius). */
export interface LayerError {
  /** Layer index. */
  layer: number;
  /** Attention output over the cache vs over full-precision K/V, for the captured queries. */
  attention: number;
  /** Keys as the attention reads them vs the true keys. */
  keys: number;
  /** Values, as for keys. */
  values: number;
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  return den === 0 ? (num === 0 ? 0 : Infinity) : Math.sqrt(num / den);
}

/** Fill `cache` with the captured K/V of every layer and run the schedule's flush (each layer in order). */
export function loadCaptured(cache: KvCache, cap: CapturedLayers): void {
  const { kvHeads, headDim } = cap.shape;
  // Outside tf.tidy: caches keep tensors (the full cache clones its inputs) beyond the call.
  const q = tf.zeros([kvHeads, 1, headDim]) as tf.Tensor3D;
  try {
    for (let l = 0; l < cap.shape.layers; l++) {
      const k = tf.tensor3d(cap.keys[l]!, [kvHeads, cap.tokens, headDim]);
      const v = tf.tensor3d(cap.values[l]!, [kvHeads, cap.tokens, headDim]);
      try {
        cache.prefill(l, k, v);
      } finally {
        k.dispose();
        v.dispose();
      }
    }
    for (let l = 0; l < cap.shape.layers; l++) cache.attend(l, q).dispose(); // attend ends with the flush the schedule prescribes
  } finally {
    q.dispose();
  }
}

const fullOutputs = new WeakMap<CapturedLayers, Float32Array[]>();

function attendData(cache: KvCache, cap: CapturedLayers, l: number): Float32Array {
  const q = tf.tensor3d(cap.queries[l]!, [cap.qHeads, cap.queryRows, cap.shape.headDim]);
  try {
    const out = cache.attend(l, q);
    const data = out.dataSync() as Float32Array;
    out.dispose();
    return data;
  } finally {
    q.dispose();
  }
}

function referenceOutputs(cap: CapturedLayers): Float32Array[] {
  let out = fullOutputs.get(cap);
  if (!out) {
    const full = createKvCache('full', cap.shape);
    try {
      loadCaptured(full, cap);
      out = Array.from({ length: cap.shape.layers }, (_, l) => attendData(full, cap, l));
    } finally {
      full.dispose();
    }
    fullOutputs.set(cap, out);
  }
  return out;
}

/**
 * Per-layer error of a cache on captured layers, each layer in isolation (its own K/V and queries, no propagation
 * through the model): the cache is filled with the true K/V of the prompt and flushed by its schedule; then the
 * attention output for the captured queries, the keys and the values are compared with full precision.
 */
export function layerErrors(cap: CapturedLayers, makeCache: (shape: KvCacheShape) => KvCache, layers?: readonly number[]): LayerError[] {
  const ref = referenceOutputs(cap);
  const cache = makeCache(cap.shape);
  try {
    loadCaptured(cache, cap);
    const which = layers ?? Array.from({ length: cap.shape.layers }, (_, l) => l);
    return which.map((l) => {
      const out = attendData(cache, cap, l);
      const kv = cache.dequantize(l);
      const k = kv.keys.dataSync();
      const v = kv.values.dataSync();
      kv.keys.dispose();
      kv.values.dispose();
      return { layer: l, attention: relErr(out, ref[l]!), keys: relErr(k, cap.keys[l]!), values: relErr(v, cap.values[l]!) };
    });
  } finally {
    cache.dispose();
  }
}
