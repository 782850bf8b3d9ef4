import { headChunks } from './view.js';

/** Token chunk of the dense value baseline (p and V rows of one chunk stay in cache). */
const VCHUNK = 64;

const S: { q: Float64Array; p: Float64Array; acc: Float64Array } = { q: new Float64Array(0), p: new Float64Array(0), acc: new Float64Array(0) };

/**
 * Dense float32 key scores, `[kvHeads, tokens, headDim]` keys. Per KV head and chunk of ≤ 4 query heads, each key
 * row is read once for all heads of the chunk; 4 heads × 2 tokens (2 heads × 4 tokens, 1 head × 4 tokens) are
 * accumulated in registers. The query is interleaved per channel in float64.
 */
export function denseKeyScoresImpl(
  q: ArrayLike<number>,
  K: ArrayLike<number>,
  kvHeads: number,
  D: number,
  T: number,
  rep: number,
  res: Float32Array,
): void {
  if (S.q.length < 4 * D) S.q = new Float64Array(4 * D);
  const qi = S.q;
  for (let kv = 0; kv < kvHeads; kv++) {
    for (const [h0, nh] of headChunks(rep)) {
      const hq = kv * rep + h0;
      for (let h = 0; h < nh; h++) for (let d = 0; d < D; d++) qi[d * nh + h] = q[(hq + h) * D + d]!;
      const ob = hq * T;
      const kb = kv * T * D;
      let t = 0;
      if (nh === 4) {
        for (; t + 2 <= T; t += 2) {
          let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
          const k0 = kb + t * D, k1 = k0 + D;
          for (let d = 0, i = 0; d < D; d++, i += 4) {
            const x = K[k0 + d]!, y = K[k1 + d]!;
            const q0 = qi[i]!, q1 = qi[i + 1]!, q2 = qi[i + 2]!, q3 = qi[i + 3]!;
            a0 += q0 * x; a1 += q1 * x; a2 += q2 * x; a3 += q3 * x;
            b0 += q0 * y; b1 += q1 * y; b2 += q2 * y; b3 += q3 * y;
          }
          res[ob + t] = a0; res[ob + T + t] = a1; res[ob + 2 * T + t] = a2; res[ob + 3 * T + t] = a3;
          res[ob + t + 1] = b0; res[ob + T + t + 1] = b1; res[ob + 2 * T + t + 1] = b2; res[ob + 3 * T + t + 1] = b3;
        }
      } else if (nh === 2) {
        for (; t + 4 <= T; t += 4) {
          let a0 = 0, a1 = 0, b0 = 0, b1 = 0, c0 = 0, c1 = 0, e0 = 0, e1 = 0;
          const k0 = kb + t * D, k1 = k0 + D, k2 = k1 + D, k3 = k2 + D;
          for (let d = 0, i = 0; d < D; d++, i += 2) {
            const q0 = qi[i]!, q1 = qi[i + 1]!;
            const x = K[k0 + d]!, y = K[k1 + d]!, u = K[k2 + d]!, v = K[k3 + d]!;
            a0 += q0 * x; a1 += q1 * x; b0 += q0 * y; b1 += q1 * y;
            c0 += q0 * u; c1 += q1 * u; e0 += q0 * v; e1 += q1 * v;
          }
          res[ob + t] = a0; res[ob + t + 1] = b0; res[ob + t + 2] = c0; res[ob + t + 3] = e0;
          res[ob + T + t] = a1; res[ob + T + t + 1] = b1; res[ob + T + t + 2] = c1; res[ob + T + t + 3] = e1;
        }
      } else {
        for (; t + 4 <= T; t += 4) {
          let a = 0, b = 0, c = 0, e = 0;
          const k0 = kb + t * D, k1 = k0 + D, k2 = k1 + D, k3 = k2 + D;
          for (let d = 0; d < D; d++) {
            const q0 = qi[d]!;
            a += q0 * K[k0 + d]!; b += q0 * K[k1 + d]!; c += q0 * K[k2 + d]!; e += q0 * K[k3 + d]!;
          }
          res[ob + t] = a; res[ob + t + 1] = b; res[ob + t + 2] = c; res[ob + t + 3] = e;
        }
      }
      for (; t < T; t++) {
        const k0 = kb + t * D;
        for (let h = 0; h < nh; h++) {
          let a = 0;
          for (let d = 0; d < D; d++) a += qi[d * nh + h]! * K[k0 + d]!;
          res[ob + h * T + t] = a;
        }
      }
    }
  }
}

