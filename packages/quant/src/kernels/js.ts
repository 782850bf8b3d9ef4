/**
 * Plain-JS kernels over {@link PackedKvView} segments, for every bit width and group size (the fallback of the
 * WebAssembly SIMD kernels). Scale is folded into the activation per group (`a = q·s`, `w = p·s`) and the zero-point
 * into one bias per group; each code is extracted once for up to 4 query heads of its KV head, accumulating in
 * registers (keys: 4 tokens of one word per pass; values: 2 channels over a chunk of tokens). Float64 accumulation.
 * @internal
 */
import { halfTable } from '../fp16.js';
import { headChunks, type KernelGeometry } from './view.js';

/** Tokens per chunk of the value kernel (its weights stay in cache). */
const CHUNK = 64;

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
  const out = [0, 0, 0, 0];
  for (const seg of g.segments) {
    const { packed, scale, zero } = seg.view;
    const { kws, kgs, kblk, kbw, kbm, tokens: T, offset, f16 } = seg;
    for (let kv = 0; kv < H; kv++) {
      for (const [h0, nh] of headChunks(rep)) {
        const qb = (kv * rep + h0) * D;
        const ob = (kv * rep + h0) * stride + offset;
        for (let t0 = 0; t0 < T; t0 += gs) {
          const blk = Math.floor(t0 / kblk);
          const w0 = blk * kbw + kv * D * kws;
          let b0 = 0, b1 = 0, b2 = 0, b3 = 0;
          for (let d = 0, gi = blk * kbm + kv * D * kgs + (t0 - blk * kblk) / gs, i = 0; d < D; d++, gi += kgs, i += 4) {
            const s = f16 ? ht[scale[gi]!]! : scale[gi]!;
            const z = f16 ? ht[zero[gi]!]! : zero[gi]!;
            const x0 = q[qb + d]!, x1 = nh > 1 ? q[qb + D + d]! : 0;
            const x2 = nh > 2 ? q[qb + 2 * D + d]! : 0, x3 = nh > 2 ? q[qb + 3 * D + d]! : 0;
            a[i] = x0 * s; a[i + 1] = x1 * s; a[i + 2] = x2 * s; a[i + 3] = x3 * s;
            b0 += x0 * z; b1 += x1 * z; b2 += x2 * z; b3 += x3 * z;
          }
          const tEnd = Math.min(t0 + gs, T);
          for (let t = t0; t < tEnd; ) {
            // up to 4 tokens of one word
            const tt = t - blk * kblk;
            const n = Math.min(4, tEnd - t, fpw - (tt % fpw));
            const o0 = w0 + Math.floor(tt / fpw);
            const sh = (tt % fpw) * bits;
            for (let h = 0; h < nh; h += 2) {
              let s0 = 0, s1 = 0, s2 = 0, s3 = 0, u0 = 0, u1 = 0, u2 = 0, u3 = 0;
              for (let d = 0, i = h, o = o0; d < D; d++, i += 4, o += kws) {
                const w = packed[o]! >>> sh;
                const c0 = w & m, c1 = (w >>> bits) & m, c2 = (w >>> (2 * bits)) & m, c3 = (w >>> (3 * bits)) & m;
                const x = a[i]!, y = a[i + 1]!;
                s0 += x * c0; s1 += x * c1; s2 += x * c2; s3 += x * c3;
                u0 += y * c0; u1 += y * c1; u2 += y * c2; u3 += y * c3;
              }
              const bx = h === 0 ? b0 : b2, by = h === 0 ? b1 : b3;
              out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
              for (let k = 0; k < n; k++) res[ob + h * stride + t + k] = bx + out[k]!;
              if (h + 1 < nh) {
                out[0] = u0; out[1] = u1; out[2] = u2; out[3] = u3;
                for (let k = 0; k < n; k++) res[ob + (h + 1) * stride + t + k] = by + out[k]!;
              }
            }
            t += n;
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
  const w = (S.w = grow(S.w, CHUNK * G * 4));
  const step = G * 4;
  for (const seg of g.segments) {
    const { packed, scale, zero } = seg.view;
    const { vhs, vts, tokens: T, offset, f16 } = seg;
    for (let kv = 0; kv < H; kv++) {
      for (const [h0, nh] of headChunks(rep)) {
        const hq = kv * rep + h0;
        for (let c0 = 0; c0 < T; c0 += CHUNK) {
          const n = Math.min(CHUNK, T - c0);
          // weights p·scale of the chunk (4 heads per token and group) and the zero-point bias
          for (let j = 0; j < n; j++) {
            const pb = hq * stride + offset + c0 + j;
            const p0 = p[pb]!, p1 = nh > 1 ? p[pb + stride]! : 0, p2 = nh > 2 ? p[pb + 2 * stride]! : 0, p3 = nh > 2 ? p[pb + 3 * stride]! : 0;
            for (let grp = 0, gi = (kv * vhs + (c0 + j) * vts) * G, i = j * step, bi = hq * G; grp < G; grp++, gi++, i += 4, bi++) {
              const sc = f16 ? ht[scale[gi]!]! : scale[gi]!;
              const z = f16 ? ht[zero[gi]!]! : zero[gi]!;
              w[i] = p0 * sc; w[i + 1] = p1 * sc; w[i + 2] = p2 * sc; w[i + 3] = p3 * sc;
              bias[bi] = bias[bi]! + p0 * z;
              if (nh > 1) bias[bi + G] = bias[bi + G]! + p1 * z;
              if (nh > 2) { bias[bi + 2 * G] = bias[bi + 2 * G]! + p2 * z; bias[bi + 3 * G] = bias[bi + 3 * G]! + p3 * z; }
            }
          }
          // two channels at a time, register accumulators for up to 4 heads
          const r0 = (kv * vhs + c0 * vts) * Wd;
          for (let d = 0; d < D; d += 2) {
            const o0 = r0 + Math.floor(d / fpw), sh = (d % fpw) * bits;
            const wa = Math.floor(d / gs) * 4, wb = Math.floor((d + 1) / gs) * 4;
            let s0 = 0, s1 = 0, s2 = 0, s3 = 0, u0 = 0, u1 = 0, u2 = 0, u3 = 0;
            for (let j = 0, o = o0, i = wa, k = wb; j < n; j++, o += vts * Wd, i += step, k += step) {
              const word = packed[o]! >>> sh;
              const c = word & m, e = (word >>> bits) & m;
              s0 += w[i]! * c; s1 += w[i + 1]! * c; s2 += w[i + 2]! * c; s3 += w[i + 3]! * c;
              u0 += w[k]! * e; u1 += w[k + 1]! * e; u2 += w[k + 2]! * e; u3 += w[k + 3]! * e;
            }
            const ab = hq * D + d;
            acc[ab] = acc[ab]! + s0; acc[ab + 1] = acc[ab + 1]! + u0;
            if (nh > 1) { acc[ab + D] = acc[ab + D]! + s1; acc[ab + D + 1] = acc[ab + D + 1]! + u1; }
            if (nh > 2) {
              acc[ab + 2 * D] = acc[ab + 2 * D]! + s2; acc[ab + 2 * D + 1] = acc[ab + 2 * D + 1]! + u2;
              acc[ab + 3 * D] = acc[ab + 3 * D]! + s3; acc[ab + 3 * D + 1] = acc[ab + 3 * D + 1]! + u3;
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
