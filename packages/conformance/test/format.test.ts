import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { XqError, XqFormatError, dequantizeRows, packCodes, quantizeRows, roundHalf, rounder } from '@xquant/quant';
import { parseGoldenFile, readGoldenFile, runGoldenFile, runGoldenCase, quantizeRowsAnno2Quirk, type GoldenFile } from '../src/index.js';

function enc(data: Float32Array | Int32Array | Uint32Array, shape: number[]) {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { shape, dtype: data instanceof Float32Array ? 'float32' : 'int32', orig_dtype: 'float16', b64: Buffer.from(bytes).toString('base64') };
}

/** A small self-made b_values file (values D=64, T=8, gs=32, 2 bits), consistent with xquant-ts. */
function valuesFile() {
  const H = 2, T = 8, D = 64, bits = 2 as const, gs = 32;
  const x = Float32Array.from({ length: H * T * D }, (_, i) => roundHalf(Math.sin(i * 1.3) * 2 + (i % 7) * 0.1));
  const q = quantizeRows(x, H * T, D, { bits, groupSize: gs });
  return {
    family: 'b_values',
    cases: [
      {
        name: 'values_small',
        params: { kind: 'values', B: 1, H, T, D, group_size: gs, bits, anno: 0, gamma: null, dtype: 'float16' },
        arrays: {
          x: enc(x, [1, H, T, D]),
          codes: enc(Int32Array.from(q.codes), [1, H, T, D]),
          packed: enc(new Int32Array(packCodes(q.codes, H * T, D, bits).buffer), [1, H, T, D / 16]),
          scale: enc(q.scale, [1, H, T, 2]),
          mn: enc(q.zero, [1, H, T, 2]),
          deq: enc(dequantizeRows(q.codes, q), [1, H, T, D]),
        },
      },
    ],
  };
}

type Json = ReturnType<typeof valuesFile>;
function bytesOf(b64: string): ArrayBuffer {
  const b = Buffer.from(b64, 'base64');
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}
const clone = (f: Json): Json => JSON.parse(JSON.stringify(f));
const arr = (f: Json, name: keyof Json['cases'][0]['arrays']) => f.cases[0]!.arrays[name];

function formatError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(XqFormatError);
    return (e as Error).message;
  }
  throw new Error('expected XqFormatError');
}

async function formatErrorAsync(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(XqFormatError);
    return (e as Error).message;
  }
  throw new Error('expected XqFormatError');
}

