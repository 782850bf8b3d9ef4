/**
 * Plain-JS kernels over {@link PackedKvView} segments, for every bit width and group size (the fallback of the
 * WebAssembly SIMD kernels). Scale is folded into the activation per group (`a = q·s`, `w = p·s`) and the zero-point
 * into one bias per group; each code is extracted once for up to 4 query heads of its KV head. Float64 accumulation.
 * @internal
 */
import { halfTable } from '../fp16.js';
import { headChunks, type KernelGeometry } from './view.js';

const S: Record<'a' | 'w' | 'acc' | 'bias', Float64Array> = { a: new Float64Array(0), w: new Float64Array(0), acc: new Float64Array(0), bias: new Float64Array(0) };

function grow(a: Float64Array, n: number): Float64Array {
  return a.length >= n ? a : new Float64Array(n);
}

/** `res[h·stride + offset + t] = Σ_d q[h, d]·k̂[kv(h), t, d]` for every segment. */
export function keyScoresJs(q: ArrayLike<number>, g: KernelGeometry, res: Float32Array): void {
  const { kvHeads: H, headDim: D, bits, groupSize: gs, rep, stride } = g;
  const fpw = 32 / bits;
  const m = (1 << bits) - 1;
  const ht = halfTable();
  const a = (S.a = grow(S.a, 4 * D));
  for (const seg of g.segments) {
    const { packed, scale, zero } = seg.view;
    const { kws, kgs, kblk, kbw, kbm, tokens: T, offset, f16 } = seg;
    for (let kv = 0; kv < H; kv++) {
      for (const [h0, nh] of headChunks(rep)) {
        const qb = (kv * rep + h0) * D;
        const ob = (kv * rep + h0) * stride + offset;
        for (let t0 = 0; t0 < T; t0 += gs) {
          const blk = Math.floor(t0 / kblk);
          const tb = t0 - blk * kblk;
          const w0 = blk * kbw + kv * D * kws;
          let b0 = 0, b1 = 0, b2 = 0, b3 = 0;
          for (let d = 0, gi = blk * kbm + kv * D * kgs + tb / gs, i = 0; d < D; d++, gi += kgs, i += 4) {
            const s = f16 ? ht[scale[gi]!]! : scale[gi]!;
            const z = f16 ? ht[zero[gi]!]! : zero[gi]!;
            const x0 = q[qb + d]!, x1 = nh > 1 ? q[qb + D + d]! : 0;
            const x2 = nh > 2 ? q[qb + 2 * D + d]! : 0, x3 = nh > 2 ? q[qb + 3 * D + d]! : 0;
            a[i] = x0 * s; a[i + 1] = x1 * s; a[i + 2] = x2 * s; a[i + 3] = x3 * s;
            b0 += x0 * z; b1 += x1 * z; b2 += x2 * z; b3 += x3 * z;
          }
          const tEnd = Math.min(t0 + gs, T);
          for (let t = t0; t < tEnd; t++) {
            const tt = t - blk * kblk;
            const w = w0 + Math.floor(tt / fpw);
            const sh = (tt % fpw) * bits;
            let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            if (nh === 4) {
              for (let d = 0, i = 0, o = w; d < D; d++, i += 4, o += kws) {
                const c = (packed[o]! >>> sh) & m;
                s0 += a[i]! * c; s1 += a[i + 1]! * c; s2 += a[i + 2]! * c; s3 += a[i + 3]! * c;
              }
            } else {
              for (let d = 0, i = 0, o = w; d < D; d++, i += 4, o += kws) {
                const c = (packed[o]! >>> sh) & m;
                s0 += a[i]! * c; s1 += a[i + 1]! * c;
              }
            }
            res[ob + t] = b0 + s0;
            if (nh > 1) res[ob + stride + t] = b1 + s1;
            if (nh > 2) { res[ob + 2 * stride + t] = b2 + s2; res[ob + 3 * stride + t] = b3 + s3; }
          }
        }
      }
    }
  }
}

/** `res[h, d] = Σ_t p[h·stride + t]·v̂[kv(h), t, d]` over every segment (tokens concatenated). */
export function valueMixJs(p: ArrayLike<number>, g: KernelGeometry, res: Float32Array): void {
  const { kvHeads: H, headDim: D, bits, groupSize: gs, rep, stride, qHeads } = g;
  const fpw = 32 / bits;
  const m = (1 << bits) - 1;
  const Wd = D / fpw;
  const G = D / gs;
  const ht = halfTable();
  const acc = (S.acc = grow(S.acc, qHeads * D)).fill(0, 0, qHeads * D);
  const bias = (S.bias = grow(S.bias, qHeads * G)).fill(0, 0, qHeads * G);
  const w = (S.w = grow(S.w, 4 * G));
  for (const seg of g.segments) {
    const { packed, scale, zero } = seg.view;
    const { vhs, vts, tokens: T, offset, f16 } = seg;
    for (let kv = 0; kv < H; kv++) {
      for (const [h0, nh] of headChunks(rep)) {
        const hq = kv * rep + h0;
        const pb = hq * stride + offset;
        const ab = hq * D;
        for (let t = 0; t < T; t++) {
          const p0 = p[pb + t]!, p1 = nh > 1 ? p[pb + stride + t]! : 0;
          const p2 = nh > 2 ? p[pb + 2 * stride + t]! : 0, p3 = nh > 2 ? p[pb + 3 * stride + t]! : 0;
          if (p0 === 0 && p1 === 0 && p2 === 0 && p3 === 0) continue;
          const row = kv * vhs + t * vts;
          for (let grp = 0, gi = row * G, i = 0, bi = hq * G; grp < G; grp++, gi++, i += 4, bi++) {
            const s = f16 ? ht[scale[gi]!]! : scale[gi]!;
            const z = f16 ? ht[zero[gi]!]! : zero[gi]!;
            w[i] = p0 * s; w[i + 1] = p1 * s; w[i + 2] = p2 * s; w[i + 3] = p3 * s;
            bias[bi] = bias[bi]! + p0 * z;
            if (nh > 1) bias[bi + G] = bias[bi + G]! + p1 * z;
            if (nh > 2) { bias[bi + 2 * G] = bias[bi + 2 * G]! + p2 * z; bias[bi + 3 * G] = bias[bi + 3 * G]! + p3 * z; }
          }
          for (let wi = 0, d = 0, o = row * Wd; wi < Wd; wi++, o++) {
            const word = packed[o]! >>> 0;
            for (let sh = 0; sh < 32; sh += bits, d++) {
              const c = (word >>> sh) & m;
              if (c === 0) continue;
              const i = Math.floor(d / gs) * 4;
              acc[ab + d] = acc[ab + d]! + w[i]! * c;
              if (nh > 1) acc[ab + D + d] = acc[ab + D + d]! + w[i + 1]! * c;
              if (nh > 2) {
                acc[ab + 2 * D + d] = acc[ab + 2 * D + d]! + w[i + 2]! * c;
                acc[ab + 3 * D + d] = acc[ab + 3 * D + d]! + w[i + 3]! * c;
              }
            }
          }
        }
      }
    }
  }
  for (let h = 0; h < qHeads; h++) {
    for (let d = 0; d < D; d++) res[h * D + d] = acc[h * D + d]! + bias[h * G + Math.floor(d / gs)]!;
  }
}
