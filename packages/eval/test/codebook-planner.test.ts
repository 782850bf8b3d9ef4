import { beforeAll, describe, expect, it } from 'vitest';
import type { DecoderModel } from '@xquant/models';
import { XqConfigError, lloydMaxCodebook } from '@xquant/quant';
import { turboquantBits } from '@xquant/tfjs';
import { accountSpec, cacheSpec, codebookDistortion, planCodebookBudget, resolveCacheSpecs, specBits } from '@xquant/eval';
import { tinyModel, useCpu } from './support/tiny.js';

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s / 2 ** 32);
}

describe('codebook planner and self-accounting strategies on a tiny model', () => {
  let model: DecoderModel;
  let ids: number[];
  beforeAll(async () => {
    await useCpu();
    model = await tinyModel(3);
    const r = lcg(5);
    ids = [0, ...Array.from({ length: 127 }, () => 2 + Math.floor(r() * 62))];
  });

  it('accounts a turboquant configuration with its own accounting and holds that many bytes (fp16 residual aside)', () => {
    const shape = model.cacheShape;
    const spec = cacheSpec('tq', 'turboquant', { bits: 2.5, residualLength: 32 }, shape);
    expect(spec.config).toBeNull();
    const a = accountSpec(spec, shape, 2048);
    expect(a).toEqual(turboquantBits({ bits: 2.5, residualLength: 32 }, shape, 2048));
    expect(a.paperBits).toBe(2.5);
    const b = specBits(spec, shape, 2048);
    // held = accounted with a float32 instead of an fp16 residual window (2016 quantized tokens fill whole chunks)
    expect(b.heldBits).toBeCloseTo(b.storedBits + (32 * 16) / 2048, 10);
    expect(resolveCacheSpecs(['full'], shape).map((s) => s.id)).toEqual(['full']);
  });

  it('codebookDistortion falls with every half bit', () => {
    let prev = Infinity;
    for (const b of [1, 1.5, 2, 2.5, 3, 3.5, 4]) {
      const d = codebookDistortion(b, 64);
      expect(d).toBeLessThan(prev);
      prev = d;
    }
    expect(codebookDistortion(2, 64)).toBeCloseTo(lloydMaxCodebook(2, 64).mse * 64, 15);
  });

  it('plans within the budget, spends it until no upgrade fits, and verifies every family by KL', async () => {
    const shape = model.cacheShape;
    const budget = 2.6;
    const families = [{ split: 'rotated', scaleFormat: 'log8', scaleRule: 'lsq' }, { split: 'outliers', scaleFormat: 'fp16', scaleRule: 'norm' }] as const;
    const res = await planCodebookBudget({ model, budgetBits: budget, calibrationPrompt: ids, residualLength: 32, families });
    expect(res.sensitivity).toHaveLength(2 * shape.layers);
    expect(res.candidates).toHaveLength(2);
    for (let i = 1; i < res.candidates.length; i++) expect(res.candidates[i]!.kl).toBeGreaterThanOrEqual(res.candidates[i - 1]!.kl);
    for (const c of res.candidates) {
      expect(c.storedBits).toBeLessThanOrEqual(budget + 1e-12);
      expect(c.storedBits).toBe(turboquantBits(c.options, shape, 2048).storedBitsPerElement);
      // leftover spent: no single tensor can move up one width step within the budget
      const k = c.options.keyBits as number[];
      const v = c.options.valueBits as number[];
      for (const arr of [k, v]) {
        for (let l = 0; l < arr.length; l++) {
          const steps = [1, 1.5, 2, 2.5, 3, 3.5, 4].filter((w) => w > arr[l]!);
          for (const w of steps) {
            const next = [...arr];
            next[l] = w;
            const o = arr === k ? { ...c.options, keyBits: next } : { ...c.options, valueBits: next };
            expect(turboquantBits(o, shape, 2048).storedBitsPerElement).toBeGreaterThan(budget);
          }
        }
      }
    }
    expect(res.preset.strategy).toBe('turboquant');
    expect(res.preset.options).toEqual(res.candidates[0]!.options);
  });

  it('rejects a budget below every family and a short prompt', async () => {
    await expect(planCodebookBudget({ model, budgetBits: 0.5, calibrationPrompt: ids, residualLength: 32 })).rejects.toThrow(XqConfigError);
    await expect(planCodebookBudget({ model, budgetBits: 2, calibrationPrompt: ids.slice(0, 40), residualLength: 32 })).rejects.toThrow(XqConfigError);
  });
});
