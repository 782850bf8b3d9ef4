import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { createKvCache } from '@xquant/tfjs';
import { randn, useCpu } from './helpers.js';

beforeAll(useCpu);

describe.each(['full', 'xquant-1.38', 'kivi-1'])('%s: no tensor leaks', (id) => {
  it('tf.memory().numTensors after 10,000 decode steps equals that after 10', () => {
    const H = 1, D = 32, L = 2;
    // full: small chunks so sealing chunks happens between the resets too
    const cache = createKvCache(id, { layers: L, kvHeads: H, headDim: D }, id === 'full' ? { chunkTokens: 128 } : { residualLength: 32 });
    const k = tf.tensor3d(randn(H * D, 1), [H, 1, D]);
    const v = tf.tensor3d(randn(H * D, 2), [H, 1, D]);
    const q = tf.tensor3d(randn(2 * H * D, 3), [2 * H, 1, D]);
    let after10 = -1;
    for (let step = 0; step < 10_000; step++) {
      // bound the context (and the test's time) by resetting every 500 tokens; resets must free everything too
      if (step > 0 && step % 500 === 0) cache.reset();
      for (let l = 0; l < L; l++) {
        cache.append(l, k, v);
        cache.attend(l, q).dispose();
      }
      if (step === 9) after10 = tf.memory().numTensors;
    }
    cache.reset();
    for (let l = 0; l < L; l++) {
      for (let s = 0; s < 10; s++) {
        cache.append(l, k, v);
        cache.attend(l, q).dispose();
      }
    }
    expect(tf.memory().numTensors).toBe(after10);
    const before = tf.memory().numTensors;
    cache.dispose();
    expect(tf.memory().numTensors).toBeLessThanOrEqual(before);
    tf.dispose([k, v, q]);
  });
});
