import { XqConfigError, XqError, XqFormatError, halfTable } from '@xquant/quant';
import type { ModelConfig, RopeScaling } from '../config.js';
import { CONFIG_LIMITS, validateModelConfig } from '../config.js';
import type { WeightSource } from '../model.js';
import type { TextTokenizer } from '../tokenizer.js';
import type { SourceInput } from '../io/byte-source.js';
import type { OpenOptions } from '../io/platform.js';
import { BoundedFile } from './file.js';
import { parseGgufHeader, type RawGgufHeader } from './gguf-parse.js';
import { ggufTokenizerJson } from './gguf-tokenizer.js';
import { createTokenizer } from '../tokenizer.js';

/** GGML tensor types this loader can read (value = GGML type id). */
export const GGUF_SUPPORTED_TYPES = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, BF16: 30 } as const;

/** Block layout of each supported GGML type: elements per block and bytes per block. */
const BLOCK: Record<number, { name: string; elements: number; bytes: number }> = {
  0: { name: 'F32', elements: 1, bytes: 4 },
  1: { name: 'F16', elements: 1, bytes: 2 },
  2: { name: 'Q4_0', elements: 32, bytes: 18 },
  8: { name: 'Q8_0', elements: 32, bytes: 34 },
  30: { name: 'BF16', elements: 1, bytes: 2 },
};

/** Largest GGUF dimension accepted (2^32, as gguf.ts `MAX_TENSOR_DIM`). */
export const GGUF_MAX_DIM = 2 ** 32;

/** One tensor of a GGUF file, validated against the file size. */
export interface GgufTensorInfo {
  name: string;
  /** GGML type id (see {@link GGUF_SUPPORTED_TYPES}). */
  type: number;
  /** Shape in row-major (PyTorch) order: the reverse of GGML's `ne`. */
  shape: number[];
  /** Absolute byte offset in the file. */
  byteOffset: number;
  byteLength: number;
}

/** The parsed, validated header of a GGUF file. */
export interface GgufHeader {
  path: string;
  fileSize: number;
  version: number;
  metadata: Record<string, unknown>;
  tensors: Map<string, GgufTensorInfo>;
}

function asNumber(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint' && v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= 0n) return Number(v);
  return undefined;
}

/**
 * Parse and validate a GGUF header (bounded by the `GGUF_MAX_*` limits), then check what the parse leaves open:
 * the header lies inside the file, every tensor has a supported type, a sane shape, a byte range inside
 * the data section consistent with shape × type size, aligned, and no two tensors overlap. `input`: a path (Node) or
 * URL string, a `URL`, a `Blob`, bytes, or a `ByteSource`.
 */
export async function readGgufHeader(input: SourceInput, options: OpenOptions = {}): Promise<GgufHeader> {
  const file = await BoundedFile.open(input, options);
  try {
    return await readHeader(file);
  } finally {
    await file.close();
  }
}

