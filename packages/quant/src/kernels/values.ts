import type { PackedKv } from '../kv.js';
import { buildTables, gatherSums, writeNibbles } from './lut.js';
import { headChunks, type KernelGeometry } from './validate.js';

/** Tokens per chunk of the lookup-table value kernel (tables for one chunk stay in cache). */
const CHUNK = 128;

/** Tokens per chunk of the direct value kernel. */
const DCHUNK = 64;

const S: { offs: Int32Array; w: Float64Array; T: Float64Array[]; sums: Float64Array; acc: Float64Array; bias: Float64Array; a: Float64Array } = {
  offs: new Int32Array(0),
  w: new Float64Array(0),
  T: [new Float64Array(0), new Float64Array(0), new Float64Array(0), new Float64Array(0)] as Float64Array[],
  sums: new Float64Array(0),
  acc: new Float64Array(0),
  bias: new Float64Array(0),
  a: new Float64Array(0),
};

function grow(n: number, cur: Float64Array): Float64Array {
  return cur.length >= n ? cur : new Float64Array(n);
}

/** True when the lookup-table value kernel applies: 1/2-bit codes and word-aligned channel groups. */
export function valuesLutApplies(g: KernelGeometry): boolean {
  return (g.bits === 1 || g.bits === 2) && g.groupSize % (32 / g.bits) === 0 && g.tokens >= 4;
}

/**
 * Direct accumulation of tokens `[t0, t1)` of KV head `kv` into `acc` (`[qHeads, D]`) and `bias` (`[qHeads, G]`), for
 * every bit width and group size. Per head chunk and chunk of {@link DCHUNK} tokens the weights `p·scale` are
 * tabulated; then per pair of channels the codes of each token are extracted once and multiplied into register
 * accumulators of up to 4 query heads.
 */
function accumulateDirect(
  p: ArrayLike<number>,
  values: PackedKv,
  g: KernelGeometry,
  kv: number,
  t0: number,
  t1: number,
  acc: Float64Array,
  bias: Float64Array,
): void {
  const { tokens: T, headDim: D, bits, groupSize: gs, rep } = g;
  const { packed, scale, zero } = values;
  const fpw = 32 / bits;
  const Wd = D / fpw;
  const G = D / gs;
  const m = (1 << bits) - 1;
  S.a = grow(DCHUNK * G * 4, S.a);
  const w = S.a;
  for (const [h0, nh] of headChunks(rep)) {
    const hq = kv * rep + h0;
    for (let c0 = t0; c0 < t1; c0 += DCHUNK) {
      const n = Math.min(DCHUNK, t1 - c0);
      for (let j = 0; j < n; j++) {
        const t = c0 + j;
        const sb = (kv * T + t) * G;
        for (let grp = 0; grp < G; grp++) {
          const s = scale[sb + grp]!, z = zero[sb + grp]!;
          const wi = (j * G + grp) * 4;
          for (let h = 0; h < nh; h++) {
            const pv = p[(hq + h) * T + t]!;
            w[wi + h] = pv * s;
            bias[(hq + h) * G + grp] = bias[(hq + h) * G + grp]! + pv * z;
          }
        }
      }
      const rb = (kv * T + c0) * Wd;
      for (let d = 0; d < D; d += 2) {
        const e1 = d + 1 < D ? d + 1 : d; // odd D: the second lane repeats d and is discarded
        const wA = rb + ((d / fpw) | 0), shA = (d % fpw) * bits, gA = ((d / gs) | 0) * 4;
        const wB = rb + ((e1 / fpw) | 0), shB = (e1 % fpw) * bits, gB = ((e1 / gs) | 0) * 4;
        const step = G * 4;
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0, u0 = 0, u1 = 0, u2 = 0, u3 = 0;
        if (nh === 4) {
          for (let j = 0, o = 0, wa = gA, wb = gB; j < n; j++, o += Wd, wa += step, wb += step) {
            const c = (packed[wA + o]! >>> shA) & m, e = (packed[wB + o]! >>> shB) & m;
            s0 += w[wa]! * c; s1 += w[wa + 1]! * c; s2 += w[wa + 2]! * c; s3 += w[wa + 3]! * c;
            u0 += w[wb]! * e; u1 += w[wb + 1]! * e; u2 += w[wb + 2]! * e; u3 += w[wb + 3]! * e;
          }
        } else {
          for (let j = 0, o = 0, wa = gA, wb = gB; j < n; j++, o += Wd, wa += step, wb += step) {
            const c = (packed[wA + o]! >>> shA) & m, e = (packed[wB + o]! >>> shB) & m;
            s0 += w[wa]! * c; s1 += w[wa + 1]! * c; u0 += w[wb]! * e; u1 += w[wb + 1]! * e;
          }
        }
        const ab = hq * D;
        acc[ab + d] = acc[ab + d]! + s0;
        if (e1 !== d) acc[ab + e1] = acc[ab + e1]! + u0;
        if (nh > 1) {
          acc[ab + D + d] = acc[ab + D + d]! + s1;
          if (e1 !== d) acc[ab + D + e1] = acc[ab + D + e1]! + u1;
          if (nh > 2) {
            acc[ab + 2 * D + d] = acc[ab + 2 * D + d]! + s2; acc[ab + 3 * D + d] = acc[ab + 3 * D + d]! + s3;
            if (e1 !== d) { acc[ab + 2 * D + e1] = acc[ab + 2 * D + e1]! + u2; acc[ab + 3 * D + e1] = acc[ab + 3 * D + e1]! + u3; }
          }
        }
      }
    }
  }
}

