import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { packedKeyScores, packedValueMix, type Bits, type PackedKvView } from '@xquant/quant';
import { plainAttention } from '../attention.js';
import { tokenMajorToHeadMajor } from '../quantized/store.js';
import type { AttentionKernel, QuantizedLayerView } from './registry.js';

/** Floats of the score buffer per call: query rows are processed in tiles that fit. */
const SCORE_BUDGET = 1 << 23;

/**
 * A layer's quantized storage as `@xquant/quant` kernel views, without copies: the key blocks (one block of R tokens
 * each) and the value chunks that hold tokens (token-major, the last one partly filled). Metadata stay as stored
 * (fp16 bit patterns for precision `'fp16'`). These are the views the `js-packed` kernel passes to
 * `packedKeyScores` / `packedValueMix`, the kernels `xquant verify` checks.
 */
export function layerKvViews(v: QuantizedLayerView): { keys: PackedKvView[]; values: PackedKvView[] } {
  const geom = { heads: v.kvHeads, headDim: v.headDim };
  const keys = v.keyBits === 16 ? [] : v.keyBlocks.map((b): PackedKvView => ({
    ...geom, axis: 'channel', tokens: b.tokens, bits: v.keyBits as Bits, groupSize: v.keyGroupSize, packed: b.packed, scale: b.scale, zero: b.zero,
  }));
  const values = v.valueBits === 16 ? [] : v.valueChunks.filter((c) => c.filled > 0).map((c): PackedKvView => ({
    ...geom, axis: 'token', tokens: c.filled, capacity: c.capacity, tokenMajor: true, bits: v.valueBits as Bits, groupSize: v.valueGroupSize,
    packed: c.packed, scale: c.scale, zero: c.zero,
  }));
  return { keys, values };
}

const scratch = { S: new Float32Array(0), O: new Float32Array(0), A: new Float64Array(0) };

/** `S[j·N + from + t] = q_j · k_t` for the float32 tokens (token-major `x`) that follow the quantized ones. */
function residualScores(x: Float32Array, from: number, H: number, D: number, perKv: number, Q: Float32Array, M: number, S: Float32Array, N: number): void {
  const n = x.length / (H * D);
  for (let j = 0; j < M; j++) {
    const kv = Math.floor(j / perKv);
    for (let t = 0; t < n; t++) {
      let acc = 0;
      for (let d = 0, o = (t * H + kv) * D, qo = j * D; d < D; d++) acc += Q[qo + d]! * x[o + d]!;
      S[j * N + from + t] = acc;
    }
  }
}

/** `A[j·D + d] = O[j·D + d] + Σ_t S[j·N + from + t]·v_t[d]` over the float32 values that follow the quantized ones. */
function residualMix(x: Float32Array, from: number, H: number, D: number, perKv: number, S: Float32Array, M: number, N: number, O: Float32Array, A: Float64Array): void {
  const n = x.length / (H * D);
  for (let j = 0; j < M; j++) {
    const kv = Math.floor(j / perKv);
    for (let d = 0; d < D; d++) A[j * D + d] = O[j * D + d]!;
    for (let t = 0; t < n; t++) {
      const p = S[j * N + from + t]!;
      if (p === 0) continue;
      for (let d = 0, o = (t * H + kv) * D; d < D; d++) A[j * D + d] = A[j * D + d]! + p * x[o + d]!;
    }
  }
}

/** 2^k for k = −150 … 9 (the range of exp's scaling step below). */
const POW2 = Float64Array.from({ length: 160 }, (_, i) => 2 ** (i - 150));

/**
 * Scale, causal mask and softmax of M score rows in place, unnormalized (exp(s − max)); row sums go to `sums`.
 * Vector j is query row `row0 + j mod n` of `nq` (the last nq of N positions). exp(x ≤ 0) is computed as
 * 2^k·e^r (r = x − k·ln 2, |r| ≤ ln 2 / 2, degree-7 Taylor polynomial: relative error < 1e-9, under float32 rounding),
 * about twice as fast as Math.exp here; results below the float32 range are 0.
 */
