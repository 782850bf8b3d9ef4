import * as tf from '@tensorflow/tfjs-core';
import { DecoderModel, type ModelConfig, type WeightSource } from '@xquant/models';
import { createKvCache, type KvCache } from '@xquant/tfjs';
import type { EvalModel } from '@xquant/eval';

/** Activate the plain-JS backend for a test file. */
export async function useCpu(): Promise<void> {
  await import('@tensorflow/tfjs-backend-cpu');
  await tf.setBackend('cpu');
  await tf.ready();
}

function lcg(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** A tiny random Llama (2 layers, GQA 2:1, headDim 32 unless given, vocab 64) built through the public DecoderModel API. */
export async function tinyModel(seed = 7, headDim = 32): Promise<DecoderModel> {
  const config: ModelConfig = {
    architecture: 'llama',
    vocabSize: 64,
    hiddenSize: 64,
    intermediateSize: 96,
    numLayers: 2,
    numHeads: 2,
    numKvHeads: 1,
    headDim,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: { type: 'default' },
    tieWordEmbeddings: false,
    attentionBias: false,
    outputBias: false,
    mlpBias: false,
    maxPositionEmbeddings: 1024,
    eosTokenIds: [1],
  };
  const H = config.hiddenSize;
  const shapes = new Map<string, number[]>();
  shapes.set('model.embed_tokens.weight', [config.vocabSize, H]);
  shapes.set('lm_head.weight', [config.vocabSize, H]);
  shapes.set('model.norm.weight', [H]);
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}.`;
    shapes.set(`${p}input_layernorm.weight`, [H]);
    shapes.set(`${p}post_attention_layernorm.weight`, [H]);
    shapes.set(`${p}self_attn.q_proj.weight`, [config.numHeads * config.headDim, H]);
    shapes.set(`${p}self_attn.k_proj.weight`, [config.numKvHeads * config.headDim, H]);
    shapes.set(`${p}self_attn.v_proj.weight`, [config.numKvHeads * config.headDim, H]);
    shapes.set(`${p}self_attn.o_proj.weight`, [H, config.numHeads * config.headDim]);
    shapes.set(`${p}mlp.gate_proj.weight`, [config.intermediateSize, H]);
    shapes.set(`${p}mlp.up_proj.weight`, [config.intermediateSize, H]);
    shapes.set(`${p}mlp.down_proj.weight`, [H, config.intermediateSize]);
  }
  const rand = lcg(seed);
  const data = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) {
    const n = shape.reduce((a, b) => a * b, 1);
    const norm = name.endsWith('norm.weight');
    const scale = name.includes('embed') || name.includes('lm_head') ? 1 : 1.5 / Math.sqrt(shape[1] ?? 1);
    data.set(name, Float32Array.from({ length: n }, () => (norm ? 1 + 0.1 * (rand() - 0.5) : (rand() * 2 - 1) * scale * 1.7)));
  }
  const weights: WeightSource = {
    source: 'tiny',
    has: (n) => data.has(n),
    shape: (n) => shapes.get(n)!,
    read: async (n) => data.get(n)!,
  };
  return DecoderModel.fromWeights(config, weights);
}

/**
 * A scripted "model" for the passkey logic: it stores zero K/V in a real cache (so lengths advance through the cache)
 * and, when the cache holds p tokens, puts all probability on `script[p − start]` (else on token 2). Given several
 * scripts, the k-th distinct cache it sees follows `scripts[k]` (configurations reach the model in order, full first).
 * It has `forwardBatch` (each sequence through `forward`), so the protocol runs it batched unless told otherwise.
 */
export function scriptedModel(scripts: number[] | number[][], start: number, vocabSize = 16): EvalModel & { forwardBatch: NonNullable<EvalModel['forwardBatch']> } {
  const shape = { layers: 1, kvHeads: 1, headDim: 32 };
  const list = Array.isArray(scripts[0]) ? (scripts as number[][]) : [scripts as number[]];
  const seen = new Map<KvCache, number[]>();
  const forward = (ids: ArrayLike<number>, cache: KvCache): tf.Tensor2D => {
    if (!seen.has(cache)) seen.set(cache, list[seen.size % list.length]!);
    const script = seen.get(cache)!;
    const n = ids.length;
    const z = tf.zeros([1, n, 32]) as tf.Tensor3D;
    if (n === 1 && cache.seqLength(0) > 0) cache.append(0, z, z);
    else cache.prefill(0, z, z);
    z.dispose();
    const q = tf.zeros([1, 1, 32]) as tf.Tensor3D;
    cache.attend(0, q).dispose();
    q.dispose();
    const p = cache.seqLength(0);
    const tok = script[p - start] ?? 2;
    const logits = new Float32Array(vocabSize).fill(-5);
    logits[tok] = 5;
    return tf.tensor2d(logits, [1, vocabSize]);
  };
  return {
    cacheShape: shape,
    config: { vocabSize, eosTokenIds: [1], architecture: 'scripted' },
    forward,
    forwardBatch(ids: ArrayLike<number>[], caches: KvCache[]) {
      const rows = ids.map((seq, b) => forward(seq, caches[b]!));
      const out = tf.concat(rows, 0) as tf.Tensor2D;
      tf.dispose(rows);
      return out;
    },
  };
}

export { createKvCache };
