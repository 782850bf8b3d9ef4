import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor2D, Tensor3D } from '@tensorflow/tfjs-core';
import { XqShapeError } from '@xquant/quant';

/**
 * Plain causal multi-head attention with tfjs ops: `softmax(q·kᵀ/√d + mask)·v`, GQA/MQA when `queries` has more heads
 * than `keys` (query head h reads KV head ⌊h·kvHeads/qHeads⌋). `queries` `[qHeads, q, d]` are the last `q` of the
 * `T` positions in `keys`/`values` `[kvHeads, T, d]`; query i may see positions `0 … T−q+i`. Returns `[qHeads, q, d]`.
 * This is the `full` strategy's attention and the oracle the quantized caches are tested against.
 */
export function plainAttention(queries: Tensor3D, keys: Tensor3D, values: Tensor3D, scale?: number): Tensor3D {
  return chunkedAttention(queries, [keys], [values], scale);
}

/**
 * {@link plainAttention} over K/V stored as a list of chunks along the token axis (no concatenation of K/V):
 * scores per chunk, one softmax over all of them, then a sum of per-chunk `p·v`.
 */
export function chunkedAttention(queries: Tensor3D, keyChunks: readonly Tensor3D[], valueChunks: readonly Tensor3D[], scale?: number): Tensor3D {
  const [qHeads, q, d] = queries.shape;
  if (keyChunks.length === 0 || keyChunks.length !== valueChunks.length) {
    throw new XqShapeError(`attention needs at least one K/V chunk and as many value chunks as key chunks; got ${keyChunks.length} and ${valueChunks.length}`);
  }
  const kvHeads = keyChunks[0]!.shape[0];
  let total = 0;
  for (let i = 0; i < keyChunks.length; i++) {
    const k = keyChunks[i]!;
    const v = valueChunks[i]!;
    if (k.shape[0] !== kvHeads || v.shape[0] !== kvHeads || k.shape[2] !== d || v.shape[2] !== d || k.shape[1] !== v.shape[1]) {
      throw new XqShapeError(`K/V chunk ${i}: expected [${kvHeads}, n, ${d}] for both, got keys [${k.shape}] and values [${v.shape}]`);
    }
    total += k.shape[1];
  }
  if (qHeads % kvHeads !== 0) throw new XqShapeError(`queries: ${qHeads} heads is not a multiple of ${kvHeads} KV heads`);
  if (q > total) throw new XqShapeError(`queries: ${q} query positions but only ${total} cached tokens`);
  const rep = qHeads / kvHeads;
  const s = scale ?? 1 / Math.sqrt(d);
  return tf.tidy(() => {
    // [qHeads, q, d] → [kvHeads, rep·q, d]: the query heads sharing a KV head become extra rows.
    const qg = tf.reshape(queries, [kvHeads, rep * q, d]);
    const parts = keyChunks.map((k) => headMatMul(qg as Tensor3D, k, true));
    let scores: Tensor = parts.length === 1 ? parts[0]! : tf.concat(parts, 2);
    scores = tf.mul(scores, tf.scalar(s));
    if (q > 1) {
      const bias = causalBias(q, total); // [q, total]
      scores = tf.add(tf.reshape(scores, [kvHeads, rep, q, total]), bias);
      scores = tf.reshape(scores, [kvHeads, rep * q, total]);
    }
    const p = tf.softmax(scores);
    let out: Tensor;
    if (keyChunks.length === 1) out = headMatMul(p as Tensor3D, valueChunks[0]!, false);
    else {
      let off = 0;
      const outs = valueChunks.map((v) => {
        const n = v.shape[1];
        const pi = tf.slice(p, [0, 0, off], [kvHeads, rep * q, n]) as Tensor3D;
        off += n;
        return headMatMul(pi, v, false);
      });
      out = tf.addN(outs);
    }
    return tf.reshape(out, [qHeads, q, d]) as Tensor3D;
  });
}

/**
 * `a[h]·b[h]` (or `a[h]·b[h]ᵀ`) for every head h. tfjs-wasm runs a batched or transposed-B matmul through a plain loop
 * (measured 8–14× slower at 2,032 tokens than its XNNPACK path, which takes 2-D products with an untransposed B), so
 * there each head is a 2-D product of its own; other backends get one batched matmul.
 */
function headMatMul(a: Tensor3D, b: Tensor3D, transposeB: boolean): Tensor3D {
  if (tf.getBackend() !== 'wasm') return tf.matMul(a, b, false, transposeB);
  const bs = tf.unstack(b) as Tensor2D[];
  const outs = (tf.unstack(a) as Tensor2D[]).map((x, h) => tf.matMul(x, transposeB ? tf.transpose(bs[h]!) : bs[h]!));
  return tf.stack(outs) as Tensor3D;
}

/** `[q, total]` additive mask: 0 where query i (at position total−q+i) may look, −∞ after it. */
function causalBias(q: number, total: number): Tensor {
  const b = new Float32Array(q * total);
  for (let i = 0; i < q; i++) {
    const last = total - q + i;
    for (let t = last + 1; t < total; t++) b[i * total + t] = -Infinity;
  }
  return tf.tensor2d(b, [q, total]);
}
