import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { XqConfigError, XqError, codebookKeyScores, codebookValueMix } from '@xquant/quant';
import {
  createKvCache,
  registerKernel,
  unregisterKernel,
  type CodebookKernel,
  type CodebookTensorView,
  type KvCache,
  type KvCacheShape,
  type TurboQuantKvCache,
} from '@xquant/tfjs';
import { TURBOQUANT_CONFIGS as CONFIGS, kvLike, maxAbs, maxAbsDiff, randn, useCpu } from './helpers.js';

beforeAll(useCpu);
afterEach(() => unregisterKernel('cpu', 'codebook'));

const SHAPE: KvCacheShape = { layers: 2, kvHeads: 2, headDim: 64 };
const QH = 4;

/** A codebook kernel for the cpu backend that runs the host kernels of `@xquant/quant` on the tensors' data. */
function hostKernel(): CodebookKernel & { calls: number; views: Set<string>; released: object[] } {
  const k = {
    id: 'test-host-codebook',
    calls: 0,
    views: new Set<string>(),
    released: [] as object[],
    keyScores(q: tf.Tensor2D, keys: CodebookTensorView): tf.Tensor2D {
      k.calls++;
      k.views.add(`${keys.layer}/${keys.kind}/${keys.version}`);
      const rows = q.shape[0];
      const v = keys.view;
      return tf.tensor2d(codebookKeyScores(q.dataSync() as Float32Array, rows, v, new Float32Array(rows * v.tokens)), [rows, v.tokens]);
    },
    valueMix(p: tf.Tensor2D, values: CodebookTensorView): tf.Tensor2D {
      k.calls++;
      const rows = p.shape[0];
      const v = values.view;
      return tf.tensor2d(codebookValueMix(p.dataSync() as Float32Array, rows, v, new Float32Array(rows * v.headDim)), [rows, v.headDim]);
    },
    release(owner: object) {
      k.released.push(owner);
    },
    heldBytes: () => 1000,
  };
  return k;
}

/** Head-major `[H, n, D]` slice of tokens `from … from+n−1` of `x` (`[H, T, D]`). */
function slice(x: Float32Array, H: number, D: number, from: number, n: number): tf.Tensor3D {
  const T = x.length / (H * D);
  const out = new Float32Array(H * n * D);
  for (let h = 0; h < H; h++) out.set(x.subarray((h * T + from) * D, (h * T + from + n) * D), h * n * D);
  return tf.tensor3d(out, [H, n, D]);
}

/** Feeds a cache in `pieces` (token counts; 1 = a decode step) and returns each attend's output, layer by layer. */
async function run(cache: KvCache, pieces: number[], mode: 'sync' | 'async' = 'sync'): Promise<Float32Array[]> {
  const { layers: L, kvHeads: H, headDim: D } = cache.shape;
  const T = pieces.reduce((a, b) => a + b, 0);
  const keys = Array.from({ length: L }, (_, l) => kvLike(H, T, D, 10 + l));
  const values = Array.from({ length: L }, (_, l) => randn(H * T * D, 100 + l));
  const outs: Float32Array[] = [];
  let at = 0;
  for (const [i, n] of pieces.entries()) {
    for (let l = 0; l < L; l++) {
      const k = slice(keys[l]!, H, D, at, n);
      const v = slice(values[l]!, H, D, at, n);
      const tq = cache as TurboQuantKvCache;
      if (mode === 'async') await (i === 0 || n > 1 ? tq.prefillAsync(l, k, v) : tq.appendAsync(l, k, v));
      else if (i === 0 || n > 1) cache.prefill(l, k, v);
      else cache.append(l, k, v);
      tf.dispose([k, v]);
      const q = tf.tensor3d(randn(QH * n * D, 1000 + 31 * l + i), [QH, n, D]);
      const o = cache.attend(l, q);
      outs.push(o.dataSync() as Float32Array);
      tf.dispose([q, o]);
    }
    at += n;
  }
  return outs;
}

function worst(a: Float32Array[], b: Float32Array[]): number {
  expect(a.length).toBe(b.length);
  return Math.max(...a.map((x, i) => maxAbsDiff(x, b[i]!) / Math.max(maxAbs(b[i]!), 1e-6)));
}

// a prefill, a second prefill of several positions over quantized tokens (causal mask), then decode steps
const PIECES = [40, 7, 1, 1, 1, 1, 1, 1];

