import { afterAll, describe, expect, test } from 'vitest';
import { kvStats, quantizeKeys, quantizeValues, shareCodes, XqShapeError } from '@xquant/quant';
import { createWebGpuAttentionKernels, packedKvToTensors, shareTfKv } from '../src/tfjs.js';
import { exactDequant, kvData, normal, refAttention, refKeyScores, refValueMix, rng, worstRatio } from './helpers.js';

process.env.XDG_RUNTIME_DIR ??= '/tmp';
process.env.GALLIVM_PERF ??= 'nopt';

// tfjs-backend-webgpu reads navigator.gpu; Node 20 has no navigator.
async function setup(): Promise<{ tf: typeof import('@tensorflow/tfjs-core') | null; reason: string }> {
  try {
    const { create, globals } = await import('webgpu');
    Object.assign(globalThis, globals);
    const gpu = create([]);
    Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
    if (!(await gpu.requestAdapter())) return { tf: null, reason: 'no WebGPU adapter found (install lavapipe: scripts/setup-webgpu.sh)' };
    const tf = await import('@tensorflow/tfjs-core');
    await import('@tensorflow/tfjs-backend-webgpu');
    if (!(await tf.setBackend('webgpu'))) return { tf: null, reason: 'tfjs webgpu backend failed to initialize' };
    return { tf, reason: '' };
  } catch (e) {
    return { tf: null, reason: `WebGPU unavailable: ${String(e).split('\n')[0]}` };
  }
}
const { tf, reason } = await setup();

