import { XqConfigError } from '@xquant/quant';
import { isObject } from './loaders/file.js';

/** Decoder architectures this runtime implements. */
export type Architecture = 'llama' | 'qwen2';

/** RoPE frequency scaling (`default` = none). */
export type RopeScaling =
  | { type: 'default' }
  | { type: 'linear'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  /** Per-frequency divisors, as llama.cpp stores them in the GGUF tensor `rope_freqs.weight`. */
  | { type: 'frequency-factors'; factors: number[] };

/** Everything the runtime needs to know about a model, normalised from config.json or GGUF metadata. */
export interface ModelConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  /** Output projection shares the embedding matrix. */
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry biases (Qwen2: always). */
  attentionBias: boolean;
  /** o_proj carries a bias (Llama `attention_bias`). */
  outputBias: boolean;
  /** gate/up/down projections carry biases (Llama `mlp_bias`). */
  mlpBias: boolean;
  maxPositionEmbeddings: number;
  bosTokenId?: number;
  /** End-of-sequence ids (generation stops at any of them). */
  eosTokenIds: number[];
}

/** Limits that reject absurd configs before any allocation. */
export const CONFIG_LIMITS = {
  vocabSize: 1 << 22,
  hiddenSize: 1 << 16,
  intermediateSize: 1 << 18,
  numLayers: 1024,
  numHeads: 1024,
  headDim: 1024,
  maxPositionEmbeddings: 1 << 24,
} as const;