function softmaxRows(S: Float32Array, M: number, N: number, n: number, nq: number, row0: number, scale: number, sums: Float64Array): void {
  for (let j = 0; j < M; j++) {
    const last = N - nq + row0 + (j % n);
    const so = j * N;
    let mx = -Infinity;
    for (let t = 0; t <= last; t++) {
      S[so + t] = S[so + t]! * scale;
      const s = S[so + t]!; // the max of the stored (float32) values: the largest gets exp(0) = 1 however large
      if (s > mx) mx = s;
    }
    let sum = 0;
    for (let t = so; t <= so + last; t++) {
      const x = S[t]! - mx;
      if (x < -104) {
        S[t] = 0;
        continue;
      }
      const k = Math.floor(x * Math.LOG2E + 0.5);
      const r = x - k * 0.6931471803691238 - k * 1.9082149292705877e-10;
      const e = POW2[k + 150]! * (1 + r * (1 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r / 5040)))))));
      S[t] = e;
      sum += e;
    }
    S.fill(0, so + last + 1, so + N);
    sums[j] = sum;
  }
}

/**
 * Attention computed directly on packed codes where the query tensor can be read synchronously (cpu, wasm and native
 * backends): the two reductions q·K̂ᵀ and p·V̂ run in `@xquant/quant` (`packedKeyScores` / `packedValueMix`, WebAssembly
 * SIMD or JS, see `setKernelBackend`) over the cache's storage ({@link layerKvViews}); this kernel gathers queries,
 * adds the float32 window, and applies the causal softmax. Prefill with nothing quantized yet goes through tfjs ops
 * ({@link plainAttention}).
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
    const { keys, values } = layerKvViews(v);
    const out = new Float32Array(qHeads * nq * D);
    const tile = Math.max(1, Math.min(nq, Math.floor(SCORE_BUDGET / (qHeads * N))));
    const scale = 1 / Math.sqrt(D);
    for (let row0 = 0; row0 < nq; row0 += tile) {
      const n = Math.min(tile, nq - row0);
      const M = qHeads * n; // vector j = query head ⌊j/n⌋, row row0 + j mod n; KV head ⌊j/(n·rep)⌋
      const perKv = M / H;
      let Q = q;
      if (n < nq) {
        Q = new Float32Array(M * D);
        for (let h = 0; h < qHeads; h++) Q.set(q.subarray((h * nq + row0) * D, (h * nq + row0 + n) * D), h * n * D);
      }
      // grown ahead (decode adds one token per step)
      if (scratch.S.length < M * N) scratch.S = new Float32Array(M * (N + 1024));
      if (scratch.O.length < M * D) scratch.O = new Float32Array(M * D);
      if (scratch.A.length < M * D) scratch.A = new Float64Array(M * D);
      const S = scratch.S.subarray(0, M * N);
      const O = scratch.O.subarray(0, M * D);
      if (keys.length > 0) packedKeyScores(Q, keys, S, N);
      residualScores(v.residualKeys, v.quantizedKeys, H, D, perKv, Q, M, S, N);
      const sums = new Float64Array(M);
      softmaxRows(S, M, N, n, nq, row0, scale, sums);
      if (values.length > 0) packedValueMix(S, values, O, N);
      else O.fill(0);
      residualMix(v.residualValues, v.quantizedValues, H, D, perKv, S, M, N, O, scratch.A);
      for (let j = 0; j < M; j++) {
        const o = (Math.floor(j / n) * nq + row0 + (j % n)) * D;
        const inv = 1 / sums[j]!;
        for (let d = 0; d < D; d++) out[o + d] = scratch.A[j * D + d]! * inv;
      }
    }
    return tf.tensor3d(out, [qHeads, nq, D]);
  },
};
