import { XqShapeError } from '../errors.js';
import type { PackedKv } from '../kv.js';

function queryHeads(len: number, per: number, kvHeads: number, what: string): number {
  if (len % per !== 0) throw new XqShapeError(`${what}: length ${len} is not a multiple of ${per}`);
  const qHeads = len / per;
  if (qHeads % kvHeads !== 0) {
    throw new XqShapeError(`${what}: ${qHeads} query heads is not a multiple of ${kvHeads} KV heads (GQA)`);
  }
  return qHeads;
}

/**
 * `scores[h, t] = Σ_d q[h, d] · k̂[kv(h), t, d]` over packed keys, without materializing `k̂`
 * (no 1/√d factor). `q` is `[qHeads, headDim]`; query head `h` reads KV head `⌊h·kvHeads/qHeads⌋`.
 * Returns `[qHeads, tokens]`.
 */
export function packedKeyScores(q: Float32Array, keys: PackedKv, out?: Float32Array): Float32Array {
  if (keys.axis !== 'channel') throw new XqShapeError('packedKeyScores needs keys quantized per channel');
  const { heads, tokens: T, headDim: D, bits, groupSize: gs } = keys;
  const qHeads = queryHeads(q.length, D, heads, 'q');
  const res = out ?? new Float32Array(qHeads * T);
  if (res.length !== qHeads * T) throw new XqShapeError(`out: expected ${qHeads * T} elements, got ${res.length}`);
  const rep = qHeads / heads;
  const fpw = 32 / bits;
  const m = (1 << bits) - 1;
  const wordsPerRow = T / fpw;
  const groups = T / gs;
  const { packed, scale, zero } = keys;
  res.fill(0, 0, qHeads * T);
  for (let h = 0; h < qHeads; h++) {
    const kv = Math.floor(h / rep);
    const o = h * T;
    for (let d = 0; d < D; d++) {
      const qd = q[h * D + d]!;
      const row = kv * D + d;
      const sOff = row * groups;
      const wOff = row * wordsPerRow;
      for (let w = 0; w < wordsPerRow; w++) {
        const word = packed[wOff + w]!;
        const t0 = w * fpw;
        for (let i = 0; i < fpw; i++) {
          const t = t0 + i;
          const g = (t / gs) | 0;
          const code = (word >>> (i * bits)) & m;
          res[o + t] = res[o + t]! + qd * (code * scale[sOff + g]! + zero[sOff + g]!);
        }
      }
    }
  }
  return res;
}

/**
 * `out[h, d] = Σ_t p[h, t] · v̂[kv(h), t, d]` over packed values. `p` is `[qHeads, tokens]`.
 * Returns `[qHeads, headDim]`.
 */
export function packedValueMix(p: Float32Array, values: PackedKv, out?: Float32Array): Float32Array {
  if (values.axis !== 'token') throw new XqShapeError('packedValueMix needs values quantized per token');
  const { heads, tokens: T, headDim: D, bits, groupSize: gs } = values;
  const qHeads = queryHeads(p.length, T, heads, 'p');
  const res = out ?? new Float32Array(qHeads * D);
  if (res.length !== qHeads * D) throw new XqShapeError(`out: expected ${qHeads * D} elements, got ${res.length}`);
  const rep = qHeads / heads;
  const fpw = 32 / bits;
  const m = (1 << bits) - 1;
  const wordsPerRow = D / fpw;
  const groups = D / gs;
  const { packed, scale, zero } = values;
  res.fill(0, 0, qHeads * D);
  for (let h = 0; h < qHeads; h++) {
    const kv = Math.floor(h / rep);
    const o = h * D;
    for (let t = 0; t < T; t++) {
      const pt = p[h * T + t]!;
      const row = kv * T + t;
      for (let w = 0; w < wordsPerRow; w++) {
        const word = packed[row * wordsPerRow + w]!;
        for (let i = 0; i < fpw; i++) {
          const d = w * fpw + i;
          const g = (d / gs) | 0;
          const code = (word >>> (i * bits)) & m;
          res[o + d] = res[o + d]! + pt * (code * scale[row * groups + g]! + zero[row * groups + g]!);
        }
      }
    }
  }
  return res;
}

/** Float32 baseline: `scores[h, t] = Σ_d q[h, d]·K[kv(h), t, d]` with `K` as `[kvHeads, tokens, headDim]`. */
export function denseKeyScores(q: Float32Array, keys: Float32Array, kvHeads: number, headDim: number, out?: Float32Array): Float32Array {
  const T = keys.length / (kvHeads * headDim);
  if (!Number.isInteger(T)) throw new XqShapeError(`keys length ${keys.length} is not a multiple of kvHeads·headDim`);
  const qHeads = queryHeads(q.length, headDim, kvHeads, 'q');
  const res = out ?? new Float32Array(qHeads * T);
  const rep = qHeads / kvHeads;
  for (let h = 0; h < qHeads; h++) {
    const kb = Math.floor(h / rep) * T * headDim;
    const qb = h * headDim;
    for (let t = 0; t < T; t++) {
      let acc = 0;
      const k = kb + t * headDim;
      for (let d = 0; d < headDim; d++) acc += q[qb + d]! * keys[k + d]!;
      res[h * T + t] = acc;
    }
  }
  return res;
}

/** Float32 baseline: `out[h, d] = Σ_t p[h, t]·V[kv(h), t, d]` with `V` as `[kvHeads, tokens, headDim]`. */
export function denseValueMix(p: Float32Array, values: Float32Array, kvHeads: number, headDim: number, out?: Float32Array): Float32Array {
  const T = values.length / (kvHeads * headDim);
  if (!Number.isInteger(T)) throw new XqShapeError(`values length ${values.length} is not a multiple of kvHeads·headDim`);
  const qHeads = queryHeads(p.length, T, kvHeads, 'p');
  const res = out ?? new Float32Array(qHeads * headDim);
  res.fill(0);
  const rep = qHeads / kvHeads;
  for (let h = 0; h < qHeads; h++) {
    const vb = Math.floor(h / rep) * T * headDim;
    const o = h * headDim;
    for (let t = 0; t < T; t++) {
      const pt = p[h * T + t]!;
      const v = vb + t * headDim;
      for (let d = 0; d < headDim; d++) res[o + d] = res[o + d]! + pt * values[v + d]!;
    }
  }
  return res;
}
