import { XqConfigError } from '@xquant/quant';
import { resolveStorageConfig, type StorageInput } from './storage.js';
import type { CrossLayerPlan, LayerStorage } from './types.js';

/** Options of {@link accountBits}. */
export interface AccountBitsOptions {
  /**
   * The storage to account (a cache's `config`, or {@link resolveStorageConfig}'s result; validated again here).
   * Keys are quantized in whole multiples of R (`⌊T/R⌋·R` tokens), values for all but the last R tokens
   * (`max(0, T − R)`), as in the reference cache; with R = 0 every value and `⌊T/groupSize⌋·groupSize` keys are quantized.
   */
  config: StorageInput;
  /** KV heads per layer. */
  kvHeads: number;
  /** Channels per head. */
  headDim: number;
  /** Context length in tokens (≥ 1). */
  tokens: number;
  /** Bits of each stored scale and of each zero-point; default 16 (fp16). */
  metadataBits?: number;
  /** Bits of one full-precision element (residual window, and every element of a bits-16 layer); default 16. */
  residualBits?: number;
}

/**
 * The options of {@link accountBits} before 0.2: the plan and the grouping given apart.
 * @deprecated Pass `config` (e.g. `cache.config`) instead; this form is converted with {@link resolveStorageConfig}.
 */
export interface LegacyAccountBitsOptions extends Omit<AccountBitsOptions, 'config'> {
  /** Per-layer storage. */
  plan: CrossLayerPlan;
  /** Residual window R. */
  residualLength: number;
  /** Key group size (and value group size unless `valueGroupSize` is given). */
  groupSize: number;
  /** Value group size; default `groupSize`. */
  valueGroupSize?: number;
}

/** Bytes of one layer's keys or values. */
export interface TensorBytes {
  /** Packed codes (0 for a layer that borrows codes). */
  codeBytes: number;
  /** Scale and zero-point of every quantized group (borrowing layers pay this too). */
  metadataBytes: number;
  /** Full-precision elements: the residual window, or the whole tensor for a bits-16 layer. */
  residualBytes: number;
  /** Quantized tokens of this tensor (0 for a bits-16 layer). */
  quantizedTokens: number;
}

/** What {@link accountBits} returns. */
export interface BitAccount {
  /**
   * The paper's equivalent width: code bits averaged over the 2·L key/value tensors, with a borrowing layer counting 0
   * and a bits-16 layer counting 16. Ignores scale, zero-point and the residual window.
   */
  paperBits: number;
  /** True stored bits per K/V element: all bytes below × 8 / (2 · layers · tokens · kvHeads · headDim). */
  storedBitsPerElement: number;
  /** Sum over layers of packed code bytes. */
  codeBytes: number;
  /** Sum over layers of scale/zero-point bytes. */
  metadataBytes: number;
  /** Sum over layers of full-precision bytes. */
  residualBytes: number;
  /** `codeBytes + metadataBytes + residualBytes`. */
  totalBytes: number;
  /** Elements accounted: 2 · layers · tokens · kvHeads · headDim. */
  elements: number;
  /** Per layer breakdown. */
  perLayer: {
    /** This layer's keys. */
    keys: TensorBytes;
    /** This layer's values. */
    values: TensorBytes;
  }[];
}

function positiveInt(v: number, what: string): void {
  if (!Number.isInteger(v) || v <= 0) throw new XqConfigError('E_CONFIG', `${what} must be a positive integer; got ${String(v)}`);
}

/**
 * Memory of a KV cache under a plan: the paper's equivalent bit width and the true stored bits per element
 * (codes + scale + zero per group + full-precision residual window), with a byte breakdown. Codes are counted as
 * stored: keys packed along tokens per channel, values along channels per token, in 32-bit words. Key metadata is one
 * scale and zero per `groupSize` tokens of a channel; value metadata one per `valueGroupSize` channels of a token.
 * @example
 * const plan = xquantPlan({ layers: 8, keyBits: 2, valueBits: 1, valueShareFrom: 4 });
 * accountBits({ config: { ...plan, residualLength: 32, groupSize: 32 }, kvHeads: 2, headDim: 64, tokens: 2048 });
 * // → paperBits 1.375, storedBitsPerElement ≈ 2.486
 */
export function accountBits(options: AccountBitsOptions | LegacyAccountBitsOptions): BitAccount {
  const { kvHeads, headDim, tokens } = options;
  const metadataBits = options.metadataBits ?? 16;
  const residualBits = options.residualBits ?? 16;
  positiveInt(kvHeads, 'kvHeads');
  positiveInt(headDim, 'headDim');
  positiveInt(tokens, 'tokens');
  const input = 'config' in options ? options.config : { ...options.plan, residualLength: options.residualLength, groupSize: options.groupSize, valueGroupSize: options.valueGroupSize };
  const plan = resolveStorageConfig(input, headDim);
  const { residualLength: R, groupSize: gs, valueGroupSize: gv } = plan;
  for (const [v, what] of [[metadataBits, 'metadataBits'], [residualBits, 'residualBits']] as const) {
    if (!Number.isFinite(v) || v < 0) throw new XqConfigError('E_CONFIG', `${what} must be a non-negative number; got ${String(v)}`);
  }
  const E = kvHeads * headDim;
  const keyTokens = R > 0 ? Math.floor(tokens / R) * R : Math.floor(tokens / gs) * gs;
  const valueTokens = Math.max(0, tokens - R);
  const words = (cols: number, bits: number) => Math.ceil((cols * bits) / 32);

  const tensor = (s: LayerStorage, kind: 'keys' | 'values'): TensorBytes => {
    if (s.bits === 16) return { codeBytes: 0, metadataBytes: 0, residualBytes: (tokens * E * residualBits) / 8, quantizedTokens: 0 };
    const tq = kind === 'keys' ? keyTokens : valueTokens;
    // keys: rows = channels (E), packed along tq tokens; values: rows = tq·kvHeads tokens-heads, packed along headDim
    const codeWords = kind === 'keys' ? E * words(tq, s.bits) : tq * kvHeads * words(headDim, s.bits);
    const groups = (tq * E) / (kind === 'keys' ? gs : gv);
    return {
      codeBytes: s.codesFrom === null ? codeWords * 4 : 0,
      metadataBytes: (groups * 2 * metadataBits) / 8,
      residualBytes: ((tokens - tq) * E * residualBits) / 8,
      quantizedTokens: tq,
    };
  };

  const perLayer = plan.keys.map((k, l) => ({ keys: tensor(k, 'keys'), values: tensor(plan.values[l]!, 'values') }));
  let codeBytes = 0;
  let metadataBytes = 0;
  let residualBytes = 0;
  for (const p of perLayer) {
    for (const t of [p.keys, p.values]) {
      codeBytes += t.codeBytes;
      metadataBytes += t.metadataBytes;
      residualBytes += t.residualBytes;
    }
  }
  const L = plan.keys.length;
  const elements = 2 * L * tokens * E;
  const paperBits =
    [...plan.keys, ...plan.values].reduce((acc, s) => acc + (s.codesFrom === null ? s.bits : 0), 0) / (2 * L);
  const totalBytes = codeBytes + metadataBytes + residualBytes;
  return {
    paperBits,
    storedBitsPerElement: (totalBytes * 8) / elements,
    codeBytes,
    metadataBytes,
    residualBytes,
    totalBytes,
    elements,
    perLayer,
  };
}
