import { beforeAll, describe, expect, it } from 'vitest';
import type { DecoderModel } from '@xquant/models';
import { XqConfigError, lloydMaxCodebook } from '@xquant/quant';
import { turboquantBits } from '@xquant/tfjs';
import { DEFAULT_CALIBRATION_TEXT, FULL_SPEC, accountSpec, cacheSpec, codebookDistortion, planCodebookBudget, resolveCacheSpecs, runEval, specBits, summarize, syntheticPasskeys } from '@xquant/eval';
import { tinyModel, useCpu } from './support/tiny.js';

/** A character tokenizer (BOS = 0, character c → its code + 1), and its inverse. */
const charIds = (text: string): number[] => [0, ...[...text].map((c) => c.charCodeAt(0) + 1)];
const charText = (ids: readonly number[]): string => String.fromCharCode(...ids.slice(1).map((i) => i - 1));

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

  it('refines a plan by measured moves: from a misleading sensitivity it recovers, within the budget, and its KL re-measures exactly', async () => {
    const shape = model.cacheShape;
    const budget = 3.0;
    const families = [{ split: 'rotated', scaleFormat: 'log8', scaleRule: 'lsq' }] as const;
    const honest = await planCodebookBudget({ model, budgetBits: budget, calibrationPrompt: ids, residualLength: 32, families });
    // the measured sensitivities with the layers swapped: the greedy then starves the tensors that matter
    const L = shape.layers;
    const misleading = honest.sensitivity.map((s) => ({ ...s, kl: honest.sensitivity.find((t) => t.kind === s.kind && t.layer === L - 1 - s.layer)!.kl }));
    const plain = await planCodebookBudget({ model, budgetBits: budget, calibrationPrompt: ids, residualLength: 32, families, sensitivity: misleading });
    const lines: string[] = [];
    const res = await planCodebookBudget({ model, budgetBits: budget, calibrationPrompt: ids, residualLength: 32, families, sensitivity: misleading, refine: 3, log: (l) => lines.push(l) });
    const best = res.candidates[0]!;
    expect(best.refined?.length).toBeGreaterThan(0);
    expect(best.name).toBe(`${plain.candidates[0]!.name}+refined`);
    expect(best.kl).toBeLessThan(plain.candidates[0]!.kl);
    // the greedy plan stays in the list, verified as before
    expect(res.candidates.map((c) => c.kl)).toContain(plain.candidates[0]!.kl);
    expect(best.storedBits).toBeLessThanOrEqual(budget + 1e-12);
    expect(best.storedBits).toBe(turboquantBits(best.options, shape, 2048).storedBitsPerElement);
    expect(res.preset.options).toEqual(best.options);
    expect(res.preset.name).toBe('tqplan-3b-R32-refined');
    // each accepted round is logged with its moves, in order
    const accepted = lines.filter((l) => /^plan: refine round \d: (keys|values)\d/.test(l)).map((l) => l.replace(/^plan: refine round \d: /, '').replace(/: KL .*$/, ''));
    expect(accepted.join(', ')).toBe(best.refined!.join(', '));
    // the KL the planner reports is the KL an independent eval of the preset measures
    const evalFile = { path: 'c', name: 'c', kind: 'prose' as const, records: [{ kind: 'prose' as const, id: 'c', inputIds: ids }] };
    const spec = { ...cacheSpec('p', 'turboquant', res.preset.options, shape), id: 'p' };
    const out = await runEval({ model, tokenizer: { decode: () => '' }, files: [evalFile], caches: [FULL_SPEC, spec], prosePrefill: 64, bitsTokens: 2048 });
    expect(summarize(out).find((x) => x.config.id === 'p')!.prose!.kl).toBeCloseTo(best.kl, 12);
  });

  it('guards refinement by passkey prompts: with every prompt answered it keeps the same moves, and it logs the counts', async () => {
    const budget = 3.0;
    const families = [{ split: 'rotated', scaleFormat: 'log8', scaleRule: 'lsq' }] as const;
    const honest = await planCodebookBudget({ model, budgetBits: budget, calibrationPrompt: ids, residualLength: 32, families });
    const L = model.cacheShape.layers;
    const misleading = honest.sensitivity.map((s) => ({ ...s, kl: honest.sensitivity.find((t) => t.kind === s.kind && t.layer === L - 1 - s.layer)!.kl }));
    const base = { model, budgetBits: budget, calibrationPrompt: ids, residualLength: 32, families, sensitivity: misleading, refine: 2 };
    const plain = await planCodebookBudget(base);
    // folded into the tiny model's vocabulary (ids 2…63)
    const records = syntheticPasskeys(charIds, { lengths: [96], perLength: 2 }).map((r) => ({ ...r, inputIds: r.inputIds.map((i) => (i === 0 ? 0 : 2 + (i % 62))) }));
    // a tokenizer that reads every continuation as every record's answer: all plans answer all prompts
    const lines: string[] = [];
    const guarded = await planCodebookBudget({ ...base, passkeys: { records, tokenizer: { decode: () => records.map((r) => r.answer).join(' ') } }, log: (l) => lines.push(l) });
    expect(lines.some((l) => /passkeys answered 1 \(current\)/.test(l))).toBe(true);
    expect(guarded.candidates[0]!.refined).toEqual(plain.candidates[0]!.refined);
    expect(guarded.preset).toEqual(plain.preset);
    await expect(planCodebookBudget({ ...base, passkeys: { records: [], tokenizer: { decode: () => '' } } })).rejects.toThrow(expect.objectContaining({ code: 'E_CONFIG' }));
  });

  it('builds synthetic passkey prompts from the calibration text: sized, seeded, with the needle and the question', () => {
    const recs = syntheticPasskeys(charIds, { lengths: [256, 512], perLength: 3, seed: 7 });
    expect(recs).toHaveLength(6);
    for (const r of recs) {
      expect(r.kind).toBe('passkey');
      expect(r.answer).toMatch(/^[1-9][0-9]{4}$/);
      expect(r.inputIds.length).toBeLessThanOrEqual(r.length);
      expect(r.inputIds.length).toBeGreaterThan(r.length * 0.6);
      const text = charText(r.inputIds);
      const needle = `The pass key is ${r.answer}. Remember it. ${r.answer} is the pass key.`;
      const question = 'What is the pass key? The pass key is';
      expect(text).toContain(needle);
      expect(text.endsWith(question)).toBe(true);
      // the filler is calibration text (whole sentences), not eval data
      const filler = text.replace(needle, '').slice(0, -question.length).split(/(?<=[.!?])\s+/).map((x) => x.trim()).filter((x) => x.length > 0);
      expect(filler.length).toBeGreaterThan(0);
      for (const sentence of filler) expect(DEFAULT_CALIBRATION_TEXT).toContain(sentence);
    }
    expect(syntheticPasskeys(charIds, { lengths: [256, 512], perLength: 3, seed: 7 })).toEqual(recs);
    expect(syntheticPasskeys(charIds, { lengths: [256], perLength: 3, seed: 8 }).map((r) => r.answer)).not.toEqual(recs.slice(0, 3).map((r) => r.answer));
    for (const bad of [{ perLength: 0 }, { lengths: [10] }, { text: 'one sentence only' }]) {
      expect(() => syntheticPasskeys(charIds, bad)).toThrow(expect.objectContaining({ code: 'E_CONFIG' }));
    }
  });

  it('pools several calibration prompts: every plan\'s KL is the independent eval over all of them, not over one', async () => {
    const r = lcg(11);
    const second = [0, ...Array.from({ length: 111 }, () => 2 + Math.floor(r() * 62))];
    const families = [{ split: 'rotated', scaleFormat: 'log8', scaleRule: 'lsq' }] as const;
    const res = await planCodebookBudget({ model, budgetBits: 2.3, calibrationPrompt: [ids, second], residualLength: 32, families });
    const best = res.candidates[0]!;
    const evalOf = async (prompts: number[][]) => {
      const file = { path: 'c', name: 'c', kind: 'prose' as const, records: prompts.map((inputIds, i) => ({ kind: 'prose' as const, id: `c${i}`, inputIds })) };
      const caches = [FULL_SPEC, { ...cacheSpec('p', 'turboquant', best.options as Record<string, unknown>, model.cacheShape), id: 'p' }];
      const out = await runEval({ model, tokenizer: { decode: () => '' }, files: [file], caches, prosePrefill: 64, bitsTokens: 2048 });
      return summarize(out).find((x) => x.config.id === 'p')!.prose!.kl;
    };
    expect(best.kl).toBeCloseTo(await evalOf([ids, second]), 12);
    expect(res.preset.name).toBe('tqplan-2.3b-R32');
    const tagged = await planCodebookBudget({ model, budgetBits: 2.3, calibrationPrompt: [ids, second], residualLength: 32, families, sensitivity: res.sensitivity, nameTag: 'set' });
    expect([tagged.preset.name, tagged.preset.options]).toEqual(['tqplan-2.3b-R32-set', res.preset.options]);
    await expect(planCodebookBudget({ model, budgetBits: 2.3, calibrationPrompt: ids, residualLength: 32, families, nameTag: 'a b' })).rejects.toThrow(expect.objectContaining({ code: 'E_CONFIG' }));
    expect(Math.abs(best.kl - (await evalOf([ids])))).toBeGreaterThan(1e-9);
    await expect(planCodebookBudget({ model, budgetBits: 2.3, calibrationPrompt: [ids, second.slice(0, 50)], residualLength: 32, families })).rejects.toThrow(/calibrationPrompt 1: need at least 96 tokens/);
    await expect(planCodebookBudget({ model, budgetBits: 2.3, calibrationPrompt: [ids, [0, -1, ...second]], residualLength: 32, families })).rejects.toThrow(expect.objectContaining({ code: 'E_CONFIG' }));
  });

  it('rejects a refine count that is not a non-negative integer', async () => {
    for (const refine of [-1, 1.5, Number.NaN]) {
      await expect(planCodebookBudget({ model, budgetBits: 2.3, calibrationPrompt: ids, residualLength: 32, refine })).rejects.toThrow(expect.objectContaining({ code: 'E_CONFIG' }));
    }
  });

  it('rejects a budget below every family and a short prompt', async () => {
    await expect(planCodebookBudget({ model, budgetBits: 0.5, calibrationPrompt: ids, residualLength: 32 })).rejects.toThrow(XqConfigError);
    await expect(planCodebookBudget({ model, budgetBits: 2, calibrationPrompt: ids.slice(0, 40), residualLength: 32 })).rejects.toThrow(XqConfigError);
  });
});
