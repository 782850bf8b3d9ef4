import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { XqError, XqFormatError } from '@xquant/quant';
import { selectBackend } from '@xquant/tfjs';
import { startStaticServer, type StaticServer } from '../../../scripts/static-server.mjs';
import {
  BlobSource,
  FileMapModelFiles,
  MemorySource,
  UrlModelFiles,
  UrlSource,
  loadModel,
  readGgufHeader,
  readSafetensorsHeader,
  type LoadProgress,
  type LoadedModel,
} from '../src/index.js';
import { createF32Cache } from './support/f32-cache.js';
import { ggufBytes, tinyGguf, tinySpec, tinyWeights, type GgufValue } from './support/tiny.js';

const DEMO = 'models/xq-demo';
const IDS = [0, 310, 1200, 57, 9, 4000, 12, 88];
const MODEL_FILES = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'];

async function logits(m: LoadedModel): Promise<Float32Array> {
  const out = m.model.forward(IDS, createF32Cache(m.model.cacheShape), 'all');
  const data = (await out.data()) as Float32Array;
  out.dispose();
  return data;
}

/** A copy of the demo model's files in a fresh directory (minus `omit`). */
function demoCopy(omit: string[] = []): string {
  const dir = mkdtempSync(join(tmpdir(), 'xq-src-'));
  for (const f of MODEL_FILES) if (!omit.includes(f)) writeFileSync(join(dir, f), readFileSync(join(DEMO, f)));
  return dir;
}

const errorOf = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e as Error);

let reference: LoadedModel;
let want: Float32Array;

beforeAll(async () => {
  tf.env().set('IS_TEST', true);
  await selectBackend({ prefer: 'cpu' });
  reference = await loadModel(DEMO);
  want = await logits(reference);
});
afterAll(() => reference?.model.dispose());

describe('loadModel over HTTP (byte ranges, progress)', () => {
  let server: StaticServer;
  beforeAll(async () => {
    server = await startStaticServer({ root: '.' });
  });
  afterAll(() => server?.close());

  it('a directory URL loads the same model as the path, reading weights in ranges of at most maxRangeBytes', async () => {
    server.requests.length = 0;
    const events: LoadProgress[] = [];
    const size = readFileSync(join(DEMO, 'model.safetensors')).length;
    const m = await loadModel(new URL(`${DEMO}/`, server.url), { maxRangeBytes: 1 << 20, onProgress: (p) => events.push({ ...p }) });
    try {
      expect(m.source).toEqual({ format: 'safetensors', path: `${server.url}${DEMO}/model.safetensors` });
      expect(m.config).toEqual(reference.config);
      expect(await logits(m)).toEqual(want);
      const weightReqs = server.requests.filter((r) => r.path.endsWith('model.safetensors'));
      expect(weightReqs.every((r) => r.status === 206 && r.range !== null)).toBe(true);
      expect(Math.max(...weightReqs.map((r) => r.bytes))).toBeLessThanOrEqual(1 << 20);
      // a 13.6 MB file in ≤ 1 MiB ranges: at least 14 requests, and no byte of it fetched twice
      expect(weightReqs.length).toBeGreaterThanOrEqual(14);
      expect(weightReqs.reduce((a, r) => a + r.bytes, 0)).toBeLessThanOrEqual(size + 1);
      // progress: non-decreasing, every event within the total, ending at loaded = total = the weight file's size
      expect(events.length).toBeGreaterThan(weightReqs.length - 2);
      for (let i = 1; i < events.length; i++) expect(events[i]!.loaded).toBeGreaterThanOrEqual(events[i - 1]!.loaded);
      expect(events.every((e) => e.loaded <= e.total && e.total === size)).toBe(true);
      expect(events.at(-1)).toMatchObject({ loaded: size, total: size });
    } finally {
      m.model.dispose();
    }
  });

  it('a URL string works in Node too, and names the weight file when it ends in .safetensors', async () => {
    const m = await loadModel(`${server.url}${DEMO}/model.safetensors`);
    expect(await logits(m)).toEqual(want);
    m.model.dispose();
  });

  it('a server that ignores ranges sends each file whole, once; the model is the same', async () => {
    const plain = await startStaticServer({ root: '.', ranges: false });
    try {
      const s = await UrlSource.open(`${plain.url}${DEMO}/model.safetensors`);
      expect(s.rangeRequests).toBe(false);
      const m = await loadModel(`${plain.url}${DEMO}/`);
      expect(await logits(m)).toEqual(want);
      m.model.dispose();
      expect(plain.requests.filter((r) => r.path.endsWith('model.safetensors')).every((r) => r.status === 200)).toBe(true);
    } finally {
      await plain.close();
    }
  });

  it('a single-page-app fallback (HTML for unknown names) counts as a missing file', async () => {
    const dir = demoCopy(['generation_config.json']);
    writeFileSync(join(dir, 'index.html'), '<!DOCTYPE html><title>app</title>');
    const spa = await startStaticServer({ root: dir, spaFallback: true });
    try {
      const files = new UrlModelFiles(spa.url);
      expect(await files.open('generation_config.json')).toBeUndefined();
      expect(await files.open('config.json')).toBeDefined();
      expect([200, 206]).toContain(spa.requests.find((r) => r.path === '/generation_config.json')?.status); // answered, with HTML
      const m = await loadModel(spa.url);
      expect(await logits(m)).toEqual(want);
      m.model.dispose();
    } finally {
      await spa.close();
    }
  });

  it('missing files and failed requests are E_IO errors that name the URL', async () => {
    const e1 = await errorOf(loadModel(`${server.url}nowhere/`));
    expect(XqError.isInstance(e1) && e1.code === 'E_IO').toBe(true);
    expect(e1!.message).toMatch(/nowhere\/: no config\.json/);
    const e2 = await errorOf(UrlSource.open(`${server.url}nowhere/model.safetensors`));
    expect(e2!.message).toMatch(/nowhere\/model\.safetensors: not found \(HTTP 404\)/);
    const down = await startStaticServer({ root: '.' });
    const url = `${down.url}${DEMO}/model.safetensors`;
    await down.close();
    const e3 = await errorOf(UrlSource.open(url));
    expect(XqError.isInstance(e3) && e3.code === 'E_IO' && /request failed/.test(e3.message)).toBe(true);
  });

  it('a server that answers the wrong range or a short body is caught', async () => {
    const bytes = new Uint8Array(100).map((_, i) => i);
    const lying = (mode: 'offset' | 'short' | 'whole'): typeof fetch =>
      (async (_u: unknown, init?: { headers?: Record<string, string> }) => {
        const m = /bytes=(\d+)-(\d+)/.exec(init?.headers?.Range ?? '')!;
        const [a, b] = [Number(m[1]), Number(m[2])];
        if (a === 0 && b === 0) return new Response(bytes.subarray(0, 1), { status: 206, headers: { 'content-range': 'bytes 0-0/100' } });
        if (mode === 'whole') return new Response(bytes, { status: 200 });
        const from = mode === 'offset' ? a + 1 : a;
        const body = bytes.subarray(from, mode === 'short' ? b : b + 1);
        return new Response(body, { status: 206, headers: { 'content-range': `bytes ${from}-${b}/100` } });
      }) as typeof fetch;
    const read = async (mode: 'offset' | 'short' | 'whole') => errorOf((await UrlSource.open('http://x.test/f', { fetch: lying(mode) })).read(10, 20));
    expect((await read('offset'))!.message).toMatch(/asked for bytes from 10 but the server sent bytes from 11/);
    expect((await read('short'))!.message).toMatch(/asked for bytes 10-29 \(20 bytes\) but received 19/);
    expect((await read('whole'))!.message).toMatch(/stopped honouring byte ranges/);
  });
});

