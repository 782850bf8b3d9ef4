import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import type { Bits } from '@xquant/quant';
import { plainAttention } from '../attention.js';
import { tokenMajorToHeadMajor } from '../quantized/store.js';
import { keyBlockScores, valueChunkMix } from './js-packed.js';
import type { AttentionKernel, QuantizedLayerView } from './registry.js';
import { simdKernels, type SimdKernels } from './wasm-simd.js';

/** Query vectors processed together per KV head (bounds the score scratch to TILE × tokens floats). */
const TILE = 32;

const scratch: { Q: Float32Array; S: Float32Array; O: Float64Array; sc: Float32Array; zc: Float32Array; vs: Float32Array; vz: Float32Array } = {
  Q: new Float32Array(0),
  S: new Float32Array(0),
  O: new Float64Array(0),
  sc: new Float32Array(0),
  zc: new Float32Array(0),
  vs: new Float32Array(0),
  vz: new Float32Array(0),
};

function grow<T extends Float32Array | Float64Array>(a: T, n: number, make: (n: number) => T): T {
  return a.length >= n ? a : make(n);
}

/** Use the WebAssembly SIMD kernels when possible (set false to force the plain JS kernels, e.g. to compare them). */
export const packedKernelOptions: {
  /** WebAssembly SIMD on (default). */
  simd: boolean;
} = { simd: true };

/** S[m·N + pos] = q_m · k(pos) for the float32 keys that follow the quantized ones. */
function residualScores(v: QuantizedLayerView, h: number, Q: Float32Array, M: number, S: Float32Array, N: number): void {
  const H = v.kvHeads, D = v.headDim;
  const keys = v.residualKeys; // locals: V8 does not hoist property loads out of these loops
  const rk = keys.length / (H * D);
  const q0 = v.quantizedKeys;
  for (let t = 0; t < rk; t++) {
    const ko = (t * H + h) * D;
    const pos = q0 + t;
    for (let m = 0; m < M; m++) {
      let acc = 0;
      const qo = m * D;
      for (let d = 0; d < D; d++) acc += Q[qo + d]! * keys[ko + d]!;
      S[m * N + pos] = acc;
    }
  }
}

/**
 * Scale, causal mask and softmax of M score rows in place; vector m = v0 + m is query row ⌊(v0+m)/rep⌋ of nq.
 * With `sums`, rows are left unnormalized (exp(s − max)) and each row's sum is written there instead.
 */
function softmaxRows(S: Float32Array, M: number, N: number, nq: number, rep: number, v0: number, scale: number, valid = M, sums?: Float64Array): void {
  for (let m = valid; m < M; m++) S.fill(0, m * N, (m + 1) * N); // padding vectors: no weight
  for (let m = 0; m < valid; m++) {
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
    for (let t = last + 1; t < N; t++) S[so + t] = 0;
    if (sums) {
      sums[m] = sum;
      continue;
    }
    const inv = 1 / sum;
    for (let t = 0; t <= last; t++) S[so + t] = S[so + t]! * inv;
  }
}

/** O[m·D + d] += Σ_pos P[m·N + pos]·v(pos) over the float32 values that follow the quantized ones. */
function residualMix(v: QuantizedLayerView, h: number, S: Float32Array, M: number, N: number, O: Float64Array): void {
  const H = v.kvHeads, D = v.headDim;
  const values = v.residualValues;
  const rv = values.length / (H * D);
  const q0 = v.quantizedValues;
  for (let t = 0; t < rv; t++) {
    const vo = (t * H + h) * D;
    const pos = q0 + t;
    for (let m = 0; m < M; m++) {
      const p = S[m * N + pos]!;
      if (p === 0) continue;
      const oo = m * D;
      for (let d = 0; d < D; d++) O[oo + d] += p * values[vo + d]!;
    }
  }
}

function simdApplies(v: QuantizedLayerView): boolean {
  if (!packedKernelOptions.simd) return false;
  if (v.keyBlocks.length > 0 && (v.keyBits === 8 || v.keyGroupSize % 8 !== 0)) return false;
  if (v.valueChunks.length > 0 && ((v.valueBits !== 1 && v.valueBits !== 2) || v.valueGroupSize % 16 !== 0)) return false;
  return true;
}

