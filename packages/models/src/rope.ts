import type { RopeScaling } from './config.js';

/**
 * RoPE inverse frequencies (length headDim/2) for base θ, with optional scaling: `linear` divides every
 * frequency by `factor`; `llama3` is the Llama 3.1 band-wise rule of transformers' `_compute_llama3_parameters`;
 * `frequency-factors` divides frequency i by `factors[i]` (GGUF `rope_freqs.weight`).
 */
export function ropeInverseFrequencies(headDim: number, theta: number, scaling: RopeScaling = { type: 'default' }): Float64Array {
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / theta ** ((2 * i) / headDim);
  switch (scaling.type) {
    case 'default':
      return inv;
    case 'linear':
      return inv.map((f) => f / scaling.factor);
    case 'frequency-factors':
      return inv.map((f, i) => f / scaling.factors[i]!);
    case 'llama3': {
      const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: oldLen } = scaling;
      const lowWavelen = oldLen / lowFreqFactor;
      const highWavelen = oldLen / highFreqFactor;
      return inv.map((f) => {
        const wavelen = (2 * Math.PI) / f;
        if (wavelen < highWavelen) return f;
        if (wavelen > lowWavelen) return f / factor;
        const smooth = (oldLen / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
        return (1 - smooth) * (f / factor) + smooth * f;
      });
    }
  }
}

/**
 * cos/sin tables for positions [start, start + count): two Float32Arrays of shape [count, headDim/2]
 * (angles computed in float64, then rounded once).
 * @internal
 */
export function ropeTables(invFreq: Float64Array, start: number, count: number): { cos: Float32Array; sin: Float32Array } {
  const half = invFreq.length;
  const cos = new Float32Array(count * half);
  const sin = new Float32Array(count * half);
  for (let t = 0; t < count; t++) {
    const p = start + t;
    for (let i = 0; i < half; i++) {
      const a = p * invFreq[i]!;
      cos[t * half + i] = Math.cos(a);
      sin[t * half + i] = Math.sin(a);
    }
  }
  return { cos, sin };
}