function int(v: unknown, key: string, source: string, max: number, min = 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new XqConfigError('E_CONFIG', `${source}: ${key} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  }
  return v;
}

function positive(v: unknown, key: string, source: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new XqConfigError('E_CONFIG', `${source}: ${key} must be a positive finite number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function idList(v: unknown): number[] {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0);
  return [];
}

/** Parse the rope scaling block of an HF config (`rope_parameters` in transformers ≥ 5, `rope_scaling` before). */
export function parseRopeScaling(raw: unknown, source: string): RopeScaling {
  if (raw === undefined || raw === null) return { type: 'default' };
  if (!isObject(raw)) throw new XqConfigError('E_CONFIG', `${source}: rope scaling must be an object, got ${JSON.stringify(raw)}`);
  const type = raw.rope_type ?? raw.type ?? 'default';
  switch (type) {
    case 'default':
      return { type: 'default' };
    case 'linear':
      return { type: 'linear', factor: positive(raw.factor, 'rope factor', source) };
    case 'llama3': {
      const lowFreqFactor = positive(raw.low_freq_factor, 'low_freq_factor', source);
      const highFreqFactor = positive(raw.high_freq_factor, 'high_freq_factor', source);
      if (highFreqFactor <= lowFreqFactor) {
        throw new XqConfigError('E_CONFIG', `${source}: llama3 rope needs high_freq_factor > low_freq_factor, got ${highFreqFactor} ≤ ${lowFreqFactor}`);
      }
      return {
        type: 'llama3',
        factor: positive(raw.factor, 'rope factor', source),
        lowFreqFactor,
        highFreqFactor,
        originalMaxPositionEmbeddings: int(raw.original_max_position_embeddings, 'original_max_position_embeddings', source, CONFIG_LIMITS.maxPositionEmbeddings),
      };
    }
    default:
      throw new XqConfigError('E_CONFIG', `${source}: rope type ${JSON.stringify(type)} is not supported (supported: default, linear, llama3)`);
  }
}

/**
 * Normalise a Hugging Face `config.json` (LlamaForCausalLM or Qwen2ForCausalLM) into a {@link ModelConfig}.
 * `generation` (generation_config.json) may override bos/eos ids. Throws `XqConfigError` for an
 * unsupported architecture or a missing/invalid field.
 */
export function parseHfConfig(raw: unknown, source = 'config.json', generation?: unknown): ModelConfig {
  if (!isObject(raw)) throw new XqConfigError('E_CONFIG', `${source}: expected a JSON object`);
  const archs = Array.isArray(raw.architectures) ? raw.architectures : [];
  const modelType = raw.model_type;
  let architecture: Architecture;
  if (modelType === 'llama' || archs.includes('LlamaForCausalLM')) architecture = 'llama';
  else if (modelType === 'qwen2' || archs.includes('Qwen2ForCausalLM')) architecture = 'qwen2';
  else {
    throw new XqConfigError(
      'E_CONFIG',
      `${source}: unsupported architecture (model_type ${JSON.stringify(modelType)}, architectures ${JSON.stringify(archs)}); supported: llama (LlamaForCausalLM), qwen2 (Qwen2ForCausalLM)`,
    );
  }
  const act = raw.hidden_act ?? 'silu';
  if (act !== 'silu') throw new XqConfigError('E_CONFIG', `${source}: hidden_act ${JSON.stringify(act)} is not supported (expected "silu")`);
  if (architecture === 'qwen2' && raw.use_sliding_window === true) {
    throw new XqConfigError('E_CONFIG', `${source}: sliding-window attention (use_sliding_window: true) is not supported`);
  }
  const hiddenSize = int(raw.hidden_size, 'hidden_size', source, CONFIG_LIMITS.hiddenSize);
  const numHeads = int(raw.num_attention_heads, 'num_attention_heads', source, CONFIG_LIMITS.numHeads);
  const numKvHeads = int(raw.num_key_value_heads ?? numHeads, 'num_key_value_heads', source, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new XqConfigError('E_CONFIG', `${source}: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = raw.head_dim == null ? hiddenSize / numHeads : raw.head_dim;
  const ropeParams = isObject(raw.rope_parameters) ? raw.rope_parameters : undefined;
  const ropeTheta = positive(ropeParams?.rope_theta ?? raw.rope_theta ?? 10000, 'rope_theta', source);
  const ropeScaling = parseRopeScaling(ropeParams ?? raw.rope_scaling, source);
  const gen = isObject(generation) ? generation : {};
  const eos = idList(gen.eos_token_id ?? raw.eos_token_id);
  const bos = gen.bos_token_id ?? raw.bos_token_id;
  const config: ModelConfig = {
    architecture,
    vocabSize: int(raw.vocab_size, 'vocab_size', source, CONFIG_LIMITS.vocabSize),
    hiddenSize,
    intermediateSize: int(raw.intermediate_size, 'intermediate_size', source, CONFIG_LIMITS.intermediateSize),
    numLayers: int(raw.num_hidden_layers, 'num_hidden_layers', source, CONFIG_LIMITS.numLayers),
    numHeads,
    numKvHeads,
    headDim: int(headDim, 'head_dim', source, CONFIG_LIMITS.headDim),
    rmsNormEps: positive(raw.rms_norm_eps ?? 1e-6, 'rms_norm_eps', source),
    ropeTheta,
    ropeScaling,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    attentionBias: architecture === 'qwen2' ? true : raw.attention_bias === true,
    outputBias: architecture === 'llama' && raw.attention_bias === true,
    mlpBias: architecture === 'llama' && raw.mlp_bias === true,
    maxPositionEmbeddings: int(raw.max_position_embeddings ?? 4096, 'max_position_embeddings', source, CONFIG_LIMITS.maxPositionEmbeddings),
    eosTokenIds: eos,
  };
  if (typeof bos === 'number' && Number.isInteger(bos) && bos >= 0) config.bosTokenId = bos;
  if (config.headDim % 2 !== 0) throw new XqConfigError('E_CONFIG', `${source}: head_dim must be even for RoPE, got ${config.headDim}`);
  return config;
}

/** Check a {@link ModelConfig} built by hand or from GGUF metadata (same limits as {@link parseHfConfig}). */
export function validateModelConfig(c: ModelConfig, source: string): ModelConfig {
  int(c.vocabSize, 'vocabSize', source, CONFIG_LIMITS.vocabSize);
  int(c.hiddenSize, 'hiddenSize', source, CONFIG_LIMITS.hiddenSize);
  int(c.intermediateSize, 'intermediateSize', source, CONFIG_LIMITS.intermediateSize);
  int(c.numLayers, 'numLayers', source, CONFIG_LIMITS.numLayers);
  int(c.numHeads, 'numHeads', source, CONFIG_LIMITS.numHeads);
  int(c.numKvHeads, 'numKvHeads', source, c.numHeads);
  int(c.headDim, 'headDim', source, CONFIG_LIMITS.headDim);
  int(c.maxPositionEmbeddings, 'maxPositionEmbeddings', source, CONFIG_LIMITS.maxPositionEmbeddings);
  positive(c.rmsNormEps, 'rmsNormEps', source);
  positive(c.ropeTheta, 'ropeTheta', source);
  if (c.numHeads % c.numKvHeads !== 0) {
    throw new XqConfigError('E_CONFIG', `${source}: numHeads (${c.numHeads}) must be a multiple of numKvHeads (${c.numKvHeads})`);
  }
  if (c.headDim % 2 !== 0) throw new XqConfigError('E_CONFIG', `${source}: headDim must be even for RoPE, got ${c.headDim}`);
  return c;
}
