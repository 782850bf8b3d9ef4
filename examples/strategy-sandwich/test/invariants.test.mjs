// Proves the strategy with the invariants of @xquant/tfjs/testing, using node:test and only the packages' public
// entries (this file runs against the packed tarballs, installed outside the workspace: scripts/packaging.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
import { createKvCache, strategyIds } from '@xquant/tfjs';
import { checkStrategy, strategyInvariants } from '@xquant/tfjs/testing';
import register, { SANDWICH_ID, sandwich } from 'xquant-strategy-sandwich';

tf.enableProdMode();
await tf.setBackend('cpu');
register();

test('registers under its id, once', () => {
  register();
  assert.equal(strategyIds().filter((id) => id === SANDWICH_ID).length, 1);
  const cache = createKvCache(SANDWICH_ID, { layers: 4, kvHeads: 2, headDim: 32 }, { residualLength: 32 });
  assert.equal(cache.strategyId, SANDWICH_ID);
  assert.deepEqual(cache.config.keys.map((k) => k.bits), [16, 4, 4, 16]);
  assert.equal(cache.memory().paperBitsPerElement, (16 * 4 + 4 * 2 + 2 * 2) / 8);
  cache.dispose();
});

const options = { residualLength: 32 };
const kit = { shape: { layers: 4, kvHeads: 2, headDim: 32 }, promptTokens: 40, decodeSteps: 30, options };
for (const inv of strategyInvariants(SANDWICH_ID, kit)) {
  test(`invariant: ${inv.name}`, () => inv.run());
}

test('checkStrategy on the strategy object agrees: every invariant holds, also with 1-bit values and 2 edge layers', async () => {
  const report = await checkStrategy(sandwich({ residualLength: 32, valueBits: 1, edgeLayers: 2 }), { ...kit, shape: { layers: 6, kvHeads: 2, headDim: 32 }, options: undefined });
  assert.deepEqual(report.failed.map((f) => f.error.message), []);
  assert.equal(report.passed.length, 6);
});
