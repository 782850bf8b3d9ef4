import { XqConfigError, quantizeKeys, quantizeValues, unpackKv, type Bits } from '@xquant/quant';

/** Keys and values of every layer over the same tokens (e.g. `captureLayers` of `@xquant/eval`). */
export interface LayerKv {
  /** Layers, KV heads and channels per head. */
  shape: { layers: number; kvHeads: number; headDim: number };
  /** Tokens held per layer. */
  tokens: number;
  /** Per layer `[kvHeads, tokens, headDim]` float32. */
  keys: readonly Float32Array[];
  /** Per layer `[kvHeads, tokens, headDim]` float32. */
  values: readonly Float32Array[];
}

/** Agreement of quantized codes between every pair of layers, for keys or values. */
export interface CodeAgreement {
  /** Which tensors. */
  kind: 'keys' | 'values';
  /** Code width used. */
  bits: Bits;
  /** Group size used. */
  groupSize: number;
  /** Tokens quantized (keys: a multiple of the group size). */
  tokens: number;
  /** `agreement[i][j]`: fraction of elements whose code in layer i equals the code in layer j. */
  agreement: number[][];
  /** `chance[i][j]`: agreement expected if the codes were independent with the same marginals (Σ_c p_i(c)·p_j(c)). */
  chance: number[][];
}

/**
 * Quantize each layer's keys (per channel, groups along tokens) or values (per token, groups along channels) with the
 * reference quantizer (fp16) and measure, for every pair of layers, how often the codes agree, next to the agreement
 * independent codes would have. Cross-layer sharing can only work where agreement is well above chance.
 */
export function codeAgreement(cap: LayerKv, kind: 'keys' | 'values', options: { bits?: Bits; groupSize?: number } = {}): CodeAgreement {
  const bits = options.bits ?? 1;
  const groupSize = options.groupSize ?? 32;
  const { kvHeads, headDim, layers } = cap.shape;
  const tokens = kind === 'keys' ? Math.floor(cap.tokens / groupSize) * groupSize : cap.tokens;
  if (tokens === 0) throw new XqConfigError('E_GROUP_SIZE', `codeAgreement: the prompt (${cap.tokens} tokens) is shorter than one key group (${groupSize})`);
  const codes: Uint8Array[] = [];
  for (let l = 0; l < layers; l++) {
    const src = kind === 'keys' ? cap.keys[l]! : cap.values[l]!;
    // first `tokens` tokens of every head: [kvHeads, tokens, headDim]
    const x = new Float32Array(kvHeads * tokens * headDim);
    for (let h = 0; h < kvHeads; h++) x.set(src.subarray(h * cap.tokens * headDim, (h * cap.tokens + tokens) * headDim), h * tokens * headDim);
    const shape = { heads: kvHeads, tokens, headDim };
    const q = kind === 'keys' ? quantizeKeys(x, shape, { bits, groupSize }) : quantizeValues(x, shape, { bits, groupSize });
    codes.push(unpackKv(q));
  }
  const levels = 1 << bits;
  const hist = codes.map((c) => {
    const h = new Float64Array(levels);
    for (let i = 0; i < c.length; i++) h[c[i]!]!++;
    return h.map((v) => v / c.length);
  });
  const agreement: number[][] = [];
  const chance: number[][] = [];
  for (let i = 0; i < layers; i++) {
    agreement.push([]);
    chance.push([]);
    for (let j = 0; j < layers; j++) {
      let same = 0;
      const a = codes[i]!;
      const b = codes[j]!;
      for (let e = 0; e < a.length; e++) if (a[e] === b[e]) same++;
      agreement[i]!.push(same / a.length);
      let c = 0;
      for (let v = 0; v < levels; v++) c += hist[i]![v]! * hist[j]![v]!;
      chance[i]!.push(c);
    }
  }
  return { kind, bits, groupSize, tokens, agreement, chance };
}

/** The most similar earlier layer of a layer. */
export interface DonorChoice {
  /** The borrowing layer. */
  layer: number;
  /** The earlier layer with the highest agreement above chance. */
  donor: number;
  /** Fraction of equal codes. */
  agreement: number;
  /** agreement − chance. */
  excess: number;
}

/**
 * Similarity-driven donors: for each layer l ≥ 1, the earlier layer whose codes agree most with l's, and how far
 * that agreement is above chance (`excess`). A layer is worth sharing only when the excess is clearly positive.
 */
export function bestDonors(a: CodeAgreement): DonorChoice[] {
  const out: DonorChoice[] = [];
  for (let l = 1; l < a.agreement.length; l++) {
    let best = 0;
    for (let d = 1; d < l; d++) if (a.agreement[l]![d]! - a.chance[l]![d]! > a.agreement[l]![best]! - a.chance[l]![best]!) best = d;
    out.push({ layer: l, donor: best, agreement: a.agreement[l]![best]!, excess: a.agreement[l]![best]! - a.chance[l]![best]! });
  }
  return out;
}
