import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqConfigError, XqError, XqFormatError } from '@xquant/quant';
import { selectBackend } from '@xquant/tfjs';
import { createTokenizer, ggufTokenizerJson, loadGguf, loadModel, readGgufHeader } from '../src/index.js';
import { createF32Cache } from './support/f32-cache.js';
import {
  ggmlBytes,
  ggufBytes,
  ggufTokenizerMetadata,
  mapWeights,
  roundToBf16,
  roundToHalf,
  tinyGguf,
  tinySpec,
  tinyTokenizer,
  tinyWeights,
  toQ4Representable,
  toQ8Representable,
  writeHfDir,
  type Arch,
  type GgmlType,
  type GgufTensorSpec,
  type GgufValue,
} from './support/tiny.js';

const IDS = [0, 50, 51, 52, 120, 7, 7, 250, 3, 99];
const tmp = (name: string) => join(mkdtempSync(join(tmpdir(), 'xq-gguf-')), name);

beforeAll(async () => {
  tf.env().set('IS_TEST', true);
  await selectBackend({ prefer: 'cpu' });
});

const REPRESENT: Record<GgmlType, (x: Float32Array) => Float32Array> = {
  F32: (x) => x,
  F16: roundToHalf,
  BF16: roundToBf16,
  Q8_0: toQ8Representable,
  Q4_0: toQ4Representable,
};

describe('GGUF models written like llama.cpp load to the same weights as safetensors', () => {
  for (const arch of ['llama', 'qwen2'] as Arch[]) {
    for (const type of ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0'] as GgmlType[]) {
      it(`${arch} ${type}`, async () => {
        const spec = tinySpec(arch);
        // 2-D weights hold exactly what the GGML type can store; 1-D ones stay F32 (as llama.cpp writes norms)
        const weights = mapWeights(tinyWeights(spec, 5), (x, name) => (name.endsWith('norm.weight') || name.endsWith('.bias') ? x : REPRESENT[type](x)));
        const dir = mkdtempSync(join(tmpdir(), 'xq-st-'));
        writeHfDir(dir, spec, weights, 'F32');
        const file = tmp(`tiny-${arch}-${type}.gguf`);
        writeFileSync(file, tinyGguf(spec, weights, type));
        const st = await loadModel(dir);
        const gg = await loadModel(file);
        expect(gg.source.format).toBe('gguf');
        const { ropeScaling: rs1, ...c1 } = gg.config;
        const { ropeScaling: rs2, ...c2 } = st.config;
        expect(c1.rmsNormEps).toBe(Math.fround(c2.rmsNormEps)); // GGUF stores eps as float32
        expect({ ...c1, rmsNormEps: 0, maxPositionEmbeddings: 0 }).toEqual({ ...c2, rmsNormEps: 0, maxPositionEmbeddings: 0 });
        expect(rs1.type).toBe(arch === 'llama' ? 'frequency-factors' : 'default');
        expect(rs2.type).toBe(arch === 'llama' ? 'llama3' : 'default');
        const [a, b] = [st, gg].map((m) => m.model.forward(IDS, createF32Cache(m.model.cacheShape), 'all'));
        const da = await a!.data();
        const db = await b!.data();
        let max = 0;
        for (let i = 0; i < da.length; i++) max = Math.max(max, Math.abs(da[i]! - db[i]!));
        // identical weights; only the Llama-3 rope frequencies are computed by a different (equivalent) formula
        expect(max).toBeLessThan(arch === 'llama' ? 1e-4 : 1e-6);
        for (const t of [a!, b!]) t.dispose();
        expect(gg.tokenizer.encode('1234 hi')).toEqual(st.tokenizer.encode('1234 hi'));
        st.model.dispose();
        gg.model.dispose();
      });
    }
  }
});

