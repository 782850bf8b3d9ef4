import { unpackKv, type PackedKv } from '@xquant/quant';
import { requestNodeDevice, type NodeGpu } from '../src/index.js';

process.env.XDG_RUNTIME_DIR ??= '/tmp';
// lavapipe: skip LLVM optimization passes (the unrolled kernels compile ~25% faster; results are the same)
process.env.GALLIVM_PERF ??= 'nopt';

/** Open a device once per test file; null (with the reason) when there is no adapter. */
export async function openGpu(): Promise<{ gpu: NodeGpu | null; reason: string }> {
  try {
    const gpu = await requestNodeDevice();
    return { gpu, reason: gpu ? '' : 'no WebGPU adapter found (install lavapipe: scripts/setup-webgpu.sh)' };
  } catch (e) {
    return { gpu: null, reason: `WebGPU unavailable: ${String(e).split('\n')[0]}` };
  }
}

/** Deterministic uniform [0,1) generator (mulberry32). */
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

/** Standard normal samples (Box–Muller). */
export function normal(n: number, r: () => number, std = 1, mean = 0): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = mean + std * Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  return out;
}

/** KV-like data `[heads, tokens, headDim]`: per-channel offsets and a few outlier channels. */
export function kvData(heads: number, tokens: number, headDim: number, r: () => number): Float32Array {
  const x = normal(heads * tokens * headDim, r);
  const off = normal(heads * headDim, r, 0.5);
  for (let h = 0; h < heads; h++)
    for (let t = 0; t < tokens; t++)
      for (let d = 0; d < headDim; d++) {
        const o = off[h * headDim + d]! + (d % 37 === 3 ? 8 : 0);
        x[(h * tokens + t) * headDim + d] = x[(h * tokens + t) * headDim + d]! + o;
      }
  return x;
}

/** Exact (float64) `code·scale + zero` of a packed block in `[heads, tokens, headDim]` order (no fp16 rounding). */
export function exactDequant(block: PackedKv): Float64Array {
  const codes = unpackKv(block);
  const { heads, tokens: T, headDim: D, groupSize: gs } = block;
  const out = new Float64Array(heads * T * D);
  for (let h = 0; h < heads; h++)
    for (let t = 0; t < T; t++)
      for (let d = 0; d < D; d++) {
        const [ci, gi] = block.axis === 'channel' ? [(h * D + d) * T + t, (h * D + d) * (T / gs) + Math.floor(t / gs)] : [(h * T + t) * D + d, (h * T + t) * (D / gs) + Math.floor(d / gs)];
        out[(h * T + t) * D + d] = codes[ci]! * block.scale[gi]! + block.zero[gi]!;
      }
  return out;
}

/** float64 scores and the bound Σ|q|·(|code·s| + |z|) of packed keys, `[qHeads, tokens]`. */
export function refKeyScores(q: Float32Array, keys: PackedKv): { ref: Float64Array; bound: Float64Array } {
  const { heads, tokens: T, headDim: D } = keys;
  const kh = exactDequant(keys);
  const qHeads = q.length / D;
  const rep = qHeads / heads;
  const G = T / keys.groupSize;
  const ref = new Float64Array(qHeads * T);
  const bound = new Float64Array(qHeads * T);
  for (let h = 0; h < qHeads; h++) {
    const kv = Math.floor(h / rep);
    for (let t = 0; t < T; t++) {
      let s = 0;
      let b = 0;
      for (let d = 0; d < D; d++) {
        const g = (kv * D + d) * G + Math.floor(t / keys.groupSize);
        const v = kh[(kv * T + t) * D + d]!;
        s += q[h * D + d]! * v;
        b += Math.abs(q[h * D + d]!) * (Math.abs(v - keys.zero[g]!) + Math.abs(keys.zero[g]!));
      }
      ref[h * T + t] = s;
      bound[h * T + t] = b;
    }
  }
  return { ref, bound };
}

/** float64 `Σ_t p·v̂` and its bound for packed values, `[qHeads, headDim]`. */
export function refValueMix(p: Float32Array, values: PackedKv): { ref: Float64Array; bound: Float64Array } {
  const { heads, tokens: T, headDim: D } = values;
  const vh = exactDequant(values);
  const qHeads = p.length / T;
  const rep = qHeads / heads;
  const G = D / values.groupSize;
  const ref = new Float64Array(qHeads * D);
  const bound = new Float64Array(qHeads * D);
  for (let h = 0; h < qHeads; h++) {
    const kv = Math.floor(h / rep);
    for (let t = 0; t < T; t++) {
      const pt = p[h * T + t]!;
      for (let d = 0; d < D; d++) {
        const v = vh[(kv * T + t) * D + d]!;
        const z = values.zero[(kv * T + t) * G + Math.floor(d / values.groupSize)]!;
        const o = h * D + d;
        ref[o] = ref[o]! + pt * v;
        bound[o] = bound[o]! + Math.abs(pt) * (Math.abs(v - z) + Math.abs(z));
      }
    }
  }
  return { ref, bound };
}

/** Largest |got − ref| / (bound·rel + abs) — passes when ≤ 1. Also fails on NaN. */
export function worstRatio(got: ArrayLike<number>, ref: ArrayLike<number>, bound: ArrayLike<number>, rel: number, abs = 1e-6): number {
  let worst = 0;
  for (let i = 0; i < ref.length; i++) {
    const e = Math.abs(got[i]! - ref[i]!);
    const r = e / (rel * bound[i]! + abs);
    if (!(r <= worst)) worst = Number.isNaN(r) ? Infinity : r;
  }
  return worst;
}

/** float64 decode attention over full K/V `[kvHeads, n, D]` (already dequantized where quantized). */
export function refAttention(q: Float32Array, k: Float64Array | Float32Array, v: Float64Array | Float32Array, kvHeads: number, n: number, D: number, scale: number): { ref: Float64Array; bound: Float64Array } {
  const qHeads = q.length / D;
  const rep = qHeads / kvHeads;
  const ref = new Float64Array(qHeads * D);
  const bound = new Float64Array(qHeads * D);
  const s = new Float64Array(n);
  for (let h = 0; h < qHeads; h++) {
    const kv = Math.floor(h / rep);
    let mx = -Infinity;
    for (let t = 0; t < n; t++) {
      let a = 0;
      for (let d = 0; d < D; d++) a += q[h * D + d]! * k[(kv * n + t) * D + d]!;
      s[t] = a * scale;
      mx = Math.max(mx, s[t]!);
    }
    let l = 0;
    for (let t = 0; t < n; t++) l += (s[t] = Math.exp(s[t]! - mx));
    for (let t = 0; t < n; t++) {
      const p = s[t]! / l;
      for (let d = 0; d < D; d++) {
        const [o, x] = [h * D + d, v[(kv * n + t) * D + d]!];
        ref[o] = ref[o]! + p * x;
        bound[o] = bound[o]! + p * Math.abs(x);
      }
    }
  }
  return { ref, bound };
}
