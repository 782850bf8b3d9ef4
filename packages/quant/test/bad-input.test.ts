import { describe, expect, test } from 'vitest';
import {
  XqConfigError,
  XqError,
  XqNumericError,
  XqShapeError,
  dequantizeKv,
  groupStats,
  kvStats,
  packCodes,
  quantizeKeys,
  quantizeRows,
  quantizeValues,
  unpackCodes,
  type Bits,
} from '@xquant/quant';

const shape = { heads: 2, tokens: 64, headDim: 8 };
const x = new Float32Array(2 * 64 * 8).map((_, i) => Math.sin(i));

function thrown(f: () => unknown): XqError {
  try {
    f();
  } catch (e) {
    if (XqError.isInstance(e)) return e;
    throw new Error(`expected an XqError, got ${String(e)}`);
  }
  throw new Error('expected an error, nothing was thrown');
}

describe('unsupported bits', () => {
  for (const bits of [3, 0, 16, 2.5, -1]) {
    test(`bits ${bits}`, () => {
      for (const f of [
        () => quantizeKeys(x, shape, { bits: bits as Bits, groupSize: 32 }),
        () => quantizeValues(x, shape, { bits: bits as Bits, groupSize: 8 }),
        () => quantizeRows(x, 16, 64, { bits: bits as Bits, groupSize: 32 }),
        () => packCodes(new Uint8Array(32), 1, 32, bits as Bits),
        () => unpackCodes(new Uint32Array(1), 1, 32, bits as Bits),
      ]) {
        const e = thrown(f);
        expect(e).toBeInstanceOf(XqConfigError);
        expect(e.code).toBe('E_BITS');
        expect(e.message).toBe(`bits must be one of 1, 2, 4, 8; got ${bits}`);
      }
    });
  }
});

describe('group size and packing axis', () => {
  test('groupSize not dividing the quantized axis', () => {
    const e = thrown(() => quantizeKeys(x, shape, { bits: 2, groupSize: 24 }));
    expect(e).toBeInstanceOf(XqConfigError);
    expect(e.code).toBe('E_GROUP_SIZE');
    expect(e.message).toBe('groupSize 24 does not divide tokens (length 64)');
    expect(thrown(() => quantizeValues(x, shape, { bits: 8, groupSize: 3 })).message).toBe('groupSize 3 does not divide headDim (length 8)');
  });
  test('non-positive or fractional groupSize', () => {
    for (const gs of [0, -32, 1.5, Number.NaN]) {
      const e = thrown(() => quantizeRows(x, 16, 64, { bits: 2, groupSize: gs }));
      expect(e.code).toBe('E_GROUP_SIZE');
      expect(e.message).toMatch(/groupSize must be a positive integer/);
    }
  });
  test('axis not a multiple of 32/bits', () => {
    const e = thrown(() => quantizeKeys(new Float32Array(2 * 40 * 8), { heads: 2, tokens: 40, headDim: 8 }, { bits: 2, groupSize: 8 }));
    expect(e).toBeInstanceOf(XqConfigError);
    expect(e.message).toBe('tokens (length 40) must be a multiple of 16 to pack 2-bit codes into 32-bit words');
    expect(thrown(() => quantizeValues(x, shape, { bits: 1, groupSize: 8 })).message).toBe(
      'headDim (length 8) must be a multiple of 32 to pack 1-bit codes into 32-bit words',
    );
    expect(thrown(() => packCodes(new Uint8Array(20), 1, 20, 2)).message).toMatch(/cols \(20\) must be a multiple of 16/);
  });
});

