import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import type { Bits } from '@xquant/quant';
import { plainAttention } from '../attention.js';
import { tokenMajorToHeadMajor } from '../quantized/store.js';
import { keyBlockScores, valueChunkMix } from './js-packed.js';
import type { AttentionKernel, QuantizedLayerView } from './registry.js';

/** Query vectors processed together per KV head (bounds the score scratch to TILE × tokens floats). */
const TILE = 32;

const scratch: { Q: Float32Array; S: Float32Array; O: Float64Array; sc: Float32Array; zc: Float32Array } = {
  Q: new Float32Array(0),
  S: new Float32Array(0),
  O: new Float64Array(0),
  sc: new Float32Array(0),
  zc: new Float32Array(0),
};

function grow<T extends Float32Array | Float64Array>(a: T, n: number, make: (n: number) => T): T {
  return a.length >= n ? a : make(n);
}

/**
 * Attention computed in JavaScript directly on packed codes (cpu, wasm and native backends, where the query tensor
 * can be read synchronously). Prefill with nothing quantized yet goes through tfjs ops ({@link plainAttention}).
 */
export const jsPackedAttentionKernel: AttentionKernel = {
  id: 'js-packed',
  attend(v: QuantizedLayerView, queries: Tensor3D): Tensor3D {
    const [qHeads, nq, D] = queries.shape;
    const H = v.kvHeads;
    const N = v.tokens;
    if (v.quantizedKeys === 0 && v.quantizedValues === 0) {
      // Full-precision window only (e.g. prefill): plain tfjs attention.
      const n = v.residualKeys.length / (H * D);
      return tf.tidy(() =>
        plainAttention(
          queries,
          tf.tensor3d(tokenMajorToHeadMajor(v.residualKeys, n, H, D), [H, n, D]),
          tf.tensor3d(tokenMajorToHeadMajor(v.residualValues, n, H, D), [H, n, D]),
        ),
      );
    }
    const q = queries.dataSync() as Float32Array;
    const rep = qHeads / H;
    const scale = 1 / Math.sqrt(D);
    const out = new Float32Array(qHeads * nq * D);
    const gs = v.groupSize;
    const total = rep * nq;
    const tile = Math.min(TILE, total);
    scratch.Q = grow(scratch.Q, tile * D, (n) => new Float32Array(n));
    scratch.S = grow(scratch.S, tile * N, (n) => new Float32Array(n));
    scratch.O = grow(scratch.O, tile * D, (n) => new Float64Array(n));
    const { Q, S, O } = scratch;
    const rk = v.residualKeys.length / (H * D);
    const rv = v.residualValues.length / (H * D);
    for (let h = 0; h < H; h++) {
      for (let v0 = 0; v0 < total; v0 += tile) {
        const M = Math.min(tile, total - v0);
        // vector j = v0 + m ↔ query head h·rep + (j % rep), query row ⌊j / rep⌋
        for (let m = 0; m < M; m++) {
          const j = v0 + m;
          const qh = h * rep + (j % rep);
          const row = Math.floor(j / rep);
          Q.set(q.subarray((qh * nq + row) * D, (qh * nq + row + 1) * D), m * D);
        }
        // 1. scores over quantized key blocks
        for (const b of v.keyBlocks) {
          const G = b.tokens / gs;
          scratch.sc = v.decodeMeta(b.scale, h * D * G, D * G, scratch.sc);
          scratch.zc = v.decodeMeta(b.zero, h * D * G, D * G, scratch.zc);
          keyBlockScores(b.packed, h, D, b.tokens, v.keyBits as Bits, gs, scratch.sc, scratch.zc, Q, M, S, N, b.start);
        }
        // 2. scores over full-precision keys
        for (let t = 0; t < rk; t++) {
          const ko = (t * H + h) * D;
          const pos = v.quantizedKeys + t;
          for (let m = 0; m < M; m++) {
            let acc = 0;
            const qo = m * D;
            for (let d = 0; d < D; d++) acc += Q[qo + d]! * v.residualKeys[ko + d]!;
            S[m * N + pos] = acc;
          }
        }
        // 3. scale, causal mask, softmax
        for (let m = 0; m < M; m++) {
          const row = Math.floor((v0 + m) / rep);
          const last = N - nq + row;
          const so = m * N;
          let mx = -Infinity;
          for (let t = 0; t <= last; t++) {
            const s = S[so + t]! * scale;
            S[so + t] = s;
            if (s > mx) mx = s;
          }
          let sum = 0;
          for (let t = 0; t <= last; t++) {
            const e = Math.exp(S[so + t]! - mx);
            S[so + t] = e;
            sum += e;
          }
          const inv = 1 / sum;
          for (let t = 0; t <= last; t++) S[so + t] = S[so + t]! * inv;
          for (let t = last + 1; t < N; t++) S[so + t] = 0;
        }
        // 4. mix values
        O.fill(0, 0, M * D);
        for (const c of v.valueChunks) {
          if (c.filled === 0) continue;
          const G = D / gs;
          scratch.sc = v.decodeMeta(c.scale, 0, c.filled * H * G, scratch.sc);
          scratch.zc = v.decodeMeta(c.zero, 0, c.filled * H * G, scratch.zc);
          valueChunkMix(c.packed, h, H, D, c.filled, v.valueBits as Bits, gs, scratch.sc, scratch.zc, S, M, N, c.start, O);
        }
        for (let t = 0; t < rv; t++) {
          const vo = (t * H + h) * D;
          const pos = v.quantizedValues + t;
          for (let m = 0; m < M; m++) {
            const p = S[m * N + pos]!;
            if (p === 0) continue;
            const oo = m * D;
            for (let d = 0; d < D; d++) O[oo + d] += p * v.residualValues[vo + d]!;
          }
        }
        for (let m = 0; m < M; m++) {
          const j = v0 + m;
          const qh = h * rep + (j % rep);
          const row = Math.floor(j / rep);
          const oo = (qh * nq + row) * D;
          for (let d = 0; d < D; d++) out[oo + d] = O[m * D + d]!;
        }
      }
    }
    return tf.tensor3d(out, [qHeads, nq, D]);
  },
};