describe('loadModel from files picked in a browser, Blobs and bytes', () => {
  it('a FileList-like array of File objects (directory picker paths) loads the same model', async () => {
    const files = MODEL_FILES.map((f) => {
      const file = new File([readFileSync(join(DEMO, f))], f);
      Object.defineProperty(file, 'webkitRelativePath', { value: `xq-demo/${f}` });
      return file;
    });
    const m = await loadModel(files);
    expect(m.source.path).toBe('model.safetensors');
    expect(await logits(m)).toEqual(want);
    m.model.dispose();
  });

  it('a record of names to ArrayBuffers loads the same model; a lone .safetensors Blob is refused with a hint', async () => {
    const record = Object.fromEntries(MODEL_FILES.map((f) => [f, new Uint8Array(readFileSync(join(DEMO, f))).buffer]));
    const m = await loadModel(record);
    expect(await logits(m)).toEqual(want);
    m.model.dispose();
    const lone = await errorOf(loadModel(new File([readFileSync(join(DEMO, 'model.safetensors'))], 'model.safetensors')));
    expect(XqError.isInstance(lone) && lone.code === 'E_IO' && /alone has no config\.json/.test(lone.message)).toBe(true);
    const dup = await errorOf(loadModel([new File(['{}'], 'a/config.json'), new File(['{}'], 'b/config.json')]));
    expect(dup!.message).toMatch(/two files are named 'config\.json'/);
  });

  it('a .gguf as a File, an ArrayBuffer, a picked directory and a path load the same model', async () => {
    const spec = tinySpec('qwen2');
    const bytes = tinyGguf(spec, tinyWeights(spec, 3), 'F32') as Uint8Array<ArrayBuffer>;
    const dir = mkdtempSync(join(tmpdir(), 'xq-src-gguf-'));
    writeFileSync(join(dir, 'tiny.gguf'), bytes);
    const ids = [0, 5, 9, 200];
    const out = async (m: LoadedModel) => {
      const t = m.model.forward(ids, createF32Cache(m.model.cacheShape), 'all');
      const d = await t.data();
      t.dispose();
      m.model.dispose();
      return d;
    };
    const fromPath = await out(await loadModel(join(dir, 'tiny.gguf')));
    expect(await out(await loadModel(new File([bytes], 'tiny.gguf')))).toEqual(fromPath);
    expect(await out(await loadModel(bytes.slice().buffer))).toEqual(fromPath);
    expect(await out(await loadModel([new File([bytes], 'models/tiny.gguf')]))).toEqual(fromPath);
    expect(await out(await loadModel(dir))).toEqual(fromPath); // a directory holding one .gguf and no config.json
    const notGguf = await errorOf(loadModel(new Uint8Array(64)));
    expect(notGguf).toBeInstanceOf(XqFormatError);
    expect(notGguf!.message).toMatch(/bytes in memory: not a GGUF file/);
  });

  it('the readers take every source kind, and keep their hardening: a truncated header is a format error', async () => {
    const st = readFileSync(join(DEMO, 'model.safetensors'));
    const viaBlob = await readSafetensorsHeader(new Blob([st]));
    const viaBytes = await readSafetensorsHeader(new MemorySource(st, 'm.safetensors'));
    expect(viaBlob.tensors).toEqual(viaBytes.tensors);
    expect(viaBytes.path).toBe('m.safetensors');
    const cut = await errorOf(readSafetensorsHeader(new BlobSource(new Blob([st.subarray(0, 4000)]), 'cut.safetensors')));
    expect(cut).toBeInstanceOf(XqFormatError);
    expect(cut!.message).toMatch(/^cut\.safetensors: header length \d+ runs past the end of the file/);
    const tiny = await errorOf(new FileMapModelFiles({ 'config.json': new Uint8Array(0) }).open('../config.json'));
    expect(tiny!.message).toMatch(/not a plain file name/);
  });
});