/** Attention on the WebAssembly SIMD kernels, four query vectors per KV head at a time (zero-padded). */
function attendSimd4(K: SimdKernels, v: QuantizedLayerView, q: Float32Array, qHeads: number, nq: number, out: Float32Array): void {
  const H = v.kvHeads, D = v.headDim, N = v.tokens, gs = v.keyGroupSize, gv = v.valueGroupSize;
  const rep = qHeads / H;
  const Nq = v.quantizedValues;
  const kBits = v.keyBits as number, vBits = v.valueBits as number;
  const Gv = D / gv;
  const wprV = vBits === 16 ? 0 : (D * vBits) / 32;
  K.reset();
  // Allocate everything first: growing the memory detaches earlier views.
  const pQ = K.alloc(4 * D * 4), pA = K.alloc(D * 16), pS = K.alloc(4 * N * 4), pO = K.alloc(4 * D * 4), pZs = K.alloc(4 * Gv * 4);
  const pKc = kBits <= 4 ? K.consts(kBits) : 0;
  const pVc = vBits <= 2 ? K.consts(vBits) : 0;
  const kOff: { w: number; m: number }[] = [];
  let kWords = 0, kMeta = 0;
  for (const b of v.keyBlocks) {
    kOff.push({ w: kWords, m: kMeta });
    kWords += b.packed.length;
    kMeta += (H * D * b.tokens) / gs;
  }
  const pKp = K.alloc(kWords * 4), pKs = K.alloc(kMeta * 4), pKz = K.alloc(kMeta * 4);
  const pVp = K.alloc(Nq * H * wprV * 4), pVs = K.alloc(Nq * H * Gv * 4), pVz = K.alloc(Nq * H * Gv * 4);
  // Copy the layer in.
  v.keyBlocks.forEach((b, i) => {
    const n = (H * D * b.tokens) / gs;
    K.u32(pKp + kOff[i]!.w * 4, b.packed.length).set(b.packed);
    v.decodeMeta(b.scale, 0, n, K.f32(pKs + kOff[i]!.m * 4, n));
    v.decodeMeta(b.zero, 0, n, K.f32(pKz + kOff[i]!.m * 4, n));
  });
  for (const c of v.valueChunks) {
    if (c.filled === 0) continue;
    const nw = c.filled * H * wprV, nm = c.filled * H * Gv;
    K.u32(pVp + c.start * H * wprV * 4, nw).set(c.packed.subarray(0, nw));
    v.decodeMeta(c.scale, 0, nm, K.f32(pVs + c.start * H * Gv * 4, nm));
    v.decodeMeta(c.zero, 0, nm, K.f32(pVz + c.start * H * Gv * 4, nm));
  }
  const Q = K.f32(pQ, 4 * D), S = K.f32(pS, 4 * N), Ow = K.f32(pO, 4 * D), Zs = K.f32(pZs, 4 * Gv);
  scratch.O = grow(scratch.O, 4 * D, (n) => new Float64Array(n));
  const O = scratch.O;
  const scale = 1 / Math.sqrt(D);
  const total = rep * nq;
  const sums = new Float64Array(4);
  for (let h = 0; h < H; h++) for (let v0 = 0; v0 < total; v0 += 4) {
    const valid = Math.min(4, total - v0);
    // vector j = v0 + m ↔ query head h·rep + (j % rep), query row ⌊j / rep⌋
    for (let m = 0; m < 4; m++) {
      const j = v0 + m;
      if (m >= valid) {
        Q.fill(0, m * D, (m + 1) * D);
        continue;
      }
      const qh = h * rep + (j % rep);
      const row = Math.floor(j / rep);
      Q.set(q.subarray((qh * nq + row) * D, (qh * nq + row + 1) * D), m * D);
    }
    v.keyBlocks.forEach((b, i) => {
      const G = b.tokens / gs;
      const wpr = (b.tokens * kBits) / 32;
      K.keys4(pQ, pKs + (kOff[i]!.m + h * D * G) * 4, pKz + (kOff[i]!.m + h * D * G) * 4, pKp + (kOff[i]!.w + h * D * wpr) * 4, pS + b.start * 4, D, b.tokens, gs, kBits, pA, pKc, N);
    });
    residualScores(v, h, Q, 4, S, N);
    softmaxRows(S, 4, N, nq, rep, v0, scale, valid, sums); // unnormalized: the output is divided by the sum instead
    O.fill(0, 0, 4 * D);
    if (Nq > 0) {
      Ow.fill(0);
      K.values4(pS, pVs, pVz, pVp, pO, pZs, D, Nq, H, h, gv, vBits, pVc, N);
      for (let m = 0; m < 4; m++) for (let d = 0; d < D; d++) O[m * D + d] = Ow[m * D + d]! + Zs[m * Gv + ((d / gv) | 0)]!;
    }
    residualMix(v, h, S, 4, N, O);
    for (let m = 0; m < valid; m++) {
      const j = v0 + m;
      const qh = h * rep + (j % rep);
      const row = Math.floor(j / rep);
      const oo = (qh * nq + row) * D;
      const inv = 1 / sums[m]!;
      for (let d = 0; d < D; d++) out[oo + d] = O[m * D + d]! * inv;
    }
  }
}