describe.skipIf(!tf)(tf ? 'tfjs-backend-webgpu programs' : `tfjs-backend-webgpu programs — skipped: ${reason}`, () => {
  afterAll(() => {
    delete (globalThis as { navigator?: { gpu?: unknown } }).navigator?.gpu;
  });
  const T = tf!;
  const kernels = () => createWebGpuAttentionKernels(T.backend() as never, { unroll: 1, headsPerGroup: 1 });
  const D = 128;
  const heads = 2;

  test('keyScores (2-bit) and valueMix (1-bit) with GQA 4 over 2 match float64', async () => {
    const r = rng(80);
    const n = 608;
    const x = kvData(heads, n, D, r);
    const keys = quantizeKeys(x, { heads, tokens: n, headDim: D }, { bits: 2, groupSize: 32 });
    const values = quantizeValues(x, { heads, tokens: n, headDim: D }, { bits: 1, groupSize: 32 });
    const k = kernels();
    const q = normal(4 * D, r);
    const p = new Float32Array(4 * n).map(() => r());
    const tk = packedKvToTensors(keys);
    const tv = packedKvToTensors(values);
    const s = k.keyScores(T.tensor2d(q, [4, D]), tk);
    expect(s.shape).toEqual([4, n]);
    const ks = refKeyScores(q, keys);
    expect(worstRatio(await s.data(), ks.ref, ks.bound, 2e-6)).toBeLessThanOrEqual(1);
    const o = k.valueMix(T.tensor2d(p, [4, n]), tv);
    expect(o.shape).toEqual([4, D]);
    const vm = refValueMix(p, values);
    expect(worstRatio(await o.data(), vm.ref, vm.bound, 2e-6)).toBeLessThanOrEqual(1);
    // cross-layer: own scale/zero over the donor's codes tensor
    const stats = kvStats(x.map((v) => v * 0.9), { heads, tokens: n, headDim: D }, 'channel', { bits: 2, groupSize: 32 });
    const shared = shareTfKv(stats, tk);
    expect(shared.codes).toBe(tk.codes);
    const ss = refKeyScores(q, shareCodes(stats, keys));
    expect(worstRatio(await k.keyScores(T.tensor2d(q, [4, D]), shared).data(), ss.ref, ss.bound, 2e-6)).toBeLessThanOrEqual(1);
    expect(() => k.keyScores(T.tensor2d(q.subarray(0, 3 * D), [3, D]), tk)).toThrow(XqShapeError);
    expect(() => k.keyScores(T.tensor2d(q, [4, D]), tv)).toThrow(/axis 'channel'/);
  });

  test('decodeAttention: 2-bit keys, 1-bit values, residual window, GQA 4 over 2, d = 64', async () => {
    const D = 64;
    const r = rng(81);
    const n = 700;
    const tkn = 640;
    const tvn = 572;
    const x = kvData(heads, n, D, r);
    const y = kvData(heads, n, D, r);
    const cut = (a: Float32Array, t0: number, t1: number) => {
      const o = new Float32Array(heads * (t1 - t0) * D);
      for (let h = 0; h < heads; h++) o.set(a.subarray((h * n + t0) * D, (h * n + t1) * D), h * (t1 - t0) * D);
      return o;
    };
    const keys = quantizeKeys(cut(x, 0, tkn), { heads, tokens: tkn, headDim: D }, { bits: 2, groupSize: 32 });
    const values = quantizeValues(cut(y, 0, tvn), { heads, tokens: tvn, headDim: D }, { bits: 1, groupSize: 32 });
    const kd = exactDequant(keys);
    const vd = exactDequant(values);
    const K = new Float64Array(heads * n * D);
    const V = new Float64Array(heads * n * D);
    for (let h = 0; h < heads; h++)
      for (let t = 0; t < n; t++)
        for (let d = 0; d < D; d++) {
          K[(h * n + t) * D + d] = t < tkn ? kd[(h * tkn + t) * D + d]! : x[(h * n + t) * D + d]!;
          V[(h * n + t) * D + d] = t < tvn ? vd[(h * tvn + t) * D + d]! : y[(h * n + t) * D + d]!;
        }
    const q = normal(4 * D, r, 0.35);
    const cap = n - tvn + 4; // spare capacity in the residual buffer
    const padded = new Float32Array(heads * cap * D).fill(Number.NaN);
    const rvals = cut(y, tvn, n);
    for (let h = 0; h < heads; h++) padded.set(rvals.subarray(h * (n - tvn) * D, (h + 1) * (n - tvn) * D), h * cap * D);
    const k = createWebGpuAttentionKernels(T.backend() as never, { unroll: 1, headsPerGroup: 1, prefetch: false });
    const out = k.decodeAttention({
      q: T.tensor2d(q, [4, D]),
      keys: packedKvToTensors(keys),
      values: packedKvToTensors(values),
      residualKeys: T.tensor3d(cut(x, tkn, n), [heads, n - tkn, D]),
      residualValues: { tensor: T.tensor3d(padded, [heads, cap, D]), tokens: n - tvn },
    });
    expect(out.shape).toEqual([4, D]);
    const { ref, bound } = refAttention(q, K, V, heads, n, D, 1 / Math.sqrt(D));
    expect(worstRatio(await out.data(), ref, bound, 1e-5)).toBeLessThanOrEqual(1);
    // token-major residuals read the same numbers
    const tmaj = (a: Float32Array, tokens: number, cap: number) => {
      const o = new Float32Array(cap * heads * D);
      for (let h = 0; h < heads; h++) for (let t = 0; t < tokens; t++) o.set(a.subarray((h * tokens + t) * D, (h * tokens + t + 1) * D), (t * heads + h) * D);
      return o;
    };
    const out2 = k.decodeAttention({
      q: T.tensor2d(q, [4, D]),
      keys: packedKvToTensors(keys),
      values: packedKvToTensors(values),
      residualKeys: { tensor: T.tensor3d(tmaj(cut(x, tkn, n), n - tkn, n - tkn), [n - tkn, heads, D]), tokenMajor: true },
      residualValues: { tensor: T.tensor3d(tmaj(rvals, n - tvn, cap), [cap, heads, D]), tokens: n - tvn, tokenMajor: true },
    });
    expect(Array.from(await out2.data())).toEqual(Array.from(await out.data()));
    expect(() => k.decodeAttention({ q: T.tensor2d(q, [4, D]), keys: packedKvToTensors(keys), values: packedKvToTensors(values) })).toThrow(/cover/);
  });
});