async function readHeader(file: BoundedFile): Promise<GgufHeader> {
  const path = file.path;
  if (file.size < 24) throw new XqFormatError(`${path}: ${file.size} bytes is too short for a GGUF file`);
  const head = await file.read(0, 8, 'GGUF magic');
  const magic = String.fromCharCode(...head.subarray(0, 4));
  if (magic !== 'GGUF') throw new XqFormatError(`${path}: not a GGUF file (magic ${JSON.stringify(magic)}, expected "GGUF")`);
  const version = new DataView(head.buffer, head.byteOffset, 8).getUint32(4, true);
  if (version !== 2 && version !== 3) throw new XqFormatError(`${path}: GGUF version ${version} is not supported (expected 2 or 3, little-endian)`);
  const parsed: RawGgufHeader = await parseGgufHeader(file, version);
  const fileSize = file.size;
  if (!parsed.littleEndian) throw new XqFormatError(`${path}: big-endian GGUF files are not supported`);
  const headerEnd = parsed.tensorInfoByteRange[1];
  if (headerEnd > fileSize) {
    throw new XqFormatError(`${path}: the GGUF header needs ${headerEnd} bytes but the file has ${fileSize}; the file is truncated`);
  }
  const metadata = parsed.metadata as Record<string, unknown>;
  const alignment = asNumber(metadata['general.alignment'] ?? 32);
  if (alignment === undefined || alignment < 1 || alignment > 1 << 20 || (alignment & (alignment - 1)) !== 0) {
    throw new XqFormatError(`${path}: general.alignment must be a power of two ≤ 2^20, got ${String(metadata['general.alignment'])}`);
  }
  const dataOffset = Number(parsed.tensorDataOffset);
  if (dataOffset > fileSize) throw new XqFormatError(`${path}: tensor data would start at ${dataOffset}, past the end of the file (${fileSize} bytes)`);
  const tensors = new Map<string, GgufTensorInfo>();
  for (const t of parsed.tensorInfos) {
    const where = `${path}: tensor '${t.name}'`;
    const block = BLOCK[t.dtype];
    if (!block) {
      throw new XqFormatError(`${where}: GGML type ${t.dtype} is not supported (supported: ${Object.keys(GGUF_SUPPORTED_TYPES).join(', ')})`);
    }
    if (t.n_dims < 1 || t.n_dims > 4) throw new XqFormatError(`${where}: ${t.n_dims} dimensions (expected 1 to 4)`);
    let count = 1;
    for (const d of t.shape) {
      if (d < 1n || d > BigInt(GGUF_MAX_DIM)) throw new XqFormatError(`${where}: dimension ${d} is outside [1, 2^32]`);
      count *= Number(d);
    }
    const ne0 = Number(t.shape[0]);
    if (ne0 % block.elements !== 0) {
      throw new XqFormatError(`${where}: first dimension ${ne0} is not a multiple of the ${block.name} block size ${block.elements}`);
    }
    const byteLength = (count / block.elements) * block.bytes;
    const rel = t.offset;
    if (rel % BigInt(alignment) !== 0n) throw new XqFormatError(`${where}: data offset ${rel} is not a multiple of the alignment ${alignment}`);
    const byteOffset = dataOffset + Number(rel);
    if (!Number.isSafeInteger(byteLength) || rel > BigInt(fileSize) || byteOffset + byteLength > fileSize) {
      throw new XqFormatError(
        `${where}: shape [${t.shape.join(', ')}] × ${block.name} needs bytes ${byteOffset}..${byteOffset + byteLength}, past the end of the file (${fileSize} bytes)`,
      );
    }
    if (tensors.has(t.name)) throw new XqFormatError(`${where}: duplicate tensor name`);
    tensors.set(t.name, { name: t.name, type: t.dtype, shape: t.shape.map(Number).reverse(), byteOffset, byteLength });
  }
  const spans = [...tensors.values()].sort((a, b) => a.byteOffset - b.byteOffset);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1]!;
    if (spans[i]!.byteOffset < prev.byteOffset + prev.byteLength) {
      throw new XqFormatError(`${path}: tensor '${spans[i]!.name}' overlaps tensor '${prev.name}'`);
    }
  }
  return { path, fileSize, version, metadata, tensors };
}

/** Decode GGML tensor bytes to float32. @internal */
function dequantizeGgml(bytes: Uint8Array, type: number, count: number, where: string): Float32Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const half = halfTable();
  const out = new Float32Array(count);
  switch (type) {
    case 0:
      for (let i = 0; i < count; i++) out[i] = dv.getFloat32(4 * i, true);
      return out;
    case 1:
      for (let i = 0; i < count; i++) out[i] = half[dv.getUint16(2 * i, true)]!;
      return out;
    case 30: {
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) u[i] = dv.getUint16(2 * i, true) << 16;
      return out;
    }
    case 8:
      for (let b = 0; b < count / 32; b++) {
        const base = b * 34;
        const d = half[dv.getUint16(base, true)]!;
        for (let j = 0; j < 32; j++) out[b * 32 + j] = d * dv.getInt8(base + 2 + j);
      }
      return out;
    case 2:
      for (let b = 0; b < count / 32; b++) {
        const base = b * 18;
        const d = half[dv.getUint16(base, true)]!;
        for (let j = 0; j < 16; j++) {
          const q = bytes[base + 2 + j]!;
          out[b * 32 + j] = d * ((q & 0x0f) - 8);
          out[b * 32 + j + 16] = d * ((q >> 4) - 8);
        }
      }
      return out;
    default:
      throw new XqFormatError(`${where}: GGML type ${type} is not supported`);
  }
}