describe('tokenizer from GGUF metadata', () => {
  const tok = tinyTokenizer();
  const merges = tok.merges.map((m) => m.join(' '));
  const build = (pre: string) => {
    const md = Object.fromEntries(Object.entries(ggufTokenizerMetadata(tok.tokens, merges, [0, 1], pre)).map(([k, v]) => [k, v.value]));
    const { json, config } = ggufTokenizerJson(md, 'test');
    return createTokenizer(json, config, 'test');
  };
  it('rebuilds the tokenizer.json behaviour (BOS, specials, byte-level round trip)', () => {
    const g = build('gpt-2');
    const ref = createTokenizer(tok.json, tok.config);
    for (const s of ['hello world', ' 1234\n\n x', 'é🚀<|eos|>']) {
      expect(g.encode(s)).toEqual(ref.encode(s));
      expect(g.decode(g.encode(s))).toBe(ref.decode(ref.encode(s)));
    }
    expect(g.bosTokenId).toBe(0);
    expect(g.eosTokenId).toBe(1);
  });
  it('applies the pre-tokenizer named by tokenizer.ggml.pre (digits: gpt-2 runs, llama-bpe ≤3, qwen2 single)', () => {
    const t12 = 258;
    const t34 = 259;
    const byte = (c: string) => tok.tokens.indexOf(c);
    expect(build('gpt-2').encode('1234')).toEqual([0, t12, t34]);
    expect(build('llama-bpe').encode('1234')).toEqual([0, t12, byte('3'), byte('4')]);
    expect(build('qwen2').encode('1234')).toEqual([0, byte('1'), byte('2'), byte('3'), byte('4')]);
  });
  it('refuses SentencePiece vocabularies and unknown pre-tokenizers with a clear error', () => {
    const md = Object.fromEntries(Object.entries(ggufTokenizerMetadata(tok.tokens, merges, [0, 1])).map(([k, v]) => [k, v.value]));
    expect(() => ggufTokenizerJson({ ...md, 'tokenizer.ggml.model': 'llama' }, 'x')).toThrow(/"llama" is not supported.*tokenizer.json/);
    expect(() => ggufTokenizerJson({ ...md, 'tokenizer.ggml.pre': 'falcon' }, 'x')).toThrow(/"falcon" is not supported/);
    expect(() => ggufTokenizerJson({ ...md, 'tokenizer.ggml.merges': [5] }, 'x')).toThrow(XqFormatError);
    expect(() => ggufTokenizerJson({ ...md, 'tokenizer.ggml.token_type': [1] }, 'x')).toThrow(/one entry per token/);
    expect(() => ggufTokenizerJson({ ...md, 'tokenizer.ggml.bos_token_id': 9999 }, 'x')).toThrow(/outside the vocabulary/);
  });

  const shared = '../shared/models/xq-llama-20m/tokenizer.json';
  describe.skipIf(!existsSync(shared) || !existsSync('../shared/eval/prompts.json'))('shared tokenizer — needs ../shared/models and ../shared/eval', () => {
    it('the xq tokenizer carried in GGUF metadata reproduces the stored prompt ids', () => {
      const j = JSON.parse(readFileSync(shared, 'utf8')) as { model: { vocab: Record<string, number>; merges: [string, string][] } };
      const tokens: string[] = [];
      for (const [t, id] of Object.entries(j.model.vocab)) tokens[id] = t;
      const md = Object.fromEntries(
        Object.entries(ggufTokenizerMetadata(tokens, j.model.merges.map((m) => m.join(' ')), [0, 1])).map(([k, v]) => [k, v.value]),
      );
      const { json, config } = ggufTokenizerJson(md, 'shared');
      const t = createTokenizer(json, config);
      const prompts = JSON.parse(readFileSync('../shared/eval/prompts.json', 'utf8')) as { text: string; input_ids: number[] }[];
      for (const p of prompts) {
        expect(t.encode(p.text)).toEqual(p.input_ids);
        expect(t.decode(p.input_ids)).toBe(p.text);
      }
    });
  });
});

