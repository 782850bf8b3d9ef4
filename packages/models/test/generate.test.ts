import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqConfigError, XqNumericError } from '@xquant/quant';
import { createKvCache, selectBackend } from '@xquant/tfjs';
import { DecoderModel, createRng, createTokenizer, generate, parseHfConfig, sampleToken } from '../src/index.js';
import { hfConfig, tinySpec, tinyTokenizer, tinyWeights } from './support/tiny.js';

const LOGITS = [Math.log(0.5), Math.log(0.3), Math.log(0.2)];

function frequencies(draw: () => number, n: number, k: number): number[] {
  const c = new Array(k).fill(0);
  for (let i = 0; i < n; i++) c[draw()]++;
  return c.map((x) => x / n);
}

describe('sampling', () => {
  it('greedy is the first maximum; top-k 1 and a tiny top-p are greedy too', () => {
    expect(sampleToken([1, 3, 3, 2])).toBe(1);
    const rng = createRng(1);
    expect(sampleToken([1, 3, 2], { temperature: 1, topK: 1 }, rng)).toBe(1);
    for (let i = 0; i < 50; i++) expect(sampleToken([1, 3, 2], { temperature: 5, topP: 1e-6 }, rng)).toBe(1);
  });
  it('issue 13 item 6: a tiny or subnormal temperature samples the most likely token, never the least likely', () => {
    // logits/T overflowed to ±∞ and ∞ − ∞ = NaN: every weight NaN, the draw fell through to the last candidate
    const rng = createRng(7);
    const logits = [0.5, 3, -2, 2.999, 1];
    for (const temperature of [1e-320, Number.MIN_VALUE, 1e-300, 1e-30]) {
      for (let i = 0; i < 20; i++) expect(sampleToken(logits, { temperature }, rng)).toBe(1);
      for (let i = 0; i < 5; i++) expect(sampleToken(logits, { temperature, topK: 3, topP: 0.9 }, rng)).toBe(1);
    }
    // the limit is continuous: ties at the top still split evenly at a subnormal temperature
    const tie = frequencies(() => sampleToken([1, 5, 5, 0], { temperature: 1e-320 }, rng), 4000, 4);
    expect(tie[0]! + tie[3]!).toBe(0);
    expect(Math.abs(tie[1]! - 0.5)).toBeLessThan(0.05);
    // a huge temperature flattens to uniform without overflow
    const flat = frequencies(() => sampleToken([-3e38, 3e38], { temperature: 1e308 }, rng), 4000, 2);
    expect(Math.abs(flat[0]! - 0.5)).toBeLessThan(0.05);
  });

  it('temperature 1 follows softmax; top-k and top-p cut the tail; temperature 2 flattens (20k draws, ±0.015)', () => {
    const rng = createRng(42);
    const n = 20000;
    const eq = (got: number[], want: number[]) => got.forEach((g, i) => expect(Math.abs(g - want[i]!)).toBeLessThan(0.015));
    eq(frequencies(() => sampleToken(LOGITS, { temperature: 1 }, rng), n, 3), [0.5, 0.3, 0.2]);
    eq(frequencies(() => sampleToken(LOGITS, { temperature: 1, topK: 2 }, rng), n, 3), [0.625, 0.375, 0]);
    eq(frequencies(() => sampleToken(LOGITS, { temperature: 1, topP: 0.75 }, rng), n, 3), [0.625, 0.375, 0]);
    const z = Math.sqrt(0.5) + Math.sqrt(0.3) + Math.sqrt(0.2);
    eq(frequencies(() => sampleToken(LOGITS, { temperature: 2 }, rng), n, 3), [Math.sqrt(0.5) / z, Math.sqrt(0.3) / z, Math.sqrt(0.2) / z]);
  });
  it('the same seed gives the same stream; different seeds differ', () => {
    const a = createRng(7);
    const b = createRng(7);
    const c = createRng(8);
    const xs = Array.from({ length: 100 }, () => a());
    expect(Array.from({ length: 100 }, () => b())).toEqual(xs);
    expect(Array.from({ length: 100 }, () => c())).not.toEqual(xs);
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
    const mean = Array.from({ length: 10000 }, () => a()).reduce((s, x) => s + x, 0) / 10000;
    expect(Math.abs(mean - 0.5)).toBeLessThan(0.01);
  });
  it('rejects bad settings and non-finite logits, saying where', () => {
    expect(() => sampleToken([1, NaN, 2])).toThrow(XqNumericError);
    expect(() => sampleToken([1, NaN, 2])).toThrow(/logit 1 is NaN/);
    expect(() => sampleToken([1, 2], { temperature: -1 })).toThrow(XqConfigError);
    expect(() => sampleToken([1, 2], { topP: 0 })).toThrow(/topP must be in \(0, 1\]/);
    expect(() => sampleToken([1, 2], { topK: 1.5 })).toThrow(/topK/);
    expect(() => sampleToken([1, 2], { temperature: 1 })).toThrow(/needs an rng/);
  });
});

