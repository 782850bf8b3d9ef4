import { packedKeyScores, type Bits, type PackedKv } from '@xquant/quant';

/**
 * Scores of `M` query vectors against one KV head of a key block stored in the reference layout
 * (`packed` `[heads, D, tokens·bits/32]`, codes along tokens per channel; `scale`/`zero` `[heads, D, tokens/gs]`,
 * already decoded to float for head `h`: `[D, tokens/gs]`).
 * `S[m·stride + outOffset + t] = Σ_d Q[m·D + d]·(code·scale + zero)` for t < tokens. Reads packed codes directly:
 * per group it folds the scale into the query (`a = q·s`) and the zero into one dot product, then accumulates
 * `a·code` for four tokens per word read, four query vectors at a time.
 */
export function keyBlockScores(
  packed: Uint32Array,
  h: number,
  D: number,
  tokens: number,
  bits: Bits,
  gs: number,
  scale: Float32Array,
  zero: Float32Array,
  Q: Float32Array,
  M: number,
  S: Float32Array,
  stride: number,
  outOffset: number,
): void {
  const fpw = 32 / bits;
  const wpr = tokens / fpw;
  const G = tokens / gs;
  if (gs % 4 !== 0) {
    // Generic path: the @xquant/quant reference kernel on a single-head view.
    const view: PackedKv = {
      axis: 'channel', heads: 1, tokens, headDim: D, rows: D, cols: tokens, bits, groupSize: gs, precision: 'fp32',
      packed: packed.subarray(h * D * wpr, (h + 1) * D * wpr), scale: scale.subarray(0, D * G), zero: zero.subarray(0, D * G),
    };
    const res = packedKeyScores(Q.subarray(0, M * D), view);
    for (let m = 0; m < M; m++) S.set(res.subarray(m * tokens, (m + 1) * tokens), m * stride + outOffset);
    return;
  }
  let m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) keyScores4(packed, h, D, tokens, bits, gs, scale, zero, Q, m0, S, stride, outOffset);
  for (; m0 < M; m0++) keyScores1(packed, h, D, tokens, bits, gs, scale, zero, Q, m0, S, stride, outOffset);
}

const A4 = { a: new Float64Array(0), loc: new Int32Array(0) };

function keyScores4(
  packed: Uint32Array, h: number, D: number, tokens: number, bits: number, gs: number,
  scale: Float32Array, zero: Float32Array, Q: Float32Array, m0: number, S: Float32Array, stride: number, outOffset: number,
): void {
  const fpw = 32 / bits;
  const wpr = tokens / fpw;
  const G = tokens / gs;
  const mask = (1 << bits) - 1;
  const b1 = bits, b2 = 2 * bits, b3 = 3 * bits;
  const wordsPerGroup = Math.ceil(gs / fpw) + 1;
  if (A4.a.length < 4 * D) A4.a = new Float64Array(4 * D);
  if (A4.loc.length < wordsPerGroup * D) A4.loc = new Int32Array(wordsPerGroup * D);
  const a = A4.a;
  const loc = A4.loc;
  const q0o = m0 * D, q1o = q0o + D, q2o = q1o + D, q3o = q2o + D;
  const o0 = m0 * stride + outOffset, o1 = o0 + stride, o2 = o1 + stride, o3 = o2 + stride;
  const rowBase = h * D * wpr;
  for (let g = 0; g < G; g++) {
    let z0 = 0, z1 = 0, z2 = 0, z3 = 0;
    const t0 = g * gs;
    const w0 = (t0 / fpw) | 0;
    const w1 = ((t0 + gs - 1) / fpw) | 0;
    const nw = w1 - w0 + 1;
    for (let d = 0; d < D; d++) {
      const s = scale[d * G + g]!;
      const z = zero[d * G + g]!;
      const x0 = Q[q0o + d]!, x1 = Q[q1o + d]!, x2 = Q[q2o + d]!, x3 = Q[q3o + d]!;
      const i = d * 4;
      a[i] = x0 * s; a[i + 1] = x1 * s; a[i + 2] = x2 * s; a[i + 3] = x3 * s;
      z0 += x0 * z; z1 += x1 * z; z2 += x2 * z; z3 += x3 * z;
      const r = rowBase + d * wpr + w0;
      for (let w = 0; w < nw; w++) loc[w * D + d] = packed[r + w]!;
    }
    for (let t = t0; t < t0 + gs; t += 4) {
      const base = (((t / fpw) | 0) - w0) * D;
      const sh = (t % fpw) * bits;
      let a0 = z0, a1 = z1, a2 = z2, a3 = z3, c0 = z0, c1 = z1, c2 = z2, c3 = z3;
      let e0 = z0, e1 = z1, e2 = z2, e3 = z3, f0 = z0, f1 = z1, f2 = z2, f3 = z3;
      for (let d = 0; d < D; d++) {
        const w = loc[base + d]! >>> sh;
        const k0 = w & mask, k1 = (w >>> b1) & mask, k2 = (w >>> b2) & mask, k3 = (w >>> b3) & mask;
        const i = d * 4;
        const x0 = a[i]!, x1 = a[i + 1]!, x2 = a[i + 2]!, x3 = a[i + 3]!;
        a0 += x0 * k0; a1 += x1 * k0; a2 += x2 * k0; a3 += x3 * k0;
        c0 += x0 * k1; c1 += x1 * k1; c2 += x2 * k1; c3 += x3 * k1;
        e0 += x0 * k2; e1 += x1 * k2; e2 += x2 * k2; e3 += x3 * k2;
        f0 += x0 * k3; f1 += x1 * k3; f2 += x2 * k3; f3 += x3 * k3;
      }
      S[o0 + t] = a0; S[o1 + t] = a1; S[o2 + t] = a2; S[o3 + t] = a3;
      S[o0 + t + 1] = c0; S[o1 + t + 1] = c1; S[o2 + t + 1] = c2; S[o3 + t + 1] = c3;
      S[o0 + t + 2] = e0; S[o1 + t + 2] = e1; S[o2 + t + 2] = e2; S[o3 + t + 2] = e3;
      S[o0 + t + 3] = f0; S[o1 + t + 3] = f1; S[o2 + t + 3] = f2; S[o3 + t + 3] = f3;
    }
  }
}

