import fc from 'fast-check';
import { afterAll, describe, expect, test } from 'vitest';
import {
  XqConfigError,
  XqShapeError,
  denseKeyScores,
  denseValueMix,
  dequantizeKv,
  getKernelBackend,
  packedKernelPath,
  packedKeyScores,
  packedValueMix,
  setKernelBackend,
  wasmKernelsAvailable,
  quantizeKeys,
  quantizeValues,
  unpackKv,
  type Bits,
  type KernelBackend,
  type PackedKv,
  type Precision,
} from '@xquant/quant';
import { gaussian, refKeyScores, refValueMix } from './helpers.js';

/**
 * Tolerance of a packed kernel against the float64 reference built from `dequantizeKv`.
 * The kernel computes Σ a·(c·s + z) exactly up to float64 rounding, while `dequantizeKv` returns r(r(c·s) + z) with
 * r = fp16 (unit roundoff u = 2^-11, absolute 2^-25 below 2^-14) or fp32 (u = 2^-24). So per element
 * |deq − (c·s + z)| ≤ u·(|c·s| + |deq|)·(1 + u) + 2·abs, summed with weights |a|; plus 2^-24·|ref| for the final
 * float32 rounding of the kernel output and 1e-12 of the magnitude for float64 reassociation.
 */
function deqSlack(block: PackedKv): { slack: Float64Array; terms: Float64Array } {
  const { heads: H, tokens: T, headDim: D, groupSize: gs, scale, zero } = block;
  const codes = unpackKv(block);
  const deq = dequantizeKv(block);
  const u = block.precision === 'fp16' ? 2 ** -11 : 2 ** -24;
  const abs = block.precision === 'fp16' ? 2 ** -25 : 2 ** -150;
  const G = block.axis === 'channel' ? T / gs : D / gs;
  const w = new Float64Array(H * T * D);
  const terms = new Float64Array(H * T * D);
  for (let h = 0; h < H; h++) {
    for (let t = 0; t < T; t++) {
      for (let d = 0; d < D; d++) {
        const i = (h * T + t) * D + d;
        const [ci, si] = block.axis === 'channel'
          ? [(h * D + d) * T + t, (h * D + d) * G + Math.floor(t / gs)]
          : [(h * T + t) * D + d, (h * T + t) * G + Math.floor(d / gs)];
        const cs = codes[ci]! * scale[si]!;
        w[i] = u * (Math.abs(cs) + Math.abs(deq[i]!)) * (1 + u) + 2 * abs + 1e-12 * (Math.abs(cs) + Math.abs(zero[si]!));
        terms[i] = Math.abs(cs) + Math.abs(zero[si]!);
      }
    }
  }
  return { slack: w, terms };
}

/**
 * Extra slack of float32 accumulation (the WebAssembly kernels): every output is a chain of at most `n` float32
 * roundings (products, table sums, lane accumulators, the bias sum) over terms bounded by `mag`, so its error is
 * ≤ n·2^-24·mag (first-order bound, n·2^-24 ≪ 1).
 */
function withF32Accumulation(ref: { out: Float64Array; mag: Float64Array }, mag: Float64Array, n: number) {
  return { out: ref.out, mag: ref.mag.map((m, i) => m + n * 2 ** -24 * mag[i]!) };
}

function expectClose(out: Float32Array, ref: { out: Float64Array; mag: Float64Array }): void {
  expect(out.length).toBe(ref.out.length);
  for (let i = 0; i < out.length; i++) {
    const tol = ref.mag[i]! * 1.0001 + 2 ** -24 * Math.abs(ref.out[i]!) + 1e-30;
    const err = Math.abs(out[i]! - ref.out[i]!);
    if (!(err <= tol)) {
      throw new Error(`output ${i}: got ${out[i]}, reference ${ref.out[i]}, |err| ${err} > tol ${tol}`);
    }
  }
}

function divisors(n: number): number[] {
  const r: number[] = [];
  for (let i = 1; i <= n; i++) if (n % i === 0) r.push(i);
  return r;
}

const bitsArb = fc.constantFrom<Bits>(1, 2, 4, 8);
const precisionArb = fc.constantFrom<Precision>('fp32', 'fp16');
const repArb = fc.constantFrom(1, 2, 4, 3, 8);