describe('generate on a tiny model', () => {
  const spec = tinySpec('llama');
  let model: DecoderModel;
  const tok = tinyTokenizer();
  const tokenizer = createTokenizer(tok.json, tok.config);
  beforeAll(async () => {
    tf.env().set('IS_TEST', true);
    await selectBackend({ prefer: 'cpu' });
    const w = tinyWeights(spec, 77);
    model = await DecoderModel.fromWeights(parseHfConfig(hfConfig(spec)), {
      source: 'tiny',
      has: (n) => w.has(n),
      shape: (n) => w.get(n)!.shape,
      read: async (n) => w.get(n)!.data,
    });
  });
  const run = async (o: Partial<Parameters<typeof generate>[0]>) => {
    const cache = createKvCache('full', model.cacheShape);
    try {
      return await generate({ model, cache, tokenizer, prompt: 'héllo wörld 🚀', maxNewTokens: 12, stopOnEos: false, ...o });
    } finally {
      cache.dispose();
    }
  };

  it('seeded sampling is reproducible and differs across seeds; greedy ignores the seed', async () => {
    const a = await run({ temperature: 1.5, seed: 3 });
    const b = await run({ temperature: 1.5, seed: 3 });
    const c = await run({ temperature: 1.5, seed: 4 });
    expect(b.ids).toEqual(a.ids);
    expect(c.ids).not.toEqual(a.ids);
    expect(a.seed).toBe(3);
    const g1 = await run({ seed: 1 });
    const g2 = await run({ seed: 2 });
    expect(g1.ids).toEqual(g2.ids);
    expect(a.ids).toHaveLength(12);
    expect(a.stopReason).toBe('length');
  });
  it('streams text pieces whose concatenation is the decoded text, without broken characters', async () => {
    const pieces: string[] = [];
    const indices: number[] = [];
    // sample many byte tokens so multi-byte UTF-8 sequences get split across tokens
    const r = await run({
      temperature: 3,
      seed: 11,
      maxNewTokens: 40,
      onToken: (t) => {
        pieces.push(t.text);
        indices.push(t.index);
      },
    });
    expect(indices).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(pieces.join('')).toBe(r.text);
    expect(r.text).toBe(tokenizer.decode(r.ids));
    expect(r.promptIds).toEqual(tokenizer.encode('héllo wörld 🚀'));
    expect(r.timings.tokensPerSecond).toBeGreaterThan(0);
  });
  it('stops at EOS (not included in the text), honours maxNewTokens 0 and abort', async () => {
    const greedy = await run({ maxNewTokens: 5 });
    const third = greedy.ids[2]!;
    const stopped = await run({ maxNewTokens: 5, stopOnEos: true, eosTokenIds: [third] });
    expect(stopped.ids).toEqual(greedy.ids.slice(0, 3));
    expect(stopped.stopReason).toBe('eos');
    expect(stopped.text).toBe(tokenizer.decode(greedy.ids.slice(0, 2)));
    const none = await run({ maxNewTokens: 0 });
    expect(none.ids).toEqual([]);
    const ctl = new AbortController();
    const aborted = await run({ onToken: (t) => (t.index === 1 ? ctl.abort() : undefined), signal: ctl.signal });
    expect(aborted.ids).toHaveLength(2);
    expect(aborted.stopReason).toBe('abort');
  });
  it('rejects a text prompt without a tokenizer and a missing prompt', async () => {
    const cache = createKvCache('full', model.cacheShape);
    await expect(generate({ model, cache, prompt: 'x' })).rejects.toThrow(/needs a tokenizer/);
    await expect(generate({ model, cache })).rejects.toThrow(/give prompt/);
    await expect(generate({ model, cache, ids: [0], maxNewTokens: -1 })).rejects.toThrow(/maxNewTokens/);
    cache.dispose();
  });
});
