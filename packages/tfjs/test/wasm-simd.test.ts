import { describe, expect, it } from 'vitest';
import { keyBlockScores, valueChunkMix } from '../src/kernels/js-packed.js';
import { simdKernels } from '../src/kernels/wasm-simd.js';
import { maxAbs, maxAbsDiff, randn, rng } from './helpers.js';

const k = simdKernels();

describe.skipIf(!k)('WebAssembly SIMD kernels (skipped: no WebAssembly SIMD in this runtime)', () => {
  it.each([1, 2, 4])('keys4 equals the JS packed kernel (%i-bit)', (bits) => {
    const K = k!;
    const D = 64, T = 128, gs = 32, G = T / gs, wpr = (T * bits) / 32, H = 2;
    const r = rng(bits);
    const packed = Uint32Array.from({ length: H * D * wpr }, () => (r.uniform() * 2 ** 32) >>> 0);
    const scale = Float32Array.from({ length: D * G }, () => r.uniform() * 0.2);
    const zero = randn(D * G, 2);
    const q = randn(4 * D, 3);
    const S = new Float32Array(4 * T);
    keyBlockScores(packed, 1, D, T, bits as 1 | 2 | 4, gs, scale, zero, q, 4, S, T, 0);
    K.reset();
    const pq = K.alloc(4 * D * 4), ps = K.alloc(D * G * 4), pz = K.alloc(D * G * 4), pp = K.alloc(D * wpr * 4);
    const po = K.alloc(4 * T * 4), pa = K.alloc(D * 16), pc = K.consts(bits);
    K.f32(pq, 4 * D).set(q);
    K.f32(ps, D * G).set(scale);
    K.f32(pz, D * G).set(zero);
    K.u32(pp, D * wpr).set(packed.subarray(D * wpr, 2 * D * wpr));
    K.keys4(pq, ps, pz, pp, po, D, T, gs, bits, pa, pc, T);
    const got = K.f32(po, 4 * T);
    expect(maxAbsDiff(got, S)).toBeLessThan(1e-5 * maxAbs(S));
  });

  it.each([1, 2])('values4 equals the JS packed kernel (%i-bit)', (bits) => {
    const K = k!;
    const D = 64, n = 37, gs = 32, G = D / gs, wpr = (D * bits) / 32, H = 3, h = 1;
    const r = rng(10 + bits);
    const packed = Uint32Array.from({ length: n * H * wpr }, () => (r.uniform() * 2 ** 32) >>> 0);
    const scale = Float32Array.from({ length: n * H * G }, () => r.uniform() * 0.2);
    const zero = randn(n * H * G, 5);
    const p = Float32Array.from({ length: 4 * n }, () => r.uniform() / n);
    const O = new Float64Array(4 * D);
    valueChunkMix(packed, h, H, D, n, bits as 1 | 2, gs, scale, zero, p, 4, n, 0, O);
    K.reset();
    const pp = K.alloc(4 * n * 4), ps = K.alloc(n * H * G * 4), pz = K.alloc(n * H * G * 4), pk = K.alloc(n * H * wpr * 4);
    const po = K.alloc(4 * D * 4), pzs = K.alloc(4 * G * 4), pc = K.consts(bits);
    K.f32(pp, 4 * n).set(p);
    K.f32(ps, n * H * G).set(scale);
    K.f32(pz, n * H * G).set(zero);
    K.u32(pk, n * H * wpr).set(packed);
    K.f32(po, 4 * D).fill(0);
    K.values4(pp, ps, pz, pk, po, pzs, D, n, H, h, gs, bits, pc, n);
    const got = Float32Array.from(K.f32(po, 4 * D));
    // zero term is left in zs[m, g]: add it like the JS kernel does
    const zs = K.f32(pzs, 4 * G);
    for (let m = 0; m < 4; m++) for (let d = 0; d < D; d++) got[m * D + d] += zs[m * G + Math.floor(d / gs)]!;
    expect(maxAbsDiff(got, O)).toBeLessThan(1e-5 * maxAbs(O));
  });
});
