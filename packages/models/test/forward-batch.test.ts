import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqShapeError, XqStateError } from '@xquant/quant';
import { createKvCache, selectBackend } from '@xquant/tfjs';
import { DecoderModel, parseHfConfig } from '../src/index.js';
import { hfConfig, referenceForward, tinySpec, tinyWeights, type Tensors } from './support/tiny.js';

function weightSource(w: Tensors) {
  return {
    source: 'test weights',
    has: (n: string) => w.has(n),
    shape: (n: string) => w.get(n)!.shape,
    read: async (n: string) => Float32Array.from(w.get(n)!.data),
  };
}

beforeAll(async () => {
  tf.env().set('IS_TEST', true);
  await selectBackend({ prefer: 'cpu' });
});

describe('forwardBatch: several sequences at different positions, each through its own cache', () => {
  const spec = tinySpec('qwen2');
  const weights = tinyWeights(spec, 5);
  const seqs = [
    [0, 50, 51, 52, 120, 7, 7, 250, 3],
    [0, 9, 8, 7],
    [0, 180, 42, 42, 42, 100],
  ];
  const refs = seqs.map((s) => referenceForward(spec, weights, s));

  it('prefill of unequal-length prompts one by one, then batched decode steps, match the float64 forward', async () => {
    const model = await DecoderModel.fromWeights(parseHfConfig(hfConfig(spec)), weightSource(weights));
    const caches = seqs.map(() => createKvCache('full', model.cacheShape));
    // prefill all but the last 2 tokens of each sequence separately (different lengths → different positions)
    seqs.forEach((s, b) => model.forward(s.slice(0, s.length - 2), caches[b]!).dispose());
    for (let k = 2; k >= 1; k--) {
      const step = seqs.map((s) => [s[s.length - k]!]);
      const logits = model.forwardBatch(step, caches);
      expect(logits.shape).toEqual([seqs.length, spec.vocab]);
      const data = await logits.data();
      logits.dispose();
      seqs.forEach((s, b) => {
        const ref = refs[b]![s.length - k]!;
        let m = 0;
        for (let i = 0; i < spec.vocab; i++) m = Math.max(m, Math.abs(data[b * spec.vocab + i]! - ref[i]!));
        expect(m).toBeLessThan(1e-4);
      });
    }
    for (const c of caches) c.dispose();
    model.dispose();
  });

  it('multi-token batches with lastN rows return sequence-major rows; bad batches are rejected', async () => {
    const model = await DecoderModel.fromWeights(parseHfConfig(hfConfig(spec)), weightSource(weights));
    const caches = [createKvCache('full', model.cacheShape), createKvCache('full', model.cacheShape)];
    const batch = [seqs[0]!.slice(0, 4), seqs[1]!.slice(0, 4)];
    const logits = model.forwardBatch(batch, caches, { lastN: 2 });
    expect(logits.shape).toEqual([4, spec.vocab]);
    const data = await logits.data();
    logits.dispose();
    [0, 1].forEach((b) =>
      [2, 3].forEach((t, r) => {
        const ref = refs[b]![t]!;
        let m = 0;
        for (let i = 0; i < spec.vocab; i++) m = Math.max(m, Math.abs(data[(b * 2 + r) * spec.vocab + i]! - ref[i]!));
        expect(m).toBeLessThan(1e-4);
      }),
    );
    expect(() => model.forwardBatch([[1], [2, 3]], caches)).toThrow(XqShapeError);
    expect(() => model.forwardBatch([[1]], caches)).toThrow(XqShapeError);
    expect(() => model.forwardBatch([[1], [2]], [caches[0]!, caches[0]!])).toThrow(XqStateError);
    for (const c of caches) c.dispose();
    model.dispose();
  });
});