const keyCase = fc
  .record({
    bits: bitsArb,
    kvHeads: fc.integer({ min: 1, max: 2 }),
    rep: repArb,
    headDim: fc.constantFrom(4, 8, 16, 32, 6, 10),
    words: fc.integer({ min: 1, max: 3 }),
    gsPick: fc.nat(),
    precision: precisionArb,
    seed: fc.integer(),
  })
  .map((c) => {
    const tokens = (32 / c.bits) * c.words;
    const ds = divisors(tokens);
    return { ...c, tokens, groupSize: ds[c.gsPick % ds.length]! };
  });

const valueCase = fc
  .record({
    bits: bitsArb,
    kvHeads: fc.integer({ min: 1, max: 2 }),
    rep: repArb,
    words: fc.constantFrom(1, 2, 3, 4, 8),
    tokens: fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 120, max: 300 })),
    gsPick: fc.nat(),
    precision: precisionArb,
    seed: fc.integer(),
  })
  .map((c) => {
    const headDim = (32 / c.bits) * c.words;
    const ds = divisors(headDim);
    return { ...c, headDim, groupSize: ds[c.gsPick % ds.length]! };
  });

const backends: KernelBackend[] = wasmKernelsAvailable() ? ['js', 'wasm'] : ['js'];
afterAll(() => setKernelBackend('auto'));

describe.each(backends)('packedKeyScores vs float64 reference from dequantizeKv (backend %s)', (backend) => {
  test('random shapes, all bits, group sizes, GQA ratios (fast-check)', () => {
    setKernelBackend(backend);
    expect(getKernelBackend()).toBe(backend);
    fc.assert(
      fc.property(keyCase, (c) => {
        const shape = { heads: c.kvHeads, tokens: c.tokens, headDim: c.headDim };
        const x = gaussian(c.kvHeads * c.tokens * c.headDim, c.seed, 1.5);
        const block = quantizeKeys(x, shape, { bits: c.bits, groupSize: c.groupSize, precision: c.precision });
        const q = gaussian(c.kvHeads * c.rep * c.headDim, c.seed ^ 0x5bd1e995);
        const deq = dequantizeKv(block);
        const { slack, terms } = deqSlack(block);
        const ref = withF32Accumulation(
          refKeyScores(q, deq, c.kvHeads, c.tokens, c.headDim, slack),
          refKeyScores(q, deq, c.kvHeads, c.tokens, c.headDim, terms).mag,
          c.headDim + 16,
        );
        expectClose(packedKeyScores(q, block), ref);
        const out = new Float32Array(c.kvHeads * c.rep * c.tokens).fill(NaN);
        expect(packedKeyScores(q, block, out)).toBe(out);
        expectClose(out, ref);
      }),
      { numRuns: 250 },
    );
  });

  test('bench shape slice: gs 32 and 128, 4 query heads per KV head, 256 tokens', () => {
    setKernelBackend(backend);
    for (const bits of [1, 2, 4, 8] as const) {
      for (const groupSize of [32, 128]) {
        const shape = { heads: 2, tokens: 256, headDim: 128 };
        const block = quantizeKeys(gaussian(2 * 256 * 128, 7 + bits), shape, { bits, groupSize });
        const q = gaussian(8 * 128, 11);
        const deq = dequantizeKv(block);
        const { slack, terms } = deqSlack(block);
        const ref = withF32Accumulation(refKeyScores(q, deq, 2, 256, 128, slack), refKeyScores(q, deq, 2, 256, 128, terms).mag, 144);
        expectClose(packedKeyScores(q, block), ref);
        expect(packedKernelPath(block, 8)).toBe(backend === 'wasm' && bits <= 2 ? 'wasm-simd' : 'js-direct');
      }
    }
  });
});

