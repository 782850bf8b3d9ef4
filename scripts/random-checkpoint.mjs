#!/usr/bin/env node
// Writes a seeded random-weight checkpoint with the exact configuration of a real model, as an ordinary Hugging Face
// directory (config.json, model.safetensors in bf16, tokenizer.json copied from --tokenizer) that the normal loaders
// read. Real checkpoints cannot be downloaded here; the shapes are what decoding speed depends on.
//   node scripts/random-checkpoint.mjs --shape llama-3.2-1b --out /tmp/llama-1b [--seed 1] [--tokenizer models/xq-demo/tokenizer.json]
//   node scripts/random-checkpoint.mjs --config ../shared/models/xq-llama-20m/config.json --out /tmp/xq-llama-20m-random
// Weights: uniform with standard deviation 0.02 (the HF initializer range), norms 1, biases ±0.02.
import { closeSync, copyFileSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

/**
 * The published configurations (config.json of meta-llama/Llama-3.2-1B, Qwen/Qwen2.5-0.5B and Qwen/Qwen1.5-0.5B; the
 * last has one KV head per query head, no GQA).
 */
export const SHAPES = {
  'llama-3.2-1b': {
    architectures: ['LlamaForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 128000,
    eos_token_id: [128001, 128008, 128009],
    head_dim: 64,
    hidden_act: 'silu',
    hidden_size: 2048,
    initializer_range: 0.02,
    intermediate_size: 8192,
    max_position_embeddings: 131072,
    mlp_bias: false,
    model_type: 'llama',
    num_attention_heads: 32,
    num_hidden_layers: 16,
    num_key_value_heads: 8,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
    rope_theta: 500000.0,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    use_cache: true,
    vocab_size: 128256,
  },
  'qwen2.5-0.5b': {
    architectures: ['Qwen2ForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151643,
    hidden_act: 'silu',
    hidden_size: 896,
    initializer_range: 0.02,
    intermediate_size: 4864,
    max_position_embeddings: 32768,
    max_window_layers: 24,
    model_type: 'qwen2',
    num_attention_heads: 14,
    num_hidden_layers: 24,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    sliding_window: 32768,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    use_cache: true,
    use_sliding_window: false,
    vocab_size: 151936,
  },
  // the Qwen2.5-0.5B configuration with Qwen1.5-0.5B's widths and one KV head per query head
  'qwen1.5-0.5b': null,
};

SHAPES['qwen1.5-0.5b'] = { ...SHAPES['qwen2.5-0.5b'], hidden_size: 1024, intermediate_size: 2816, max_window_layers: 21, num_attention_heads: 16, num_key_value_heads: 16 };

/** Every tensor of a Llama / Qwen2 checkpoint: [name, shape, kind]. */
export function tensorList(c) {
  const H = c.hidden_size;
  const D = c.head_dim ?? H / c.num_attention_heads;
  const qd = c.num_attention_heads * D;
  const kvd = c.num_key_value_heads * D;
  const I = c.intermediate_size;
  const qwen = c.model_type === 'qwen2';
  const out = [['model.embed_tokens.weight', [c.vocab_size, H], 'w']];
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    out.push([`${p}input_layernorm.weight`, [H], 'one'], [`${p}post_attention_layernorm.weight`, [H], 'one']);
    for (const [n, rows] of [['q', qd], ['k', kvd], ['v', kvd]]) {
      out.push([`${p}self_attn.${n}_proj.weight`, [rows, H], 'w']);
      if (qwen || c.attention_bias) out.push([`${p}self_attn.${n}_proj.bias`, [rows], 'w']);
    }
    out.push([`${p}self_attn.o_proj.weight`, [H, qd], 'w']);
    out.push([`${p}mlp.gate_proj.weight`, [I, H], 'w'], [`${p}mlp.up_proj.weight`, [I, H], 'w'], [`${p}mlp.down_proj.weight`, [H, I], 'w']);
  }
  out.push(['model.norm.weight', [H], 'one']);
  if (!c.tie_word_embeddings) out.push(['lm_head.weight', [c.vocab_size, H], 'w']);
  return out;
}

function main() {
  const { values: o } = parseArgs({
    options: {
      shape: { type: 'string', default: 'llama-3.2-1b' },
      out: { type: 'string' },
      seed: { type: 'string', default: '1' },
      tokenizer: { type: 'string', default: 'models/xq-demo/tokenizer.json' },
      config: { type: 'string' },
    },
  });
  // --config: the shape of an existing config.json (e.g. the trained models'), with random weights
  const c = o.config ? JSON.parse(readFileSync(o.config, 'utf8')) : SHAPES[o.shape];
  if (!c) throw new Error(`--shape must be one of ${Object.keys(SHAPES).join(', ')} (or give --config FILE); got ${o.shape}`);
  if (!o.out) throw new Error('--out DIR is required');
  mkdirSync(o.out, { recursive: true });
  const tensors = tensorList(c);
  const header = {};
  let off = 0;
  for (const [name, shape] of tensors) {
    const bytes = 2 * shape.reduce((a, b) => a * b, 1);
    header[name] = { dtype: 'BF16', shape, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  header.__metadata__ = { format: 'pt', generator: 'xquant-ts scripts/random-checkpoint.mjs', shape: o.shape, seed: o.seed };
  let hj = JSON.stringify(header);
  hj += ' '.repeat((8 - (hj.length % 8)) % 8);
  const fd = openSync(join(o.out, 'model.safetensors'), 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hj.length));
  writeSync(fd, len);
  writeSync(fd, Buffer.from(hj, 'utf8'));
  // xorshift32 → uniform in [−a, a) with a = 0.02·√3 (standard deviation 0.02), written as bf16 (top 16 bits, rounded)
  let s = (Number(o.seed) * 2654435761) >>> 0 || 1;
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const a = 0.02 * Math.sqrt(3);
  const CH = 1 << 22;
  const buf = new Uint16Array(CH);
  const one = 0x3f80;
  for (const [, shape, kind] of tensors) {
    let n = shape.reduce((x, y) => x * y, 1);
    while (n > 0) {
      const m = Math.min(n, CH);
      if (kind === 'one') buf.fill(one, 0, m);
      else {
        for (let i = 0; i < m; i++) {
          s ^= s << 13;
          s ^= s >>> 17;
          s ^= s << 5;
          f[0] = ((s >>> 0) / 4294967296 - 0.5) * 2 * a;
          const b = u[0];
          buf[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
        }
      }
      writeSync(fd, new Uint8Array(buf.buffer, 0, 2 * m));
      n -= m;
    }
  }
  closeSync(fd);
  writeFileSync(join(o.out, 'config.json'), JSON.stringify({ ...c, transformers_version: '4.45.0' }, null, 2));
  copyFileSync(o.tokenizer, join(o.out, 'tokenizer.json'));
  console.log(`${o.out}: ${o.config ?? o.shape}, ${tensors.length} tensors, ${(off / 2 ** 30).toFixed(2)} GiB bf16`);
}

if (import.meta.url === `file://${process.argv[1]}`) main();