function keyScores1(
  packed: Uint32Array, h: number, D: number, tokens: number, bits: number, gs: number,
  scale: Float32Array, zero: Float32Array, Q: Float32Array, m: number, S: Float32Array, stride: number, outOffset: number,
): void {
  const fpw = 32 / bits;
  const wpr = tokens / fpw;
  const G = tokens / gs;
  const mask = (1 << bits) - 1;
  const b1 = bits, b2 = 2 * bits, b3 = 3 * bits;
  const wordsPerGroup = Math.ceil(gs / fpw) + 1;
  if (A4.a.length < 4 * D) A4.a = new Float64Array(4 * D);
  if (A4.loc.length < wordsPerGroup * D) A4.loc = new Int32Array(wordsPerGroup * D);
  const a = A4.a;
  const loc = A4.loc;
  const qo = m * D;
  const o = m * stride + outOffset;
  const rowBase = h * D * wpr;
  for (let g = 0; g < G; g++) {
    let z0 = 0;
    const t0 = g * gs;
    const w0 = (t0 / fpw) | 0;
    const nw = (((t0 + gs - 1) / fpw) | 0) - w0 + 1;
    for (let d = 0; d < D; d++) {
      const x = Q[qo + d]!;
      a[d] = x * scale[d * G + g]!;
      z0 += x * zero[d * G + g]!;
      const r = rowBase + d * wpr + w0;
      for (let w = 0; w < nw; w++) loc[w * D + d] = packed[r + w]!;
    }
    for (let t = t0; t < t0 + gs; t += 4) {
      const base = (((t / fpw) | 0) - w0) * D;
      const sh = (t % fpw) * bits;
      let s0 = z0, s1 = z0, s2 = z0, s3 = z0;
      for (let d = 0; d < D; d++) {
        const w = loc[base + d]! >>> sh;
        const x = a[d]!;
        s0 += x * (w & mask); s1 += x * ((w >>> b1) & mask); s2 += x * ((w >>> b2) & mask); s3 += x * ((w >>> b3) & mask);
      }
      S[o + t] = s0; S[o + t + 1] = s1; S[o + t + 2] = s2; S[o + t + 3] = s3;
    }
  }
}

const V = { tab: new Float64Array(0), zs: new Float64Array(0), acc: new Float64Array(0) };

/**
 * `O[m·D + d] += Σ_t P[m·stride + pOffset + t]·(code·scale + zero)` over the first `n` tokens of a token-major value chunk
 * (`packed` `[cap, heads, D·bits/32]`, metadata decoded for this chunk as `[n, heads, D/gs]`), for KV head `h`.
 * For bits ≤ 4 it accumulates through 16-entry tables: each table holds every possible weighted sum of the codes of
 * `4/bits` consecutive tokens, so one lookup replaces `4/bits` multiply-adds per channel and query.
 */