/**
 * Attention computed directly on packed codes (cpu, wasm and native backends, where the query tensor can be read
 * synchronously): WebAssembly SIMD kernels for the GQA decode case of four query vectors per KV head, plain JS kernels
 * otherwise. Prefill with nothing quantized yet goes through tfjs ops ({@link plainAttention}).
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
    const out = new Float32Array(qHeads * nq * D);
    const total = rep * nq;
    const simd = simdApplies(v) ? simdKernels() : null;
    if (simd) {
      attendSimd4(simd, v, q, qHeads, nq, out);
      return tf.tensor3d(out, [qHeads, nq, D]);
    }
    const scale = 1 / Math.sqrt(D);
    const gs = v.keyGroupSize;
    const gv = v.valueGroupSize;
    const tile = Math.min(TILE, total);
    scratch.Q = grow(scratch.Q, tile * D, (n) => new Float32Array(n));
    scratch.S = grow(scratch.S, tile * N, (n) => new Float32Array(n));
    scratch.O = grow(scratch.O, tile * D, (n) => new Float64Array(n));
    const { Q, S, O } = scratch;
    // Value scales/zeros of every chunk, decoded once per call (token-major [quantizedValues, H, D/gv]).
    const Gv = D / gv;
    scratch.vs = grow(scratch.vs, v.quantizedValues * H * Gv, (n) => new Float32Array(n));
    scratch.vz = grow(scratch.vz, v.quantizedValues * H * Gv, (n) => new Float32Array(n));
    const vScale = scratch.vs;
    const vZero = scratch.vz;
    for (const c of v.valueChunks) {
      const n = c.filled * H * Gv;
      v.decodeMeta(c.scale, 0, n, vScale.subarray(c.start * H * Gv, c.start * H * Gv + n));
      v.decodeMeta(c.zero, 0, n, vZero.subarray(c.start * H * Gv, c.start * H * Gv + n));
    }
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
        for (const b of v.keyBlocks) {
          const G = b.tokens / gs;
          scratch.sc = v.decodeMeta(b.scale, h * D * G, D * G, scratch.sc);
          scratch.zc = v.decodeMeta(b.zero, h * D * G, D * G, scratch.zc);
          keyBlockScores(b.packed, h, D, b.tokens, v.keyBits as Bits, gs, scratch.sc, scratch.zc, Q, M, S, N, b.start);
        }
        residualScores(v, h, Q, M, S, N);
        softmaxRows(S, M, N, nq, rep, v0, scale);
        O.fill(0, 0, M * D);
        for (const c of v.valueChunks) {
          if (c.filled === 0) continue;
          const o = c.start * H * Gv;
          const n = c.filled * H * Gv;
          valueChunkMix(c.packed, h, H, D, c.filled, v.valueBits as Bits, gv, vScale.subarray(o, o + n), vZero.subarray(o, o + n), S, M, N, c.start, O);
        }
        residualMix(v, h, S, M, N, O);
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