/** Map llama.cpp tensor names to Hugging Face names. @internal */
function ggufToHfName(name: string): string | undefined {
  const fixed: Record<string, string> = {
    'token_embd.weight': 'model.embed_tokens.weight',
    'output_norm.weight': 'model.norm.weight',
    'output.weight': 'lm_head.weight',
  };
  if (fixed[name]) return fixed[name];
  const m = /^blk\.(\d+)\.(\w+)\.(weight|bias)$/.exec(name);
  if (!m) return undefined;
  const parts: Record<string, string> = {
    attn_norm: 'input_layernorm',
    attn_q: 'self_attn.q_proj',
    attn_k: 'self_attn.k_proj',
    attn_v: 'self_attn.v_proj',
    attn_output: 'self_attn.o_proj',
    ffn_norm: 'post_attention_layernorm',
    ffn_gate: 'mlp.gate_proj',
    ffn_up: 'mlp.up_proj',
    ffn_down: 'mlp.down_proj',
  };
  const p = parts[m[2]!];
  return p ? `model.layers.${m[1]}.${p}.${m[3]}` : undefined;
}

/**
 * Undo llama.cpp's Q/K row permutation for Llama (`LlamaModel.permute` in convert_hf_to_gguf.py), which turns
 * the half-split RoPE layout into GGML's interleaved one: HF row h·d + i·d/2 + j ← GGUF row h·d + 2j + i.
 * @internal
 */
