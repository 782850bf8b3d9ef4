import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { DecoderModel } from '@xquant/models';
import {
  argmax,
  createCacheFor,
  joinResults,
  logSoftmax,
  mergeResults,
  parseEvalJsonl,
  resolveCacheSpecs,
  configRecord,
  specBits,
  resultsMarkdown,
  runEval,
  summarize,
  validateEvalResults,
  type CompletedRecord,
  type EvalFile,
  type EvalResults,
} from '@xquant/eval';
import { XqConfigError, XqFormatError } from '@xquant/quant';
import { scriptedModel, tinyModel, useCpu } from './support/tiny.js';

const T = 100;
const P = 16;

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s / 2 ** 32);
}

function proseFile(records: number, seed = 3): EvalFile {
  const r = lcg(seed);
  const lines = Array.from({ length: records }, (_, i) => JSON.stringify({ id: `r${i}`, input_ids: [0, ...Array.from({ length: T - 1 }, () => 2 + Math.floor(r() * 62))] }));
  return parseEvalJsonl(lines.join('\n'), 'prose_tiny.jsonl');
}

const stripVolatile = (r: EvalResults) => ({ ...r, timing: {}, shards: [] });

describe('prose protocol on a tiny random Llama (cpu backend)', () => {
  let model: DecoderModel;
  const decode = { decode: (ids: ArrayLike<number>) => Array.from(ids).join(' ') };
  beforeAll(async () => {
    await useCpu();
    model = await tinyModel();
  });

  it('full through the harness = one plain forward; ppl, KL, top-1 and the excl-first ppl match float64 sums written here', async () => {
    const file = proseFile(1);
    const ids = file.records[0]!.inputIds;
    const caches = resolveCacheSpecs(['kivi-2'], model.cacheShape, { residualLengths: [32], groupSizes: [32] });
    const res = await runEval({ model, tokenizer: decode, files: [file], caches, prosePrefill: P, sharedPrefill: false });
    // plain forward of the whole record with a full cache: logits at every position
    const full = createCacheFor(caches[0]!, model.cacheShape);
    const all = model.forward(ids, full, 'all');
    const allLogits = all.dataSync();
    all.dispose();
    full.dispose();
    // the kivi-2 run, teacher forced by hand: own prefill of P tokens, then one token per step
    const kc = createCacheFor(caches[1]!, model.cacheShape);
    const rows: Float32Array[] = [];
    let l = model.forward(ids.slice(0, P), kc);
    rows.push(l.dataSync() as Float32Array);
    l.dispose();
    for (let p = P; p < T - 1; p++) {
      l = model.forward([ids[p]!], kc);
      rows.push(Float32Array.from(l.dataSync()));
      l.dispose();
    }
    kc.dispose();
    const V = 64;
    let nllF = 0;
    let nllQ = 0;
    let nllQex = 0;
    let kl = 0;
    let top1 = 0;
    for (let j = 0; j < T - P; j++) {
      const pos = P - 1 + j;
      const f = Array.from(allLogits.subarray(pos * V, (pos + 1) * V), Number);
      const q = Array.from(rows[j]!, Number);
      const zf = Math.log(f.reduce((a, v) => a + Math.exp(v), 0));
      const zq = Math.log(q.reduce((a, v) => a + Math.exp(v), 0));
      const tgt = ids[pos + 1]!;
      nllF += zf - f[tgt]!;
      nllQ += zq - q[tgt]!;
      if (j > 0) nllQex += zq - q[tgt]!;
      for (let c = 0; c < V; c++) kl += Math.exp(f[c]! - zf) * (f[c]! - zf - (q[c]! - zq));
      if (argmax(f) === argmax(q)) top1++;
    }
    const n = T - P;
    const [sf, sq] = summarize(res);
    expect(sf!.prose!.predictions).toBe(n);
    expect(Math.abs(Math.log(sf!.prose!.ppl) - nllF / n)).toBeLessThan(2e-5);
    expect(sf!.prose!.kl).toBe(0);
    expect(sf!.prose!.top1).toBe(1);
    expect(Math.abs(Math.log(sq!.prose!.ppl) - nllQ / n)).toBeLessThan(2e-5);
    expect(Math.abs(Math.log(sq!.prose!.pplExclFirst) - nllQex / (n - 1))).toBeLessThan(2e-5);
    expect(Math.abs(sq!.prose!.kl - kl / n)).toBeLessThan(1e-4 * Math.max(1, kl / n));
    expect(sq!.prose!.kl).toBeGreaterThan(0);
    expect(Math.abs(sq!.prose!.top1 - top1 / n)).toBeLessThanOrEqual(1 / n + 1e-12); // one near-tie may flip
  });

  it('shared prefill (K/V copied from full) gives the same numbers as prefilling every cache', async () => {
    const file = proseFile(1, 11);
    const caches = resolveCacheSpecs(['kivi-1', 'xquant-1.38'], model.cacheShape, { residualLengths: [32] });
    const a = await runEval({ model, tokenizer: decode, files: [file], caches, prosePrefill: P, sharedPrefill: true });
    const b = await runEval({ model, tokenizer: decode, files: [file], caches, prosePrefill: P, sharedPrefill: false });
    for (const id of ['kivi-1/R32/g32', 'xquant-1.38/R32/g32']) {
      const x = a.prose[0]!.perCache[id]!;
      const y = b.prose[0]!.perCache[id]!;
      expect(x.n).toBe(y.n);
      expect(Math.abs(x.nll - y.nll)).toBeLessThan(1e-4 * x.n);
      expect(Math.abs(x.kl - y.kl)).toBeLessThan(1e-4 * x.n);
    }
  });

  it('shards merged = the unsharded run (records, configs and every sum); merge rejects overlaps and foreign inputs', async () => {
    const file = proseFile(3, 5);
    const caches = resolveCacheSpecs(['kivi-2'], model.cacheShape, { residualLengths: [32] });
    const opts = { model, tokenizer: decode, files: [file], caches, prosePrefill: P };
    const whole = await runEval(opts);
    const parts: EvalResults[] = [];
    for (const index of [2, 0, 1]) parts.push(await runEval({ ...opts, shard: { index, count: 3 } }));
    expect(parts.map((p) => p.prose.length)).toEqual([1, 1, 1]);
    const merged = mergeResults(parts);
    expect(merged.shards.map((s) => s.index)).toEqual([0, 1, 2]);
    expect(stripVolatile(merged)).toEqual(stripVolatile(whole));
    expect(summarize(merged)).toEqual(summarize(whole));
    expect(resultsMarkdown(merged)).toBe(resultsMarkdown(whole));
    expect(() => mergeResults([parts[0]!, parts[0]!])).toThrow(/appears in more than one input/);
    expect(() => mergeResults([{ ...parts[0]!, format: 'nope' } as unknown as EvalResults])).toThrow(/not an xquant eval result/);
    expect(() => mergeResults([parts[0]!, { ...parts[1]!, configs: parts[1]!.configs.slice(0, 1) }])).toThrow(/configurations/);
    // shards run on another machine see the model at another path: merged all the same, keeping input 0's path
    const moved = mergeResults([parts[0]!, { ...parts[1]!, model: { ...parts[1]!.model, path: '/elsewhere/model' } }, parts[2]!]);
    expect(moved.model.path).toBe(parts[0]!.model.path);
    expect(moved.prose.length).toBe(3);
    expect(() => mergeResults([parts[0]!, { ...parts[1]!, model: { ...parts[1]!.model, layers: 3 } }])).toThrow(/model/);
  });

  it('issue 13 item 10: a run resumed from the records an interrupted run reported equals the uninterrupted run, and reruns only the rest', async () => {
    const file = proseFile(3, 8);
    const caches = resolveCacheSpecs(['kivi-2'], model.cacheShape, { residualLengths: [32] });
    const opts = { model, tokenizer: decode, files: [file], caches, prosePrefill: P, batch: false };
    const reported: CompletedRecord[] = [];
    const whole = await runEval({ ...opts, onRecord: (r) => void reported.push(JSON.parse(JSON.stringify(r)) as CompletedRecord) });
    expect(reported.map((r) => r.result.index)).toEqual([0, 1, 2]);
    // the per-record timings add up to the run's timing
    for (const [id, t] of Object.entries(whole.timing)) {
      expect(reported.reduce((a, r) => a + r.timing[id]!.steps, 0)).toBe(t.steps);
      expect(reported.reduce((a, r) => a + r.timing[id]!.seconds, 0)).toBeCloseTo(t.seconds, 9);
    }
    // "interrupted" after records 0 and 2 (any subset): only 1 runs again
    const counting = { ...model, cacheShape: model.cacheShape, config: model.config, forward: (...a: Parameters<DecoderModel['forward']>) => (calls++, model.forward(...a)) };
    let calls = 0;
    const again: number[] = [];
    const resumed = await runEval({ ...opts, model: counting, completed: [reported[0]!, reported[2]!], onRecord: (r) => void again.push(r.result.index) });
    expect(again).toEqual([1]);
    // one record: full runs T − P forwards, kivi-2 one fewer (its prefill is copied from full's)
    expect(calls).toBe(2 * (T - P) - 1);
    expect(stripVolatile(resumed)).toEqual(stripVolatile(whole));
    expect(resumed.timing.full!.steps).toBe(whole.timing.full!.steps);
    expect(resumed.timing.full!.records).toBe(3);
    // completed records that do not belong to the run are refused
    await expect(runEval({ ...opts, limit: 1, completed: [reported[2]!] })).rejects.toThrow(/not one this run selects/);
    await expect(runEval({ ...opts, completed: [reported[0]!, reported[0]!] })).rejects.toThrow(/appears twice/);
    const otherConfigs = { ...reported[1]!, result: { ...reported[1]!.result, perCache: { full: reported[1]!.result.perCache.full! } } } as CompletedRecord;
    await expect(runEval({ ...opts, completed: [otherConfigs] })).rejects.toThrow(XqConfigError);
  });

  it('issue 13 item 10: validateEvalResults accepts real results and names the malformed field', async () => {
    const res = await runEval({ model, tokenizer: decode, files: [proseFile(1)], caches: resolveCacheSpecs(['kivi-2'], model.cacheShape, { residualLengths: [32] }), prosePrefill: P });
    const json = JSON.parse(JSON.stringify(res)) as EvalResults;
    expect(validateEvalResults(json, 'r.json')).toEqual(json);
    const bad = (edit: (j: any) => void) => {
      const j = JSON.parse(JSON.stringify(res));
      edit(j);
      try {
        validateEvalResults(j, 'r.json');
      } catch (e) {
        expect(e).toBeInstanceOf(XqFormatError);
        return (e as Error).message;
      }
      throw new Error('accepted a malformed result');
    };
    expect(bad((j) => (j.configs = 5))).toBe('r.json: configs must be an array, got number 5');
    expect(bad((j) => delete j.model)).toBe('r.json: model must be an object, got nothing (missing)');
    expect(bad((j) => (j.prose[0].perCache['kivi-2/R32/g32'].kl = 'x'))).toBe('r.json: prose[0].perCache["kivi-2/R32/g32"].kl must be a number, got "x"');
    expect(bad((j) => (j.prose[0].perCache.ghost = j.prose[0].perCache.full))).toMatch(/perCache has configuration "ghost", which is not in configs/);
    expect(bad((j) => (j.format = 'xquant-eval/v0'))).toMatch(/not an xquant eval result/);
    expect(bad((j) => (j.configs[0].residualLength = 1.5))).toMatch(/configs\[0\]\.residualLength must be an integer, got number 1\.5/);
  });

  it('a wrapper preset whose inner options fix R and group sizes keeps them (not swept to the defaults)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'xq-preset-'));
    const file = join(dir, 'rot.json');
    writeFileSync(file, JSON.stringify({ name: 'rot-k2', strategy: 'rotated', options: { inner: 'kivi-2', innerOptions: { residualLength: 32, groupSize: 32, valueGroupSize: 16 }, keys: true } }));
    const [, spec] = resolveCacheSpecs([`@${file}`], model.cacheShape, { residualLengths: [128] });
    expect(spec!.id).toBe('rot-k2/R32/g32/v16');
    expect(spec!.options).toMatchObject({ residualLength: 32, groupSize: 32, valueGroupSize: 16 });
    expect(spec!.config).toMatchObject({ residualLength: 32, groupSize: 32, valueGroupSize: 16 }); // the inner cache's resolved config
    // a wrapper over a cache without quantized storage: no config, the swept sizes still name it; 16 bits
    writeFileSync(file, JSON.stringify({ name: 'rot-full', strategy: 'rotated', options: { inner: 'full', keys: true } }));
    const [, rf] = resolveCacheSpecs([`@${file}`], model.cacheShape, { residualLengths: [64], groupSizes: [32] });
    expect([rf!.id, rf!.config, configRecord(rf!).residualLength, specBits(rf!, model.cacheShape, 256).storedBits]).toEqual(['rot-full/R64/g32', null, 64, 16]);
  });

  it('join: runs of different configurations on the same records = one run of all of them (unbatched: exact)', async () => {
    const file = proseFile(2, 17);
    const opts = { model, tokenizer: decode, files: [file], prosePrefill: P, batch: false };
    const both = await runEval({ ...opts, caches: resolveCacheSpecs(['kivi-2', 'kivi-1'], model.cacheShape, { residualLengths: [32] }) });
    const a = await runEval({ ...opts, caches: resolveCacheSpecs(['kivi-2'], model.cacheShape, { residualLengths: [32] }) });
    const b = await runEval({ ...opts, caches: resolveCacheSpecs(['kivi-1'], model.cacheShape, { residualLengths: [32] }) });
    const joined = joinResults([a, { ...b, model: { ...b.model, path: '/elsewhere' } }]);
    expect(joined.configs.map((c) => c.id)).toEqual(both.configs.map((c) => c.id));
    expect(summarize(joined)).toEqual(summarize(both));
    expect(() => joinResults([a, a])).toThrow(/appears in more than one input/);
    expect(() => joinResults([a, { ...b, format: 'nope' } as unknown as EvalResults])).toThrow(/not an xquant eval result/);
    expect(() => joinResults([a, { ...b, model: { ...b.model, layers: 3 } }])).toThrow(/model/);
    expect(() => joinResults([])).toThrow(/nothing to join/);
    const other = await runEval({ ...opts, files: [proseFile(2, 18)], caches: resolveCacheSpecs(['kivi-1'], model.cacheShape, { residualLengths: [32] }) });
    expect(() => joinResults([a, { ...other, prose: other.prose.slice(0, 1) }])).toThrow(/other records/);
  });

  it('results carry paper/stored bits from the plan and the measured bits of cache.memory()', async () => {
    const file = proseFile(1);
    const res = await runEval({ model, tokenizer: decode, files: [file], caches: resolveCacheSpecs(['kivi-2', 'asymkv-1.5'], model.cacheShape, { residualLengths: [32] }), prosePrefill: P, limit: 1 });
    const byId = Object.fromEntries(res.configs.map((c) => [c.id, c]));
    // headDim 32, gs 32, R 32, T 2048: codes b, metadata 1, values keep 32 fp16 tokens
    const stored = (kb: number, vb: number) => ((kb + 1) * 2048 + (vb + 1) * 2016 + 16 * 32) / (2 * 2048);
    expect(byId['kivi-2/R32/g32']!.paperBits).toBe(2);
    expect(byId['kivi-2/R32/g32']!.storedBits).toBeCloseTo(stored(2, 2), 12);
    expect(byId['asymkv-1.5/R32/g32']!.storedBits).toBeCloseTo(stored(2, 1), 12);
    expect(byId['full']!.storedBits).toBe(16);
    expect(byId['full']!.heldBits).toBe(32); // float32
    expect(byId['kivi-2/R32/g32']!.heldBits).toBeGreaterThan(byId['kivi-2/R32/g32']!.storedBits);
    expect(byId['kivi-2/R32/g32']!.heldBits).toBeLessThan(4);
  });

  it('a value group size for every preset: keys grouped by 128 tokens, values by 64 channels; ids, options and stored bits follow', async () => {
    const specs = resolveCacheSpecs(['kivi-2'], model.cacheShape, { residualLengths: [128], groupSizes: [128], valueGroupSize: 32 });
    expect(specs.map((s) => s.id)).toEqual(['full', 'kivi-2/R128/g128/v32']);
    expect(specs[1]!.options).toMatchObject({ residualLength: 128, groupSize: 128, valueGroupSize: 32 });
    const same = resolveCacheSpecs(['kivi-2'], model.cacheShape, { residualLengths: [32], valueGroupSize: 32 });
    expect(same[1]!.id).toBe('kivi-2/R32/g32'); // equal to the group size: no suffix
    const res = await runEval({ model, tokenizer: decode, files: [proseFile(1)], caches: specs, prosePrefill: P });
    const c = res.configs.find((x) => x.id === 'kivi-2/R128/g128/v32')!;
    // headDim 32, T 2048, R 128: key codes 2 + fp16 scale/zero per 128 tokens; values 2 + 32/32 per token, fp16 window of 128
    const stored = ((2 + 32 / 128) * 2048 + (2 + 1) * (2048 - 128) + 16 * 128) / (2 * 2048);
    expect(c.storedBits).toBeCloseTo(stored, 12);
    expect(() => resolveCacheSpecs(['kivi-2'], model.cacheShape, { valueGroupSize: 0 })).toThrow(/valueGroupSize must be a positive integer/);
  });

  it('layer-error diagnostic: zero for full, grows as bits drop', async () => {
    const ids = proseFile(1).records[0]!.inputIds;
    const res = await runEval({
      model, tokenizer: decode, files: [proseFile(1)], caches: resolveCacheSpecs(['kivi-2', 'kivi-1'], model.cacheShape, { residualLengths: [32] }),
      prosePrefill: P, layerErrorPrompt: ids,
    });
    const le = res.layerErrors!.perCache;
    for (const l of le.full!) expect(l.attention).toBeLessThan(1e-6);
    for (let l = 0; l < 2; l++) {
      expect(le['kivi-1/R32/g32']![l]!.keys).toBeGreaterThan(le['kivi-2/R32/g32']![l]!.keys);
      expect(le['kivi-1/R32/g32']![l]!.attention).toBeGreaterThan(le['kivi-2/R32/g32']![l]!.attention);
    }
  });

  it('batched (all configurations in lockstep through forwardBatch) = one configuration at a time, up to float32 rounding', async () => {
    const file = proseFile(2, 13);
    const caches = resolveCacheSpecs(['kivi-2', 'kivi-1', 'xquant-1.38'], model.cacheShape, { residualLengths: [32] });
    for (const sharedPrefill of [true, false]) {
      const opts = { model, tokenizer: decode, files: [file], caches, prosePrefill: P, sharedPrefill };
      const a = await runEval({ ...opts, batch: true });
      const b = await runEval({ ...opts, batch: false });
      expect(a.protocol.batched).toBe(true);
      expect(b.protocol.batched).toBe(false);
      for (const [r, rec] of a.prose.entries()) {
        for (const c of caches) {
          const x = rec.perCache[c.id]!;
          const y = b.prose[r]!.perCache[c.id]!;
          expect(x.n).toBe(y.n);
          expect(Math.abs(x.nll - y.nll)).toBeLessThan(1e-4 * x.n);
          expect(Math.abs(x.nllExclFirst - y.nllExclFirst)).toBeLessThan(1e-4 * x.n);
          expect(Math.abs(x.kl - y.kl)).toBeLessThan(1e-4 * x.n);
          expect(Math.abs(x.top1 - y.top1)).toBeLessThanOrEqual(1);
        }
        expect(rec.perCache.full!.kl).toBe(0);
        expect(rec.perCache['kivi-1/R32/g32']!.kl).toBeGreaterThan(rec.perCache['kivi-2/R32/g32']!.kl);
      }
      // wall time is split over the configurations; steps and records are counted per configuration as unbatched
      for (const c of caches) {
        expect(a.timing[c.id]!.steps).toBe(b.timing[c.id]!.steps);
        expect(a.timing[c.id]!.records).toBe(2);
      }
    }
  });

  it('rejects a record shorter than the prefill', async () => {
    const short = parseEvalJsonl(JSON.stringify({ input_ids: [0, 2, 3] }), 's.jsonl');
    await expect(runEval({ model, tokenizer: decode, files: [short], caches: resolveCacheSpecs([], model.cacheShape) })).rejects.toThrow(/more than the 64-token prefill/);
  });
});

