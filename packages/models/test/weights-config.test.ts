import { existsSync, mkdtempSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqConfigError } from '@xquant/quant';
import { selectBackend } from '@xquant/tfjs';
import { DecoderModel, expectedWeightNames, loadGguf, loadModel, parseHfConfig, SafetensorsWeights } from '../src/index.js';
import { GpuDecoder } from '../src/gpu/index.js';
import { encodeFloats, hfConfig, tinyGguf, tinySpec, tinyWeights, writeHfDir, type Tensors } from './support/tiny.js';

// issue 13 item 4: a config that contradicts its weights is a typed error, and every tensor is used or reported
const SHARED = resolve('../shared/models');

beforeAll(async () => {
  tf.env().set('IS_TEST', true);
  await selectBackend({ prefer: 'cpu' });
});

/** A copy of a shared model directory (weights and tokenizer linked) whose config.json is `edit(config)`. */
function withConfig(model: string, edit: (c: Record<string, unknown>) => void): string {
  const src = join(SHARED, model);
  const dir = mkdtempSync(join(tmpdir(), `xq-cfg-${model}-`));
  for (const f of readdirSync(src)) if (f !== 'config.json') symlinkSync(join(src, f), join(dir, f));
  const config = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  edit(config);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  return dir;
}

async function configError(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e, 'the load should have failed').toBeInstanceOf(XqConfigError);
  expect((e as XqConfigError).code).toBe('E_CONFIG');
  return (e as Error).message;
}

function source(w: Tensors, name = 'test weights') {
  return {
    source: name,
    has: (n: string) => w.has(n),
    shape: (n: string) => w.get(n)!.shape,
    read: async (n: string) => Float32Array.from(w.get(n)!.data),
    names: () => [...w.keys()],
  };
}

