import type { PackedKv } from '../kv.js';
import { denseKeyScoresImpl, denseValueMixImpl } from './dense.js';
import { keyScoresJs } from './keys.js';
import { checkDense, checkPackedBlock } from './validate.js';
import { valueMixDirect, valueMixLut, valuesLutApplies } from './values.js';

/**
 * `scores[h, t] = Σ_d q[h, d]·k̂[kv(h), t, d]` over packed keys, without materializing `k̂` (no 1/√d factor).
 * `q` is `[qHeads, headDim]`; query head `h` reads KV head `⌊h / (qHeads/kvHeads)⌋` (GQA). Returns `[qHeads, tokens]`
 * (written into `out` when given). Per token group the scale is folded into the query and the zero-point into one
 * dot product; 1- and 2-bit codes are summed four channels at a time through 16-entry lookup tables, and every code
 * is read once for all query heads of its KV head. Accumulates in float64; rounds once to float32.
 * @throws {@link XqShapeError} when the block, `q` or `out` have inconsistent shapes.
 */
export function packedKeyScores(q: Float32Array, keys: PackedKv, out?: Float32Array): Float32Array {
  const g = checkPackedBlock('packedKeyScores', keys, 'channel', q, 'q', out);
  const res = out ?? new Float32Array(g.qHeads * g.tokens);
  keyScoresJs(q, keys, g, res);
  return res;
}

/**
 * `out[h, d] = Σ_t p[h, t]·v̂[kv(h), t, d]` over packed values. `p` is `[qHeads, tokens]`; query head `h` reads KV head
 * `⌊h / (qHeads/kvHeads)⌋`. Returns `[qHeads, headDim]` (written into `out` when given). The scale is folded into
 * `p` per token and channel group and the zero-point into one sum per group; 1- and 2-bit codes are summed four
 * tokens at a time through 16-entry lookup tables. Accumulates in float64; rounds once to float32.
 * @throws {@link XqShapeError} when the block, `p` or `out` have inconsistent shapes.
 */
export function packedValueMix(p: Float32Array, values: PackedKv, out?: Float32Array): Float32Array {
  const g = checkPackedBlock('packedValueMix', values, 'token', p, 'p', out);
  const res = out ?? new Float32Array(g.qHeads * g.headDim);
  if (valuesLutApplies(g)) valueMixLut(p, values, g, res);
  else valueMixDirect(p, values, g, res);
  return res;
}

/**
 * Float32 baseline for {@link packedKeyScores}: `scores[h, t] = Σ_d q[h, d]·K[kv(h), t, d]` with `K` as
 * `[kvHeads, tokens, headDim]`. Reads each key row once per chunk of up to 4 query heads of its KV head
 * (register-blocked, float64 accumulation). Returns `[qHeads, tokens]`.
 * @throws {@link XqShapeError} on inconsistent shapes.
 */
export function denseKeyScores(q: Float32Array, keys: Float32Array, kvHeads: number, headDim: number, out?: Float32Array): Float32Array {
  const { tokens, qHeads, rep } = checkDense('denseKeyScores', q, 'q', keys, 'keys', kvHeads, headDim, 'channel', out);
  const res = out ?? new Float32Array(qHeads * tokens);
  denseKeyScoresImpl(q, keys, kvHeads, headDim, tokens, rep, res);
  return res;
}

/**
 * Float32 baseline for {@link packedValueMix}: `out[h, d] = Σ_t p[h, t]·V[kv(h), t, d]` with `V` as
 * `[kvHeads, tokens, headDim]`. Reads each value row once per chunk of up to 4 query heads (register-blocked,
 * float64 accumulation). Returns `[qHeads, headDim]`.
 * @throws {@link XqShapeError} on inconsistent shapes.
 */
export function denseValueMix(p: Float32Array, values: Float32Array, kvHeads: number, headDim: number, out?: Float32Array): Float32Array {
  const { tokens, qHeads, rep } = checkDense('denseValueMix', p, 'p', values, 'values', kvHeads, headDim, 'token', out);
  const res = out ?? new Float32Array(qHeads * headDim);
  denseValueMixImpl(p, values, kvHeads, headDim, tokens, rep, res);
  return res;
}
