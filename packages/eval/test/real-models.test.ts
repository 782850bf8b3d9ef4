import { existsSync, readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, SafetensorsFile, type LoadedModel } from '@xquant/models';
import { createKvCache } from '@xquant/tfjs';
import { readEvalFile, resolveCacheSpecs, runEval, summarize } from '@xquant/eval';

const SHARED = '../shared';
const MODELS = ['xq-llama-20m', 'xq-qwen2-30m'] as const;
const have =
  MODELS.every((m) => existsSync(`${SHARED}/models/${m}/config.json`) && existsSync(`${SHARED}/eval/refs/${m}.json`)) &&
  existsSync(`${SHARED}/eval/prose_512.jsonl`);

describe.skipIf(!have)('protocol on the real models vs ../shared/eval/refs — needs ../shared/models and ../shared/eval/refs', () => {
  beforeAll(async () => {
    await import('@tensorflow/tfjs-backend-wasm');
    await tf.setBackend('wasm');
    await tf.ready();
  });

  describe('xq-llama-20m prose record 0, full cache', () => {
    let m: LoadedModel;
    beforeAll(async () => {
      m = await loadModel(`${SHARED}/models/xq-llama-20m`);
    });
    afterAll(() => m?.model.dispose());

    it('harness (64-token prefill + 447 steps) = plain forward at positions 63…510; plain NLL = float64 reference', async () => {
      const file = await readEvalFile(`${SHARED}/eval/prose_512.jsonl`);
      const res = await runEval({ model: m.model, tokenizer: m.tokenizer, files: [file], caches: resolveCacheSpecs([], m.model.cacheShape), limit: 1 });
      const s = summarize(res)[0]!.prose!;
      expect(s.predictions).toBe(448);
      // plain forward of the whole record, NLL in float64 from the logits
      const ids = file.records[0]!.inputIds;
      const cache = createKvCache('full', m.model.cacheShape);
      const t = m.model.forward(ids, cache, 'all');
      const logits = t.dataSync();
      t.dispose();
      cache.dispose();
      const V = m.config.vocabSize;
      let nll63 = 0;
      let nllAll = 0;
      for (let p = 0; p < 511; p++) {
        let mx = -Infinity;
        for (let c = 0; c < V; c++) mx = Math.max(mx, logits[p * V + c]!);
        let z = 0;
        for (let c = 0; c < V; c++) z += Math.exp(logits[p * V + c]! - mx);
        const nll = mx + Math.log(z) - logits[p * V + ids[p + 1]!]!;
        nllAll += nll;
        if (p >= 63) nll63 += nll;
      }
      expect(Math.abs(Math.log(s.ppl) - nll63 / 448)).toBeLessThan(1e-5);
      const ref = await SafetensorsFile.open(`${SHARED}/eval/refs/xq-llama-20m.cpu_fp64.safetensors`);
      const nllRef = Number((await ref.readRaw('prose.nll_sum_per_sequence'))[0]);
      await ref.close();
      expect(Math.abs(nllAll - nllRef) / nllRef).toBeLessThan(1e-5);
    }, 180_000);
  });

  for (const name of MODELS) {
    it(`${name}: passkey with the full cache reproduces the reference's generated ids (first two 256-token prompts)`, async () => {
      const m = await loadModel(`${SHARED}/models/${name}`);
      try {
        const refs = JSON.parse(readFileSync(`${SHARED}/eval/refs/${name}.json`, 'utf8')).passkey;
        const files = [await readEvalFile(`${SHARED}/eval/passkey_256.jsonl`)];
        const res = await runEval({ model: m.model, tokenizer: m.tokenizer, files, caches: resolveCacheSpecs([], m.model.cacheShape), limit: 2 });
        expect(res.passkey).toHaveLength(2);
        for (const r of res.passkey) {
          const ref = refs[String(r.length)].results.find((x: { id: string }) => x.id === r.id);
          const eos = ref.generated_ids.indexOf(1);
          const expected = eos >= 0 ? ref.generated_ids.slice(0, eos) : ref.generated_ids;
          expect(r.perCache.full!.ids).toEqual(expected);
          expect(r.perCache.full!.text).toBe(ref.generated_text);
          expect(r.perCache.full!.correct).toBe(ref.correct);
        }
      } finally {
        m.model.dispose();
      }
    }, 180_000);
  }
});
