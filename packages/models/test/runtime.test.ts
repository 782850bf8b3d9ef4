import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqConfigError, XqNumericError, XqShapeError, XqStateError } from '@xquant/quant';
import { createKvCache, selectBackend } from '@xquant/tfjs';
import { DecoderModel, generate, loadModel, parseHfConfig, ropeInverseFrequencies } from '../src/index.js';
import { createF32Cache } from './support/f32-cache.js';
import {
  hfConfig,
  mapWeights,
  referenceForward,
  roundToBf16,
  roundToHalf,
  tinySpec,
  tinyWeights,
  writeHfDir,
  type Arch,
  type Tensors,
} from './support/tiny.js';

const IDS = [0, 50, 51, 52, 120, 7, 7, 250, 3, 99, 180, 42];

function maxDiff(a: ArrayLike<number>, rows: Float64Array[]): number {
  const V = rows[0]!.length;
  let m = 0;
  rows.forEach((r, t) => r.forEach((v, i) => (m = Math.max(m, Math.abs(a[t * V + i]! - v)))));
  return m;
}

function weightSource(w: Tensors) {
  return {
    source: 'test weights',
    has: (n: string) => w.has(n),
    shape: (n: string) => w.get(n)!.shape,
    read: async (n: string) => Float32Array.from(w.get(n)!.data),
  };
}

beforeAll(async () => {
  tf.env().set('IS_TEST', true);
  await selectBackend({ prefer: 'cpu' });
});

for (const arch of ['llama', 'qwen2'] as Arch[]) {
  describe(`tiny ${arch} (${arch === 'llama' ? 'untied, GQA 2:1, Llama-3 rope scaling' : 'tied, q/k/v biases, MQA 4:1, θ=1e6'}) vs a float64 reference`, () => {
    const spec = tinySpec(arch);
    const weights = tinyWeights(spec, arch === 'llama' ? 11 : 22);
    const ref = referenceForward(spec, weights, IDS);
    const dir = mkdtempSync(join(tmpdir(), `xq-tiny-${arch}-`));
    writeHfDir(dir, spec, weights, 'F32');

    it('loadModel(dir) parses the config and every position matches the float64 forward (test cache and tfjs full cache)', async () => {
      const { model, config, tokenizer, source } = await loadModel(dir);
      expect(source.format).toBe('safetensors');
      expect(config.architecture).toBe(arch);
      expect(config.tieWordEmbeddings).toBe(spec.tied);
      expect(config.attentionBias).toBe(spec.bias);
      expect(tokenizer.encode('12')).toEqual([0, 258]);
      for (const cache of [createF32Cache(model.cacheShape), createKvCache('full', model.cacheShape)]) {
        const logits = model.forward(IDS, cache, 'all');
        expect(logits.shape).toEqual([IDS.length, spec.vocab]);
        expect(maxDiff(await logits.data(), ref)).toBeLessThan(1e-4);
        logits.dispose();
        cache.dispose();
      }
      model.dispose();
    });

    it('prefill + token-by-token decode and chunked prefill give the same logits as one pass', async () => {
      const model = await DecoderModel.fromWeights(parseHfConfig(hfConfig(spec)), weightSource(weights));
      const cache = createF32Cache(model.cacheShape);
      const first = model.forward(IDS.slice(0, 5), cache, { lastN: 2 });
      expect(maxDiff(await first.data(), ref.slice(3, 5))).toBeLessThan(1e-4);
      first.dispose();
      const chunk = model.forward(IDS.slice(5, 8), cache, 'all');
      expect(maxDiff(await chunk.data(), ref.slice(5, 8))).toBeLessThan(1e-4);
      chunk.dispose();
      for (let t = 8; t < IDS.length; t++) {
        const step = await model.forwardAsync([IDS[t]!], cache);
        expect(maxDiff(await step.data(), [ref[t]!])).toBeLessThan(1e-4);
        step.dispose();
      }
      expect(cache.seqLength()).toBe(IDS.length);
      cache.dispose();
      model.dispose();
    });

    it('F16, BF16 and sharded safetensors load the same float32 weights as F32', async () => {
      for (const [dtype, round] of [['F16', roundToHalf], ['BF16', roundToBf16]] as const) {
        const w = mapWeights(weights, round);
        const a = mkdtempSync(join(tmpdir(), 'xq-f32-'));
        const b = mkdtempSync(join(tmpdir(), `xq-${dtype}-`));
        writeHfDir(a, spec, w, 'F32');
        writeHfDir(b, spec, w, dtype, 3);
        const A = await loadModel(a);
        const B = await loadModel(b);
        expect(B.source.path.endsWith('model.safetensors.index.json')).toBe(true);
        const [la, lb] = [A, B].map((m) => m.model.forward(IDS, createF32Cache(m.model.cacheShape), 'all'));
        expect(await lb!.data()).toEqual(await la!.data());
        const refRounded = referenceForward(spec, w, IDS);
        expect(maxDiff(await lb!.data(), refRounded)).toBeLessThan(1e-4);
        for (const t of [la!, lb!]) t.dispose();
        A.model.dispose();
        B.model.dispose();
      }
    });

    it('generate leaves no tensors behind besides the cache, and none after dispose', async () => {
      const model = await DecoderModel.fromWeights(parseHfConfig(hfConfig(spec)), weightSource(weights));
      const before = tf.memory().numTensors;
      const cache = createKvCache('full', model.cacheShape);
      await generate({ model, cache, ids: IDS.slice(0, 4), maxNewTokens: 3, stopOnEos: false });
      const afterFew = tf.memory().numTensors;
      await generate({ model, cache, ids: [5], maxNewTokens: 20, stopOnEos: false });
      expect(tf.memory().numTensors).toBe(afterFew); // flat over 20 more decode steps
      cache.dispose();
      expect(tf.memory().numTensors).toBe(before);
      model.dispose();
      expect(tf.memory().numTensors).toBe(before - (spec.tied ? 0 : 1) - 2 - 6 * spec.layers - (spec.bias ? spec.layers : 0));
    });
  });
}