export function valueChunkMix(
  packed: Uint32Array, h: number, heads: number, D: number, n: number, bits: Bits, gs: number,
  scale: Float32Array, zero: Float32Array, P: Float32Array, M: number, stride: number, pOffset: number, O: Float64Array,
): void {
  const fpw = 32 / bits;
  const wpr = D / fpw;
  const G = D / gs;
  const mask = (1 << bits) - 1;
  if (V.zs.length < M * G) V.zs = new Float64Array(M * G);
  const zs = V.zs;
  zs.fill(0, 0, M * G);
  // zero-point term: Σ_t p·z per group
  for (let t = 0; t < n; t++) {
    const mo = (t * heads + h) * G;
    for (let m = 0; m < M; m++) {
      const p = P[m * stride + pOffset + t]!;
      if (p === 0) continue;
      for (let g = 0; g < G; g++) zs[m * G + g] += p * zero[mo + g]!;
    }
  }
  for (let m = 0; m < M; m++) {
    for (let d = 0; d < D; d++) O[m * D + d] += zs[m * G + ((d / gs) | 0)]!;
  }
  if (bits === 8) {
    for (let t = 0; t < n; t++) {
      const mo = (t * heads + h) * G;
      const wo = (t * heads + h) * wpr;
      for (let m = 0; m < M; m++) {
        const p = P[m * stride + pOffset + t]!;
        if (p === 0) continue;
        for (let d = 0; d < D; d++) {
          const code = (packed[wo + ((d / fpw) | 0)]! >>> ((d % fpw) * bits)) & mask;
          O[m * D + d] += p * scale[mo + ((d / gs) | 0)]! * code;
        }
      }
    }
    return;
  }
  if (M === 4) {
    valueMixLut4(packed, h, heads, D, n, bits, gs, scale, P, stride, pOffset, O);
    return;
  }
  const k = 4 / bits; // tokens per table
  if (V.tab.length < 16 * M) V.tab = new Float64Array(16 * M);
  const tab = V.tab;
  for (let t0 = 0; t0 < n; t0 += k) {
    const kk = Math.min(k, n - t0);
    for (let g = 0; g < G; g++) {
      // build tables: tab[idx·M + m] = Σ_j a_j·code_j(idx), a_j = p(t0+j)·scale(t0+j, g)
      for (let m = 0; m < M; m++) tab[m] = 0;
      let size = 1;
      for (let j = 0; j < kk; j++) {
        const t = t0 + j;
        const s = scale[(t * heads + h) * G + g]!;
        for (let c = 1; c <= mask; c++) {
          const off = c * size;
          for (let b = 0; b < size; b++) {
            for (let m = 0; m < M; m++) tab[(off + b) * M + m] = tab[b * M + m]! + c * P[m * stride + pOffset + t]! * s;
          }
        }
        size *= mask + 1;
      }
      const dEnd = (g + 1) * gs;
      for (let d = g * gs; d < dEnd; ) {
        const wi = (d / fpw) | 0;
        const wEnd = Math.min(dEnd, (wi + 1) * fpw);
        let x0 = 0, x1 = 0, x2 = 0, x3 = 0;
        const wb = wi;
        x0 = packed[(t0 * heads + h) * wpr + wb]!;
        if (kk > 1) x1 = packed[((t0 + 1) * heads + h) * wpr + wb]!;
        if (kk > 2) x2 = packed[((t0 + 2) * heads + h) * wpr + wb]!;
        if (kk > 3) x3 = packed[((t0 + 3) * heads + h) * wpr + wb]!;
        for (; d < wEnd; d++) {
          const sh = (d % fpw) * bits;
          let idx = (x0 >>> sh) & mask;
          if (bits === 1) idx |= (((x1 >>> sh) & 1) << 1) | (((x2 >>> sh) & 1) << 2) | (((x3 >>> sh) & 1) << 3);
          else if (bits === 2) idx |= ((x1 >>> sh) & 3) << 2;
          const e = idx * M;
          for (let m = 0; m < M; m++) O[m * D + d] += tab[e + m]!;
        }
      }
    }
  }
}

const T4 = new Float64Array(128);

/** Builds the 16-entry × 4-query table of `kk` consecutive tokens (from `t0`) of group `g` at `tab[base…base+63]`. */
function buildTable4(
  tab: Float64Array, base: number, t0: number, kk: number, h: number, heads: number, G: number, g: number, mask: number,
  scale: Float32Array, P: Float32Array, p0o: number, p1o: number, p2o: number, p3o: number,
): void {
  tab[base] = 0; tab[base + 1] = 0; tab[base + 2] = 0; tab[base + 3] = 0;
  let size = 4;
  for (let j = 0; j < kk; j++) {
    const t = t0 + j;
    const s = scale[(t * heads + h) * G + g]!;
    const a0 = P[p0o + t]! * s, a1 = P[p1o + t]! * s, a2 = P[p2o + t]! * s, a3 = P[p3o + t]! * s;
    for (let c = 1; c <= mask; c++) {
      const off = base + c * size;
      for (let b = base; b < base + size; b += 4) {
        tab[off + b - base] = tab[b]! + c * a0;
        tab[off + b - base + 1] = tab[b + 1]! + c * a1;
        tab[off + b - base + 2] = tab[b + 2]! + c * a2;
        tab[off + b - base + 3] = tab[b + 3]! + c * a3;
      }
    }
    size *= mask + 1;
  }
}

