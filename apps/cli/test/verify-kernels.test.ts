import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, test, vi } from 'vitest';

// Record every call of the two packed reductions, wherever they are called from (tfjs cache or golden runner).
vi.mock('@xquant/quant', async (importOriginal) => {
  const q = await importOriginal<typeof import('@xquant/quant')>();
  return { ...q, packedKeyScores: vi.fn(q.packedKeyScores), packedValueMix: vi.fn(q.packedValueMix) };
});

const quant = await import('@xquant/quant');
const { runGoldenFile, xquantTarget } = await import('@xquant/conformance');
const { attentionKernelFor, createKvCache, jsPackedAttentionKernel, selectBackend } = await import('@xquant/tfjs');
type QuantizedKvCache = import('@xquant/tfjs').QuantizedKvCache;
type PackedKvView = import('@xquant/quant').PackedKvView;

/** The kernels take one view or a list of segments (the cache layout). */
const segments = (v: PackedKvView | readonly PackedKvView[]): readonly PackedKvView[] | null => (Array.isArray(v) ? (v as readonly PackedKvView[]) : null);

const keyScores = vi.mocked(quant.packedKeyScores);
const valueMix = vi.mocked(quant.packedValueMix);
const GOLDEN = resolve('../shared/golden/g_attention.json');

describe('xquant verify checks the kernels a quantized cache runs', () => {
  test("the conformance target's attention entries are the cache's functions", () => {
    expect(xquantTarget.packedKeyScores).toBe(quant.packedKeyScores);
    expect(xquantTarget.packedValueMix).toBe(quant.packedValueMix);
  });

  test('attend on cpu calls them once per layer on the stored arrays (the donor layer’s value codes when borrowed)', async () => {
    expect((await selectBackend({ prefer: 'cpu' })).backend).toBe('cpu');
    expect(attentionKernelFor('cpu')).toBe(jsPackedAttentionKernel);
    const [H, D, qH] = [2, 64, 4];
    const cache = createKvCache('xquant-1.38', { layers: 2, kvHeads: H, headDim: D }, { residualLength: 32 }) as QuantizedKvCache;
    const x = (seed: number, n: number) => tf.randomNormal([H, n, D], 0, 1, 'float32', seed) as tf.Tensor3D;
    tf.tidy(() => {
      for (let l = 0; l < 2; l++) cache.prefill(l, x(l, 100), x(l + 10, 100));
      for (let l = 0; l < 2; l++) cache.attend(l, tf.reshape(x(20, 100), [qH, 50, D]) as tf.Tensor3D);
      for (let l = 0; l < 2; l++) cache.append(l, x(l + 30, 1), x(l + 40, 1));
    });
    keyScores.mockClear();
    valueMix.mockClear();
    const q = tf.randomNormal([qH, 1, D], 0, 1, 'float32', 7) as tf.Tensor3D;
    const stored = cache.view(1);
    const out = cache.attend(1, q);
    expect(keyScores).toHaveBeenCalledTimes(1);
    expect(valueMix).toHaveBeenCalledTimes(1);
    const keys = segments(keyScores.mock.calls[0]![1]) ?? [];
    expect(keys.length).toBe(3); // 101 tokens, R = 32: three key blocks
    expect(keys.map((k) => k.packed)).toEqual(stored.keyBlocks.map((b) => b.packed));
    keys.forEach((k, i) => expect(k.packed).toBe(stored.keyBlocks[i]!.packed));
    const values = segments(valueMix.mock.calls[0]![1]) ?? [];
    const donor = cache.view(0).valueChunks;
    expect(values.length).toBeGreaterThan(1);
    values.forEach((v, i) => {
      expect(v.tokenMajor).toBe(true);
      expect(v.packed).toBe(donor[i]!.packed); // layer 1 reads layer 0's value codes
    });
    expect(out.dataSync().every(Number.isFinite)).toBe(true);
    tf.dispose([q, out]);
    cache.dispose();
  });

  test.skipIf(!existsSync(GOLDEN))('the golden attention file runs them on single blocks and on the cache layout — needs ../shared/golden', async () => {
    keyScores.mockClear();
    valueMix.mockClear();
    const results = await runGoldenFile(GOLDEN);
    expect(results.every((r) => r.passed)).toBe(true);
    const kinds = (calls: ReadonlyArray<readonly [unknown, PackedKvView | readonly PackedKvView[], ...unknown[]]>) => new Set(calls.map((c) => (segments(c[1]) ? 'segments' : 'block')));
    expect(kinds(keyScores.mock.calls)).toEqual(new Set(['block', 'segments']));
    expect(kinds(valueMix.mock.calls)).toEqual(new Set(['block', 'segments']));
    const tokenMajor = valueMix.mock.calls.map((c) => segments(c[1])).every((s) => s === null || s.every((v) => v.tokenMajor));
    expect(tokenMajor).toBe(true);
    const f16 = keyScores.mock.calls.map((c) => segments(c[1])).some((s) => s?.[0]?.scale instanceof Uint16Array);
    expect(f16).toBe(true);
  });
});