describe('turboquant with a codebook kernel (attention as tfjs ops around the kernel)', () => {
  for (const o of CONFIGS) {
    it(`equals the host path: ${JSON.stringify(o)}`, async () => {
      const host = await run(createKvCache('turboquant', SHAPE, o as Record<string, unknown>), PIECES);
      const k = hostKernel();
      registerKernel('cpu', 'codebook', k);
      const cache = createKvCache('turboquant', SHAPE, o as Record<string, unknown>);
      const viaKernel = await run(cache, PIECES);
      // every attend after the first prefill ran on the kernel (2 calls each), and saw a new version of the rows each time
      expect(k.calls).toBe(2 * SHAPE.layers * (PIECES.length - 1));
      expect(k.views.size).toBe(SHAPE.layers * (PIECES.length - 1));
      expect(worst(viaKernel, host)).toBeLessThan(2e-5);
      cache.dispose();
    });
  }

  it('memory() adds the kernel’s held bytes and the rotation matrices; reset and dispose release the kernel state', async () => {
    const k = hostKernel();
    registerKernel('cpu', 'codebook', k);
    const cache = createKvCache('turboquant', SHAPE, { bits: 2, residualLength: 8 });
    const plain = createKvCache('turboquant', SHAPE, { bits: 2, residualLength: 8 });
    unregisterKernel('cpu', 'codebook');
    await run(plain, PIECES);
    registerKernel('cpu', 'codebook', k);
    await run(cache, PIECES);
    const { layers: L, kvHeads: H, headDim: D } = SHAPE;
    // two rotation matrices per layer ([H, D, D] float32); the kernel's 1000 bytes only while it is registered
    const withKernel = cache.memory().kernelBytes!;
    expect(withKernel).toBe(plain.memory().kernelBytes! + 2 * L * H * D * D * 4);
    expect(cache.memory().totalBytes).toBe(plain.memory().totalBytes);
    unregisterKernel('cpu', 'codebook');
    expect(cache.memory().kernelBytes).toBe(withKernel - 1000);
    registerKernel('cpu', 'codebook', k);
    cache.reset();
    expect(k.released).toEqual([cache]);
    cache.dispose();
    expect(k.released).toEqual([cache, cache]);
    plain.dispose();
  });

  it('registerKernel rejects a codebook kernel without its methods', () => {
    expect(() => registerKernel('cpu', 'codebook', { id: 'x' } as unknown as CodebookKernel)).toThrow(XqConfigError);
  });
});

describe('turboquant prefillAsync / appendAsync', () => {
  it('store exactly what the synchronous calls store', async () => {
    const o = { keyBits: 2.5, valueBits: 1.5, residualLength: 8 };
    const sync = await run(createKvCache('turboquant', SHAPE, o), PIECES);
    const viaAsync = await run(createKvCache('turboquant', SHAPE, o), PIECES, 'async');
    expect(worst(viaAsync, sync)).toBe(0);
  });

  it('run in call order, refuse synchronous calls while pending, and reject when reset overtakes them', async () => {
    const cache = createKvCache('turboquant', SHAPE, { bits: 2, residualLength: 4 }) as TurboQuantKvCache;
    const { kvHeads: H, headDim: D } = SHAPE;
    const x = (n: number, seed: number) => tf.tensor3d(randn(H * n * D, seed), [H, n, D]);
    const a = cache.prefillAsync(0, x(6, 1), x(6, 2));
    const b = cache.appendAsync(0, x(1, 3), x(1, 4));
    expect(() => cache.append(0, x(1, 5), x(1, 6))).toThrow(/pending/);
    const q = tf.tensor3d(randn(QH * D, 7), [QH, 1, D]);
    expect(() => cache.attend(0, q)).toThrow(/pending/);
    await Promise.all([a, b]);
    expect(cache.seqLength(0)).toBe(7);
    // a wrong shape rejects at once, a bad token count when its turn comes
    await expect(cache.appendAsync(0, x(2, 8), x(2, 9))).rejects.toThrow(XqError);
    // NaN in the data: rejected when read, nothing stored, the cache goes on
    const nan = new Float32Array(H * D);
    nan[5] = Number.NaN;
    await expect(cache.appendAsync(0, tf.tensor3d(nan, [H, 1, D]), x(1, 12))).rejects.toMatchObject({ code: 'E_NON_FINITE' });
    expect(cache.seqLength(0)).toBe(7);
    await cache.appendAsync(0, x(1, 13), x(1, 14));
    expect(cache.seqLength(0)).toBe(8);
    const c = cache.appendAsync(0, x(1, 10), x(1, 11));
    cache.reset();
    await expect(c).rejects.toThrow(/cancelled: the cache was reset or disposed/);
    await expect(c).rejects.toMatchObject({ code: 'E_STATE' });
    expect(cache.seqLength(0)).toBe(0);
    cache.dispose();
  });
});