describe('malformed GGUF', () => {
  const spec = tinySpec('qwen2');
  const good = tinyGguf(spec, mapWeights(tinyWeights(spec, 9), toQ8Representable), 'Q8_0');
  const md = (arch = 'qwen2'): Record<string, GgufValue> => ({
    'general.architecture': { type: 'str', value: arch },
    [`${arch}.embedding_length`]: { type: 'u32', value: 32 },
  });
  const w = (bytes: Uint8Array) => {
    const f = tmp('bad.gguf');
    writeFileSync(f, bytes);
    return f;
  };
  const t = (over: Partial<GgufTensorSpec> = {}): GgufTensorSpec => ({ name: 'a.weight', shape: [4, 32], type: 'F32', bytes: ggmlBytes(new Float32Array(128), 'F32'), ...over });
  const rejects = async (bytes: Uint8Array, pattern: RegExp) => {
    const err = await readGgufHeader(w(bytes)).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err, String(pattern)).toBeInstanceOf(XqFormatError);
    expect(String((err as Error).message)).toMatch(pattern);
  };

  it('accepts the well-formed file', async () => {
    const h = await readGgufHeader(w(good));
    expect(h.version).toBe(3);
    expect(h.tensors.get('token_embd.weight')!.shape).toEqual([spec.vocab, spec.hidden]);
  });
  it('bad magic, unsupported version, too short', async () => {
    await rejects(Uint8Array.from([...new TextEncoder().encode('GGUX'), ...good.subarray(4)]), /not a GGUF file/);
    await rejects(ggufBytes(md(), [t()], { version: 1 }), /version 1 is not supported/);
    await rejects(good.subarray(0, 10), /too short/);
  });
  it('truncated in the metadata, in the tensor infos and in the tensor data', async () => {
    await rejects(good.subarray(0, 200), /truncated|corrupt|past the end/);
    await rejects(good.subarray(0, Math.floor(good.length * 0.6)), /truncated|past the end/);
    await rejects(good.subarray(0, good.length - 40), /past the end of the file/);
  });
  it('tensor offset out of range, unaligned, overlapping', async () => {
    await rejects(ggufBytes(md(), [t({ offset: 1n << 40n })]), /past the end of the file/);
    await rejects(ggufBytes(md(), [t({ offset: 8n })]), /not a multiple of the alignment/);
    await rejects(ggufBytes(md(), [t(), t({ name: 'b.weight', offset: 0n })]), /overlaps/);
  });
  it('unsupported type, absurd or inconsistent shapes', async () => {
    await rejects(ggufBytes(md(), [t({ type: 12 })]), /GGML type 12 is not supported/);
    await rejects(ggufBytes(md(), [t({ shape: [2 ** 20, 2 ** 20, 2 ** 20] })]), /past the end of the file/);
    await rejects(ggufBytes(md(), [t({ shape: [1, 2 ** 40] })]), /exceeds the maximum|outside \[1, 2\^32\]|corrupt/);
    await rejects(ggufBytes(md(), [t({ shape: [4, 20], type: 'Q8_0', bytes: new Uint8Array(4 * 34) })]), /not a multiple of the Q8_0 block size 32/);
    await rejects(ggufBytes(md(), [t({ shape: [4, 0] })]), /outside \[1, 2\^32\]/);
    await rejects(ggufBytes(md(), [t({ shape: [] })]), /0 dimensions/);
  });
  it('non-power-of-two alignment and hostile metadata lengths', async () => {
    await rejects(ggufBytes({ ...md(), 'general.alignment': { type: 'u32', value: 24 } }, [t()], { alignment: 24 }), /power of two/);
    const huge = ggufBytes(md(), []);
    // key length field of the first metadata entry set to 2^60
    new DataView(huge.buffer).setBigUint64(24, 1n << 60n, true);
    await rejects(huge, /corrupt GGUF header/);
  });
  it('unsupported architecture and missing tokenizer give typed errors', async () => {
    const f = w(ggufBytes(md('gpt2'), [t({ name: 'token_embd.weight', shape: [8, 32], bytes: new Uint8Array(8 * 32 * 4) })]));
    await expect(loadGguf(f, { tokenizer: false })).rejects.toThrow(XqConfigError);
    await expect(loadGguf(f, { tokenizer: false })).rejects.toThrow(/unsupported GGUF architecture "gpt2"/);
    const noTok = new Uint8Array(good);
    const at = Buffer.from(noTok).indexOf('tokenizer.ggml.model');
    noTok.set(new TextEncoder().encode('tokenizer.ggml.mode_'), at); // rename the key
    const err = await loadModel(w(noTok)).catch((e: unknown) => e);
    expect(XqError.isInstance(err) && err.code === 'E_IO' && /no embedded tokenizer/.test(err.message)).toBe(true);
  });
});
