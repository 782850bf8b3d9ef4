import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqError } from '@xquant/quant';
import { loadModel } from '@xquant/models';
import { createKvCache, selectBackend } from '@xquant/tfjs';
import { fullMemory, parsePlanJson, presetChoice, runGeneration } from '../src/session.js';

beforeAll(async () => {
  tf.enableProdMode();
  await selectBackend({ prefer: 'cpu' });
});

describe('web app session logic (Node)', () => {
  it('reads a plan JSON as xquant plan writes it, or its preset alone; refuses anything else with E_CONFIG', () => {
    const preset = { name: 'p', strategy: 'planned', options: { residualLength: 32 } };
    const want = { label: 'p', strategy: 'planned', options: { residualLength: 32 } };
    expect(parsePlanJson(JSON.stringify({ format: 'xquant-plan/v1', preset }))).toEqual(want);
    expect(parsePlanJson(JSON.stringify(preset), 'x.json')).toEqual(want);
    expect(parsePlanJson(JSON.stringify({ strategy: 'kivi', options: {} }), 'x.json').label).toBe('x.json');
    for (const bad of ['{', '[]', '{"strategy":"kivi"}', '{"strategy":3,"options":{}}', '{"strategy":"kivi","options":[]}']) {
      const e = (() => {
        try {
          parsePlanJson(bad, 'bad.json');
        } catch (err) {
          return err;
        }
      })();
      expect(XqError.isInstance(e) && e.code === 'E_CONFIG' && e.message.startsWith('bad.json: '), bad).toBe(true);
    }
    expect(presetChoice('full', 32)).toEqual({ label: 'full', strategy: 'full', options: {} });
    expect(presetChoice('kivi-2', 64)).toEqual({ label: 'kivi-2 (R = 64)', strategy: 'kivi-2', options: { residualLength: 64 } });
  });

  it('what full would hold equals a real full cache for 0, 1 and 37 tokens', () => {
    const shape = { layers: 3, kvHeads: 2, headDim: 16 };
    for (const tokens of [0, 1, 37]) {
      const cache = createKvCache('full', shape);
      if (tokens > 0) {
        for (let l = 0; l < 3; l++) {
          const k = tf.ones([2, tokens, 16]) as tf.Tensor3D;
          cache.prefill(l, k, k);
          k.dispose();
        }
      }
      expect(fullMemory(shape, tokens)).toEqual(cache.memory());
      cache.dispose();
    }
  });

  it('a run reports live statistics per token, ends with the cache memory, and leaks no tensor', async () => {
    const model = await loadModel('models/xq-demo');
    const seen: number[] = [];
    const r = await runGeneration({
      model,
      cache: presetChoice('kivi-2', 32),
      prompt: 'The configuration file',
      maxNewTokens: 6,
      onToken: (_text, s) => {
        seen.push(s.memory.tokens);
        expect(s.full.tokens).toBe(s.memory.tokens);
      },
    });
    expect(seen).toEqual([4, 5, 6, 7, 8, 9]); // memory after each step: prompt 4, then one more per generated token
    expect(r.stats.ids).toEqual(r.result.ids);
    expect(r.strategyId).toBe('kivi');
    expect(r.tensorDelta).toBe(0);
    model.model.dispose();
  });
});
