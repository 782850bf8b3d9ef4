import * as tf from '@tensorflow/tfjs-core';
import type { KvCache, KvCacheShape, KvMemoryReport } from '@xquant/tfjs';

/**
 * Test-only full-precision KvCache: concatenates float32 K/V per layer and runs exact causal softmax attention.
 * Written here from the contract in packages/tfjs/src/types.ts so the runtime can be tested on its own.
 */
export function createF32Cache(shape: KvCacheShape): KvCache {
  const { layers, kvHeads, headDim } = shape;
  let keys: (tf.Tensor3D | null)[] = Array(layers).fill(null);
  let values: (tf.Tensor3D | null)[] = Array(layers).fill(null);
  const add = (layer: number, k: tf.Tensor3D, v: tf.Tensor3D) => {
    if (k.shape[0] !== kvHeads || k.shape[2] !== headDim) throw new Error(`bad K shape ${k.shape}`);
    const oldK = keys[layer];
    const oldV = values[layer];
    keys[layer] = tf.keep(oldK ? tf.concat([oldK, k], 1) : k.clone());
    values[layer] = tf.keep(oldV ? tf.concat([oldV, v], 1) : v.clone());
    oldK?.dispose();
    oldV?.dispose();
  };
  const seq = (layer = 0) => keys[layer]?.shape[1] ?? 0;
  return {
    strategyId: 'test-f32',
    shape,
    prefill: add,
    append: add,
    attend(layer, q) {
      return tf.tidy(() => {
        const K = keys[layer]!;
        const V = values[layer]!;
        const [nh, qn, d] = q.shape;
        const T = K.shape[1];
        const group = nh / kvHeads;
        const maskData = new Float32Array(qn * T);
        for (let i = 0; i < qn; i++) for (let j = T - qn + i + 1; j < T; j++) maskData[i * T + j] = -1e30;
        const mask = tf.tensor2d(maskData, [qn, T]);
        // one 2-D matmul per KV head (batched matmul is ~10x slower on wasm)
        const outs: tf.Tensor[] = [];
        for (let g = 0; g < kvHeads; g++) {
          const qg = tf.reshape(tf.slice(q, [g * group, 0, 0], [group, qn, d]), [group * qn, d]);
          const kT = tf.transpose(tf.reshape(tf.slice(K, [g, 0, 0], [1, T, d]), [T, d]));
          const vg = tf.reshape(tf.slice(V, [g, 0, 0], [1, T, d]), [T, d]);
          const s = tf.add(tf.reshape(tf.mul(tf.matMul(qg, kT), 1 / Math.sqrt(d)), [group, qn, T]), mask);
          outs.push(tf.matMul(tf.reshape(tf.softmax(s), [group * qn, T]), vg));
        }
        const out = tf.concat(outs, 0);
        return tf.reshape(out, [nh, qn, d]) as tf.Tensor3D;
      });
    },
    seqLength: seq,
    memory(): KvMemoryReport {
      const tokens = seq(0);
      const elements = 2 * layers * kvHeads * headDim * tokens;
      const bytes = elements * 4;
      return { codeBytes: 0, metadataBytes: 0, residualBytes: bytes, totalBytes: bytes, tokens, elements, paperBitsPerElement: 32, trueBitsPerElement: 32 };
    },
    dequantize(layer) {
      return { keys: keys[layer]!.clone(), values: values[layer]!.clone() };
    },
    reset() {
      for (const t of [...keys, ...values]) t?.dispose();
      keys = Array(layers).fill(null);
      values = Array(layers).fill(null);
    },
    dispose() {
      this.reset();
    },
  };
}