/**
 * {@link valueChunkMix}'s table path for exactly four query vectors (the GQA decode case), unrolled: two tables
 * (2 × 4/bits tokens) per pass over the channels, so each output is read and written once per pass. Zero term excluded.
 */
function valueMixLut4(
  packed: Uint32Array, h: number, heads: number, D: number, n: number, bits: number, gs: number,
  scale: Float32Array, P: Float32Array, stride: number, pOffset: number, O: Float64Array,
): void {
  const fpw = 32 / bits;
  const wpr = D / fpw;
  const G = D / gs;
  const mask = (1 << bits) - 1;
  const k = 4 / bits;
  const tab = T4;
  const p0o = pOffset, p1o = stride + pOffset, p2o = 2 * stride + pOffset, p3o = 3 * stride + pOffset;
  const D1 = D, D2 = 2 * D, D3 = 3 * D;
  const ts = heads * wpr; // words between consecutive tokens of a head
  for (let t0 = 0; t0 < n; t0 += 2 * k) {
    const ka = Math.min(k, n - t0);
    const kb = Math.max(0, Math.min(k, n - t0 - k));
    const rowBase = (t0 * heads + h) * wpr;
    for (let g = 0; g < G; g++) {
      buildTable4(tab, 0, t0, ka, h, heads, G, g, mask, scale, P, p0o, p1o, p2o, p3o);
      buildTable4(tab, 64, t0 + k, kb, h, heads, G, g, mask, scale, P, p0o, p1o, p2o, p3o);
      const dEnd = (g + 1) * gs;
      for (let d = g * gs; d < dEnd; ) {
        const wi = (d / fpw) | 0;
        const wEnd = Math.min(dEnd, (wi + 1) * fpw);
        const r = rowBase + wi;
        if (bits === 1) {
          const x0 = packed[r]!, x1 = ka > 1 ? packed[r + ts]! : 0, x2 = ka > 2 ? packed[r + 2 * ts]! : 0, x3 = ka > 3 ? packed[r + 3 * ts]! : 0;
          const y0 = kb > 0 ? packed[r + 4 * ts]! : 0, y1 = kb > 1 ? packed[r + 5 * ts]! : 0, y2 = kb > 2 ? packed[r + 6 * ts]! : 0, y3 = kb > 3 ? packed[r + 7 * ts]! : 0;
          for (let sh = d - wi * fpw; d < wEnd; d++, sh++) {
            const e = (((x0 >>> sh) & 1) | (((x1 >>> sh) & 1) << 1) | (((x2 >>> sh) & 1) << 2) | (((x3 >>> sh) & 1) << 3)) << 2;
            const f = 64 + ((((y0 >>> sh) & 1) | (((y1 >>> sh) & 1) << 1) | (((y2 >>> sh) & 1) << 2) | (((y3 >>> sh) & 1) << 3)) << 2);
            O[d] += tab[e]! + tab[f]!;
            O[D1 + d] += tab[e + 1]! + tab[f + 1]!;
            O[D2 + d] += tab[e + 2]! + tab[f + 2]!;
            O[D3 + d] += tab[e + 3]! + tab[f + 3]!;
          }
        } else if (bits === 2) {
          const x0 = packed[r]!, x1 = ka > 1 ? packed[r + ts]! : 0;
          const y0 = kb > 0 ? packed[r + 2 * ts]! : 0, y1 = kb > 1 ? packed[r + 3 * ts]! : 0;
          for (let sh = (d - wi * fpw) * 2; d < wEnd; d++, sh += 2) {
            const e = (((x0 >>> sh) & 3) | (((x1 >>> sh) & 3) << 2)) << 2;
            const f = 64 + ((((y0 >>> sh) & 3) | (((y1 >>> sh) & 3) << 2)) << 2);
            O[d] += tab[e]! + tab[f]!;
            O[D1 + d] += tab[e + 1]! + tab[f + 1]!;
            O[D2 + d] += tab[e + 2]! + tab[f + 2]!;
            O[D3 + d] += tab[e + 3]! + tab[f + 3]!;
          }
        } else {
          const x0 = packed[r]!, y0 = kb > 0 ? packed[r + ts]! : 0;
          for (let sh = (d - wi * fpw) * 4; d < wEnd; d++, sh += 4) {
            const e = ((x0 >>> sh) & 15) << 2;
            const f = 64 + (((y0 >>> sh) & 15) << 2);
            O[d] += tab[e]! + tab[f]!;
            O[D1 + d] += tab[e + 1]! + tab[f + 1]!;
            O[D2 + d] += tab[e + 2]! + tab[f + 2]!;
            O[D3 + d] += tab[e + 3]! + tab[f + 3]!;
          }
        }
      }
    }
  }
}
