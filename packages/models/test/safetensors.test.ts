import { mkdirSync, mkdtempSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqConfigError, XqError, XqFormatError, XqNumericError, XqShapeError } from '@xquant/quant';
import { selectBackend } from '@xquant/tfjs';
import { SafetensorsFile, SafetensorsWeights, SAFETENSORS_MAX_HEADER_BYTES, loadModel, readSafetensorsHeader } from '../src/index.js';
import { encodeFloats, hfConfig, safetensorsBytes, tinySpec, tinyWeights, writeHfDir } from './support/tiny.js';

const dir = () => mkdtempSync(join(tmpdir(), 'xq-st-'));
const write = (bytes: Uint8Array) => {
  const f = join(dir(), 'x.safetensors');
  writeFileSync(f, bytes);
  return f;
};
const entry = (name: string, dtype: string, shape: number[], bytes: Uint8Array) => ({ name, dtype, shape, bytes });
const VALUES = [1.5, -2.25, 3e-3, 65504, -0.0, 1 / 3];

describe('safetensors reading', () => {
  it('reads F32, F16, BF16 and F64 as float32 and I64 raw', async () => {
    const f = write(
      safetensorsBytes([
        entry('f32', 'F32', [2, 3], encodeFloats(VALUES, 'F32')),
        entry('f16', 'F16', [6], encodeFloats(VALUES, 'F16')),
        entry('bf16', 'BF16', [3, 2], encodeFloats(VALUES, 'BF16')),
        entry('f64', 'F64', [6], encodeFloats(VALUES, 'F64')),
        entry('ids', 'I64', [3], encodeFloats([0, 7, 8191], 'I64')),
      ]),
    );
    const h = await readSafetensorsHeader(f);
    expect(h.metadata).toEqual({ format: 'pt' });
    expect(h.tensors.get('bf16')!.shape).toEqual([3, 2]);
    const st = await SafetensorsFile.open(f);
    expect(Array.from(await st.readFloat32('f32'))).toEqual(VALUES.map(Math.fround));
    // expected values from numpy: float16 rounding, and bfloat16 as the top 16 bits of the float32
    expect(Array.from(await st.readFloat32('f16'))).toEqual([1.5, -2.25, 0.0030002593994140625, 65504, -0, 0.333251953125]);
    expect(Array.from(await st.readFloat32('bf16'))).toEqual([1.5, -2.25, 0.0029907226562500, 65280, -0, 0.33203125]);
    expect(Array.from(await st.readFloat32('f64'))).toEqual(VALUES.map(Math.fround));
    expect(await st.readRaw('ids')).toEqual(new BigInt64Array([0n, 7n, 8191n]));
    await expect(st.readFloat32('ids')).rejects.toThrow(/I64 cannot be read as float32/);
    expect(() => st.info('nope')).toThrow(/no tensor named 'nope'/);
    await st.close();
  });
});

describe('malformed safetensors', () => {
  const ok = [entry('a', 'F32', [2, 2], new Uint8Array(16)), entry('b', 'F16', [4], new Uint8Array(8))];
  const rejects = async (bytes: Uint8Array, pattern: RegExp) => {
    const f = write(bytes);
    const err = await readSafetensorsHeader(f).catch((e: unknown) => e);
    expect(err, String(pattern)).toBeInstanceOf(XqFormatError);
    expect((err as Error).message).toMatch(pattern);
  };
  const withHeader = (edit: (h: Record<string, any>) => void) => safetensorsBytes(ok, edit);

  it('too short, header length past EOF, header length beyond the cap, truncated data', async () => {
    await rejects(new Uint8Array(5), /too short/);
    const b = safetensorsBytes(ok);
    new DataView(b.buffer).setBigUint64(0, BigInt(b.length), true);
    await rejects(b, /runs past the end of the file/);
    await rejects(safetensorsBytes(ok).subarray(0, 40), /past the end|invalid JSON/);
    const full = safetensorsBytes(ok);
    await rejects(full.subarray(0, full.length - 3), /data section|truncated/);
    // a sparse file bigger than the cap whose header claims cap + 1 bytes: rejected before reading it
    const f = join(dir(), 'big.safetensors');
    const head = new Uint8Array(8);
    new DataView(head.buffer).setBigUint64(0, BigInt(SAFETENSORS_MAX_HEADER_BYTES + 1), true);
    writeFileSync(f, head);
    truncateSync(f, SAFETENSORS_MAX_HEADER_BYTES + 64);
    await expect(readSafetensorsHeader(f)).rejects.toThrow(/exceeds the 100000000-byte limit/);
  });
  it('bad JSON and wrong JSON types', async () => {
    const b = safetensorsBytes(ok);
    b[9] = 0x7b; // '{' '{' → syntax error
    await rejects(b, /invalid JSON/);
    const arr = new TextEncoder().encode('[1, 2]  ');
    const bytes = new Uint8Array(8 + arr.length);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(arr.length), true);
    bytes.set(arr, 8);
    await rejects(bytes, /must be a JSON object, got an array/);
    await rejects(withHeader((h) => (h.a = 'x')), /entry must be an object/);
    await rejects(withHeader((h) => (h.__metadata__ = { n: 1 })), /__metadata__ must map strings to strings/);
  });
  it('unknown dtype and wrong dtype size (offsets span ≠ shape × dtype)', async () => {
    await rejects(withHeader((h) => (h.a.dtype = 'F12')), /unknown dtype "F12"/);
    await rejects(withHeader((h) => (h.a.dtype = 'F16')), /span 16 bytes but shape \[2, 2\] × F16 \(2 bytes\) needs 8/);
  });
  it('absurd and invalid shapes', async () => {
    await rejects(withHeader((h) => (h.a.shape = [2 ** 32, 2 ** 32])), /needs .* bytes, more than the 24-byte data section/);
    await rejects(withHeader((h) => (h.a.shape = [2 ** 33])), /not an integer in \[0, 2\^32\]/);
    await rejects(withHeader((h) => (h.a.shape = [-1, 4])), /not an integer/);
    await rejects(withHeader((h) => (h.a.shape = [1.5])), /not an integer/);
    await rejects(withHeader((h) => (h.a.shape = [1, 1, 1, 1, 1, 1, 1, 1, 1])), /at most 8 dimensions/);
  });
  it('offsets out of range, reversed, overlapping, with holes', async () => {
    await rejects(withHeader((h) => (h.b.data_offsets = [16, 1e12])), /out of range/);
    await rejects(withHeader((h) => (h.b.data_offsets = [24, 16])), /out of range/);
    await rejects(withHeader((h) => (h.a.data_offsets = [-16, 0])), /two non-negative integers/);
    await rejects(withHeader((h) => (h.b.data_offsets = [8, 16])), /overlaps/);
    await rejects(
      withHeader((h) => {
        h.a.shape = [2];
        h.a.data_offsets = [0, 8];
      }),
      /hole in the data section at bytes 8..16/,
    );
    const extra = safetensorsBytes(ok);
    await rejects(Uint8Array.from([...extra, 1, 2, 3, 4]), /trailing garbage/);
  });
});