describe('runtime input checks', () => {
  const spec = tinySpec('llama');
  const weights = tinyWeights(spec, 3);
  it('rejects bad ids, a mismatched cache and use after dispose', async () => {
    const model = await DecoderModel.fromWeights(parseHfConfig(hfConfig(spec)), weightSource(weights));
    const cache = createF32Cache(model.cacheShape);
    expect(() => model.forward([], cache)).toThrow(XqShapeError);
    expect(() => model.forward([0, spec.vocab], cache)).toThrow(/token id 260 at index 1 is outside the vocabulary \[0, 260\)/);
    expect(() => model.forward([0, 1.5], cache)).toThrow(XqConfigError);
    expect(() => model.forward([0, 1], cache, { lastN: 3 })).toThrow(/lastN/);
    const wrong = createF32Cache({ layers: 3, kvHeads: 2, headDim: 8 });
    expect(() => model.forward([0], wrong)).toThrow(/cache shape/);
    model.dispose();
    expect(() => model.forward([0], cache)).toThrow(XqStateError);
  });
  it('rejects missing, misshapen and non-finite weights with the weight name', async () => {
    const cfg = parseHfConfig(hfConfig(spec));
    const missing = new Map(weights);
    missing.delete('model.layers.1.mlp.up_proj.weight');
    await expect(DecoderModel.fromWeights(cfg, weightSource(missing))).rejects.toThrow(/missing weight 'model.layers.1.mlp.up_proj.weight'/);
    const bad = new Map(weights);
    bad.set('model.norm.weight', { shape: [31], data: new Float32Array(31) });
    await expect(DecoderModel.fromWeights(cfg, weightSource(bad))).rejects.toThrow(XqShapeError);
    const nan = new Map(weights);
    const d = Float32Array.from(weights.get('lm_head.weight')!.data);
    d[77] = NaN;
    nan.set('lm_head.weight', { shape: weights.get('lm_head.weight')!.shape, data: d });
    const before = tf.memory().numTensors;
    await expect(DecoderModel.fromWeights(cfg, weightSource(nan))).rejects.toThrow(XqNumericError);
    await expect(DecoderModel.fromWeights(cfg, weightSource(nan))).rejects.toThrow(/'lm_head.weight'.*index 77/);
    expect(tf.memory().numTensors).toBe(before); // partial loads are freed
  });
});

describe('config parsing', () => {
  it('reads rope_theta from rope_parameters (transformers 5) or the top level, and Llama-3 rope_scaling', () => {
    const base = hfConfig(tinySpec('llama'));
    const a = parseHfConfig({ ...base, rope_parameters: { rope_theta: 500000, rope_type: 'default' } });
    expect(a.ropeTheta).toBe(500000);
    const b = parseHfConfig({ ...base, rope_parameters: undefined, rope_theta: 1234, rope_scaling: { type: 'linear', factor: 2 } });
    expect(b.ropeTheta).toBe(1234);
    expect(b.ropeScaling).toEqual({ type: 'linear', factor: 2 });
    const c = parseHfConfig({
      ...base,
      rope_parameters: undefined,
      rope_theta: 500000,
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    });
    // Llama 3.1 8B values (head_dim 128): highest frequency unchanged, lowest divided by 8
    const inv = ropeInverseFrequencies(128, c.ropeTheta, c.ropeScaling);
    const plain = ropeInverseFrequencies(128, 500000);
    expect(inv[0]).toBe(plain[0]);
    expect(inv[63]! / plain[63]!).toBeCloseTo(1 / 8, 12);
  });
  it('rejects unsupported architectures and bad fields with clear messages', () => {
    const base = hfConfig(tinySpec('llama'));
    expect(() => parseHfConfig({ ...base, model_type: 'gpt2', architectures: ['GPT2LMHeadModel'] })).toThrow(/unsupported architecture.*supported: llama/);
    expect(() => parseHfConfig({ ...base, num_key_value_heads: 3 })).toThrow(/multiple of num_key_value_heads/);
    expect(() => parseHfConfig({ ...base, hidden_size: -1 })).toThrow(/hidden_size must be an integer/);
    expect(() => parseHfConfig({ ...base, hidden_size: 1e12 })).toThrow(XqConfigError);
    expect(() => parseHfConfig({ ...base, hidden_act: 'gelu' })).toThrow(/hidden_act/);
    expect(() => parseHfConfig({ ...base, rope_parameters: { rope_type: 'yarn', rope_theta: 1, factor: 4 } })).toThrow(/rope type "yarn" is not supported/);
    expect(() => parseHfConfig({ ...hfConfig(tinySpec('qwen2')), use_sliding_window: true })).toThrow(/sliding-window/);
  });
});