describe('GGUF header parser limits', () => {
  const md = (extra: Record<string, GgufValue> = {}): Record<string, GgufValue> => ({
    'general.architecture': { type: 'str', value: 'qwen2' },
    ...extra,
  });
  const rejects = async (bytes: Uint8Array, pattern: RegExp) => {
    const e = await errorOf(readGgufHeader(bytes));
    expect(e, String(pattern)).toBeInstanceOf(XqFormatError);
    expect(e!.message).toMatch(pattern);
  };

  it('refuses absurd counts and lengths before allocating', async () => {
    const b = ggufBytes(md(), []);
    const v = new DataView(b.buffer);
    const tensors = new Uint8Array(b);
    new DataView(tensors.buffer).setBigUint64(8, 10n ** 12n, true);
    await rejects(tensors, /corrupt GGUF header \(tensor count 1000000000000 at byte 8 exceeds the maximum of 10000000\)/);
    const kvs = new Uint8Array(b);
    new DataView(kvs.buffer).setBigUint64(16, 200_000n, true);
    await rejects(kvs, /metadata count 200000 at byte 16 exceeds the maximum of 100000/);
    expect(v.getBigUint64(16, true)).toBe(1n);
  });

  it('refuses arrays nested too deep and unknown value types; a __proto__ key stays a plain key', async () => {
    // general.architecture + one key whose value type is 9 (array) of arrays … 5 levels deep
    const nest = ggufBytes(md({ 'x.nested': { type: 'arr_i32', value: [] } }), []);
    const key = new TextEncoder().encode('x.nested');
    const at = Buffer.from(nest).indexOf(Buffer.from(key)) + key.length; // value type, then subtype, then count
    const deep = new Uint8Array(nest.length + 5 * 12);
    deep.set(nest.subarray(0, at));
    const dv = new DataView(deep.buffer);
    let o = at;
    dv.setUint32(o, 9, true);
    o += 4;
    for (let d = 0; d < 5; d++) {
      dv.setUint32(o, 9, true); // element type: array
      dv.setBigUint64(o + 4, 1n, true); // one element
      o += 12;
    }
    await rejects(deep, /arrays nested deeper than 4/);
    const bad = new Uint8Array(nest);
    new DataView(bad.buffer).setUint32(at, 99, true);
    await rejects(bad, /unknown metadata value type 99/);
    const proto = await readGgufHeader(ggufBytes(Object.fromEntries([...Object.entries(md()), ['__proto__', { type: 'str', value: 'x' }]]) as Record<string, GgufValue>, []));
    expect(Object.getPrototypeOf(proto.metadata)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(proto.metadata, '__proto__')?.value).toBe('x');
  });
});

describe('the platform-neutral build', () => {
  it('has no Node imports and its source files import no node: module', () => {
    const src = (dir: string): string[] =>
      readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? (e.name === 'node' ? [] : src(join(dir, e.name))) : [join(dir, e.name)]));
    for (const f of src('packages/models/src').filter((f) => f.endsWith('.ts') && !f.endsWith('index.ts'))) {
      expect(readFileSync(f, 'utf8'), f).not.toMatch(/from '(node:|fs|path|url|os|stream)/);
    }
  });
});