describe('shapes', () => {
  test('length mismatch', () => {
    const e = thrown(() => quantizeKeys(x.subarray(1), shape, { bits: 2, groupSize: 32 }));
    expect(e).toBeInstanceOf(XqShapeError);
    expect(e.code).toBe('E_SHAPE');
    expect(e.message).toBe('keys [heads=2, tokens=64, headDim=8]: expected 1024 elements, got 1023');
    expect(thrown(() => quantizeRows(x, 3, 64, { bits: 2, groupSize: 32 })).message).toBe('input: expected 192 elements, got 1024');
    expect(thrown(() => packCodes(new Uint8Array(31), 1, 32, 2)).message).toBe('codes: expected 32 elements, got 31');
    expect(thrown(() => unpackCodes(new Uint32Array(3), 1, 32, 2)).message).toBe('packed: expected 2 words, got 3');
  });
  test('empty: 0 tokens, 0 heads, 0 rows', () => {
    const e = thrown(() => quantizeKeys(new Float32Array(0), { heads: 2, tokens: 0, headDim: 8 }, { bits: 2, groupSize: 32 }));
    expect(e).toBeInstanceOf(XqShapeError);
    expect(e.message).toBe('tokens must be a positive integer; got 0');
    expect(thrown(() => quantizeValues(new Float32Array(0), { heads: 0, tokens: 4, headDim: 8 }, { bits: 8, groupSize: 4 })).message).toBe(
      'heads must be a positive integer; got 0',
    );
    expect(thrown(() => quantizeRows([], 0, 32, { bits: 2, groupSize: 16 })).message).toBe('rows must be a positive integer; got 0');
  });
});

describe('non-finite values name their position', () => {
  const cases: Array<[number, string]> = [
    [Number.NaN, 'NaN'],
    [Infinity, 'Infinity'],
    [-Infinity, '-Infinity'],
  ];
  for (const [v, name] of cases) {
    test(`${name} in keys and values`, () => {
      const y = x.slice();
      y[(1 * 64 + 37) * 8 + 5] = v; // head 1, token 37, channel 5
      for (const precision of ['fp16', 'fp32'] as const) {
        const ek = thrown(() => quantizeKeys(y, shape, { bits: 2, groupSize: 32, precision }));
        expect(ek).toBeInstanceOf(XqNumericError);
        expect(ek.code).toBe('E_NON_FINITE');
        expect(ek.message).toBe(`keys contains ${name} at head 1, token 37, channel 5`);
        const ev = thrown(() => quantizeValues(y, shape, { bits: 4, groupSize: 8, precision }));
        expect(ev.message).toBe(`values contains ${name} at head 1, token 37, channel 5`);
        expect(thrown(() => kvStats(y, shape, 'channel', { bits: 1, groupSize: 64, precision })).message).toBe(
          `keys contains ${name} at head 1, token 37, channel 5`,
        );
      }
      expect(thrown(() => groupStats(y, 128, 8, { bits: 8, groupSize: 4 })).message).toBe(`input contains ${name} at row ${64 + 37}, column 5`);
    });
  }
  test('finite values that overflow fp16 are rejected, not turned into Infinity', () => {
    const y = x.slice();
    y[3 * 8 + 2] = 70000;
    const e = thrown(() => quantizeValues(y, shape, { bits: 8, groupSize: 4 }));
    expect(e).toBeInstanceOf(XqNumericError);
    expect(e.message).toBe('values: 70000 at head 0, token 3, channel 2 overflows fp16 (largest finite value 65504)');
    expect(() => quantizeValues(y, shape, { bits: 8, groupSize: 4, precision: 'fp32' })).not.toThrow();
  });
  test('a group range that overflows fp16 is quantized, finite (issue 13 item 2)', () => {
    const y = x.slice();
    y[0] = 60000;
    y[8] = -60000; // token 1, channel 0: same key group (tokens 0–31 of channel 0)
    const deq = dequantizeKv(quantizeKeys(y, shape, { bits: 2, groupSize: 32 }));
    expect(deq.every(Number.isFinite)).toBe(true);
    expect(Math.abs(deq[0]! - 60000)).toBeLessThanOrEqual(120000 / 3 / 2 + 64);
    expect(Math.abs(deq[8]! + 60000)).toBeLessThanOrEqual(120000 / 3 / 2 + 64);
  });
});
