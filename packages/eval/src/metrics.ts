import { XqNumericError, XqShapeError } from '@xquant/quant';

/**
 * Log-softmax of one row of logits, in float64: `x − max − log Σ exp(x − max)`. Throws on NaN/Infinity (saying where).
 * Writes into `out` when given (length = logits length).
 */
export function logSoftmax(logits: ArrayLike<number>, out?: Float64Array): Float64Array {
  const n = logits.length;
  if (n === 0) throw new XqShapeError('logSoftmax: logits must hold at least one value, got 0');
  const res = out ?? new Float64Array(n);
  if (res.length !== n) throw new XqShapeError(`logSoftmax: out has ${res.length} values, expected ${n}`);
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = logits[i]!;
    if (v - v !== 0) throw new XqNumericError(`logSoftmax: logit ${i} is ${v}`);
    if (v > max) max = v;
  }
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(logits[i]! - max);
  const lse = max + Math.log(sum);
  for (let i = 0; i < n; i++) res[i] = logits[i]! - lse;
  return res;
}

/** Index of the largest value (the first one on ties). */
export function argmax(x: ArrayLike<number>, offset = 0, length = x.length - offset): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < length; i++) {
    const v = x[offset + i]!;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/**
 * KL(p ‖ q) in nats from two log-probability rows: `Σ p·(log p − log q)`, float64. Terms with p = 0 count 0;
 * `offset` selects a row inside larger buffers.
 */
export function klDivergence(logP: ArrayLike<number>, logQ: ArrayLike<number>, offsetP = 0, offsetQ = 0, length = logQ.length - offsetQ): number {
  let kl = 0;
  for (let i = 0; i < length; i++) {
    const lp = logP[offsetP + i]!;
    if (lp === -Infinity) continue;
    kl += Math.exp(lp) * (lp - logQ[offsetQ + i]!);
  }
  return kl;
}

/** Sums over the predictions of one prose record for one cache (what shards store and merges add up). */
export interface ProseSums {
  /** Predictions scored (448 for a 512-token record with a 64-token prefill). */
  n: number;
  /** Σ NLL (nats) of the target tokens. */
  nll: number;
  /** Σ NLL without the first prediction (the one that comes from the prefill, identical for every cache). */
  nllExclFirst: number;
  /** Σ KL(full ‖ cache) (nats); 0 for the full cache itself. */
  kl: number;
  /** Predictions whose argmax equals the full run's argmax. */
  top1: number;
}

/** Aggregate prose metrics over records. */
export interface ProseSummary {
  /** exp(Σ NLL / predictions). */
  ppl: number;
  /** Perplexity without each record's first prediction (the anchor's `ppl_excl63`). */
  pplExclFirst: number;
  /** Mean KL(full ‖ cache) per prediction, nats. */
  kl: number;
  /** Fraction of predictions with the same argmax as full. */
  top1: number;
  /** Records aggregated. */
  records: number;
  /** Predictions aggregated. */
  predictions: number;
}

/** Aggregate per-record sums in the given order (the order fixes the float64 rounding: keep it canonical). */
export function summarizeProse(sums: readonly ProseSums[]): ProseSummary {
  let n = 0;
  let nll = 0;
  let nllEx = 0;
  let kl = 0;
  let top1 = 0;
  for (const s of sums) {
    n += s.n;
    nll += s.nll;
    nllEx += s.nllExclFirst;
    kl += s.kl;
    top1 += s.top1;
  }
  const nEx = n - sums.length;
  return {
    ppl: n === 0 ? NaN : Math.exp(nll / n),
    pplExclFirst: nEx <= 0 ? NaN : Math.exp(nllEx / nEx),
    kl: n === 0 ? NaN : kl / n,
    top1: n === 0 ? NaN : top1 / n,
    records: sums.length,
    predictions: n,
  };
}

/** First run of decimal digits in `text` (or null). */
export function firstDigits(text: string): string | null {
  const m = /\d+/.exec(text);
  return m ? m[0] : null;
}