describe('parseGoldenFile', () => {
  test('decodes a valid file: shapes, dtypes, little-endian data', () => {
    const g = parseGoldenFile(JSON.stringify(valuesFile()));
    expect(g.family).toBe('b_values');
    expect(g.cases[0]!.arrays.packed!.data).toBeInstanceOf(Int32Array);
    expect(g.cases[0]!.arrays.x!.shape).toEqual([1, 2, 8, 64]);
    expect(g.cases[0]!.arrays.x!.origDtype).toBe('float16');
  });

  test.each([
    ['invalid JSON', (t: string) => t.slice(0, 100), /not valid JSON/],
    ['not an object', () => '[1,2]', /JSON object/],
  ])('text: %s', (_, mutate, msg) => {
    expect(formatError(() => parseGoldenFile(mutate(JSON.stringify(valuesFile()))))).toMatch(msg);
  });

  test.each<[string, (f: any) => void, RegExp]>([
    ['unknown family', (f) => (f.family = 'z_unknown'), /unknown golden family "z_unknown"/],
    ['no cases', (f) => (f.cases = []), /non-empty array/],
    ['case without name', (f) => delete f.cases[0].name, /case #0 has no name/],
    ['duplicate names', (f) => f.cases.push(f.cases[0]), /duplicate case name 'values_small'/],
    ['params missing', (f) => (f.cases[0].params = 3), /'params' must be an object/],
    ['bad base64 character', (f) => (f.cases[0].arrays.scale.b64 = '*' + f.cases[0].arrays.scale.b64.slice(1)), /array 'scale': b64 is not valid/],
    ['truncated base64', (f) => (f.cases[0].arrays.deq.b64 = f.cases[0].arrays.deq.b64.slice(0, -8)), /array 'deq': b64 decodes to \d+ bytes, expected 4096/],
    ['unpadded base64', (f) => (f.cases[0].arrays.mn.b64 = f.cases[0].arrays.mn.b64.slice(0, -1)), /not valid padded base64/],
    ['bad dtype', (f) => (f.cases[0].arrays.x.dtype = 'float64'), /dtype must be 'float32' or 'int32'/],
    ['bad shape', (f) => (f.cases[0].arrays.x.shape = [1, -2, 8, 64]), /non-negative integers/],
    ['huge shape', (f) => (f.cases[0].arrays.x.shape = [1 << 20, 1 << 20]), /more than/],
    ['array not an object', (f) => (f.cases[0].arrays.x = 'abc'), /expected \{shape, dtype, b64\}/],
  ])('structure: %s → XqFormatError', (_, mutate, msg) => {
    const f = clone(valuesFile());
    mutate(f);
    expect(formatError(() => parseGoldenFile(f))).toMatch(msg);
  });
});

describe('runGoldenFile on corrupt inputs', () => {
  test('a consistent file passes (JSON text, object, parsed file and path alike)', async () => {
    const f = valuesFile();
    const dir = mkdtempSync(join(tmpdir(), 'xq-golden-'));
    writeFileSync(join(dir, 'b.json'), JSON.stringify(f));
    for (const src of [JSON.stringify(f), f, parseGoldenFile(f) as GoldenFile, join(dir, 'b.json')]) {
      const [r] = await runGoldenFile(src as never);
      expect(r).toMatchObject({ name: 'values_small', family: 'b_values', passed: true, maxAbsError: 0, mismatchedCodes: 0 });
    }
  });

  test.each<[string, (f: any) => void, RegExp]>([
    ['missing array', (f) => delete f.cases[0].arrays.deq, /values_small: missing array 'deq'/],
    ['shape disagrees with params', (f) => (f.cases[0].arrays.scale.shape = [1, 2, 16, 1]), /array 'scale' has shape \[1, 2, 16, 1\], expected \[1, 2, 8, 2\]/],
    ['int array stored as float', (f) => (f.cases[0].arrays.codes.dtype = 'float32'), /array 'codes' has dtype float32, expected int32/],
    ['bad bits', (f) => (f.cases[0].params.bits = 3), /params.bits must be one of/],
    ['bad kind', (f) => (f.cases[0].params.kind = 'queries'), /params.kind/],
    ['bad dtype', (f) => (f.cases[0].params.dtype = 'bfloat16'), /params.dtype/],
    ['inconsistent group size', (f) => (f.cases[0].params.group_size = 24), /D\/group_size/],
  ])('%s → XqFormatError before any case runs', async (_, mutate, msg) => {
    const f = clone(valuesFile());
    mutate(f);
    expect(await formatErrorAsync(runGoldenFile(f))).toMatch(msg);
  });

  test('a file that cannot be read → XqError E_IO', async () => {
    await expect(runGoldenFile('/nonexistent/x.json')).rejects.toSatisfy((e) => XqError.isInstance(e) && e.code === 'E_IO');
    expect(() => readGoldenFile('/nonexistent/x.json')).toThrow(/cannot read golden file/);
  });

  test('a flipped code fails the case with the count and the first position', async () => {
    const f = clone(valuesFile());
    const codes = new Int32Array(bytesOf(arr(f, 'codes').b64));
    codes[70] = (codes[70]! + 1) % 4;
    codes[900] = (codes[900]! + 2) % 4;
    arr(f, 'codes').b64 = Buffer.from(new Uint8Array(codes.buffer)).toString('base64');
    const [r] = await runGoldenFile(f);
    expect(r!.passed).toBe(false);
    expect(r!.mismatchedCodes).toBe(2);
    expect(r!.detail).toMatch(/codes: 2\/1024 differ; first at \[0,0,1,6\]/);
  });

  test('a changed packed word and a changed dequantized value fail with max |Δ|', async () => {
    const f = clone(valuesFile());
    const packed = new Int32Array(bytesOf(arr(f, 'packed').b64));
    packed[3] = packed[3]! ^ 0x40000000;
    arr(f, 'packed').b64 = Buffer.from(new Uint8Array(packed.buffer)).toString('base64');
    const deq = new Float32Array(bytesOf(arr(f, 'deq').b64));
    deq[5] = deq[5]! + 0.25;
    arr(f, 'deq').b64 = Buffer.from(new Uint8Array(deq.buffer)).toString('base64');
    const [r] = await runGoldenFile(f);
    expect(r!.passed).toBe(false);
    expect(r!.mismatchedCodes).toBe(0);
    expect(r!.maxAbsError).toBeCloseTo(0.25, 5);
    expect(r!.detail).toMatch(/packed: 1\/64 differ; first at \[0,0,0,3\]: got 0x[0-9a-f]{8}, want 0x[0-9a-f]{8}/);
    expect(r!.detail).toMatch(/deq: 1\/1024 differ/);
  });
});

describe('checking another implementation (ConformanceTarget)', () => {
  test('a dequantizer with one rounding (FMA-like) is caught; a throwing target fails the case, not the run', async () => {
    const f = valuesFile();
    const fma = await runGoldenFile(f, {
      target: {
        dequantizeRows: (codes, s) => {
          const r = rounder(s.precision);
          const g = s.cols / s.groupSize;
          return Float32Array.from(codes, (c, i) => r(c * s.scale[Math.floor(i / s.cols) * g + Math.floor((i % s.cols) / s.groupSize)]! + s.zero[Math.floor(i / s.cols) * g + Math.floor((i % s.cols) / s.groupSize)]!));
        },
      },
    });
    expect(fma[0]!.passed).toBe(false);
    expect(fma[0]!.detail).toMatch(/^deq: \d+\/1024 differ/);
    const thrown = await runGoldenFile(f, { target: { quantizeRows: () => Promise.reject(new Error('GPU lost')) } });
    expect(thrown[0]).toMatchObject({ passed: false, detail: 'error: Error: GPU lost' });
  });

  test('runGoldenCase runs a single parsed case', async () => {
    const g = parseGoldenFile(valuesFile());
    expect((await runGoldenCase(g.family, g.cases[0]!)).passed).toBe(true);
  });
});

describe('quantizeRowsAnno2Quirk (reference anno=2)', () => {
  test('hand example, 2 bits: bins of R/4, codes from d − 0.5, zero shifted by R/8, scale R/3', () => {
    // group of 32: values 0..3 (R = 3): sq = 0.75, d = x/0.75 − 0.5
    const x = Float32Array.from({ length: 32 }, (_, i) => [0, 1, 2, 3][i % 4]!);
    const q = quantizeRowsAnno2Quirk(x, 1, 32, { bits: 2, groupSize: 32 });
    // 0 → −0.5 → −0 → 0; 1 → 0.8333 → 1; 2 → 2.1667 → 2; 3 → 3.5 → 4 (half-even) → clamp 3
    expect(Array.from(q.codes.slice(0, 4))).toEqual([0, 1, 2, 3]);
    expect(q.scale[0]).toBe(roundHalf(Math.fround(3 * Math.fround(1 / 3))));
    expect(q.zero[0]).toBe(0.375);
  });

  test('constant group: codes 0, scale 0, zero = constant + 0', () => {
    const q = quantizeRowsAnno2Quirk(new Float32Array(32).fill(1.5), 1, 32, { bits: 1, groupSize: 32 });
    expect(Array.from(q.codes)).toEqual(Array(32).fill(0));
    expect(q.scale[0]).toBe(0);
    expect(q.zero[0]).toBe(1.5);
  });
});
