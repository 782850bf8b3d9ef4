/** Deterministic test data (mulberry32) and float64 reference kernels. */

/** A seeded PRNG returning floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal samples (Box–Muller) scaled by `std`, plus a per-channel offset when `channelMean` is set. */
export function gaussian(n: number, seed: number, std = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12);
    out[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return out;
}

/**
 * Float64 `scores[h, t] = Σ_d q[h, d]·K[kv(h), t, d]` and the per-output weight `Σ_d |q[h, d]|·wAbs[kv(h), t, d]`
 * (used to scale tolerances), with `K`, `wAbs` as `[kvHeads, T, D]`.
 */
export function refKeyScores(q: ArrayLike<number>, K: ArrayLike<number>, kvHeads: number, T: number, D: number, wAbs?: ArrayLike<number>) {
  const qHeads = q.length / D;
  const rep = qHeads / kvHeads;
  const out = new Float64Array(qHeads * T);
  const mag = new Float64Array(qHeads * T);
  for (let h = 0; h < qHeads; h++) {
    const kv = Math.floor(h / rep);
    for (let t = 0; t < T; t++) {
      let s = 0, m = 0;
      for (let d = 0; d < D; d++) {
        const qv = q[h * D + d]!;
        const i = (kv * T + t) * D + d;
        s += qv * K[i]!;
        m += Math.abs(qv) * (wAbs ? wAbs[i]! : Math.abs(K[i]!));
      }
      out[h * T + t] = s;
      mag[h * T + t] = m;
    }
  }
  return { out, mag };
}

/** Float64 `out[h, d] = Σ_t p[h, t]·V[kv(h), t, d]` and `Σ_t |p[h, t]|·wAbs[kv(h), t, d]`. */
export function refValueMix(p: ArrayLike<number>, V: ArrayLike<number>, kvHeads: number, T: number, D: number, wAbs?: ArrayLike<number>) {
  const qHeads = p.length / T;
  const rep = qHeads / kvHeads;
  const out = new Float64Array(qHeads * D);
  const mag = new Float64Array(qHeads * D);
  for (let h = 0; h < qHeads; h++) {
    const kv = Math.floor(h / rep);
    for (let t = 0; t < T; t++) {
      const pv = p[h * T + t]!;
      for (let d = 0; d < D; d++) {
        const i = (kv * T + t) * D + d;
        const o = h * D + d;
        out[o] = out[o]! + pv * V[i]!;
        mag[o] = mag[o]! + Math.abs(pv) * (wAbs ? wAbs[i]! : Math.abs(V[i]!));
      }
    }
  }
  return { out, mag };
}