function finish(g: KernelGeometry, acc: Float64Array, bias: Float64Array, res: Float32Array): void {
  const { qHeads, headDim: D, groupSize: gs } = g;
  const G = D / gs;
  for (let h = 0; h < qHeads; h++) {
    for (let d = 0; d < D; d++) res[h * D + d] = acc[h * D + d]! + bias[h * G + ((d / gs) | 0)]!;
  }
}

/** Direct value mix for any bits and group size (scale factored out per token and channel group). */
export function valueMixDirect(p: ArrayLike<number>, values: PackedKv, g: KernelGeometry, res: Float32Array): void {
  const { kvHeads, qHeads, tokens: T, headDim: D, groupSize: gs } = g;
  S.acc = grow(qHeads * D, S.acc);
  S.bias = grow(qHeads * (D / gs), S.bias);
  const { acc, bias } = S;
  acc.fill(0, 0, qHeads * D);
  bias.fill(0, 0, qHeads * (D / gs));
  for (let kv = 0; kv < kvHeads; kv++) accumulateDirect(p, values, g, kv, 0, T, acc, bias);
  finish(g, acc, bias, res);
}

/**
 * Lookup-table value mix. Tokens are taken four at a time (one nibble per channel and plane); per chunk of
 * {@link CHUNK} tokens the nibble offsets are shared by all query heads, and per head chunk the weights `p·scale`
 * fill one subset-sum table per (4 tokens, channel group). Tokens past the last multiple of 4 use the direct path.
 */
export function valueMixLut(p: ArrayLike<number>, values: PackedKv, g: KernelGeometry, res: Float32Array): void {
  const { kvHeads, qHeads, tokens: T, headDim: D, bits, groupSize: gs, rep } = g;
  const { packed, scale, zero } = values;
  const fpw = 32 / bits;
  const Wd = D / fpw;
  const G = D / gs;
  const P = bits;
  const T4 = T - (T % 4);
  const maxTB = Math.min(CHUNK, T4) / 4;
  if (S.offs.length < D * maxTB * P) S.offs = new Int32Array(D * maxTB * P);
  S.w = grow(maxTB * G * 16, S.w);
  for (let i = 0; i < 4; i++) S.T[i] = grow(maxTB * G * 16, S.T[i]!);
  S.sums = grow(D * 4, S.sums);
  S.acc = grow(qHeads * D, S.acc);
  S.bias = grow(qHeads * G, S.bias);
  const { offs, w, sums, acc, bias } = S;
  const [T0, T1, T2, T3] = S.T as [Float64Array, Float64Array, Float64Array, Float64Array];
  acc.fill(0, 0, qHeads * D);
  bias.fill(0, 0, qHeads * G);
  const chunks = headChunks(rep);
  for (let kv = 0; kv < kvHeads; kv++) {
    for (let t0 = 0; t0 < T4; t0 += CHUNK) {
      const nTB = Math.min(CHUNK, T4 - t0) / 4;
      const perD = nTB * P;
      for (let tb = 0; tb < nTB; tb++) {
        const r0 = (kv * T + t0 + 4 * tb) * Wd;
        for (let wd = 0; wd < Wd; wd++) {
          const r = r0 + wd;
          const grp = ((wd * fpw) / gs) | 0;
          writeNibbles(bits, packed[r]!, packed[r + Wd]!, packed[r + 2 * Wd]!, packed[r + 3 * Wd]!, offs, wd * fpw * perD + tb * P, perD, (tb * G + grp) * 16);
        }
      }
      for (const [h0, nh] of chunks) {
        const pb = (kv * rep + h0) * T;
        const bb = (kv * rep + h0) * G;
        for (let tb = 0; tb < nTB; tb++) {
          for (let j = 0; j < 4; j++) {
            const t = t0 + 4 * tb + j;
            const sb = (kv * T + t) * G;
            for (let grp = 0; grp < G; grp++) {
              const s = scale[sb + grp]!, z = zero[sb + grp]!;
              const wi = ((tb * G + grp) * 4 + j) * nh;
              for (let h = 0; h < nh; h++) {
                const pv = p[pb + h * T + t]!;
                w[wi + h] = pv * s;
                bias[bb + h * G + grp] = bias[bb + h * G + grp]! + pv * z;
              }
            }
          }
        }
        buildTables(nh, w, nTB * G, T0, T1, T2, T3);
        gatherSums(P, nh, offs, D, perD, T0, T1, T2, T3, sums);
        const ab = (kv * rep + h0) * D;
        for (let h = 0; h < nh; h++) {
          for (let d = 0, o = ab + h * D, r = h; d < D; d++, o++, r += nh) acc[o] = acc[o]! + sums[r]!;
        }
      }
    }
    if (T4 < T) accumulateDirect(p, values, g, kv, T4, T, acc, bias);
  }
  finish(g, acc, bias, res);
}
