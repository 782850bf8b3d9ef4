/**
 * Test support: tiny random Llama/Qwen2 models, a float64 reference forward pass, and minimal writers for
 * safetensors and GGUF files (written from the format specs, independent of the loaders under test).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { halfToBits, roundHalf } from '@xquant/quant';

export type Arch = 'llama' | 'qwen2';
export type Tensors = Map<string, { shape: number[]; data: Float32Array }>;

/** GPT-2 byte → printable unicode map (the ByteLevel alphabet). */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const out: string[] = Array(256);
  bs.forEach((b, i) => (out[b] = String.fromCodePoint(cs[i]!)));
  return out;
}

/** A byte-level BPE tokenizer: ids 0/1 = <|bos|>/<|eos|>, 2..257 = bytes, then the merged tokens. */
export function tinyTokenizer(merges: [string, string][] = [['1', '2'], ['3', '4']]) {
  const alphabet = bytesToUnicode();
  const tokens = ['<|bos|>', '<|eos|>', ...alphabet, ...merges.map(([a, b]) => a + b)];
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => (vocab[t] = i));
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<|bos|>'), special(1, '<|eos|>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|bos|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<|bos|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }],
      special_tokens: { '<|bos|>': { id: '<|bos|>', ids: [0], tokens: ['<|bos|>'] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
  };
  const config = { bos_token: '<|bos|>', eos_token: '<|eos|>', clean_up_tokenization_spaces: false };
  return { json, config, tokens, merges };
}

/** Deterministic normal-ish random numbers (sum of uniforms from a small LCG). */
export function randn(seed: number): () => number {
  let s = seed >>> 0 || 1;
  const u = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
  return () => (u() + u() + u() + u() - 2) * 1.7;
}

export interface TinySpec {
  arch: Arch;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  vocab: number;
  theta: number;
  eps: number;
  tied: boolean;
  bias: boolean;
  ropeScaling?: { rope_type: 'llama3'; factor: number; low_freq_factor: number; high_freq_factor: number; original_max_position_embeddings: number };
}

export function tinySpec(arch: Arch): TinySpec {
  const vocab = tinyTokenizer().tokens.length;
  return arch === 'llama'
    ? {
        arch,
        hidden: 32,
        layers: 2,
        heads: 4,
        kvHeads: 2,
        headDim: 8,
        intermediate: 64,
        vocab,
        theta: 10000,
        eps: 1e-5,
        tied: false,
        bias: false,
        ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 },
      }
    : { arch, hidden: 32, layers: 2, heads: 4, kvHeads: 1, headDim: 8, intermediate: 64, vocab, theta: 1e6, eps: 1e-6, tied: true, bias: true };
}

/** config.json as transformers 5 writes it (rope in `rope_parameters`). */
export function hfConfig(s: TinySpec): Record<string, unknown> {
  return {
    architectures: [s.arch === 'llama' ? 'LlamaForCausalLM' : 'Qwen2ForCausalLM'],
    model_type: s.arch,
    hidden_size: s.hidden,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    head_dim: s.headDim,
    intermediate_size: s.intermediate,
    vocab_size: s.vocab,
    rms_norm_eps: s.eps,
    hidden_act: 'silu',
    tie_word_embeddings: s.tied,
    max_position_embeddings: 256,
    bos_token_id: 0,
    eos_token_id: 1,
    rope_parameters: { rope_theta: s.theta, rope_type: 'default', ...(s.ropeScaling ?? {}) },
  };
}