describe.skipIf(!existsSync(SHARED))('config vs weights on the shared checkpoints — needs ../shared/models', () => {
  it('num_hidden_layers: 4 over 8 layers of weights is E_CONFIG naming both counts', async () => {
    const msg = await configError(loadModel(withConfig('xq-llama-20m', (c) => (c.num_hidden_layers = 4))));
    expect(msg).toMatch(/the config says 4 layers .* but the weights hold layers up to 7 \('model\.layers\.4\./);
  });

  it('tie_word_embeddings: true while a different lm_head.weight exists is E_CONFIG', async () => {
    const msg = await configError(loadModel(withConfig('xq-llama-20m', (c) => (c.tie_word_embeddings = true))));
    expect(msg).toMatch(/tie_word_embeddings is true but the checkpoint has its own 'lm_head\.weight', which differs/);
  });

  it('Qwen2 weights labelled llama (attention biases would be dropped) is E_CONFIG', async () => {
    const dir = withConfig('xq-qwen2-30m', (c) => {
      c.model_type = 'llama';
      c.architectures = ['LlamaForCausalLM'];
    });
    const msg = await configError(loadModel(dir));
    expect(msg).toMatch(/q\/k\/v projection biases .*'model\.layers\.0\.self_attn\.q_proj\.bias'.* Qwen2 checkpoint labelled 'llama'/);
  });

  it('the unmodified checkpoints use every tensor they hold', async () => {
    for (const m of ['xq-llama-20m', 'xq-qwen2-30m']) {
      const dir = join(SHARED, m);
      const config = parseHfConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
      const w = await SafetensorsWeights.openIndex(dir);
      try {
        expect(new Set(w.names())).toEqual(new Set(expectedWeightNames(config)));
      } finally {
        await w.close();
      }
    }
  });
});

describe('config vs weights on synthetic checkpoints', () => {
  const spec = tinySpec('llama');
  const weights = tinyWeights(spec, 5);
  const config = parseHfConfig(hfConfig(spec));

  it('an unknown tensor is reported by name; derived RoPE buffers are accepted', async () => {
    const extra = new Map(weights);
    extra.set('model.layers.0.self_attn.rotary_emb.inv_freq', { shape: [4], data: new Float32Array(4) });
    const model = await DecoderModel.fromWeights(config, source(extra));
    model.dispose();
    extra.set('model.vision_tower.weight', { shape: [2], data: new Float32Array(2) });
    expect(await configError(DecoderModel.fromWeights(config, source(extra)))).toMatch(/does not use: 'model\.vision_tower\.weight'/);
  });

  it('undeclared o_proj / MLP biases are E_CONFIG', async () => {
    const extra = new Map(weights);
    extra.set('model.layers.1.mlp.down_proj.bias', { shape: [spec.hidden], data: new Float32Array(spec.hidden) });
    expect(await configError(DecoderModel.fromWeights(config, source(extra)))).toMatch(/biases the config does not declare .*down_proj\.bias/);
  });

  it('tied embeddings with an lm_head.weight that is an exact copy of the embedding load, and give the same logits', async () => {
    const tied = parseHfConfig({ ...hfConfig(spec), tie_word_embeddings: true });
    const plain = new Map(weights);
    plain.delete('lm_head.weight');
    const copy = new Map(plain);
    copy.set('lm_head.weight', plain.get('model.embed_tokens.weight')!);
    const a = await DecoderModel.fromWeights(tied, source(plain));
    const b = await DecoderModel.fromWeights(tied, source(copy));
    const { createKvCache } = await import('@xquant/tfjs');
    const run = async (m: DecoderModel) => {
      const cache = createKvCache('full', m.cacheShape);
      const out = m.forward([0, 5, 9], cache);
      const data = Array.from(await out.data());
      out.dispose();
      cache.dispose();
      m.dispose();
      return data;
    };
    expect(await run(b)).toEqual(await run(a));
  });

  it('a safetensors shard holding a tensor its index does not list is E_CONFIG', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'xq-cfg-shard-'));
    const extra = new Map(weights);
    extra.set('model.layers.0.self_attn.q_norm.weight', { shape: [spec.headDim], data: new Float32Array(spec.headDim).fill(1) });
    writeHfDir(dir, spec, extra, 'F32', 2);
    const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    delete index.weight_map['model.layers.0.self_attn.q_norm.weight'];
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    expect(await configError(loadModel(dir))).toMatch(/does not use: 'model\.layers\.0\.self_attn\.q_norm\.weight'/);
  });

  it('GGUF: block_count below the blk.N tensors, and a tensor with no Hugging Face name, are E_CONFIG', async () => {
    const bytes = tinyGguf(spec, weights, 'F32');
    // the same file with block_count 1: rewrite the u32 value after the key
    const key = new TextEncoder().encode('llama.block_count');
    const at = indexOf(bytes, key) + key.length + 4;
    const edited = bytes.slice();
    new DataView(edited.buffer).setUint32(at, 1, true);
    expect(await configError(loadModel(edited))).toMatch(/the config says 1 layers .* layers up to 1/);
    const qNorm = { name: 'blk.0.attn_q_norm.weight', shape: [spec.headDim], type: 'F32' as const, bytes: encodeFloats(new Float32Array(spec.headDim), 'F32') };
    expect(await configError(loadModel(tinyGguf(spec, weights, 'F32', [qNorm])))).toMatch(/does not use: 'blk\.0\.attn_q_norm\.weight'/);
    const loaded = await loadGguf(bytes, { tokenizer: false });
    try {
      expect(new Set(loaded.weights.names!())).toEqual(new Set(expectedWeightNames(loaded.config)));
    } finally {
      await loaded.weights.close();
    }
  });

  it('the GPU decoder checks the same before touching the device', async () => {
    const extra = new Map(weights);
    extra.set('model.layers.7.input_layernorm.weight', { shape: [spec.hidden], data: new Float32Array(spec.hidden) });
    const msg = await configError(GpuDecoder.create({} as GPUDevice, config, source(extra), { capacity: 16, cache: { kind: 'full' } }));
    expect(msg).toMatch(/layers up to 7/);
  });
});

function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  throw new Error('not found');
}
