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
  packedKvSegments,
  packedKvStrides,
  packedValueMix,
  setKernelBackend,
  wasmKernelsAvailable,
  quantizeKeys,
  quantizeValues,
  unpackKv,
  type Bits,
  type KernelBackend,
  type PackedKv,
  type PackedKvView,
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

/**
 * The float64 reference of `packedKeyScores(a, block)` (keys) or `packedValueMix(a, block)` (values) with its
 * tolerance: {@link deqSlack}, plus float32 accumulation over `n` roundings.
 */
function packedRef(a: Float32Array, block: PackedKv, n: number): { out: Float64Array; mag: Float64Array } {
  const deq = dequantizeKv(block);
  const { slack, terms } = deqSlack(block);
  const ref = block.axis === 'channel' ? refKeyScores : refValueMix;
  const { heads, tokens, headDim } = block;
  return withF32Accumulation(ref(a, deq, heads, tokens, headDim, slack), ref(a, deq, heads, tokens, headDim, terms).mag, n);
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
        const ref = packedRef(q, block, c.headDim + 16);
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
        const ref = packedRef(q, block, 144);
        expectClose(packedKeyScores(q, block), ref);
        expect(packedKernelPath(block, 8)).toBe(backend === 'wasm' && bits <= 2 ? 'wasm-simd' : 'js');
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
        const ref = packedRef(p, block, c.tokens + 80);
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
        const ref = packedRef(p, block, 302 + 80);
        expectClose(packedValueMix(p, block), ref);
        expect(packedKernelPath(block, 8)).toBe(backend === 'wasm' && bits <= 2 ? 'wasm-simd' : 'js');
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

/** Concatenates typed arrays of one kind. */
function cat<A extends Uint32Array | Uint16Array | Float32Array>(xs: readonly A[]): A {
  const out = new (xs[0]!.constructor as new (n: number) => A)(xs.reduce((n, x) => n + x.length, 0));
  let o = 0;
  for (const x of xs) { out.set(x as never, o); o += x.length; }
  return out;
}

/** A key block split into segments of `segWords` words per row, the last one `lastGroups` groups long. */
const segKeyCase = fc
  .record({ bits: bitsArb, kvHeads: fc.integer({ min: 1, max: 2 }), rep: repArb, headDim: fc.constantFrom(4, 8, 12, 16), segWords: fc.integer({ min: 1, max: 3 }), segs: fc.integer({ min: 1, max: 3 }), gsPick: fc.nat(), lastPick: fc.nat(), precision: precisionArb, seed: fc.integer() })
  .map((c) => {
    const fpw = 32 / c.bits;
    const seg = fpw * c.segWords;
    const gs = divisors(seg).filter((d) => d % fpw === 0 || fpw % d === 0)[c.gsPick % divisors(seg).filter((d) => d % fpw === 0 || fpw % d === 0).length]!;
    const unit = Math.max(gs, fpw);
    const last = unit * (1 + (c.lastPick % (seg / unit)));
    return { ...c, groupSize: gs, segmentTokens: seg, tokens: seg * (c.segs - 1) + last };
  });

describe.each(backends)('strided views: key blocks, token-major value chunks, fp16 metadata (backend %s)', (backend) => {
  test('keys as a list of blocks, one multi-block view, or wider rows: the scores of the whole block, bit for bit', () => {
    setKernelBackend(backend);
    fc.assert(
      fc.property(segKeyCase, (c) => {
        const shape = { heads: c.kvHeads, tokens: c.tokens, headDim: c.headDim };
        const block = quantizeKeys(gaussian(c.kvHeads * c.tokens * c.headDim, c.seed, 1.5), shape, { bits: c.bits, groupSize: c.groupSize, precision: c.precision });
        const q = gaussian(c.kvHeads * c.rep * c.headDim, c.seed + 1);
        const whole = packedKeyScores(q, block);
        const segs = packedKvSegments(block, { segmentTokens: c.segmentTokens, metaFormat: c.precision === 'fp16' ? 'f16' : 'f32' });
        expect(segs.length).toBe(c.segs);
        expect(packedKeyScores(q, segs)).toEqual(whole);
        const multi: PackedKvView = {
          ...segs[0]!, tokens: c.tokens, capacity: c.segmentTokens * c.segs, blockTokens: c.segmentTokens,
          packed: cat(segs.map((v) => v.packed as Uint32Array)), scale: cat(segs.map((v) => v.scale)), zero: cat(segs.map((v) => v.zero)),
        };
        expect(packedKeyScores(q, multi)).toEqual(whole);
        const N = c.tokens + 3;
        const wide = packedKeyScores(q, segs, new Float32Array(c.kvHeads * c.rep * N).fill(7), N);
        for (let h = 0; h < c.kvHeads * c.rep; h++) {
          expect(wide.subarray(h * N, h * N + c.tokens)).toEqual(whole.subarray(h * c.tokens, (h + 1) * c.tokens));
          expect([...wide.subarray(h * N + c.tokens, (h + 1) * N)]).toEqual([7, 7, 7]);
        }
      }),
      { numRuns: 80 },
    );
  });

  test('values as token-major chunks (last partly filled), head-major with spare capacity, or wider p rows', () => {
    setKernelBackend(backend);
    fc.assert(
      fc.property(valueCase, fc.integer({ min: 1, max: 40 }), (c, chunk) => {
        const shape = { heads: c.kvHeads, tokens: c.tokens, headDim: c.headDim };
        const block = quantizeValues(gaussian(c.kvHeads * c.tokens * c.headDim, c.seed, 1.5), shape, { bits: c.bits, groupSize: c.groupSize, precision: c.precision });
        const p = gaussian(c.kvHeads * c.rep * c.tokens, c.seed ^ 0x27d4eb2d);
        const ref = packedRef(p, block, c.tokens + 80);
        const segs = packedKvSegments(block, { segmentTokens: chunk, metaFormat: c.precision === 'fp16' ? 'f16' : 'f32' });
        expect(segs.length).toBe(Math.ceil(c.tokens / chunk));
        expectClose(packedValueMix(p, segs), ref);
        if (backend === 'js') expect(packedValueMix(p, segs)).toEqual(packedValueMix(p, block));
        // head-major with 2 spare token rows per head (never read)
        const Wd = (c.headDim * c.bits) / 32, G = c.headDim / c.groupSize, cap = c.tokens + 2;
        const pad = <A extends Uint32Array | Float32Array>(x: A, per: number, fill: number): A => {
          const out = new (x.constructor as new (n: number) => A)(c.kvHeads * cap * per);
          out.fill(fill);
          for (let h = 0; h < c.kvHeads; h++) out.set(x.subarray(h * c.tokens * per, (h + 1) * c.tokens * per) as never, h * cap * per);
          return out;
        };
        const spare: PackedKvView = { ...block, capacity: cap, packed: pad(block.packed, Wd, 0xffffffff), scale: pad(block.scale, G, NaN), zero: pad(block.zero, G, NaN) };
        expectClose(packedValueMix(p, spare), ref);
        // p rows wider than the tokens: the extra columns (NaN) are not read
        const N = c.tokens + 5;
        const pw = new Float32Array(c.kvHeads * c.rep * N).fill(NaN);
        for (let h = 0; h < c.kvHeads * c.rep; h++) pw.set(p.subarray(h * c.tokens, (h + 1) * c.tokens), h * N);
        expectClose(packedValueMix(pw, segs, undefined, N), ref);
      }),
      { numRuns: 80 },
    );
  });
});

describe('packedKvStrides locate every code and group', () => {
  test('keys in blocks and token-major values', () => {
    const keys = quantizeKeys(gaussian(2 * 96 * 8, 3), { heads: 2, tokens: 96, headDim: 8 }, { bits: 2, groupSize: 16 });
    const values = quantizeValues(gaussian(2 * 7 * 32, 4), { heads: 2, tokens: 7, headDim: 32 }, { bits: 4, groupSize: 8 });
    const kc = unpackKv(keys), vc = unpackKv(values);
    const code = (v: PackedKvView, word: number, i: number) => (v.packed[word]! >>> ((i % (32 / v.bits)) * v.bits)) & ((1 << v.bits) - 1);
    const [kb] = packedKvSegments(keys, { segmentTokens: 32 }).reduce<PackedKvView[]>((acc, v) => {
      if (!acc[0]) return [{ ...v, tokens: 96, capacity: 96, blockTokens: 32 }];
      return [{ ...acc[0], packed: cat([acc[0].packed as Uint32Array, v.packed as Uint32Array]), scale: cat([acc[0].scale as Float32Array, v.scale as Float32Array]), zero: cat([acc[0].zero as Float32Array, v.zero as Float32Array]) }];
    }, []);
    const s = packedKvStrides(kb!);
    expect(s).toMatchObject({ kws: 2, kgs: 2, kblk: 32, kbw: 2 * 8 * 2, kbm: 2 * 8 * 2, vhs: 0, vts: 0 });
    for (let h = 0; h < 2; h++) for (let t = 0; t < 96; t++) for (let d = 0; d < 8; d++) {
      const blk = Math.floor(t / s.kblk), tt = t % s.kblk;
      expect(code(kb!, blk * s.kbw + (h * 8 + d) * s.kws + Math.floor(tt / 16), tt)).toBe(kc[(h * 8 + d) * 96 + t]);
      expect(kb!.scale[blk * s.kbm + (h * 8 + d) * s.kgs + Math.floor(tt / 16)]).toBe(keys.scale[(h * 8 + d) * 6 + Math.floor(t / 16)]);
    }
    const [vt] = packedKvSegments(values, { segmentTokens: 9 });
    const sv = packedKvStrides(vt!);
    expect(sv).toMatchObject({ vhs: 1, vts: 2, kws: 0 });
    expect(packedKvStrides(values)).toMatchObject({ vhs: 7, vts: 1 });
    for (let h = 0; h < 2; h++) for (let t = 0; t < 7; t++) for (let d = 0; d < 32; d++) {
      const row = h * sv.vhs + t * sv.vts;
      expect(code(vt!, row * 4 + Math.floor(d / 8), d)).toBe(vc[(h * 7 + t) * 32 + d]);
      expect(vt!.zero[row * 4 + Math.floor(d / 8)]).toBe(values.zero[(h * 7 + t) * 4 + Math.floor(d / 8)]);
    }
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
  test('inconsistent strided views and segment lists', () => {
    const [k0, k1] = packedKvSegments(keys, { segmentTokens: 32 });
    const v0 = packedKvSegments(values, { segmentTokens: 4, metaFormat: 'f16' })[0]!;
    expect(() => packedKeyScores(q, [])).toThrow(/needs at least one packed K\/V view/);
    expect(() => packedKeyScores(q, [k0!, { ...k1!, headDim: 16 }])).toThrow(/segment 1 has headDim 16, segment 0 has headDim 8/);
    expect(() => packedKeyScores(q, { ...k0!, blockTokens: 48, capacity: 64 })).toThrow(/groupSize 32 does not divide blockTokens \(48\)/);
    expect(() => packedKeyScores(q, { ...k0!, blockTokens: 32, capacity: 48 })).toThrow(/blockTokens \(32\) must divide capacity \(48\)/);
    expect(() => packedKeyScores(q, { ...k0!, capacity: 16 })).toThrow(/capacity must be an integer ≥ tokens \(32\); got 16/);
    expect(() => packedKeyScores(q, { ...k0!, tokenMajor: true })).toThrow(/tokenMajor applies to values only/);
    expect(() => packedValueMix(new Float32Array(4 * 4), { ...v0, blockTokens: 4 })).toThrow(/blockTokens applies to keys only/);
    expect(() => packedValueMix(new Float32Array(4 * 4), { ...v0, zero: new Float32Array(v0.zero.length) })).toThrow(/scale and zero must have the same format/);
    expect(() => packedValueMix(new Float32Array(4 * 4), { ...v0, scale: new Float64Array(v0.scale.length) as never })).toThrow(/scale is missing/);
    expect(() => packedValueMix(new Float32Array(4 * 4), v0, undefined, 3)).toThrow(/rowStride must be an integer ≥ tokens \(4\); got 3/);
    expect(() => packedValueMix(new Float32Array(4 * 5 + 1), v0, undefined, 5)).toThrow(/p must be \[qHeads, 5\]/);
    expect(() => packedKeyScores(q, keys, new Float32Array(4 * 64), 70)).toThrow(/out must have 280 elements \(\[4, 70\]\); got 256/);
    expect(() => packedKvSegments(keys, { segmentTokens: 24 })).toThrow(XqShapeError);
    expect(() => packedKvSegments(keys, { segmentTokens: 24 })).toThrow(/segmentTokens must be a positive integer and a multiple of 32; got 24/);
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
    expect(packedKernelPath(k4, 1)).toBe('js');
    const k2odd = quantizeKeys(gaussian(48 * 8, 1), { heads: 1, tokens: 48, headDim: 8 }, { bits: 2, groupSize: 48 });
    expect(packedKernelPath(k2odd, 1)).toBe('js'); // group size not a power of two
    const v2 = quantizeValues(gaussian(5 * 32, 2), { heads: 1, tokens: 5, headDim: 32 }, { bits: 2, groupSize: 16 });
    expect(packedKernelPath(v2, 1)).toBe('js'); // headDim not a multiple of 64
    const k2 = quantizeKeys(gaussian(64 * 8, 1), { heads: 1, tokens: 64, headDim: 8 }, { bits: 2, groupSize: 32 });
    expect(packedKernelPath(packedKvSegments(k2, { segmentTokens: 32 }), 1)).toBe('wasm-simd');
    setKernelBackend('auto');
  });
});

describe.skipIf(!wasmKernelsAvailable())('benchResidentKernel (benchmark hook)', () => {
  test('runs the same SIMD kernels as the public calls, on data staged once', async () => {
    const { benchResidentKernel } = (await import('@xquant/quant')) as unknown as {
      benchResidentKernel: (axis: 'channel' | 'token', a: Float32Array, kv: unknown, out: Float32Array) => (() => void) | null;
    };
    setKernelBackend('wasm');
    const keys = quantizeKeys(gaussian(2 * 128 * 64, 1), { heads: 2, tokens: 128, headDim: 64 }, { bits: 2, groupSize: 32 });
    const values = quantizeValues(gaussian(2 * 70 * 64, 2), { heads: 2, tokens: 70, headDim: 64 }, { bits: 2, groupSize: 32 });
    const q = gaussian(8 * 64, 3), p = gaussian(8 * 70, 4);
    const cases: Array<[() => Float32Array, 'channel' | 'token', Float32Array, unknown, number]> = [
      [() => packedKeyScores(q, keys), 'channel', q, keys, 8 * 128],
      [() => packedValueMix(p, values), 'token', p, values, 8 * 64],
      [() => denseKeyScores(q, dequantizeKv(keys), 2, 64), 'channel', q, { dense: dequantizeKv(keys), kvHeads: 2, headDim: 64 }, 8 * 128],
      [() => denseValueMix(p, dequantizeKv(values), 2, 64), 'token', p, { dense: dequantizeKv(values), kvHeads: 2, headDim: 64 }, 8 * 64],
    ];
    for (const [pub, axis, a, kv, n] of cases) {
      const out = new Float32Array(n).fill(NaN);
      const run = benchResidentKernel(axis, a, kv, out);
      expect(run).not.toBeNull();
      run!();
      expect(out).toEqual(pub());
      out.fill(NaN);
      run!(); // the staged data stay: a second run gives the same result
      expect(out).toEqual(pub());
    }
    const k4 = quantizeKeys(gaussian(64 * 8, 1), { heads: 1, tokens: 64, headDim: 8 }, { bits: 4, groupSize: 32 });
    expect(benchResidentKernel('channel', new Float32Array(8), k4, new Float32Array(64))).toBeNull();
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
