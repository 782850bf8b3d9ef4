import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, expectTypeOf, test } from 'vitest';
import { packedKvStrides, quantizeKeys, quantizeValues, type PackedKvLayout } from '@xquant/quant';
import { ONE_BLOCK, kvStrides, toGpuLayout, type GpuKv, type GpuKvLayout } from '../src/index.js';
import { packedKvToTensors, type TfPackedKv } from '../src/tfjs.js';
import { kvData, rng } from './helpers.js';

// The WGSL kernels read @xquant/quant's view description: same fields, same strides, same validation.
describe('GPU layouts are @xquant/quant packed-K/V layouts', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });
  const [heads, D] = [2, 32];
  const keys = toGpuLayout(quantizeKeys(kvData(heads, 128, D, rng(1)), { heads, tokens: 128, headDim: D }, { bits: 2, groupSize: 32 }));
  const values = toGpuLayout(quantizeValues(kvData(heads, 40, D, rng(2)), { heads, tokens: 40, headDim: D }, { bits: 4, groupSize: 16 }));

  test('the GPU layouts, buffers and tensors extend PackedKvLayout', () => {
    expectTypeOf<GpuKvLayout>().toExtend<PackedKvLayout>();
    expectTypeOf<GpuKv>().toExtend<PackedKvLayout>();
    expectTypeOf<TfPackedKv>().toExtend<PackedKvLayout>();
  });

  test("kernel strides are quant's packedKvStrides; a single key block (or no keys) gets the ONE_BLOCK divisor", () => {
    const blocked = { ...keys, blockTokens: 64 };
    expect(kvStrides(blocked)).toEqual(packedKvStrides(blocked));
    expect(kvStrides(blocked)).toMatchObject({ kws: 4, kgs: 2, kblk: 64, kbw: heads * D * 4, kbm: heads * D * 2 });
    expect(kvStrides(keys)).toEqual({ ...packedKvStrides(keys), kblk: ONE_BLOCK });
    expect(packedKvStrides(keys).kblk).toBe(128);
    for (const v of [values, { ...values, tokenMajor: true }]) expect(kvStrides(v)).toEqual(packedKvStrides(v));
    expect(kvStrides({ ...values, tokenMajor: true })).toMatchObject({ vhs: 1, vts: heads });
    expect(kvStrides(undefined)).toEqual({ kws: 0, kgs: 0, kblk: ONE_BLOCK, kbw: 0, kbm: 0, vhs: 0, vts: 0 });
  });

  test("storage orders are checked by quant's assertPackedKvLayout (words and groups per block, not their maximum)", () => {
    const ones = toGpuLayout(quantizeKeys(kvData(1, 96, D, rng(3)), { heads: 1, tokens: 96, headDim: D }, { bits: 1, groupSize: 48 }));
    expect(() => packedKvToTensors(ones).codes.dispose()).not.toThrow();
    // 48 tokens hold whole groups of 48 but 1.5 words of 1-bit codes
    expect(() => packedKvToTensors({ ...ones, blockTokens: 48 })).toThrow(/keys: blockTokens \(48\) must be a multiple of 32 for 1-bit codes/);
    expect(() => packedKvToTensors({ ...keys, tokenMajor: true })).toThrow(/keys: tokenMajor applies to values only/);
    expect(() => packedKvToTensors({ ...values, blockTokens: 16 })).toThrow(/values: blockTokens applies to keys only/);
    expect(() => packedKvToTensors({ ...keys, tokens: 129 })).toThrow(/capacity must be an integer ≥ tokens \(129\); got 128/);
    expect(() => packedKvToTensors({ ...keys, codes: keys.codes.subarray(1) })).toThrow(/keys\.codes: expected 512 words, got 511/);
    expect(() => toGpuLayout(quantizeKeys(kvData(heads, 128, D, rng(4)), { heads, tokens: 128, headDim: D }, { bits: 2, groupSize: 32 }), { capacity: 144 })).toThrow(
      /keys: groupSize 32 does not divide capacity \(144\)/,
    );
  });

  test('an empty layout (no tokens yet) is valid', () => {
    const empty = packedKvToTensors({ ...keys, tokens: 0 });
    expect([empty.tokens, empty.capacity]).toEqual([0, 128]);
    tf.dispose([empty.codes, empty.meta]);
  });
});
