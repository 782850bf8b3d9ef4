import type { PackedKv } from '../kv.js';
import { headChunks, type KernelGeometry } from './validate.js';

/** Scratch buffers reused across calls (grown on demand). */
const S: { w: Float64Array } = { w: new Float64Array(0) };

function grow(n: number, cur: Float64Array): Float64Array {
  return cur.length >= n ? cur : new Float64Array(n);
}

/**
 * Direct key scores for any bits and group size. Per token group the weights `q·scale` and the bias `Σ q·zero` are
 * factored out; then, token by token, each channel's code is extracted once and multiplied into the register
 * accumulators of up to 4 query heads (2 tokens at a time).
 */
export function keyScoresJs(q: ArrayLike<number>, keys: PackedKv, g: KernelGeometry, res: Float32Array): void {
  const { kvHeads, tokens: T, headDim: D, bits, groupSize: gs, rep } = g;
  const { packed, scale, zero } = keys;
  const fpw = 32 / bits;
  const W = T / fpw;
  const G = T / gs;
  const m = (1 << bits) - 1;
  S.w = grow(D * 4, S.w);
  const a = S.w;
  for (let kv = 0; kv < kvHeads; kv++) {
    const rowBase = kv * D;
    for (const [h0, nh] of headChunks(rep)) {
      const qb = (kv * rep + h0) * D;
      const ob = (kv * rep + h0) * T;
      for (let grp = 0; grp < G; grp++) {
        let b0 = 0, b1 = 0, b2 = 0, b3 = 0;
        for (let d = 0, si = rowBase * G + grp, i = 0; d < D; d++, si += G, i += 4) {
          const s = scale[si]!, z = zero[si]!;
          const x0 = q[qb + d]!;
          a[i] = x0 * s; b0 += x0 * z;
          if (nh > 1) {
            const x1 = q[qb + D + d]!;
            a[i + 1] = x1 * s; b1 += x1 * z;
            if (nh > 2) {
              const x2 = q[qb + 2 * D + d]!, x3 = q[qb + 3 * D + d]!;
              a[i + 2] = x2 * s; a[i + 3] = x3 * s; b2 += x2 * z; b3 += x3 * z;
            }
          }
        }
        const tEnd = (grp + 1) * gs;
        let t = grp * gs;
        for (; t + 2 <= tEnd; t += 2) {
          const wA = rowBase * W + ((t / fpw) | 0), shA = (t % fpw) * bits;
          const wB = rowBase * W + (((t + 1) / fpw) | 0), shB = ((t + 1) % fpw) * bits;
          let s0 = 0, s1 = 0, s2 = 0, s3 = 0, u0 = 0, u1 = 0, u2 = 0, u3 = 0;
          if (nh === 4) {
            for (let d = 0, i = 0, o = 0; d < D; d++, i += 4, o += W) {
              const c = (packed[wA + o]! >>> shA) & m, e = (packed[wB + o]! >>> shB) & m;
              const a0 = a[i]!, a1 = a[i + 1]!, a2 = a[i + 2]!, a3 = a[i + 3]!;
              s0 += a0 * c; s1 += a1 * c; s2 += a2 * c; s3 += a3 * c;
              u0 += a0 * e; u1 += a1 * e; u2 += a2 * e; u3 += a3 * e;
            }
          } else {
            for (let d = 0, i = 0, o = 0; d < D; d++, i += 4, o += W) {
              const c = (packed[wA + o]! >>> shA) & m, e = (packed[wB + o]! >>> shB) & m;
              const a0 = a[i]!, a1 = a[i + 1]!;
              s0 += a0 * c; s1 += a1 * c; u0 += a0 * e; u1 += a1 * e;
            }
          }
          res[ob + t] = b0 + s0; res[ob + t + 1] = b0 + u0;
          if (nh > 1) {
            res[ob + T + t] = b1 + s1; res[ob + T + t + 1] = b1 + u1;
            if (nh > 2) {
              res[ob + 2 * T + t] = b2 + s2; res[ob + 2 * T + t + 1] = b2 + u2;
              res[ob + 3 * T + t] = b3 + s3; res[ob + 3 * T + t + 1] = b3 + u3;
            }
          }
        }
        if (t < tEnd) {
          const wA = rowBase * W + ((t / fpw) | 0), shA = (t % fpw) * bits;
          let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          for (let d = 0, i = 0, o = 0; d < D; d++, i += 4, o += W) {
            const c = (packed[wA + o]! >>> shA) & m;
            s0 += a[i]! * c; s1 += a[i + 1]! * c; s2 += a[i + 2]! * c; s3 += a[i + 3]! * c;
          }
          res[ob + t] = b0 + s0;
          if (nh > 1) res[ob + T + t] = b1 + s1;
          if (nh > 2) { res[ob + 2 * T + t] = b2 + s2; res[ob + 3 * T + t] = b3 + s3; }
        }
      }
    }
  }
}
