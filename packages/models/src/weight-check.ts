import { XqConfigError } from '@xquant/quant';
import type { ModelConfig } from './config.js';
import type { WeightSource } from './model.js';

/**
 * Tensors a checkpoint may hold that the runtime recomputes from the config (old transformers versions saved the RoPE
 * inverse frequencies as buffers): accepted and not read.
 */
export const DERIVED_WEIGHT_PATTERNS: readonly RegExp[] = [/^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/];

/** Hugging Face names of every weight a model with `config` reads, in reading order. */
export function expectedWeightNames(config: ModelConfig): string[] {
  const names = ['model.embed_tokens.weight'];
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const a = `${p}self_attn.`;
    const m = `${p}mlp.`;
    names.push(`${p}input_layernorm.weight`, `${a}q_proj.weight`, `${a}k_proj.weight`, `${a}v_proj.weight`, `${a}o_proj.weight`);
    names.push(`${p}post_attention_layernorm.weight`, `${m}gate_proj.weight`, `${m}up_proj.weight`, `${m}down_proj.weight`);
    if (config.attentionBias) names.push(`${a}q_proj.bias`, `${a}k_proj.bias`, `${a}v_proj.bias`);
    if (config.outputBias) names.push(`${a}o_proj.bias`);
    if (config.mlpBias) names.push(`${m}gate_proj.bias`, `${m}up_proj.bias`, `${m}down_proj.bias`);
  }
  names.push('model.norm.weight');
  if (!config.tieWordEmbeddings) names.push('lm_head.weight');
  return names;
}

function list(names: readonly string[], max = 4): string {
  const shown = names.slice(0, max).map((n) => `'${n}'`).join(', ');
  return names.length > max ? `${shown} and ${names.length - max} more` : shown;
}

/**
 * Check that the config and the checkpoint describe the same model before anything is read: every tensor of `weights`
 * (when it can list them, {@link WeightSource.names}) is one the config reads, or one the runtime derives
 * ({@link DERIVED_WEIGHT_PATTERNS}). A tensor left over means the config contradicts the weights, and that is an
 * `XqConfigError` (`E_CONFIG`) naming the contradiction: more layers than `num_hidden_layers`, attention or MLP biases
 * the architecture does not have (e.g. Qwen2 weights labelled `llama`), or an `lm_head.weight` under
 * `tie_word_embeddings: true` that differs from the embedding (an identical copy is accepted). Missing weights are
 * reported by the loaders as they read.
 */
export async function checkWeightsMatchConfig(config: ModelConfig, weights: WeightSource): Promise<void> {
  if (typeof weights.names !== 'function') return;
  const expected = new Set(expectedWeightNames(config));
  const extra = weights.names().filter((n) => !expected.has(n) && !DERIVED_WEIGHT_PATTERNS.some((p) => p.test(n)));
  if (extra.length === 0) return;
  const src = weights.source;
  const layerOf = (n: string) => Number(/^model\.layers\.(\d+)\./.exec(n)?.[1] ?? -1);
  const beyond = extra.filter((n) => layerOf(n) >= config.numLayers);
  if (beyond.length) {
    const top = Math.max(...beyond.map(layerOf));
    throw new XqConfigError(
      'E_CONFIG',
      `${src}: the config says ${config.numLayers} layers (num_hidden_layers / block_count) but the weights hold layers up to ${top} (${list(beyond)} unused); fix the config or the checkpoint`,
    );
  }
  const inLayers = extra.filter((n) => layerOf(n) >= 0);
  const attnBias = inLayers.filter((n) => /\.self_attn\.[qkv]_proj\.bias$/.test(n));
  if (attnBias.length) {
    throw new XqConfigError(
      'E_CONFIG',
      `${src}: the weights have q/k/v projection biases (${list(attnBias)}) but the config (architecture ${config.architecture}, attention_bias false) has none; they would be dropped. Is this a Qwen2 checkpoint labelled '${config.architecture}'?`,
    );
  }
  const otherBias = inLayers.filter((n) => /\.(o_proj|gate_proj|up_proj|down_proj)\.bias$/.test(n));
  if (otherBias.length) {
    throw new XqConfigError(
      'E_CONFIG',
      `${src}: the weights have biases the config does not declare (${list(otherBias)}; attention_bias ${config.outputBias}, mlp_bias ${config.mlpBias}); they would be dropped`,
    );
  }
  const rest = extra.filter((n) => n !== 'lm_head.weight');
  if (rest.length) {
    throw new XqConfigError('E_CONFIG', `${src}: ${rest.length} tensor(s) that a ${config.architecture} model with this config does not use: ${list(rest)}`);
  }
  // only lm_head.weight is left, under tie_word_embeddings: accepted when it is a copy of the embedding
  const embedName = 'model.embed_tokens.weight';
  const same =
    weights.has(embedName) &&
    JSON.stringify(weights.shape('lm_head.weight')) === JSON.stringify(weights.shape(embedName)) &&
    equal(await weights.read('lm_head.weight'), await weights.read(embedName));
  if (!same) {
    throw new XqConfigError(
      'E_CONFIG',
      `${src}: tie_word_embeddings is true but the checkpoint has its own 'lm_head.weight', which differs from the embedding; set tie_word_embeddings to false to use it`,
    );
  }
}

function equal(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