/** Random weights with HF names; `shape` is the HF (row-major, [out, in]) shape. */
export function tinyWeights(s: TinySpec, seed = 1): Tensors {
  const r = randn(seed);
  const t: Tensors = new Map();
  const add = (name: string, shape: number[], scale: number, offset = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    t.set(name, { shape, data: Float32Array.from({ length: n }, () => offset + scale * r()) });
  };
  const qd = s.heads * s.headDim;
  const kvd = s.kvHeads * s.headDim;
  add('model.embed_tokens.weight', [s.vocab, s.hidden], 0.5);
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}.`;
    add(`${p}input_layernorm.weight`, [s.hidden], 0.1, 1);
    add(`${p}post_attention_layernorm.weight`, [s.hidden], 0.1, 1);
    add(`${p}self_attn.q_proj.weight`, [qd, s.hidden], 0.3);
    add(`${p}self_attn.k_proj.weight`, [kvd, s.hidden], 0.3);
    add(`${p}self_attn.v_proj.weight`, [kvd, s.hidden], 0.3);
    add(`${p}self_attn.o_proj.weight`, [s.hidden, qd], 0.3);
    if (s.bias) {
      add(`${p}self_attn.q_proj.bias`, [qd], 0.2);
      add(`${p}self_attn.k_proj.bias`, [kvd], 0.2);
      add(`${p}self_attn.v_proj.bias`, [kvd], 0.2);
    }
    add(`${p}mlp.gate_proj.weight`, [s.intermediate, s.hidden], 0.3);
    add(`${p}mlp.up_proj.weight`, [s.intermediate, s.hidden], 0.3);
    add(`${p}mlp.down_proj.weight`, [s.hidden, s.intermediate], 0.3);
  }
  add('model.norm.weight', [s.hidden], 0.1, 1);
  if (!s.tied) add('lm_head.weight', [s.vocab, s.hidden], 0.3);
  return t;
}

/** Map every weight value through `f` (e.g. rounding to what a storage type can hold exactly). */
export function mapWeights(t: Tensors, f: (x: Float32Array, name: string) => Float32Array): Tensors {
  return new Map([...t].map(([n, v]) => [n, { shape: v.shape, data: f(v.data, n) }]));
}

export const roundToHalf = (x: Float32Array) => x.map((v) => roundHalf(v));
export const roundToBf16 = (x: Float32Array) => {
  const out = new Float32Array(x);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < u.length; i++) u[i] = u[i]! & 0xffff0000;
  return out;
};
/** Values a Q8_0 block holds exactly: fp16 scale × int8 code, per 32 consecutive values. */
export function toQ8Representable(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let b = 0; b < x.length / 32; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]!));
    const d = roundHalf(amax / 127 || 1e-3);
    for (let j = 0; j < 32; j++) out[b * 32 + j] = d * Math.max(-127, Math.min(127, Math.round(x[b * 32 + j]! / d)));
  }
  return out;
}
/** Values a Q4_0 block holds exactly: fp16 scale × (code − 8), code in 0..15. */
export function toQ4Representable(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let b = 0; b < x.length / 32; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]!));
    const d = roundHalf(amax / 7 || 1e-3);
    for (let j = 0; j < 32; j++) out[b * 32 + j] = d * Math.max(-8, Math.min(7, Math.round(x[b * 32 + j]! / d)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// safetensors writer (spec: u64 LE header length, JSON header, data; offsets relative to the data section)

export type StDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64';

export function encodeFloats(data: ArrayLike<number>, dtype: StDtype): Uint8Array {
  const n = data.length;
  switch (dtype) {
    case 'F32':
      return new Uint8Array(Float32Array.from(data).buffer);
    case 'F64':
      return new Uint8Array(Float64Array.from(data).buffer);
    case 'F16':
      // sign bit set by hand: halfToBits(-0) gives +0
      return new Uint8Array(Uint16Array.from({ length: n }, (_, i) => halfToBits(data[i]!) | (Object.is(data[i], -0) ? 0x8000 : 0)).buffer);
    case 'BF16': {
      const u = new Uint32Array(Float32Array.from(data).buffer);
      return new Uint8Array(Uint16Array.from({ length: n }, (_, i) => u[i]! >>> 16).buffer);
    }
    case 'I64':
      return new Uint8Array(BigInt64Array.from({ length: n }, (_, i) => BigInt(data[i]!)).buffer);
  }
}

export function safetensorsBytes(entries: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[], headerOverride?: (h: Record<string, unknown>) => void): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.bytes.length] };
    off += e.bytes.length;
  }
  headerOverride?.(header);
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += ' ';
  const hb = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hb.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  let at = 8 + hb.length;
  for (const e of entries) {
    out.set(e.bytes, at);
    at += e.bytes.length;
  }
  return out;
}

/** Write a HF model directory: config.json, tokenizer files and weights (single file or `shards` shards). */
export function writeHfDir(dir: string, s: TinySpec, weights: Tensors, dtype: StDtype, shards = 1): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(hfConfig(s)));
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: 0, eos_token_id: 1 }));
  const tok = tinyTokenizer();
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok.json));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tok.config));
  const names = [...weights.keys()];
  const entries = names.map((name) => ({ name, dtype, shape: weights.get(name)!.shape, bytes: encodeFloats(weights.get(name)!.data, dtype) }));
  if (shards === 1) {
    writeFileSync(join(dir, 'model.safetensors'), safetensorsBytes(entries));
    return;
  }
  const weightMap: Record<string, string> = {};
  for (let k = 0; k < shards; k++) {
    const file = `model-${String(k + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = entries.filter((_, i) => i % shards === k);
    for (const e of part) weightMap[e.name] = file;
    writeFileSync(join(dir, file), safetensorsBytes(part));
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}

// ---------------------------------------------------------------------------------------------------------------
// GGUF writer (spec: ggml/docs/gguf.md, version 3, little-endian)

export type GgufValue =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'str'; value: string }
  | { type: 'arr_str'; value: string[] }
  | { type: 'arr_i32'; value: number[] };