describe.each(backends)('packedValueMix vs float64 reference from dequantizeKv (backend %s)', (backend) => {
  test('random shapes, all bits, group sizes, GQA ratios, token tails (fast-check)', () => {
    setKernelBackend(backend);
    fc.assert(
      fc.property(valueCase, (c) => {
        const shape = { heads: c.kvHeads, tokens: c.tokens, headDim: c.headDim };
        const x = gaussian(c.kvHeads * c.tokens * c.headDim, c.seed, 1.5);
        const block = quantizeValues(x, shape, { bits: c.bits, groupSize: c.groupSize, precision: c.precision });
        const p = gaussian(c.kvHeads * c.rep * c.tokens, c.seed ^ 0x27d4eb2d);
        const deq = dequantizeKv(block);
        const { slack, terms } = deqSlack(block);
        const ref = withF32Accumulation(
          refValueMix(p, deq, c.kvHeads, c.tokens, c.headDim, slack),
          refValueMix(p, deq, c.kvHeads, c.tokens, c.headDim, terms).mag,
          c.tokens + 80,
        );
        expectClose(packedValueMix(p, block), ref);
        const out = new Float32Array(c.kvHeads * c.rep * c.headDim).fill(NaN);
        expect(packedValueMix(p, block, out)).toBe(out);
        expectClose(out, ref);
      }),
      { numRuns: 250 },
    );
  });

  test('bench shape slice: 302 tokens (several chunks and a tail), gs 32 and 128, 4 query heads per KV head', () => {
    setKernelBackend(backend);
    for (const bits of [1, 2, 4, 8] as const) {
      for (const groupSize of [32, 128]) {
        const shape = { heads: 2, tokens: 302, headDim: 128 };
        const block = quantizeValues(gaussian(2 * 302 * 128, 3 + bits), shape, { bits, groupSize });
        const p = gaussian(8 * 302, 5);
        const deq = dequantizeKv(block);
        const { slack, terms } = deqSlack(block);
        const ref = withF32Accumulation(refValueMix(p, deq, 2, 302, 128, slack), refValueMix(p, deq, 2, 302, 128, terms).mag, 302 + 80);
        expectClose(packedValueMix(p, block), ref);
        expect(packedKernelPath(block, 8)).toBe(backend === 'wasm' && bits <= 2 ? 'wasm-simd' : bits <= 2 ? 'js-lut' : 'js-direct');
      }
    }
  });
});

describe.each(backends)('dense float32 baselines vs float64 reference (backend %s)', (backend) => {
  // JS: float64 accumulation of float32 inputs, rounded once: |err| ≤ 2^-24·|ref| + 1e-12·Σ|a·x|.
  // wasm: float32 accumulation over ≤ D/4 + 3 (keys) or T + 3 (values) roundings: + n·2^-24·Σ|a·x|.
  const slack = (n: number) => new Float64Array(n).fill(0);
  const f32n = (n: number) => (backend === 'wasm' ? n * 2 ** -24 : 0);
  test('denseKeyScores (fast-check)', () => {
    setKernelBackend(backend);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 }), repArb, fc.oneof(fc.integer({ min: 1, max: 20 }), fc.constantFrom(8, 16, 64)), fc.integer({ min: 1, max: 37 }), fc.integer(), (kvH, rep, D, T, seed) => {
        const K = gaussian(kvH * T * D, seed);
        const q = gaussian(kvH * rep * D, seed + 1);
        const ref = refKeyScores(q, K, kvH, T, D, slack(K.length));
        const abs = refKeyScores(q, K, kvH, T, D);
        expectClose(denseKeyScores(q, K, kvH, D), { out: ref.out, mag: abs.mag.map((m) => (1e-12 + f32n(D / 4 + 4)) * m) });
      }),
      { numRuns: 150 },
    );
  });
  test('denseValueMix (fast-check)', () => {
    setKernelBackend(backend);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 }), repArb, fc.oneof(fc.integer({ min: 1, max: 20 }), fc.constantFrom(8, 16, 64)), fc.integer({ min: 1, max: 300 }), fc.integer(), (kvH, rep, D, T, seed) => {
        const V = gaussian(kvH * T * D, seed);
        const p = gaussian(kvH * rep * T, seed + 1);
        const ref = refValueMix(p, V, kvH, T, D, slack(V.length));
        const abs = refValueMix(p, V, kvH, T, D);
        expectClose(denseValueMix(p, V, kvH, D), { out: ref.out, mag: abs.mag.map((m) => (1e-12 + f32n(T + 4)) * m) });
      }),
      { numRuns: 150 },
    );
  });
});

