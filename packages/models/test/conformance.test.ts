import { existsSync, readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { halfTable } from '@xquant/quant';
import { generate, loadModel, SafetensorsFile, type LoadedModel } from '../src/index.js';
import { createKvCache, selectBackend } from '@xquant/tfjs';

const SHARED = '../shared';
const REFS = `${SHARED}/eval/refs`;
const MODELS = ['xq-llama-20m', 'xq-qwen2-30m'] as const;
const have = MODELS.every((m) => existsSync(`${SHARED}/models/${m}/config.json`) && existsSync(`${REFS}/${m}.cpu_fp64.safetensors`));

type Prompt = { name: 'short' | 'medium' | 'long'; text: string; input_ids: number[] };

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function argmaxRows(data: Float32Array, cols: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < data.length / cols; r++) {
    let best = 0;
    for (let c = 1; c < cols; c++) if (data[r * cols + c]! > data[r * cols + best]!) best = c;
    out.push(best);
  }
  return out;
}

describe.skipIf(!have)('conformance with the full cache vs ../shared/eval/refs (float64 logits, greedy ids, K/V) — needs ../shared/eval/refs and ../shared/models', () => {
  const prompts: Prompt[] = have ? JSON.parse(readFileSync(`${SHARED}/eval/prompts.json`, 'utf8')) : [];
  beforeAll(async () => {
    tf.env().set('IS_TEST', true);
    await selectBackend({ prefer: 'wasm' });
  });

  for (const name of MODELS) {
    describe(name, () => {
      let loaded: LoadedModel;
      let ref: SafetensorsFile;
      let fp64: SafetensorsFile;
      beforeAll(async () => {
        loaded = await loadModel(`${SHARED}/models/${name}`);
        ref = await SafetensorsFile.open(`${REFS}/${name}.safetensors`);
        fp64 = await SafetensorsFile.open(`${REFS}/${name}.cpu_fp64.safetensors`);
      });
      afterAll(async () => {
        loaded?.model.dispose();
        await ref?.close();
        await fp64?.close();
      });

      it('tokenizer reproduces the stored input_ids of every prompt', async () => {
        for (const p of prompts) {
          const ids = Array.from(await ref.readRaw(`${p.name}.input_ids`), Number);
          expect(ids).toEqual(p.input_ids);
          expect(loaded.tokenizer.encode(p.text)).toEqual(ids);
        }
      });

      it('short: logits at all 20 positions within 1e-3 of the float64 reference', async () => {
        const p = prompts.find((x) => x.name === 'short')!;
        const cache = createKvCache('full', loaded.model.cacheShape);
        const logits = loaded.model.forward(p.input_ids, cache, 'all');
        const got = (await logits.data()) as Float32Array;
        logits.dispose();
        cache.dispose();
        const want = await fp64.readFloat32('short.logits_all');
        const d = maxAbsDiff(got, want);
        expect(d).toBeLessThan(1e-3);
        expect(argmaxRows(got, 8192)).toEqual(argmaxRows(want, 8192));
      });

      for (const which of ['short', 'medium', 'long'] as const) {
        it(`${which}: last-4 logits within 1e-3 of float64, 32 greedy ids equal the reference${which === 'long' ? ', post-RoPE K/V match' : ''}`, async () => {
          const p = prompts.find((x) => x.name === which)!;
          const cache = createKvCache('full', loaded.model.cacheShape);
          const before = tf.memory().numTensors;
          const logits = loaded.model.forward(p.input_ids, cache, { lastN: 4 });
          const got = (await logits.data()) as Float32Array;
          logits.dispose();
          expect(maxAbsDiff(got, await fp64.readFloat32(`${which}.logits_last4`))).toBeLessThan(1e-3);
          if (which === 'long') {
            const half = halfTable();
            for (let l = 0; l < loaded.config.numLayers; l++) {
              const { keys, values } = cache.dequantize(l);
              for (const [t, kind] of [[keys, 'key'], [values, 'value']] as const) {
                expect(t.shape).toEqual([2, 1000, 64]);
                const mine = (await t.data()) as Float32Array;
                const bits = (await ref.readRaw(`long.layer${l}.${kind}`)) as Uint16Array;
                let max = 0;
                let sum = 0;
                for (let i = 0; i < bits.length; i++) {
                  const d = Math.abs(mine[i]! - half[bits[i]!]!);
                  max = Math.max(max, d);
                  sum += d;
                }
                // reference: fp16 rounding of TF32 GPU values (cross_check.json: max |Δ| ≤ 0.0097 vs float64)
                expect(max, `layer ${l} ${kind}`).toBeLessThan(0.02);
                expect(sum / bits.length, `layer ${l} ${kind}`).toBeLessThan(2e-3);
                t.dispose();
              }
            }
          }
          // continue greedily from the prefilled cache: feed the argmax of the last row, 31 more steps
          const rest = await generate({
            model: loaded.model,
            cache,
            ids: [argmaxRows(got.subarray(3 * 8192), 8192)[0]!],
            maxNewTokens: 31,
            stopOnEos: false,
          });
          const greedy = [argmaxRows(got.subarray(3 * 8192), 8192)[0]!, ...rest.ids];
          expect(greedy).toEqual(Array.from(await ref.readRaw(`${which}.greedy_ids`), Number));
          expect(cache.seqLength(0)).toBe(p.input_ids.length + 31);
          cache.dispose();
          expect(tf.memory().numTensors).toBe(before);
        });
      }

      it('generate(prompt) streams the reference greedy continuation of the short prompt as text', async () => {
        const p = prompts.find((x) => x.name === 'short')!;
        const cache = createKvCache('full', loaded.model.cacheShape);
        let streamed = '';
        const out = await generate({
          model: loaded.model,
          tokenizer: loaded.tokenizer,
          cache,
          prompt: p.text,
          maxNewTokens: 32,
          temperature: 0,
          stopOnEos: false,
          onToken: (t) => {
            streamed += t.text;
          },
        });
        cache.dispose();
        const want = Array.from(await ref.readRaw('short.greedy_ids'), Number);
        expect(out.promptIds).toEqual(p.input_ids);
        expect(out.ids).toEqual(want);
        expect(out.text).toBe(loaded.tokenizer.decode(want));
        expect(streamed).toBe(out.text);
      });
    });
  }
});