export type GgmlType = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0';
const GGML_ID: Record<GgmlType, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, BF16: 30 };

class ByteWriter {
  chunks: Uint8Array[] = [];
  length = 0;
  bytes(b: Uint8Array) {
    this.chunks.push(b);
    this.length += b.length;
  }
  num(kind: 'u32' | 'i32' | 'f32' | 'u64' | 'u8', v: number | bigint) {
    const size = kind === 'u64' ? 8 : kind === 'u8' ? 1 : 4;
    const b = new Uint8Array(size);
    const dv = new DataView(b.buffer);
    if (kind === 'u32') dv.setUint32(0, Number(v), true);
    else if (kind === 'i32') dv.setInt32(0, Number(v), true);
    else if (kind === 'f32') dv.setFloat32(0, Number(v), true);
    else if (kind === 'u8') dv.setUint8(0, Number(v));
    else dv.setBigUint64(0, BigInt(v), true);
    this.bytes(b);
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.num('u64', b.length);
    this.bytes(b);
  }
  pad(alignment: number) {
    const n = (alignment - (this.length % alignment)) % alignment;
    if (n) this.bytes(new Uint8Array(n));
  }
  out(): Uint8Array {
    const o = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      o.set(c, at);
      at += c.length;
    }
    return o;
  }
}

/** Encode values as one GGML tensor's bytes (quantized types: values must be representable, see toQ*Representable). */
export function ggmlBytes(data: Float32Array, type: GgmlType): Uint8Array {
  switch (type) {
    case 'F32':
      return encodeFloats(data, 'F32');
    case 'F16':
      return encodeFloats(data, 'F16');
    case 'BF16':
      return encodeFloats(data, 'BF16');
    case 'Q8_0':
    case 'Q4_0': {
      const q8 = type === 'Q8_0';
      const blockBytes = q8 ? 34 : 18;
      const out = new Uint8Array((data.length / 32) * blockBytes);
      const dv = new DataView(out.buffer);
      for (let b = 0; b < data.length / 32; b++) {
        let amax = 0;
        for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(data[b * 32 + j]!));
        const d = roundHalf(amax / (q8 ? 127 : 7) || 1e-3);
        dv.setUint16(b * blockBytes, halfToBits(d), true);
        for (let j = 0; j < 32; j++) {
          const q = Math.round(data[b * 32 + j]! / d);
          if (q8) dv.setInt8(b * blockBytes + 2 + j, q);
          else {
            const code = q + 8;
            const at = b * blockBytes + 2 + (j % 16);
            out[at] = j < 16 ? (out[at]! & 0xf0) | code : (out[at]! & 0x0f) | (code << 4);
          }
        }
      }
      return out;
    }
  }
}

export interface GgufTensorSpec {
  name: string;
  /** Row-major shape; written reversed as GGML `ne`. */
  shape: number[];
  type: GgmlType | number;
  bytes: Uint8Array;
  /** Override the relative data offset (for corrupt-file tests). */
  offset?: bigint;
}

