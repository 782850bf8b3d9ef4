import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { XqError, halfTable } from '@xquant/quant';

export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const REFS_DIR = fileURLToPath(new URL('../../../../shared/eval/refs/', import.meta.url));
export const hasRefs = existsSync(REFS_DIR + 'xq-llama-20m.safetensors');

export async function useCpu(): Promise<void> {
  tf.enableProdMode();
  await tf.setBackend('cpu');
}

/** Deterministic PRNG (mulberry32) with a normal sampler. */
export function rng(seed: number): { uniform(): number; normal(): number } {
  let a = seed >>> 0;
  const uniform = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    uniform,
    normal: () => Math.sqrt(-2 * Math.log(uniform() + 1e-12)) * Math.cos(2 * Math.PI * uniform()),
  };
}

export function randn(n: number, seed: number, scale = 1, offset = 0): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r.normal() * scale + offset);
}

/** Keys-like data: per-channel offsets and a few outlier channels, `[heads, tokens, d]`. */
export function kvLike(heads: number, tokens: number, d: number, seed: number): Float32Array {
  const r = rng(seed);
  const mean = Float64Array.from({ length: heads * d }, (_, i) => (i % d < 2 ? 6 : 0) + r.normal() * 0.5);
  const x = new Float32Array(heads * tokens * d);
  for (let h = 0; h < heads; h++) for (let t = 0; t < tokens; t++) for (let c = 0; c < d; c++) x[(h * tokens + t) * d + c] = mean[h * d + c]! + r.normal();
  return x;
}

/** Float64 causal GQA attention: q `[qH, nq, d]`, k/v `[kvH, T, d]` → `[qH, nq, d]`. */
export function refAttention(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, qH: number, nq: number, kvH: number, T: number, d: number): Float64Array {
  const out = new Float64Array(qH * nq * d);
  const rep = qH / kvH;
  const s = 1 / Math.sqrt(d);
  for (let h = 0; h < qH; h++) {
    const kh = Math.floor(h / rep);
    for (let i = 0; i < nq; i++) {
      const last = T - nq + i;
      const sc = new Float64Array(last + 1);
      let mx = -Infinity;
      for (let t = 0; t <= last; t++) {
        let acc = 0;
        for (let c = 0; c < d; c++) acc += q[(h * nq + i) * d + c]! * k[(kh * T + t) * d + c]!;
        sc[t] = acc * s;
        if (sc[t]! > mx) mx = sc[t]!;
      }
      let sum = 0;
      for (let t = 0; t <= last; t++) {
        sc[t] = Math.exp(sc[t]! - mx);
        sum += sc[t]!;
      }
      for (let t = 0; t <= last; t++) {
        const p = sc[t]! / sum;
        for (let c = 0; c < d; c++) {
          const o = (h * nq + i) * d + c;
          out[o] = out[o]! + p * v[(kh * T + t) * d + c]!;
        }
      }
    }
  }
  return out;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/** Minimal safetensors reader (F16/F32/F64/I64 → numbers), enough for the eval refs. */
export function readSafetensors(path: string): Map<string, { shape: number[]; data: Float32Array }> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const base = 8 + n;
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  const t16 = halfTable();
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [s, e] = info.data_offsets;
    const bytes = buf.subarray(base + s, base + e);
    let data: Float32Array;
    if (info.dtype === 'F16') {
      data = new Float32Array(bytes.length / 2);
      for (let i = 0; i < data.length; i++) data[i] = t16[bytes.readUInt16LE(i * 2)]!;
    } else if (info.dtype === 'F32') {
      data = new Float32Array(bytes.length / 4);
      for (let i = 0; i < data.length; i++) data[i] = bytes.readFloatLE(i * 4);
    } else continue;
    out.set(name, { shape: info.shape, data });
  }
  return out;
}

/**
 * Prefill P tokens, then `steps` decode steps (async append + attend per layer) on `backend`; returns the decode
 * outputs, every layer, step after step. Inputs are host arrays drawn from `seed`, so backends see the same numbers.
 */
export async function decodeRunAsync(
  backend: string,
  make: () => import('@xquant/tfjs').KvCache,
  dims: { kvHeads: number; headDim: number; queryHeads: number; layers: number },
  P: number,
  steps: number,
  seed: number,
): Promise<Float32Array[]> {
  const { kvHeads: H, headDim: D, queryHeads: QH, layers } = dims;
  await tf.setBackend(backend);
  const cache = make() as import('@xquant/tfjs').AsyncKvCache;
  const T = P + steps;
  const k = kvLike(H, T, D, seed);
  const v = randn(H * T * D, seed + 1);
  const slice = (x: Float32Array, from: number, n: number) => {
    const out = new Float32Array(H * n * D);
    for (let h = 0; h < H; h++) out.set(x.subarray((h * T + from) * D, (h * T + from + n) * D), h * n * D);
    return out;
  };
  const outs: Float32Array[] = [];
  for (let l = 0; l < layers; l++) {
    const [kt, vt] = [tf.tensor3d(slice(k, 0, P), [H, P, D]), tf.tensor3d(slice(v, 0, P), [H, P, D])];
    await cache.prefillAsync(l, kt, vt);
    const q = tf.tensor3d(randn(QH * P * D, seed * 10 + l), [QH, P, D]);
    tf.dispose([kt, vt, q, cache.attend(l, q)]);
  }
  for (let s = 0; s < steps; s++) {
    for (let l = 0; l < layers; l++) {
      const [kt, vt] = [tf.tensor3d(slice(k, P + s, 1), [H, 1, D]), tf.tensor3d(slice(v, P + s, 1), [H, 1, D])];
      await cache.appendAsync(l, kt, vt);
      const q = tf.tensor3d(randn(QH * D, seed * 100 + 1000 * s + l), [QH, 1, D]);
      const o = cache.attend(l, q);
      outs.push((await o.data()) as Float32Array);
      tf.dispose([kt, vt, q, o]);
    }
  }
  cache.dispose();
  return outs;
}

/** The `code` of the typed error `f` throws: `'none'` when it returns, `untyped: …` for an error that is no XqError. */
export function codeOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return XqError.isInstance(e) ? e.code : `untyped: ${String(e)}`;
  }
  return 'none';
}

/** turboquant configurations the cache tests run: whole and half bits, both splits, every scale format, per-layer widths. */
export const TURBOQUANT_CONFIGS: import('@xquant/tfjs').TurboQuantOptions[] = [
  { bits: 2, residualLength: 8 },
  { keyBits: 2.5, valueBits: 3.5, residualLength: 8 },
  { keyBits: 2, valueBits: 1, residualLength: 0 },
  { bits: 1.5, residualLength: 8, scaleFormat: 'log8', scaleRule: 'lsq' },
  { bits: 3, residualLength: 8, scaleFormat: 'e4m3', rotation: 'none' },
  { keyBits: [4, 1], valueBits: [1.5, 2.5], residualLength: 4, scaleFormat: 'e5m2', seed: 7 },
  { keyBits: 2.5, valueBits: 1.5, residualLength: 8, split: 'rotated', scaleFormat: 'log8', scaleRule: 'lsq' },
];
