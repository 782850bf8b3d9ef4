import { describe, expect, test } from 'vitest';
import {
  XqShapeError,
  kvStats,
  packedKeyScores,
  packedValueMix,
  quantizeKeys,
  quantizeValues,
  shareCodes,
  type Bits,
  type PackedKv,
} from '@xquant/quant';
import { createPackedAttention, toGpuLayout, type GpuKv, type GpuKvLayout, type KernelTuning } from '../src/index.js';
import { exactDequant, kvData, normal, openGpu, refAttention, refKeyScores, refValueMix, rng, worstRatio } from './helpers.js';

const { gpu, reason } = await openGpu();
const title = (s: string) => (gpu ? s : `${s} — skipped: ${reason}`);
// Cheap-to-compile variants (lavapipe compiles each WGSL variant in seconds); the default tuning is covered once per kernel.
const small = { headsPerGroup: 1, unroll: 2 };
const REL = 2e-6; // |gpu − f64| ≤ REL·Σ|terms| + 1e-6: float32 accumulation

const poisoned = (k: ReturnType<typeof createPackedAttention>, n: number) => k.createBuffer(new Float32Array(n).fill(Number.NaN));

function slice(a: Float32Array, heads: number, n: number, D: number, t0: number, t1: number): Float32Array {
  const o = new Float32Array(heads * (t1 - t0) * D);
  for (let h = 0; h < heads; h++) o.set(a.subarray((h * n + t0) * D, (h * n + t1) * D), h * (t1 - t0) * D);
  return o;
}