export function ggufBytes(metadata: Record<string, GgufValue>, tensors: GgufTensorSpec[], opts: { alignment?: number; version?: number } = {}): Uint8Array {
  const alignment = opts.alignment ?? 32;
  const w = new ByteWriter();
  w.bytes(new TextEncoder().encode('GGUF'));
  w.num('u32', opts.version ?? 3);
  w.num('u64', tensors.length);
  w.num('u64', Object.keys(metadata).length);
  for (const [k, v] of Object.entries(metadata)) {
    w.str(k);
    switch (v.type) {
      case 'u32':
        w.num('u32', 4);
        w.num('u32', v.value);
        break;
      case 'i32':
        w.num('u32', 5);
        w.num('i32', v.value);
        break;
      case 'f32':
        w.num('u32', 6);
        w.num('f32', v.value);
        break;
      case 'bool':
        w.num('u32', 7);
        w.num('u8', v.value ? 1 : 0);
        break;
      case 'str':
        w.num('u32', 8);
        w.str(v.value);
        break;
      case 'arr_str':
        w.num('u32', 9);
        w.num('u32', 8);
        w.num('u64', v.value.length);
        for (const s of v.value) w.str(s);
        break;
      case 'arr_i32':
        w.num('u32', 9);
        w.num('u32', 5);
        w.num('u64', v.value.length);
        for (const x of v.value) w.num('i32', x);
        break;
    }
  }
  let off = 0n;
  const offsets: bigint[] = [];
  for (const t of tensors) {
    offsets.push(off);
    off += BigInt(t.bytes.length);
    off = ((off + BigInt(alignment) - 1n) / BigInt(alignment)) * BigInt(alignment);
  }
  tensors.forEach((t, i) => {
    w.str(t.name);
    w.num('u32', t.shape.length);
    for (const d of [...t.shape].reverse()) w.num('u64', d);
    w.num('u32', typeof t.type === 'number' ? t.type : GGML_ID[t.type]);
    w.num('u64', t.offset ?? offsets[i]!);
  });
  w.pad(alignment);
  for (const t of tensors) {
    w.bytes(t.bytes);
    w.pad(alignment);
  }
  return w.out();
}

/** llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py): reshape(n_head, 2, d/2, …).swapaxes(1, 2). */
export function llamaCppPermute(data: Float32Array, nHead: number, cols: number): Float32Array {
  const rows = data.length / cols;
  const half = rows / nHead / 2;
  const out = new Float32Array(data.length);
  // old[h][i][j] (i ∈ {0,1}, j < half) → new[h][j][i]
  for (let h = 0; h < nHead; h++)
    for (let i = 0; i < 2; i++)
      for (let j = 0; j < half; j++) {
        const oldRow = (h * 2 + i) * half + j;
        const newRow = (h * half + j) * 2 + i;
        out.set(data.subarray(oldRow * cols, (oldRow + 1) * cols), newRow * cols);
      }
  return out;
}

const GGUF_NAMES: [RegExp, string][] = [
  [/^model\.embed_tokens\.weight$/, 'token_embd.weight'],
  [/^model\.norm\.weight$/, 'output_norm.weight'],
  [/^lm_head\.weight$/, 'output.weight'],
  [/^model\.layers\.(\d+)\.input_layernorm\.weight$/, 'blk.$1.attn_norm.weight'],
  [/^model\.layers\.(\d+)\.post_attention_layernorm\.weight$/, 'blk.$1.ffn_norm.weight'],
  [/^model\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$/, 'blk.$1.attn_q.$2'],
  [/^model\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)$/, 'blk.$1.attn_k.$2'],
  [/^model\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)$/, 'blk.$1.attn_v.$2'],
  [/^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$/, 'blk.$1.attn_output.weight'],
  [/^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$/, 'blk.$1.ffn_gate.weight'],
  [/^model\.layers\.(\d+)\.mlp\.up_proj\.weight$/, 'blk.$1.ffn_up.weight'],
  [/^model\.layers\.(\d+)\.mlp\.down_proj\.weight$/, 'blk.$1.ffn_down.weight'],
];

/** Tokenizer metadata as llama.cpp's converter writes it for a byte-level BPE vocabulary. */
export function ggufTokenizerMetadata(tokens: string[], merges: string[], specialIds: number[], pre = 'gpt-2'): Record<string, GgufValue> {
  return {
    'tokenizer.ggml.model': { type: 'str', value: 'gpt2' },
    'tokenizer.ggml.pre': { type: 'str', value: pre },
    'tokenizer.ggml.tokens': { type: 'arr_str', value: tokens },
    'tokenizer.ggml.token_type': { type: 'arr_i32', value: tokens.map((_, i) => (specialIds.includes(i) ? 3 : 1)) },
    'tokenizer.ggml.merges': { type: 'arr_str', value: merges },
    'tokenizer.ggml.bos_token_id': { type: 'u32', value: 0 },
    'tokenizer.ggml.eos_token_id': { type: 'u32', value: 1 },
    'tokenizer.ggml.add_bos_token': { type: 'bool', value: true },
  };
}