describe('malformed model directories', () => {
  beforeAll(async () => {
    tf.env().set('IS_TEST', true);
    await selectBackend({ prefer: 'cpu' });
  });
  const spec = tinySpec('llama');
  const weights = tinyWeights(spec, 4);

  it('wrong path, not a model, unsupported architecture, missing tokenizer', async () => {
    const code = async (p: Promise<unknown>) => ((await p.catch((e: unknown) => e)) as XqError).code;
    expect(await code(loadModel('/nonexistent/model'))).toBe('E_IO');
    const d = dir();
    expect(await code(loadModel(d))).toBe('E_IO');
    await expect(loadModel(d)).rejects.toThrow(/no config.json/);
    writeFileSync(join(d, 'notes.txt'), 'x');
    await expect(loadModel(join(d, 'notes.txt'))).rejects.toThrow(/expected a model directory, a .safetensors file or a .gguf file/);
    const m = dir();
    writeHfDir(m, spec, weights, 'F32');
    writeFileSync(join(m, 'config.json'), JSON.stringify({ ...hfConfig(spec), model_type: 'mistral', architectures: ['MistralForCausalLM'] }));
    await expect(loadModel(m)).rejects.toThrow(XqConfigError);
    const n = dir();
    writeHfDir(n, spec, weights, 'F32');
    const { rmSync } = await import('node:fs');
    rmSync(join(n, 'tokenizer.json'));
    await expect(loadModel(n)).rejects.toThrow(/tokenizer.json not found/);
    writeFileSync(join(n, 'config.json'), '{"model_type": "llama",');
    await expect(loadModel(n)).rejects.toThrow(/config.json: invalid JSON/);
  });
  it('sharded index: path traversal, missing shard, tensor not in its shard, no weights at all', async () => {
    const m = dir();
    writeHfDir(m, spec, weights, 'F32', 2);
    const idx = join(m, 'model.safetensors.index.json');
    const index = JSON.parse((await import('node:fs')).readFileSync(idx, 'utf8')) as { weight_map: Record<string, string> };
    const first = Object.keys(index.weight_map)[0]!;
    const save = (wm: Record<string, string>) => writeFileSync(idx, JSON.stringify({ weight_map: wm }));
    save({ ...index.weight_map, [first]: '../../etc/passwd' });
    await expect(SafetensorsWeights.openIndex(idx)).rejects.toThrow(/must be a file name in the same directory/);
    save({ ...index.weight_map, [first]: 'model-00009-of-00009.safetensors' });
    await expect(SafetensorsWeights.openIndex(idx)).rejects.toThrow(/does not exist/);
    save({ ...index.weight_map, 'model.extra.weight': index.weight_map[first]! });
    await expect(SafetensorsWeights.openIndex(idx)).rejects.toThrow(/mapped to .* but that shard does not contain it/);
    writeFileSync(idx, '{"weight_map": 3}');
    await expect(SafetensorsWeights.openIndex(idx)).rejects.toThrow(/"weight_map" object/);
    const e = dir();
    mkdirSync(join(e, 'sub'));
    writeHfDir(e, spec, weights, 'F32');
    (await import('node:fs')).rmSync(join(e, 'model.safetensors'));
    await expect(loadModel(e)).rejects.toThrow(/no model.safetensors.index.json, model.safetensors or other/);
  });
  it('weights that do not match the config: missing, misshapen, NaN', async () => {
    const bad = (mutate: (w: typeof weights) => void) => {
      const w = new Map(weights);
      mutate(w);
      const d = dir();
      writeHfDir(d, spec, w, 'F32');
      return loadModel(d);
    };
    await expect(bad((w) => w.delete('lm_head.weight'))).rejects.toThrow(/missing weight 'lm_head.weight' while tie_word_embeddings is false/);
    await expect(bad((w) => w.set('model.layers.0.self_attn.k_proj.weight', { shape: [8, 32], data: new Float32Array(256) }))).rejects.toThrow(XqShapeError);
    await expect(
      bad((w) => {
        const data = Float32Array.from(w.get('model.norm.weight')!.data);
        data[3] = Infinity;
        w.set('model.norm.weight', { shape: [32], data });
      }),
    ).rejects.toThrow(XqNumericError);
  });
});