describe.skipIf(!gpu)(title('raw WebGPU packed-attention kernels'), () => {
  const k = gpu ? createPackedAttention(gpu.device) : (undefined as never);

  async function scores(q: Float32Array, qHeads: number, keys: PackedKv | GpuKv, tuning: KernelTuning = small): Promise<Float32Array> {
    const g = 'packed' in keys ? k.uploadKv(keys) : keys;
    const call = await k.keyScores({ q: k.createBuffer(q), qHeads, keys: g, out: poisoned(k, qHeads * g.tokens), ...tuning });
    return k.runAndRead(call);
  }
  async function mix(p: Float32Array, qHeads: number, values: PackedKv, tuning: KernelTuning = small): Promise<Float32Array> {
    const call = await k.valueMix({ p: k.createBuffer(p), qHeads, values: k.uploadKv(values), out: poisoned(k, qHeads * values.headDim), ...tuning });
    return k.runAndRead(call);
  }

  for (const bits of [1, 2, 4] as Bits[]) {
    for (const D of bits === 2 ? [64, 128] : [128]) {
      test(`keyScores ${bits}-bit d=${D}, 3 chunks (last partial) vs float64 and the CPU kernel`, async () => {
        const r = rng(10 + bits + D);
        const heads = 2;
        const T = 1088;
        const keys = quantizeKeys(kvData(heads, T, D, r), { heads, tokens: T, headDim: D }, { bits, groupSize: 32 });
        const q = normal(2 * D, r);
        const out = await scores(q, 2, keys);
        const { ref, bound } = refKeyScores(q, keys);
        expect(worstRatio(out, ref, bound, REL)).toBeLessThanOrEqual(1);
        expect(worstRatio(packedKeyScores(q, keys), ref, bound, 1e-5)).toBeLessThanOrEqual(1);
      });
      test(`valueMix ${bits}-bit d=${D} vs float64 and the CPU kernel`, async () => {
        const r = rng(20 + bits + D);
        const heads = 2;
        const T = 1100;
        const values = quantizeValues(kvData(heads, T, D, r), { heads, tokens: T, headDim: D }, { bits, groupSize: 32 });
        const p = new Float32Array(2 * T).map(() => r());
        const out = await mix(p, 2, values);
        const { ref, bound } = refValueMix(p, values);
        expect(worstRatio(out, ref, bound, REL)).toBeLessThanOrEqual(1);
        expect(worstRatio(packedValueMix(p, values), ref, bound, 1e-5)).toBeLessThanOrEqual(1);
      });
    }
  }

  test('4 heads per workgroup (default for keys), GQA 8 query heads over 2 KV heads, group size 64: keys 2-bit, values 1-bit', async () => {
    const r = rng(31);
    const heads = 2;
    const T = 1536;
    const D = 128;
    const x = kvData(heads, T, D, r);
    const keys = quantizeKeys(x, { heads, tokens: T, headDim: D }, { bits: 2, groupSize: 64 });
    const values = quantizeValues(x, { heads, tokens: T, headDim: D }, { bits: 1, groupSize: 64 });
    const q = normal(8 * D, r);
    const p = new Float32Array(8 * T).map(() => r());
    const ks = refKeyScores(q, keys);
    expect(worstRatio(await scores(q, 8, keys, {}), ks.ref, ks.bound, REL)).toBeLessThanOrEqual(1);
    const vm = refValueMix(p, values);
    expect(worstRatio(await mix(p, 8, values, { unroll: 1 }), vm.ref, vm.bound, REL)).toBeLessThanOrEqual(1);
  });

  test('valueMix with every value load issued before p is staged (prefetch)', async () => {
    const r = rng(35);
    const heads = 2;
    const T = 1100;
    const D = 128;
    const values = quantizeValues(kvData(heads, T, D, r), { heads, tokens: T, headDim: D }, { bits: 1, groupSize: 32 });
    const p = new Float32Array(4 * T).map(() => r());
    const { ref, bound } = refValueMix(p, values);
    expect(worstRatio(await mix(p, 4, values, { headsPerGroup: 1, unroll: 2, prefetch: true }), ref, bound, REL)).toBeLessThanOrEqual(1);
  });

  test('fp32 metadata (precision fp32 blocks) and padded capacity', async () => {
    const r = rng(41);
    const heads = 2;
    const T = 544;
    const D = 64;
    const x = kvData(heads, T, D, r);
    const keys = quantizeKeys(x, { heads, tokens: T, headDim: D }, { bits: 2, groupSize: 32, precision: 'fp32' });
    const values = quantizeValues(x, { heads, tokens: T, headDim: D }, { bits: 2, groupSize: 32, precision: 'fp32' });
    const q = normal(2 * D, r);
    const ks = refKeyScores(q, keys);
    const gk = k.uploadKv(keys, { capacity: 1024 });
    expect(gk.metaFormat).toBe('f32');
    expect(worstRatio(await scores(q, 2, gk), ks.ref, ks.bound, REL)).toBeLessThanOrEqual(1);
    const p = new Float32Array(2 * T).map(() => r());
    const vm = refValueMix(p, values);
    const call = await k.valueMix({ p: k.createBuffer(p), qHeads: 2, values: k.uploadKv(values, { capacity: 700 }), ...small });
    expect(worstRatio(await k.runAndRead(call), vm.ref, vm.bound, REL)).toBeLessThanOrEqual(1);
  });

  test('cross-layer: scale/zero of layer l over the codes buffer of layer l−1 (not copied)', async () => {
    const r = rng(51);
    const heads = 2;
    const T = 512;
    const D = 128;
    const shape = { heads, tokens: T, headDim: D };
    const prev = kvData(heads, T, D, r);
    const cur = prev.map((v) => v * 0.8 + 0.3 * normal(1, r)[0]!);
    const donor = quantizeKeys(prev, shape, { bits: 1, groupSize: 32 });
    const stats = kvStats(cur, shape, 'channel', { bits: 1, groupSize: 32 });
    const shared = shareCodes(stats, donor);
    const gDonor = k.uploadKv(donor);
    const gShared = k.shareKv(stats, gDonor);
    expect(gShared.codes).toBe(gDonor.codes);
    const q = normal(2 * D, r);
    const ks = refKeyScores(q, shared);
    expect(worstRatio(await scores(q, 2, gShared), ks.ref, ks.bound, REL)).toBeLessThanOrEqual(1);
  });

  describe('fused decode (scores → softmax → values, residual, GQA 6 over 2 with 2 heads per workgroup)', () => {
    const tuning = { headsPerGroup: 2, unroll: 1, prefetch: false };
    const D = 128;
    const heads = 2;
    const qHeads = 6;
    const cases = [
      { name: 'quantized + residual, key and value splits differ', n: 1061, tk: 1024, tv: 997 },
      { name: 'one partial chunk, values mostly residual', n: 40, tk: 32, tv: 8 },
      { name: 'all quantized, whole chunks', n: 1536, tk: 1536, tv: 1536 },
      { name: 'value loads issued before the key reduction (prefetch, the default), 1 head per workgroup', n: 1061, tk: 1024, tv: 997, tuning: { headsPerGroup: 1, unroll: 1, prefetch: true } },
    ];
    for (const c of cases) {
      test(c.name, async () => {
        const tuned = c.tuning ?? tuning;
        const r = rng(60 + c.n);
        const { n, tk, tv } = c;
        const x = kvData(heads, n, D, r);
        const y = kvData(heads, n, D, r);
        const keys = quantizeKeys(slice(x, heads, n, D, 0, tk), { heads, tokens: tk, headDim: D }, { bits: 2, groupSize: 32 });
        const values = quantizeValues(slice(y, heads, n, D, 0, tv), { heads, tokens: tv, headDim: D }, { bits: 1, groupSize: 32 });
        const kd = exactDequant(keys);
        const vd = exactDequant(values);
        const K = new Float64Array(heads * n * D);
        const V = new Float64Array(heads * n * D);
        for (let h = 0; h < heads; h++)
          for (let t = 0; t < n; t++)
            for (let d = 0; d < D; d++) {
              K[(h * n + t) * D + d] = t < tk ? kd[(h * tk + t) * D + d]! : x[(h * n + t) * D + d]!;
              V[(h * n + t) * D + d] = t < tv ? vd[(h * tv + t) * D + d]! : y[(h * n + t) * D + d]!;
            }
        const q = normal(qHeads * D, r, 0.35);
        const rkCap = n - tk + 3;
        const rkData = new Float32Array(heads * rkCap * D).fill(Number.NaN);
        for (let h = 0; h < heads; h++) rkData.set(slice(x, heads, n, D, tk, n).subarray(h * (n - tk) * D, (h + 1) * (n - tk) * D), h * rkCap * D);
        const call = await k.decodeAttention({
          q: k.createBuffer(q),
          qHeads,
          keys: k.uploadKv(keys),
          values: k.uploadKv(values),
          residualKeys: n > tk ? { buffer: k.createBuffer(rkData), tokens: n - tk, capacity: rkCap } : undefined,
          residualValues: n > tv ? { buffer: k.createBuffer(slice(y, heads, n, D, tv, n)), tokens: n - tv, capacity: n - tv } : undefined,
          out: poisoned(k, qHeads * D),
          ...tuned,
        });
        const out = await k.runAndRead(call);
        const { ref, bound } = refAttention(q, K, V, heads, n, D, 1 / Math.sqrt(D));
        expect(worstRatio(out, ref, bound, 1e-5)).toBeLessThanOrEqual(1);
        // the same call again gives the same bits (no race between workgroups)
        expect(Array.from(await k.runAndRead(call))).toEqual(Array.from(out));
      });
    }
    test('cache storage orders: keys in 128-token blocks, token-major values and residuals give the same bits', async () => {
      const r = rng(66);
      const n = 1061;
      const tk = 1024;
      const tv = 997;
      const x = kvData(heads, n, D, r);
      const y = kvData(heads, n, D, r);
      const keys = toGpuLayout(quantizeKeys(slice(x, heads, n, D, 0, tk), { heads, tokens: tk, headDim: D }, { bits: 2, groupSize: 32 }));
      const values = toGpuLayout(quantizeValues(slice(y, heads, n, D, 0, tv), { heads, tokens: tv, headDim: D }, { bits: 1, groupSize: 32 }));
      const B = 128;
      const W = (tk * 2) / 32;
      const Bw = (B * 2) / 32;
      const G = tk / 32;
      const Bg = B / 32;
      const blocked: GpuKvLayout = { ...keys, blockTokens: B, codes: new Uint32Array(keys.codes.length), meta: new Uint32Array(keys.meta.length) };
      for (let b = 0; b < tk / B; b++)
        for (let row = 0; row < heads * D; row++) {
          blocked.codes.set(keys.codes.subarray(row * W + b * Bw, row * W + (b + 1) * Bw), (b * heads * D + row) * Bw);
          blocked.meta.set(keys.meta.subarray(row * G + b * Bg, row * G + (b + 1) * Bg), (b * heads * D + row) * Bg);
        }
      const vw = (D * 1) / 32;
      const vg = D / 32;
      const tmajor: GpuKvLayout = { ...values, tokenMajor: true, codes: new Uint32Array(values.codes.length), meta: new Uint32Array(values.meta.length) };
      for (let h = 0; h < heads; h++)
        for (let t = 0; t < tv; t++) {
          tmajor.codes.set(values.codes.subarray((h * tv + t) * vw, (h * tv + t + 1) * vw), (t * heads + h) * vw);
          tmajor.meta.set(values.meta.subarray((h * tv + t) * vg, (h * tv + t + 1) * vg), (t * heads + h) * vg);
        }
      const toTokenMajor = (a: Float32Array, tokens: number) => {
        const o = new Float32Array(a.length);
        for (let h = 0; h < heads; h++) for (let t = 0; t < tokens; t++) o.set(a.subarray((h * tokens + t) * D, (h * tokens + t + 1) * D), (t * heads + h) * D);
        return o;
      };
      const rkd = slice(x, heads, n, D, tk, n);
      const rvd = slice(y, heads, n, D, tv, n);
      const q = k.createBuffer(normal(qHeads * D, r, 0.35));
      const run = async (kk: GpuKvLayout, vv: GpuKvLayout, tm: boolean) =>
        k.runAndRead(
          await k.decodeAttention({
            q,
            qHeads,
            keys: k.uploadKv(kk),
            values: k.uploadKv(vv),
            residualKeys: { buffer: k.createBuffer(tm ? toTokenMajor(rkd, n - tk) : rkd), tokens: n - tk, capacity: n - tk, tokenMajor: tm },
            residualValues: { buffer: k.createBuffer(tm ? toTokenMajor(rvd, n - tv) : rvd), tokens: n - tv, capacity: n - tv, tokenMajor: tm },
            ...tuning,
          }),
        );
      const base = await run(keys, values, false);
      expect(Array.from(await run(blocked, tmajor, true))).toEqual(Array.from(base));
      const qs = k.createBuffer(normal(heads * D, r));
      const sc = async (kk: GpuKvLayout) => k.runAndRead(await k.keyScores({ q: qs, qHeads: heads, keys: k.uploadKv(kk), ...small }));
      expect(Array.from(await sc(blocked))).toEqual(Array.from(await sc(keys)));
      expect(() => k.uploadKv({ ...keys, blockTokens: 48 })).toThrow(/blockTokens/);
    });

    test('mismatched token counts and bad GQA are typed errors', async () => {
      const r = rng(70);
      const keys = k.uploadKv(quantizeKeys(kvData(2, 64, D, r), { heads: 2, tokens: 64, headDim: D }, { bits: 2, groupSize: 32 }));
      const values = k.uploadKv(quantizeValues(kvData(2, 60, D, r), { heads: 2, tokens: 60, headDim: D }, { bits: 1, groupSize: 32 }));
      const q = k.createBuffer(new Float32Array(6 * D));
      await expect(k.decodeAttention({ q, qHeads: 6, keys, values })).rejects.toThrow(XqShapeError);
      await expect(k.decodeAttention({ q, qHeads: 5, keys, values, residualValues: { buffer: q, tokens: 4, capacity: 4 } })).rejects.toThrow(/multiple of 2 KV heads/);
      await expect(k.keyScores({ q, qHeads: 6, keys: values })).rejects.toThrow(/per channel/);
    });
  });
});
