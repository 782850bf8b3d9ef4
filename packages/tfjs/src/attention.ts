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
 * scores per chunk, a softmax over all of them computed per chunk (`exp(s − max)` with the max over every chunk, one
 * sum), then a sum of per-chunk `p·v` divided by it. Every op is per chunk: no concatenated score row is sliced back
 * (tfjs-cpu slices a row's tail element by element, which made a decode step over 8 chunks ~35× slower than over 1).
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
    const qg = tf.reshape(queries, [kvHeads, rep * q, d]) as Tensor3D;
    const sc = tf.scalar(s);
    let off = 0;
    const scores = keyChunks.map((k) => {
      let x: Tensor = tf.mul(headMatMul(qg, k, true), sc);
      const n = k.shape[1];
      if (q > 1 && off + n > total - q + 1) {
        const bias = causalBias(q, total, off, n); // [q, n]
        x = tf.reshape(tf.add(tf.reshape(x, [kvHeads, rep, q, n]), bias), [kvHeads, rep * q, n]);
      }
      off += n;
      return x;
    });
    if (scores.length === 1) return tf.reshape(headMatMul(tf.softmax(scores[0]!) as Tensor3D, valueChunks[0]!, false), [qHeads, q, d]) as Tensor3D;
    let mx = tf.max(scores[0]!, -1, true);
    for (let i = 1; i < scores.length; i++) mx = tf.maximum(mx, tf.max(scores[i]!, -1, true));
    const e = scores.map((x) => tf.exp(tf.sub(x, mx)) as Tensor3D);
    const sum = tf.addN(e.map((x) => tf.sum(x, -1, true)));
    const out = tf.div(tf.addN(e.map((x, i) => headMatMul(x, valueChunks[i]!, false))), sum);
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

/** `[q, n]` additive mask of positions `off … off+n−1`: 0 where query i (at position total−q+i) may look, −∞ after it. */
function causalBias(q: number, total: number, off = 0, n = total): Tensor {
  const b = new Float32Array(q * n);
  for (let i = 0; i < q; i++) {
    const last = total - q + i;
    for (let t = Math.max(0, last + 1 - off); t < n; t++) b[i * n + t] = -Infinity;
  }
  return tf.tensor2d(b, [q, n]);
}
