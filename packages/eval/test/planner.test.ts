import * as tf from '@tensorflow/tfjs-core';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { DecoderModel } from '@xquant/models';
import { accountBits, codeAgreement } from '@xquant/cross-layer';
import { createKvCache, planned } from '@xquant/tfjs';
import { XqConfigError } from '@xquant/quant';
import {
  BENCH_FORMAT,
  BENCH_LIMITS,
  benchMarkdown,
  cacheSpec,
  captureLayers,
  layerErrors,
  planForBudget,
  resolveCacheSpecs,
  runBench,
  runEval,
  specBits,
  summarize,
  type CapturedLayers,
} from '@xquant/eval';
import { tinyModel, useCpu } from './support/tiny.js';

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s / 2 ** 32);
}

describe('code agreement, layer errors, planner, bench on a tiny model', () => {
  let model: DecoderModel;
  let ids: number[];
  let cap: CapturedLayers;
  beforeAll(async () => {
    await useCpu();
    model = await tinyModel(3);
    const r = lcg(9);
    ids = [0, ...Array.from({ length: 159 }, () => 2 + Math.floor(r() * 62))];
    cap = await captureLayers(model, ids, { queryRows: 16 });
  });

  it('captureLayers keeps K/V of every token and the last queries', () => {
    expect(cap.tokens).toBe(160);
    expect(cap.qHeads).toBe(2);
    expect(cap.keys[0]).toHaveLength(1 * 160 * 32);
    expect(cap.queries[1]).toHaveLength(2 * 16 * 32);
  });

  it('codeAgreement: 1 on the diagonal, chance = Σ p_i p_j from the code histograms, identical layers agree fully', () => {
    const a = codeAgreement(cap, 'values', { bits: 1, groupSize: 32 });
    expect(a.agreement[0]![0]).toBe(1);
    expect(a.agreement[0]![1]).toBe(a.agreement[1]![0]);
    // same K/V in both layers → agreement 1 between them
    const twin: CapturedLayers = { ...cap, keys: [cap.keys[0]!, cap.keys[0]!], values: [cap.values[0]!, cap.values[0]!] };
    const t = codeAgreement(twin, 'keys', { bits: 2, groupSize: 32 });
    expect(t.agreement[0]![1]).toBe(1);
    expect(t.tokens).toBe(160);
    // chance on the diagonal = Σ p(c)² ≤ 1 and ≥ 1/levels
    expect(t.chance[0]![0]).toBeGreaterThanOrEqual(0.25 - 1e-12);
    expect(t.chance[0]![0]).toBeLessThanOrEqual(1);
  });

  it('layerErrors: full is exact, 4-bit beats 1-bit on every layer', () => {
    const full = layerErrors(cap, (s) => createKvCache('full', s));
    for (const l of full) expect(l.attention).toBeLessThan(1e-6);
    const e4 = layerErrors(cap, (s) => createKvCache('kivi', s, { bits: 4, residualLength: 32 }));
    const e1 = layerErrors(cap, (s) => createKvCache('kivi', s, { bits: 1, residualLength: 32 }));
    for (let l = 0; l < 2; l++) {
      expect(e4[l]!.attention).toBeLessThan(e1[l]!.attention);
      expect(e4[l]!.keys).toBeLessThan(e1[l]!.keys);
    }
  });

  it('planned strategy: JSON options → cache; registered as "planned"; rejects forward donors and wrong layer counts', () => {
    const options = {
      residualLength: 32,
      keys: [{ bits: 2, codesFrom: null }, { bits: 2, codesFrom: 0 }],
      values: [{ bits: 1, codesFrom: null }, { bits: 4, codesFrom: null }],
      valueCalibration: ['least-squares', { eta: 0.1 }],
    };
    const cache = createKvCache('planned', model.cacheShape, options);
    expect(cache.strategyId).toBe('planned');
    cache.dispose();
    expect(() => planned({ ...options, keys: [{ bits: 2, codesFrom: 1 }, { bits: 2, codesFrom: null }] } as never)).toThrow();
    expect(() => planned(options as never).createCache({ layers: 3, kvHeads: 1, headDim: 32 })).toThrow(/plan has 2 layers/);
    expect(() => planned({ ...options, valueCalibration: 'magic' } as never)).toThrow(/calibration must be/);
  });

  it('planForBudget: the chosen plan fits the budget, is the best verified KL, and round-trips as a preset; too small a budget fails with the minimum', async () => {
    const budget = 3.0;
    const res = await planForBudget({ model, budgetBits: budget, calibrationPrompt: ids, residualLength: 32, groupSizes: [32], tokens: 256, sensitivity: false, maxVerify: 3 });
    expect(res.candidates).toHaveLength(3); // maxVerify is the number of plans verified, calibration variants included
    const two: string[] = [];
    const res2 = await planForBudget({ model, budgetBits: budget, calibrationPrompt: ids, residualLength: 32, groupSizes: [32], tokens: 256, sensitivity: false, maxVerify: 2, log: (l) => two.push(l) });
    expect(res2.candidates).toHaveLength(2);
    expect(two).toContain('plan: verifying 2 plans by KL on the calibration prompt');
    await expect(planForBudget({ model, budgetBits: budget, calibrationPrompt: ids, maxVerify: 0 })).rejects.toThrow(/maxVerify must be an integer ≥ 1; got 0/);
    expect(res.best.storedBits).toBeLessThanOrEqual(budget + 1e-9);
    for (const c of res.candidates) {
      expect(c.storedBits).toBeLessThanOrEqual(budget + 1e-9);
      expect(c.kl).toBeGreaterThanOrEqual(res.best.kl);
    }
    const o = res.best.options;
    const acct = accountBits({ config: { keys: o.keys, values: o.values, residualLength: 32, groupSize: 32 }, kvHeads: 1, headDim: 32, tokens: 256 });
    expect(acct.storedBitsPerElement).toBeCloseTo(res.best.storedBits, 12);
    // reusable: the preset evaluates through the normal spec path
    const spec = cacheSpec('p', res.preset.strategy, res.preset.options, model.cacheShape);
    expect(spec.id).toMatch(/^p\/R32\/g32/);
    expect(spec.config!.residualLength).toBe(32);
    createKvCache(res.preset.strategy, model.cacheShape, res.preset.options).dispose();
    await expect(planForBudget({ model, budgetBits: 0.5, calibrationPrompt: ids, residualLength: 32, groupSizes: [32], tokens: 256, sensitivity: false })).rejects.toThrow(
      /below the cheapest plan \(\d+\.\d+ bits/,
    );
    await expect(planForBudget({ model, budgetBits: 2, calibrationPrompt: ids.slice(0, 20) })).rejects.toThrow(/at least 96 tokens/);
  }, 120_000);

  it('planForBudget: value group sizes searched apart from keys — values at 64 with R = 32 (keys keep R), bits accounted with both, the preset reproduces through @file', async () => {
    const m64 = await tinyModel(5, 64); // headDim 64: a value group of 64 fits, a key group of 64 does not divide R = 32
    try {
      const budget = 3.2, T = 256, R = 32;
      const logs: string[] = [];
      const res = await planForBudget({ model: m64, budgetBits: budget, calibrationPrompt: ids, residualLength: R, groupSizes: [32, 64], tokens: T, sensitivity: false, maxVerify: 8, log: (l) => logs.push(l) });
      expect(logs.some((l) => /key group size 64 skipped/.test(l))).toBe(true);
      const { kvHeads, headDim } = m64.cacheShape;
      const bitsOf = (o: { keys: any[]; values: any[]; groupSize?: number; valueGroupSize?: number }) =>
        accountBits({ config: { keys: o.keys, values: o.values, residualLength: R, groupSize: o.groupSize!, valueGroupSize: o.valueGroupSize! }, kvHeads, headDim, tokens: T }).storedBitsPerElement;
      for (const c of res.candidates) {
        expect(c.options.groupSize).toBe(32);
        expect(c.name.startsWith('g32-v64')).toBe(c.options.valueGroupSize === 64);
        expect(c.options.valueGroupSize === 64 || c.options.valueGroupSize === 32).toBe(true);
        expect(c.storedBits).toBeCloseTo(bitsOf(c.options), 12);
        expect(c.storedBits).toBeLessThanOrEqual(budget + 1e-9);
        expect(c.kl).toBeGreaterThanOrEqual(res.best.kl);
      }
      // both value group sizes were searched and verified
      expect(new Set(res.candidates.map((c) => c.options.valueGroupSize))).toEqual(new Set([32, 64]));
      // the cheapest plan considered is all 1-bit with values at group 64 (half the value metadata of group 32)
      const L = m64.cacheShape.layers;
      const ones = { keys: Array.from({ length: L }, () => ({ bits: 1 as const, codesFrom: null })), values: Array.from({ length: L }, () => ({ bits: 1 as const, codesFrom: null })) };
      expect(res.minimumBits).toBeCloseTo(bitsOf({ ...ones, groupSize: 32, valueGroupSize: 64 }), 12);
      expect(res.minimumBits).toBeLessThan(bitsOf({ ...ones, groupSize: 32, valueGroupSize: 32 }) - 0.1);
      // the preset file carries both group sizes; `--caches @plan.json` evaluates the same cache: same bits, same KL
      const file = join(mkdtempSync(join(tmpdir(), 'xq-plan-')), 'plan.json');
      writeFileSync(file, JSON.stringify({ preset: res.preset }));
      const [full, spec] = resolveCacheSpecs([`@${file}`], m64.cacheShape);
      expect(spec!.options.valueGroupSize).toBe(res.best.options.valueGroupSize);
      expect(spec!.id).toBe(`${res.preset.name}/R32/g32${res.best.options.valueGroupSize === 64 ? '/v64' : ''}`);
      expect(specBits(spec!, m64.cacheShape, T).storedBits).toBeCloseTo(res.best.storedBits, 12);
      const evalFile = { path: 'calibration', name: 'calibration', kind: 'prose' as const, records: [{ kind: 'prose' as const, id: 'calibration', inputIds: ids }] };
      const again = summarize(await runEval({ model: m64, tokenizer: { decode: () => '' }, files: [evalFile], caches: [full!, spec!], prosePrefill: 64, bitsTokens: T }));
      const kl = again.find((r) => r.config.id === spec!.id)!.prose!.kl;
      expect(Math.abs(kl - res.best.kl)).toBeLessThanOrEqual(1e-6 * res.best.kl + 1e-9);
    } finally {
      m64.dispose();
    }
  }, 120_000);

  it('runBench: full baseline in the same run, one speed row per config × context, memory shrinks with bits', async () => {
    const b = await runBench({ model, caches: resolveCacheSpecs(['kivi-2', 'kivi-1'], model.cacheShape, { residualLengths: [32] }), contexts: [64], memoryContexts: [256], steps: 2, warmup: 1 });
    expect(b.format).toBe(BENCH_FORMAT);
    expect(b.speed.map((r) => r.config)).toEqual(['full', 'kivi-2/R32/g32', 'kivi-1/R32/g32']);
    for (const r of b.speed) expect(r.msPerStep).toBeGreaterThan(0);
    const mem = Object.fromEntries(b.memory.map((r) => [r.config, r]));
    expect(mem.full!.heldBits).toBe(32);
    expect(mem['kivi-1/R32/g32']!.heldBytes).toBeLessThan(mem['kivi-2/R32/g32']!.heldBytes);
    expect(mem['kivi-2/R32/g32']!.heldBytes).toBeLessThan(mem.full!.heldBytes);
    expect(benchMarkdown(b)).toMatch(/\| kivi-1\/R32\/g32 \| 64 \|/);
    expect(tf.memory().numTensors).toBeLessThan(200);
  }, 60_000);
});

describe('runBench limits (issue 13 item 8b)', () => {
  it('rejects steps, warm-up and context lengths above BENCH_LIMITS with E_CONFIG before touching the model', async () => {
    // a model whose every use throws: the limits must be checked first
    const boom = () => {
      throw new Error('the model was used');
    };
    const model = { cacheShape: { layers: 1, kvHeads: 1, headDim: 32 }, config: { vocabSize: 64 }, forward: boom } as never;
    const caches = [] as never[];
    const fails = async (o: Record<string, unknown>, message: RegExp) => {
      const e = await runBench({ model, caches, ...o }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(XqConfigError);
      expect((e as Error).message).toMatch(message);
    };
    await fails({ steps: 1e9 }, /steps must be at most 100000 \(BENCH_LIMITS\.steps\)/);
    await fails({ steps: BENCH_LIMITS.steps + 1 }, /BENCH_LIMITS\.steps/);
    await fails({ warmup: 1e9 }, /BENCH_LIMITS\.warmup/);
    await fails({ contexts: [256, 2 ** 30] }, /BENCH_LIMITS\.contextTokens/);
    await fails({ memoryContexts: [2 ** 40] }, /BENCH_LIMITS\.memoryContextTokens/);
    await fails({ contexts: Array.from({ length: 300 }, (_, i) => i + 1) }, /BENCH_LIMITS\.contexts/);
    await fails({ steps: 0 }, /steps must be an integer ≥ 1/);
  });
});