describe('passkey protocol with a scripted model', () => {
  beforeAll(useCpu);
  const n = 40;
  const ids = [0, ...Array.from({ length: n - 1 }, (_, i) => 3 + (i % 5))];
  const file = (answer: string) =>
    parseEvalJsonl(JSON.stringify({ id: 'p', length_bucket: 256, n_tokens: n, answer, input_ids: ids }), 'passkey_256.jsonl');
  // token → text: 4 → "4", 5 → "8", 6 → "21", 7 → "3", 8 → " x", 9 → "<|eos|>"-like special skipped by the tokenizer
  const text: Record<number, string> = { 4: '4', 5: '8', 6: '21', 7: '3', 8: ' x', 1: '' };
  const tokenizer = { decode: (t: ArrayLike<number>, o?: { skipSpecialTokens?: boolean }) => Array.from(t).map((i) => (i === 1 && !o?.skipSpecialTokens ? '<|eos|>' : text[i] ?? '?')).join('') };

  it('greedy tokens after the 16-token tail, stops at EOS, first digit run must equal the answer', async () => {
    const model = scriptedModel([8, 4, 5, 6, 1, 7, 7], n);
    const res = await runEval({ model, tokenizer, files: [file('4821')], caches: resolveCacheSpecs([], model.cacheShape) });
    const o = res.passkey[0]!.perCache.full!;
    expect(o.ids).toEqual([8, 4, 5, 6]);
    expect(o.text).toBe(' x4821');
    expect(o.correct).toBe(true);
    const wrong = await runEval({ model, tokenizer, files: [file('482')], caches: resolveCacheSpecs([], model.cacheShape) });
    expect(wrong.passkey[0]!.perCache.full!.correct).toBe(false); // 4821 ≠ 482: the whole run must match
  });

  it('at most 8 tokens are generated', async () => {
    const model = scriptedModel([4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4], n);
    const res = await runEval({ model, tokenizer, files: [file('44444444')], caches: resolveCacheSpecs([], model.cacheShape) });
    expect(res.passkey[0]!.perCache.full!.ids).toHaveLength(8);
    expect(res.passkey[0]!.perCache.full!.correct).toBe(true);
    expect(summarize(res)[0]!.passkey[256]).toEqual({ correct: 1, n: 1, accuracy: 1 });
  });

  it('batched: each cache stops on its own (EOS, 8 tokens, EOS at once) with the outcomes and steps of the unbatched run', async () => {
    const scripts = [[8, 4, 5, 6, 1, 7], [4, 4, 4, 4, 4, 4, 4, 4, 4, 4], [1, 4], [7, 1]];
    const caches = resolveCacheSpecs(['kivi-2', 'kivi-1', 'asymkv-1.5'], scriptedModel(scripts, n).cacheShape, { residualLengths: [32] });
    const run = (batch: boolean) => runEval({ model: scriptedModel(scripts, n), tokenizer, files: [file('4821')], caches, batch });
    const [a, b] = [await run(true), await run(false)];
    expect(a.protocol.batched).toBe(true);
    expect(b.protocol.batched).toBe(false);
    expect(a.passkey).toEqual(b.passkey);
    const ids = caches.map((c) => a.passkey[0]!.perCache[c.id]!.ids);
    expect(ids).toEqual([[8, 4, 5, 6], [4, 4, 4, 4, 4, 4, 4, 4], [], [7]]);
    expect(a.passkey[0]!.perCache.full!.correct).toBe(true);
    for (const c of caches) expect(a.timing[c.id]!.steps).toBe(b.timing[c.id]!.steps);
    expect(a.timing.full!.steps).toBe(16 + 4); // the tail, then one step after each generated token (the 4th yields EOS)
  });

  it('batch: true without forwardBatch is a configuration error', async () => {
    const { forwardBatch: _, ...plain } = scriptedModel([1], n);
    await expect(runEval({ model: plain, tokenizer, files: [file('1')], caches: resolveCacheSpecs([], plain.cacheShape), batch: true })).rejects.toThrow(/forwardBatch/);
  });
});