/**
 * Dense float32 value mix, `[kvHeads, tokens, headDim]` values. Per KV head, chunk of ≤ 4 query heads and chunk of
 * {@link VCHUNK} tokens: 4 heads × 2 channels (2 × 4, 1 × 4) are accumulated in registers over the chunk's tokens,
 * each value row read once for all heads of the chunk.
 */
export function denseValueMixImpl(
  p: ArrayLike<number>,
  V: ArrayLike<number>,
  kvHeads: number,
  D: number,
  T: number,
  rep: number,
  res: Float32Array,
): void {
  if (S.p.length < 4 * VCHUNK) S.p = new Float64Array(4 * VCHUNK);
  if (S.acc.length < 4 * D) S.acc = new Float64Array(4 * D);
  const pi = S.p;
  const acc = S.acc;
  for (let kv = 0; kv < kvHeads; kv++) {
    for (const [h0, nh] of headChunks(rep)) {
      const hq = kv * rep + h0;
      acc.fill(0, 0, nh * D);
      for (let t0 = 0; t0 < T; t0 += VCHUNK) {
        const n = Math.min(VCHUNK, T - t0);
        for (let h = 0; h < nh; h++) for (let j = 0; j < n; j++) pi[j * nh + h] = p[(hq + h) * T + t0 + j]!;
        const vb = (kv * T + t0) * D;
        let d = 0;
        if (nh === 4) {
          for (; d + 2 <= D; d += 2) {
            let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
            for (let j = 0, v = vb + d, i = 0; j < n; j++, v += D, i += 4) {
              const x = V[v]!, y = V[v + 1]!;
              const p0 = pi[i]!, p1 = pi[i + 1]!, p2 = pi[i + 2]!, p3 = pi[i + 3]!;
              a0 += p0 * x; a1 += p1 * x; a2 += p2 * x; a3 += p3 * x;
              b0 += p0 * y; b1 += p1 * y; b2 += p2 * y; b3 += p3 * y;
            }
            acc[d] = acc[d]! + a0; acc[D + d] = acc[D + d]! + a1; acc[2 * D + d] = acc[2 * D + d]! + a2; acc[3 * D + d] = acc[3 * D + d]! + a3;
            acc[d + 1] = acc[d + 1]! + b0; acc[D + d + 1] = acc[D + d + 1]! + b1;
            acc[2 * D + d + 1] = acc[2 * D + d + 1]! + b2; acc[3 * D + d + 1] = acc[3 * D + d + 1]! + b3;
          }
        } else if (nh === 2) {
          for (; d + 4 <= D; d += 4) {
            let a0 = 0, a1 = 0, b0 = 0, b1 = 0, c0 = 0, c1 = 0, e0 = 0, e1 = 0;
            for (let j = 0, v = vb + d, i = 0; j < n; j++, v += D, i += 2) {
              const p0 = pi[i]!, p1 = pi[i + 1]!;
              const x = V[v]!, y = V[v + 1]!, u = V[v + 2]!, w = V[v + 3]!;
              a0 += p0 * x; a1 += p1 * x; b0 += p0 * y; b1 += p1 * y;
              c0 += p0 * u; c1 += p1 * u; e0 += p0 * w; e1 += p1 * w;
            }
            acc[d] = acc[d]! + a0; acc[d + 1] = acc[d + 1]! + b0; acc[d + 2] = acc[d + 2]! + c0; acc[d + 3] = acc[d + 3]! + e0;
            acc[D + d] = acc[D + d]! + a1; acc[D + d + 1] = acc[D + d + 1]! + b1;
            acc[D + d + 2] = acc[D + d + 2]! + c1; acc[D + d + 3] = acc[D + d + 3]! + e1;
          }
        } else {
          for (; d + 4 <= D; d += 4) {
            let a = 0, b = 0, c = 0, e = 0;
            for (let j = 0, v = vb + d; j < n; j++, v += D) {
              const p0 = pi[j]!;
              a += p0 * V[v]!; b += p0 * V[v + 1]!; c += p0 * V[v + 2]!; e += p0 * V[v + 3]!;
            }
            acc[d] = acc[d]! + a; acc[d + 1] = acc[d + 1]! + b; acc[d + 2] = acc[d + 2]! + c; acc[d + 3] = acc[d + 3]! + e;
          }
        }
        for (; d < D; d++) {
          for (let h = 0; h < nh; h++) {
            let a = 0;
            for (let j = 0, v = vb + d; j < n; j++, v += D) a += pi[j * nh + h]! * V[v]!;
            acc[h * D + d] = acc[h * D + d]! + a;
          }
        }
      }
      for (let h = 0; h < nh; h++) for (let d = 0; d < D; d++) res[(hq + h) * D + d] = acc[h * D + d]!;
    }
  }
}
