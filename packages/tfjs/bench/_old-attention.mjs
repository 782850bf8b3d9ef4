// ../../tmp/r13a/old-attention.ts
import * as tf from "@tensorflow/tfjs-core";
import { XqShapeError } from "@xquant/quant";
function plainAttention(queries, keys, values, scale) {
  return chunkedAttention(queries, [keys], [values], scale);
}
function chunkedAttention(queries, keyChunks, valueChunks, scale) {
  const [qHeads, q, d] = queries.shape;
  if (keyChunks.length === 0 || keyChunks.length !== valueChunks.length) {
    throw new XqShapeError(`attention needs at least one K/V chunk and as many value chunks as key chunks; got ${keyChunks.length} and ${valueChunks.length}`);
  }
  const kvHeads = keyChunks[0].shape[0];
  let total = 0;
  for (let i = 0; i < keyChunks.length; i++) {
    const k = keyChunks[i];
    const v = valueChunks[i];
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
    const qg = tf.reshape(queries, [kvHeads, rep * q, d]);
    const parts = keyChunks.map((k) => headMatMul(qg, k, true));
    let scores = parts.length === 1 ? parts[0] : tf.concat(parts, 2);
    scores = tf.mul(scores, tf.scalar(s));
    if (q > 1) {
      const bias = causalBias(q, total);
      scores = tf.add(tf.reshape(scores, [kvHeads, rep, q, total]), bias);
      scores = tf.reshape(scores, [kvHeads, rep * q, total]);
    }
    const p = tf.softmax(scores);
    let out;
    if (keyChunks.length === 1) out = headMatMul(p, valueChunks[0], false);
    else {
      let off = 0;
      const outs = valueChunks.map((v) => {
        const n = v.shape[1];
        const pi = tf.slice(p, [0, 0, off], [kvHeads, rep * q, n]);
        off += n;
        return headMatMul(pi, v, false);
      });
      out = tf.addN(outs);
    }
    return tf.reshape(out, [qHeads, q, d]);
  });
}
function headMatMul(a, b, transposeB) {
  if (tf.getBackend() !== "wasm") return tf.matMul(a, b, false, transposeB);
  const bs = tf.unstack(b);
  const outs = tf.unstack(a).map((x, h) => tf.matMul(x, transposeB ? tf.transpose(bs[h]) : bs[h]));
  return tf.stack(outs);
}
function causalBias(q, total) {
  const b = new Float32Array(q * total);
  for (let i = 0; i < q; i++) {
    const last = total - q + i;
    for (let t = last + 1; t < total; t++) b[i * total + t] = -Infinity;
  }
  return tf.tensor2d(b, [q, total]);
}
export {
  chunkedAttention,
  plainAttention
};