describe('kernels reject bad shapes', () => {
  const keys = quantizeKeys(gaussian(2 * 64 * 8, 1), { heads: 2, tokens: 64, headDim: 8 }, { bits: 2, groupSize: 32 });
  const values = quantizeValues(gaussian(2 * 5 * 32, 2), { heads: 2, tokens: 5, headDim: 32 }, { bits: 2, groupSize: 16 });
  const q = new Float32Array(4 * 8);
  const p = new Float32Array(4 * 5);

  test('wrong axis', () => {
    expect(() => packedKeyScores(q, values)).toThrow(XqShapeError);
    expect(() => packedKeyScores(q, values)).toThrow(/axis 'channel'/);
    expect(() => packedValueMix(p, keys)).toThrow(/axis 'token'/);
  });
  test('q / p length and GQA ratio', () => {
    expect(() => packedKeyScores(new Float32Array(7), keys)).toThrow(/q must be \[qHeads, 8\].*got 7/);
    expect(() => packedKeyScores(new Float32Array(0), keys)).toThrow(XqShapeError);
    expect(() => packedKeyScores(new Float32Array(3 * 8), keys)).toThrow(/3 query heads is not a multiple of 2 KV heads/);
    expect(() => packedValueMix(new Float32Array(3 * 5), values)).toThrow(/3 query heads/);
    expect(() => packedValueMix(new Float32Array(9), values)).toThrow(/p must be \[qHeads, 5\]/);
  });
  test('out length', () => {
    expect(() => packedKeyScores(q, keys, new Float32Array(10))).toThrow(/out must have 256 elements/);
    expect(() => packedValueMix(p, values, new Float32Array(10))).toThrow(/out must have 128 elements/);
    expect(() => denseKeyScores(q, new Float32Array(2 * 64 * 8), 2, 8, new Float32Array(3))).toThrow(XqShapeError);
  });
  test('inconsistent blocks', () => {
    expect(() => packedKeyScores(q, { ...keys, packed: keys.packed.subarray(1) })).toThrow(/packed .*expected 64 words, got 63/);
    expect(() => packedKeyScores(q, { ...keys, scale: keys.scale.subarray(1) })).toThrow(/scale .*expected 32 elements, got 31/);
    expect(() => packedKeyScores(q, { ...keys, zero: new Float32Array(0) })).toThrow(/zero/);
    expect(() => packedKeyScores(q, { ...keys, groupSize: 24 })).toThrow(/groupSize 24 does not divide tokens \(64\)/);
    expect(() => packedKeyScores(q, { ...keys, tokens: 0 })).toThrow(/tokens must be a positive integer; got 0/);
    expect(() => packedKeyScores(q, { ...keys, tokens: 40, groupSize: 8 })).toThrow(/tokens \(40\) must be a multiple of 16/);
    expect(() => packedKeyScores(q, { ...keys, bits: 3 as Bits })).toThrow(XqConfigError);
    expect(() => packedValueMix(p, { ...values, headDim: 24, groupSize: 8 })).toThrow(/headDim \(24\) must be a multiple of 16/);
  });
  test('dense baselines', () => {
    expect(() => denseKeyScores(q, new Float32Array(2 * 8 * 3 + 1), 2, 8)).toThrow(/keys must be \[kvHeads=2, tokens, headDim=8\]/);
    expect(() => denseValueMix(new Float32Array(7), new Float32Array(2 * 5 * 8), 2, 8)).toThrow(/p must be \[qHeads, 5\]/);
    expect(() => denseValueMix(p, new Float32Array(0), 2, 8)).toThrow(XqShapeError);
    expect(() => denseKeyScores(q, new Float32Array(64), 0, 8)).toThrow(/kvHeads must be a positive integer/);
  });
});

describe('kernel backend selection', () => {
  test('unknown backend names are rejected; default is auto', () => {
    setKernelBackend('auto');
    expect(getKernelBackend()).toBe('auto');
    expect(() => setKernelBackend('gpu' as KernelBackend)).toThrow(XqConfigError);
    expect(() => setKernelBackend('gpu' as KernelBackend)).toThrow(/kernel backend must be 'auto', 'wasm' or 'js'; got gpu/);
    expect(getKernelBackend()).toBe('auto');
  });
  test('shapes without a SIMD kernel fall back to JS under the wasm backend', () => {
    if (!wasmKernelsAvailable()) return;
    setKernelBackend('wasm');
    const k4 = quantizeKeys(gaussian(64 * 8, 1), { heads: 1, tokens: 64, headDim: 8 }, { bits: 4, groupSize: 32 });
    expect(packedKernelPath(k4, 1)).toBe('js-direct');
    const k2odd = quantizeKeys(gaussian(48 * 8, 1), { heads: 1, tokens: 48, headDim: 8 }, { bits: 2, groupSize: 48 });
    expect(packedKernelPath(k2odd, 1)).toBe('js-direct'); // group size not a power of two
    const v2 = quantizeValues(gaussian(5 * 32, 2), { heads: 1, tokens: 5, headDim: 32 }, { bits: 2, groupSize: 16 });
    expect(packedKernelPath(v2, 1)).toBe('js-lut'); // headDim not a multiple of 64
    setKernelBackend('auto');
  });
});

describe('prepareWasmKernels', () => {
  test('compiles asynchronously; rejects unusable head dimensions', async () => {
    const { prepareWasmKernels } = await import('@xquant/quant');
    expect(await prepareWasmKernels([96])).toBe(wasmKernelsAvailable());
    expect(await prepareWasmKernels([6])).toBe(false);
  });
});