/** A GGUF file of a tiny model as llama.cpp would write it (Llama Q/K permuted; 1-D tensors always F32). */
export function tinyGguf(s: TinySpec, weights: Tensors, type: GgmlType, extra: GgufTensorSpec[] = []): Uint8Array {
  const tok = tinyTokenizer();
  const a = s.arch;
  const md: Record<string, GgufValue> = {
    'general.architecture': { type: 'str', value: a },
    'general.alignment': { type: 'u32', value: 32 },
    [`${a}.context_length`]: { type: 'u32', value: 256 },
    [`${a}.embedding_length`]: { type: 'u32', value: s.hidden },
    [`${a}.block_count`]: { type: 'u32', value: s.layers },
    [`${a}.feed_forward_length`]: { type: 'u32', value: s.intermediate },
    [`${a}.attention.head_count`]: { type: 'u32', value: s.heads },
    [`${a}.attention.head_count_kv`]: { type: 'u32', value: s.kvHeads },
    [`${a}.attention.key_length`]: { type: 'u32', value: s.headDim },
    [`${a}.attention.layer_norm_rms_epsilon`]: { type: 'f32', value: s.eps },
    [`${a}.rope.freq_base`]: { type: 'f32', value: s.theta },
    ...ggufTokenizerMetadata(tok.tokens, tok.merges.map((m) => m.join(' ')), [0, 1]),
  };
  const tensors: GgufTensorSpec[] = [];
  for (const [name, { shape, data }] of weights) {
    const rule = GGUF_NAMES.find(([re]) => re.test(name));
    if (!rule) throw new Error(`no GGUF name for ${name}`);
    const gname = name.replace(rule[0], rule[1]);
    let d = data;
    if (a === 'llama' && /attn_q\./.test(gname)) d = llamaCppPermute(d, s.heads, shape[1] ?? 1);
    if (a === 'llama' && /attn_k\./.test(gname)) d = llamaCppPermute(d, s.kvHeads, shape[1] ?? 1);
    const t: GgmlType = shape.length === 1 ? 'F32' : type;
    tensors.push({ name: gname, shape, type: t, bytes: ggmlBytes(d, t) });
  }
  if (s.ropeScaling) {
    // llama.cpp stores Llama-3 scaling as per-frequency divisors in rope_freqs.weight
    const half = s.headDim / 2;
    const { factor, low_freq_factor: lo, high_freq_factor: hi, original_max_position_embeddings: old } = s.ropeScaling;
    const f = new Float32Array(half);
    for (let i = 0; i < half; i++) {
      const freq = 1 / s.theta ** ((2 * i) / s.headDim);
      const wl = (2 * Math.PI) / freq;
      if (wl < old / hi) f[i] = 1;
      else if (wl > old / lo) f[i] = factor;
      else {
        const smooth = (old / wl - lo) / (hi - lo);
        f[i] = 1 / ((1 - smooth) / factor + smooth);
      }
    }
    tensors.push({ name: 'rope_freqs.weight', shape: [half], type: 'F32', bytes: ggmlBytes(f, 'F32') });
  }
  return ggufBytes(md, [...tensors, ...extra]);
}

// ---------------------------------------------------------------------------------------------------------------
// float64 reference forward pass (plain loops, written from the model definitions)

