import { XqConfigError, XqNumericError, XqShapeError } from '@xquant/quant';
import type { KvCache } from '@xquant/tfjs';
import type { DecoderModel } from './model.js';
import type { TextTokenizer } from './tokenizer.js';

/** A seeded pseudo-random source of floats in [0, 1). */
export type Rng = () => number;

/** A seeded PRNG (xoshiro128**, state from splitmix32): the same seed gives the same stream on every platform. */
export function createRng(seed: number): Rng {
  let s = seed >>> 0;
  const split = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split();
  let b = split();
  let c = split();
  let d = split();
  return () => {
    const r = Math.imul(rotl(Math.imul(b, 5) >>> 0, 7), 9) >>> 0;
    const t = (b << 9) >>> 0;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return r / 4294967296;
  };
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Sampling settings: temperature 0 (default) is greedy argmax; topK 0 and topP 1 switch those filters off. */
export interface SamplingOptions {
  /** Softmax temperature; 0 (default) = greedy argmax. */
  temperature?: number;
  /** Keep only the K most likely tokens (0 = off, default). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches P (1 = off, default). */
  topP?: number;
}

function checkSampling(o: SamplingOptions): Required<SamplingOptions> {
  const temperature = o.temperature ?? 0;
  const topK = o.topK ?? 0;
  const topP = o.topP ?? 1;
  if (!Number.isFinite(temperature) || temperature < 0) throw new XqConfigError('E_CONFIG', `temperature must be a finite number ≥ 0, got ${temperature}`);
  if (!Number.isInteger(topK) || topK < 0) throw new XqConfigError('E_CONFIG', `topK must be an integer ≥ 0 (0 = off), got ${topK}`);
  if (!(topP > 0 && topP <= 1)) throw new XqConfigError('E_CONFIG', `topP must be in (0, 1] (1 = off), got ${topP}`);
  return { temperature, topK, topP };
}

/**
 * Pick the next token from one row of logits: greedy argmax (first maximum) at temperature 0, otherwise
 * softmax(logits / temperature) restricted to the top-k tokens and then to the smallest set whose probability
 * reaches top-p (order of transformers' warpers), sampled with `rng`. Throws on NaN/∞ logits.
 */
export function sampleToken(logits: ArrayLike<number>, options: SamplingOptions = {}, rng?: Rng): number {
  const { temperature, topK, topP } = checkSampling(options);
  const n = logits.length;
  if (n === 0) throw new XqShapeError('sampleToken: empty logits');
  let best = 0;
  for (let i = 0; i < n; i++) {
    const v = logits[i]!;
    if (!Number.isFinite(v)) throw new XqNumericError(`sampleToken: logit ${i} is ${v}`);
    if (v > logits[best]!) best = i;
  }
  if (temperature === 0 || topK === 1) return best;
  if (!rng) throw new XqConfigError('E_CONFIG', 'sampleToken: sampling at temperature > 0 needs an rng (createRng(seed))');
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  const k = topK > 0 ? Math.min(topK, n) : n;
  // (l − max) / T, not l/T − max/T: a tiny (even subnormal) T sends the gaps to −∞ (weight 0) instead of ∞ − ∞ = NaN;
  // the maximum keeps weight 1, so the sum is ≥ 1 and the draw is well defined for every T > 0
  const max = logits[best]!;
  const probs = new Float64Array(k);
  let sum = 0;
  for (let i = 0; i < k; i++) {
    probs[i] = Math.exp((logits[order[i]!]! - max) / temperature);
    sum += probs[i]!;
  }
  let keep = k;
  if (topP < 1) {
    let cum = 0;
    for (let i = 0; i < k; i++) {
      cum += probs[i]! / sum;
      if (cum >= topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let total = 0;
  for (let i = 0; i < keep; i++) total += probs[i]!;
  let u = rng() * total;
  for (let i = 0; i < keep; i++) {
    u -= probs[i]!;
    if (u < 0) return order[i]!;
  }
  return order[keep - 1]!;
}

/** One generated token as streamed to `onToken`. */
export interface GeneratedToken {
  /** Token id. */
  id: number;
  /** 0-based index among the generated tokens. */
  index: number;
  /** Text that this token completes (may be '' while a multi-byte character is incomplete). */
  text: string;
}

/** Options of {@link generate}. Give `prompt` (needs `tokenizer`) or `ids`. */
export interface GenerateOptions extends SamplingOptions {
  /** The model to run. */
  model: DecoderModel;
  /** The cache to fill; generation continues after whatever it already holds. */
  cache: KvCache;
  /** Needed for a text `prompt` and for streamed/decoded text. */
  tokenizer?: TextTokenizer;
  /** Prompt text, encoded with the tokenizer (special tokens such as BOS added). */
  prompt?: string;
  /** Prompt token ids (used as given). */
  ids?: ArrayLike<number>;
  /** Tokens to generate at most (default 32). */
  maxNewTokens?: number;
  /** Seed of the sampler (temperature > 0). Default: derived from the clock; the result reports it. */
  seed?: number;
  /** Stop after an end-of-sequence token (default true). */
  stopOnEos?: boolean;
  /** End-of-sequence ids (default: the model config's, else the tokenizer's). */
  eosTokenIds?: number[];
  /** Called once per generated token, in order; may be async (generation waits for it). */
  onToken?: (token: GeneratedToken) => void | Promise<void>;
  /** Abort between steps. */
  signal?: AbortSignal;
}

/** What {@link generate} produced. */
export interface GenerateResult {
  /** Token ids of the prompt as fed to the model. */
  promptIds: number[];
  /** Generated ids (including a final EOS when it stopped on one). */
  ids: number[];
  /** Decoded generated text (special tokens skipped), or '' without a tokenizer. */
  text: string;
  /** Why generation ended: an EOS token, `maxNewTokens`, or the abort signal. */
  stopReason: 'eos' | 'length' | 'abort';
  /** Sampler seed used. */
  seed: number;
  /** Wall-clock timings (performance.now). */
  timings: {
    /** Prompt forward pass (ms). */
    prefillMs: number;
    /** All decode steps (ms), including the sampling and streaming callbacks. */
    decodeMs: number;
    /** Generated tokens per second over prefill + decode. */
    tokensPerSecond: number;
    /** Generated tokens per second over the decode steps after the first token. */
    decodeTokensPerSecond: number;
  };
}

/**
 * Incremental detokenizer: feeds ids one at a time and returns the new text, holding back incomplete
 * UTF-8 sequences (decoded as U+FFFD) until they complete.
 * @internal
 */
class TextStream {
  private ids: number[] = [];
  private prefix = 0;
  private read = 0;
  constructor(private readonly tokenizer: TextTokenizer) {}
  push(id: number): string {
    this.ids.push(id);
    const before = this.tokenizer.decode(this.ids.slice(this.prefix, this.read));
    const now = this.tokenizer.decode(this.ids.slice(this.prefix));
    if (now.length > before.length && !now.endsWith('\uFFFD')) {
      this.prefix = this.read;
      this.read = this.ids.length;
      return now.slice(before.length);
    }
    return '';
  }
  /** Whatever is still held back (e.g. an unfinished character at the end). */
  flush(): string {
    const before = this.tokenizer.decode(this.ids.slice(this.prefix, this.read));
    const now = this.tokenizer.decode(this.ids.slice(this.prefix));
    this.prefix = this.read = this.ids.length;
    return now.slice(before.length);
  }
}

/**
 * Generate up to `maxNewTokens` tokens after a prompt, streaming each through `onToken`. Each step is one
 * synchronous tfjs computation; logits are read asynchronously after it, so no tensor outlives a step
 * (only what the cache keeps).
 */
export async function generate(options: GenerateOptions): Promise<GenerateResult> {
  const { model, cache, tokenizer, onToken, signal } = options;
  const sampling = checkSampling(options);
  const maxNewTokens = options.maxNewTokens ?? 32;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) throw new XqConfigError('E_CONFIG', `maxNewTokens must be an integer ≥ 0, got ${maxNewTokens}`);
  let promptIds: number[];
  if (options.ids !== undefined) promptIds = Array.from(options.ids);
  else if (options.prompt !== undefined) {
    if (!tokenizer) throw new XqConfigError('E_CONFIG', 'generate: a text prompt needs a tokenizer (or pass ids)');
    promptIds = tokenizer.encode(options.prompt);
  } else throw new XqConfigError('E_CONFIG', 'generate: give prompt (text) or ids');
  if (promptIds.length === 0) throw new XqShapeError('generate: the prompt has no tokens');
  const eos = new Set(options.eosTokenIds ?? (model.config.eosTokenIds.length ? model.config.eosTokenIds : tokenizer?.eosTokenId !== undefined ? [tokenizer.eosTokenId] : []));
  const stopOnEos = options.stopOnEos ?? true;
  const seed = (options.seed ?? Date.now()) >>> 0;
  const rng = createRng(seed);
  const stream = tokenizer ? new TextStream(tokenizer) : undefined;
  const ids: number[] = [];
  let stopReason: GenerateResult['stopReason'] = 'length';
  const t0 = performance.now();
  let prefillMs = 0;
  let firstTokenAt = t0;
  let input: number[] = promptIds;
  for (let step = 0; step < maxNewTokens; step++) {
    if (signal?.aborted) {
      stopReason = 'abort';
      break;
    }
    const logits = await model.forwardAsync(input, cache, 'last');
    let row: Float32Array;
    try {
      row = (await logits.data()) as Float32Array;
    } finally {
      logits.dispose();
    }
    if (step === 0) prefillMs = performance.now() - t0;
    const id = sampleToken(row, sampling, rng);
    ids.push(id);
    if (step === 0) firstTokenAt = performance.now();
    const isEos = eos.has(id);
    const last = step === maxNewTokens - 1 || (isEos && stopOnEos);
    let text = '';
    if (stream) {
      if (!(isEos && stopOnEos)) text = stream.push(id);
      if (last) text += stream.flush();
    }
    await onToken?.({ id, index: step, text });
    if (isEos && stopOnEos) {
      stopReason = 'eos';
      break;
    }
    input = [id];
  }
  const end = performance.now();
  const decodeSteps = ids.length - 1;
  let text = '';
  if (tokenizer) text = tokenizer.decode(stopReason === 'eos' ? ids.slice(0, -1) : ids);
  return {
    promptIds,
    ids,
    text,
    stopReason,
    seed,
    timings: {
      prefillMs,
      decodeMs: end - t0 - prefillMs,
      tokensPerSecond: ids.length / Math.max((end - t0) / 1000, 1e-9),
      decodeTokensPerSecond: decodeSteps > 0 ? decodeSteps / Math.max((end - firstTokenAt) / 1000, 1e-9) : 0,
    },
  };
}