function unpermuteRows(data: Float32Array, heads: number, cols: number): Float32Array {
  const rows = data.length / cols;
  const d = rows / heads;
  const half = d / 2;
  const out = new Float32Array(data.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < half; j++) {
        const dst = (h * d + i * half + j) * cols;
        const src = (h * d + 2 * j + i) * cols;
        out.set(data.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

/** GGUF tensors the loader consumes itself (not weights of the decoder). */
const GGUF_CONSUMED = new Set(['rope_freqs.weight']);

class GgufWeights implements WeightSource {
  private readonly byHf = new Map<string, GgufTensorInfo>();
  /** GGUF names with no Hugging Face counterpart: listed by names(), so loading reports them. */
  private readonly unmapped: string[] = [];
  constructor(
    readonly source: string,
    private readonly file: BoundedFile,
    header: GgufHeader,
    private readonly permute: { q: number; k: number } | undefined,
  ) {
    for (const t of header.tensors.values()) {
      const hf = ggufToHfName(t.name);
      if (hf) this.byHf.set(hf, t);
      else if (!GGUF_CONSUMED.has(t.name)) this.unmapped.push(t.name);
    }
  }
  has(name: string): boolean {
    return this.byHf.has(name);
  }
  names(): string[] {
    return [...this.byHf.keys(), ...this.unmapped];
  }
  shape(name: string): number[] {
    return this.info(name).shape;
  }
  private info(name: string): GgufTensorInfo {
    const t = this.byHf.get(name);
    if (!t) throw new XqFormatError(`${this.source}: no tensor for '${name}'`);
    return t;
  }
  async read(name: string): Promise<Float32Array> {
    const t = this.info(name);
    const count = t.shape.reduce((a, b) => a * b, 1);
    const where = `${this.source}: tensor '${t.name}'`;
    const data = dequantizeGgml(await this.file.read(t.byteOffset, t.byteLength, `tensor '${t.name}'`), t.type, count, where);
    if (this.permute) {
      const cols = t.shape.length === 2 ? t.shape[1]! : 1;
      if (/self_attn\.q_proj\.(weight|bias)$/.test(name)) return unpermuteRows(data, this.permute.q, cols);
      if (/self_attn\.k_proj\.(weight|bias)$/.test(name)) return unpermuteRows(data, this.permute.k, cols);
    }
    return data;
  }
  close(): Promise<void> {
    return this.file.close();
  }
}

/** A GGUF model: normalised config, weights (HF names, float32) and, when embedded, a tokenizer. */
export interface GgufModel {
  header: GgufHeader;
  config: ModelConfig;
  weights: WeightSource & { close(): Promise<void> };
  tokenizer?: TextTokenizer;
}

/** Build a {@link ModelConfig} from GGUF metadata (architectures `llama` and `qwen2`). */
export function ggufModelConfig(header: GgufHeader, ropeFactors?: number[]): ModelConfig {
  const md = header.metadata;
  const src = header.path;
  const arch = md['general.architecture'];
  if (arch !== 'llama' && arch !== 'qwen2') {
    throw new XqConfigError('E_CONFIG', `${src}: unsupported GGUF architecture ${JSON.stringify(arch)}; supported: llama, qwen2`);
  }
  const get = (key: string, fallback?: number): number => {
    const v = asNumber(md[`${arch}.${key}`]) ?? fallback;
    if (v === undefined) throw new XqFormatError(`${src}: GGUF metadata lacks ${arch}.${key}`);
    return v;
  };
  const hiddenSize = get('embedding_length');
  const numHeads = get('attention.head_count');
  const embd = header.tensors.get('token_embd.weight');
  if (!embd) throw new XqFormatError(`${src}: GGUF file has no token_embd.weight`);
  const tokens = md['tokenizer.ggml.tokens'];
  const vocabSize = get('vocab_size', Array.isArray(tokens) ? tokens.length : embd.shape[0]);
  let ropeScaling: RopeScaling = { type: 'default' };
  const scalingType = md[`${arch}.rope.scaling.type`];
  if (ropeFactors) ropeScaling = { type: 'frequency-factors', factors: ropeFactors };
  else if (scalingType === 'linear') ropeScaling = { type: 'linear', factor: get('rope.scaling.factor') };
  else if (scalingType !== undefined && scalingType !== 'none') {
    throw new XqConfigError('E_CONFIG', `${src}: rope scaling ${JSON.stringify(scalingType)} is not supported (supported: none, linear, rope_freqs)`);
  }
  const eos = asNumber(md['tokenizer.ggml.eos_token_id']);
  const bos = asNumber(md['tokenizer.ggml.bos_token_id']);
  const has = (n: string) => header.tensors.has(n);
  const config: ModelConfig = {
    architecture: arch,
    vocabSize,
    hiddenSize,
    intermediateSize: get('feed_forward_length'),
    numLayers: get('block_count'),
    numHeads,
    numKvHeads: get('attention.head_count_kv', numHeads),
    headDim: get('attention.key_length', hiddenSize / numHeads),
    rmsNormEps: get('attention.layer_norm_rms_epsilon'),
    ropeTheta: get('rope.freq_base', 10000),
    ropeScaling,
    tieWordEmbeddings: !has('output.weight'),
    attentionBias: has('blk.0.attn_q.bias'),
    outputBias: has('blk.0.attn_output.bias'),
    mlpBias: has('blk.0.ffn_gate.bias'),
    maxPositionEmbeddings: Math.min(get('context_length', 4096), CONFIG_LIMITS.maxPositionEmbeddings),
    eosTokenIds: eos === undefined ? [] : [eos],
  };
  if (bos !== undefined) config.bosTokenId = bos;
  return validateModelConfig(config, src);
}

/** Options of {@link loadGguf}. */
export interface LoadGgufOptions extends OpenOptions {
  /** Build the tokenizer from the embedded `tokenizer.ggml.*` metadata (default true). */
  tokenizer?: boolean;
}

/**
 * Open a GGUF model file (a path or URL string, a `URL`, a `Blob`, bytes, or a `ByteSource`): validated header,
 * config, lazily read weights (dequantized to float32; Llama Q/K rows un-permuted to the Hugging Face layout) and, if
 * `tokenizer` is true (default), a tokenizer built from the embedded `tokenizer.ggml.*` metadata. Close `weights` when
 * done.
 */
export async function loadGguf(input: SourceInput, options: LoadGgufOptions = {}): Promise<GgufModel> {
  const file = await BoundedFile.open(input, options);
  const path = file.path;
  try {
    const header = await readHeader(file);
    let ropeFactors: number[] | undefined;
    const rf = header.tensors.get('rope_freqs.weight');
    if (rf) {
      const n = rf.shape.reduce((a, b) => a * b, 1);
      ropeFactors = Array.from(dequantizeGgml(await file.read(rf.byteOffset, rf.byteLength, 'rope_freqs'), rf.type, n, path));
    }
    const config = ggufModelConfig(header, ropeFactors);
    if (ropeFactors && ropeFactors.length !== config.headDim / 2) {
      throw new XqFormatError(`${path}: rope_freqs.weight has ${ropeFactors.length} values, expected headDim/2 = ${config.headDim / 2}`);
    }
    const permute = config.architecture === 'llama' ? { q: config.numHeads, k: config.numKvHeads } : undefined;
    const weights = new GgufWeights(path, file, header, permute);
    const result: GgufModel = { header, config, weights };
    if (options.tokenizer !== false) {
      if (header.metadata['tokenizer.ggml.model'] === undefined) {
        throw new XqError('E_IO', `${path}: the GGUF file has no embedded tokenizer (tokenizer.ggml.model); pass a tokenizer.json path`);
      }
      const { json, config: tokConfig } = ggufTokenizerJson(header.metadata, path);
      result.tokenizer = createTokenizer(json, tokConfig, `${path} (embedded tokenizer)`);
    }
    return result;
  } catch (e) {
    await file.close();
    throw e;
  }
}