export function referenceForward(s: TinySpec, w: Tensors, ids: number[]): Float64Array[] {
  const g = (n: string) => w.get(n)!.data;
  const H = s.hidden;
  const T = ids.length;
  const d = s.headDim;
  const half = d / 2;
  const invFreq = Array.from({ length: half }, (_, i) => {
    const f = 1 / s.theta ** ((2 * i) / d);
    const sc = s.ropeScaling;
    if (!sc) return f;
    const wl = (2 * Math.PI) / f;
    const lowWl = sc.original_max_position_embeddings / sc.low_freq_factor;
    const highWl = sc.original_max_position_embeddings / sc.high_freq_factor;
    if (wl < highWl) return f;
    if (wl > lowWl) return f / sc.factor;
    const smooth = (sc.original_max_position_embeddings / wl - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor);
    return (1 - smooth) * (f / sc.factor) + smooth * f;
  });
  const linear = (x: Float64Array, W: Float32Array, out: number, inn: number, b?: Float32Array) => {
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let acc = b ? b[o]! : 0;
      for (let i = 0; i < inn; i++) acc += W[o * inn + i]! * x[i]!;
      y[o] = acc;
    }
    return y;
  };
  const norm = (x: Float64Array, wt: Float32Array) => {
    let ms = 0;
    for (const v of x) ms += v * v;
    const r = 1 / Math.sqrt(ms / x.length + s.eps);
    return x.map((v, i) => v * r * wt[i]!);
  };
  const rope = (v: Float64Array, pos: number) => {
    const out = new Float64Array(d);
    for (let i = 0; i < half; i++) {
      const c = Math.cos(pos * invFreq[i]!);
      const sn = Math.sin(pos * invFreq[i]!);
      out[i] = v[i]! * c - v[i + half]! * sn;
      out[i + half] = v[i + half]! * c + v[i]! * sn;
    }
    return out;
  };
  let xs = ids.map((id) => Float64Array.from(g('model.embed_tokens.weight').subarray(id * H, (id + 1) * H)));
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}.`;
    const bias = (n: string) => (s.bias ? g(`${p}self_attn.${n}.bias`) : undefined);
    const K: Float64Array[][] = [];
    const V: Float64Array[][] = [];
    const Q: Float64Array[][] = [];
    for (let t = 0; t < T; t++) {
      const h = norm(xs[t]!, g(`${p}input_layernorm.weight`));
      const q = linear(h, g(`${p}self_attn.q_proj.weight`), s.heads * d, H, bias('q_proj'));
      const k = linear(h, g(`${p}self_attn.k_proj.weight`), s.kvHeads * d, H, bias('k_proj'));
      const v = linear(h, g(`${p}self_attn.v_proj.weight`), s.kvHeads * d, H, bias('v_proj'));
      Q.push(Array.from({ length: s.heads }, (_, hh) => rope(q.subarray(hh * d, (hh + 1) * d), t)));
      K.push(Array.from({ length: s.kvHeads }, (_, hh) => rope(k.subarray(hh * d, (hh + 1) * d), t)));
      V.push(Array.from({ length: s.kvHeads }, (_, hh) => v.slice(hh * d, (hh + 1) * d)));
    }
    xs = xs.map((x, t) => {
      const attn = new Float64Array(s.heads * d);
      for (let hh = 0; hh < s.heads; hh++) {
        const kv = Math.floor((hh * s.kvHeads) / s.heads);
        const scores = Array.from({ length: t + 1 }, (_, j) => {
          let acc = 0;
          for (let i = 0; i < d; i++) acc += Q[t]![hh]![i]! * K[j]![kv]![i]!;
          return acc / Math.sqrt(d);
        });
        const m = Math.max(...scores);
        const e = scores.map((v) => Math.exp(v - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j <= t; j++) for (let i = 0; i < d; i++) attn[hh * d + i] = attn[hh * d + i]! + (e[j]! / z) * V[j]![kv]![i]!;
      }
      const o = linear(attn, g(`${p}self_attn.o_proj.weight`), H, s.heads * d);
      const x1 = x.map((v, i) => v + o[i]!);
      const h2 = norm(x1, g(`${p}post_attention_layernorm.weight`));
      const gate = linear(h2, g(`${p}mlp.gate_proj.weight`), s.intermediate, H);
      const up = linear(h2, g(`${p}mlp.up_proj.weight`), s.intermediate, H);
      const act = gate.map((v, i) => (v / (1 + Math.exp(-v))) * up[i]!);
      const down = linear(act, g(`${p}mlp.down_proj.weight`), H, s.intermediate);
      return x1.map((v, i) => v + down[i]!);
    });
  }
  const head = s.tied ? g('model.embed_tokens.weight') : g('lm_head.weight');
  return xs.map((x) => linear(norm(x, g('model.norm.weight')), head, s.vocab, H));
}
