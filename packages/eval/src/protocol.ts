import { basename } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { XqConfigError, XqShapeError } from '@xquant/quant';
import type { AsyncKvCache, KvCache, KvCacheShape } from '@xquant/tfjs';
import { FULL_ID, FULL_SPEC, configRecord, createCacheFor, specBits, type CacheSpec } from './configs.js';
import { captureLayers, layerErrors } from './layer-error.js';
import { argmax, firstDigits, klDivergence, logSoftmax, type ProseSums } from './metrics.js';
import type { EvalFile, PasskeyRecord, ProseRecord } from './records.js';
import {
  RESULTS_FORMAT,
  sortRecords,
  type EvalResults,
  type PasskeyOutcome,
  type PasskeyRecordResult,
  type ProseRecordResult,
  type Shard,
} from './results.js';

/** What the protocol needs from a model (a `DecoderModel` of @xquant/models fits). */
export interface EvalModel {
  /** Shape of the KV cache the model needs. */
  readonly cacheShape: KvCacheShape;
  /** What the protocol reads from the model configuration. */
  readonly config: {
    /** Vocabulary size (logits per row). */
    vocabSize: number;
    /** Generation stops at these ids. */
    eosTokenIds?: number[];
    /** Recorded in results. */
    architecture?: string;
  };
  /** Run `ids` after what `cache` holds; logits `[rows, vocab]` of the last position (default). */
  forward(ids: ArrayLike<number>, cache: KvCache, logits?: 'last'): tf.Tensor2D;
  /** As `forward`, feeding the cache with `prefillAsync`/`appendAsync` (needed where tensors live on a GPU, e.g. webgpu). */
  forwardAsync?(ids: ArrayLike<number>, cache: KvCache, logits?: 'last'): Promise<tf.Tensor2D>;
  /**
   * Run one step of several sequences, each through its own cache; logits `[B, vocab]` (last position of each).
   * When present, {@link runEval} runs all configurations of a record together (see {@link ProtocolOptions.batch}).
   */
  forwardBatch?(ids: ArrayLike<number>[], caches: KvCache[], logits?: 'last'): tf.Tensor2D;
}

/** What the protocol needs from a tokenizer (decoding passkey continuations). */
export interface EvalTokenizer {
  /** Text of `ids`, special tokens skipped when asked. */
  decode(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): string;
}

/** Protocol constants (defaults: the reference-fidelity protocol). */
export interface ProtocolOptions {
  /** Prose: tokens prefilled at full precision (default 64; predictions at positions P−1 … T−2). */
  prosePrefill?: number;
  /** Passkey: prompt tokens fed one at a time after prefilling the rest (default 16). */
  passkeyTail?: number;
  /** Passkey: most tokens generated, greedy (default 8). */
  passkeyMaxNew?: number;
  /** Generation stops at these ids (default the model's eos ids, else [1]). */
  eosIds?: number[];
  /**
   * Compute the full-precision prefill once per record and copy its K/V into every cache (default true). The state is
   * the one each cache reaches by prefilling itself (prefill attention is full precision in every cache); the anchor
   * runs the same way (reference-fidelity README §3 d). False prefills each cache through the model.
   */
  sharedPrefill?: boolean;
  /**
   * Run all configurations of a record in lockstep, one `model.forwardBatch` per step: the weight matmuls serve every
   * cache at once, attention still runs per cache (≈ 2.5× faster on wasm with 20 configurations). Default true where
   * the model has `forwardBatch` and the backend is not webgpu. The numbers equal the one-configuration-at-a-time run
   * up to float32 rounding of the batched matmuls; passkey generation stops per cache exactly as unbatched.
   */
  batch?: boolean;
}

/** Options of {@link runEval}. */
export interface RunEvalOptions extends ProtocolOptions {
  /** The model. */
  model: EvalModel;
  /** Its tokenizer (passkey continuations are decoded). */
  tokenizer: EvalTokenizer;
  /** Name and path of the model, recorded in the results. */
  modelInfo?: {
    /** Name (default: the path's last component). */
    name?: string;
    /** Path as given. */
    path?: string;
  };
  /** Eval files (see `readEvalFile`). */
  files: readonly EvalFile[];
  /** Configurations (see `resolveCacheSpecs`); `full` is added when absent (KL and top-1 need it). */
  caches: readonly CacheSpec[];
  /** First `limit` records of each file. */
  limit?: number;
  /**
   * `sample` records of each file, evenly spaced (index ⌊i·n/sample⌋): a reduced run that spans the whole file, whose
   * records are less correlated than consecutive ones. Applied after `limit`.
   */
  sample?: number;
  /** Evaluate only this shard of the records. */
  shard?: Shard;
  /** Context length for the bit accounting (default 2048). */
  bitsTokens?: number;
  /**
   * Token ids of a prompt for the per-layer error diagnostic (each layer in isolation: attention output, keys and
   * values vs full precision, see `layerErrors`); omitted = not computed.
   */
  layerErrorPrompt?: readonly number[];
  /** Called after every (record, configuration) with the seconds it took and the progress (`done` of `total` steps); e.g. to draw a progress bar. */
  onStep?: (info: StepInfo) => void;
  /**
   * Records already evaluated by an earlier, interrupted run of the same configuration (as `onRecord` reported them):
   * they are not run again, and the result is the one an uninterrupted run gives (timing summed). Each must be a
   * selected record with exactly this run's configurations, else `E_CONFIG`.
   */
  completed?: readonly CompletedRecord[];
  /** Called after each record with its results under every configuration (e.g. to append it to a checkpoint file); awaited. */
  onRecord?: (record: CompletedRecord) => void | Promise<void>;
}

/** One record's results under every configuration, with the time each took: the unit of {@link RunEvalOptions.completed}. */
export type CompletedRecord = (
  | {
      /** A prose record. */
      kind: 'prose';
      /** Its results. */
      result: ProseRecordResult;
    }
  | {
      /** A passkey record. */
      kind: 'passkey';
      /** Its results. */
      result: PasskeyRecordResult;
    }
) & {
  /** Seconds and decode steps per configuration id spent on this record. */
  timing: Record<string, { seconds: number; steps: number }>;
};

/** What {@link RunEvalOptions.onStep} reports after each (record, configuration). */
export interface StepInfo {
  /** Eval file name. */
  file: string;
  /** Record index in the file. */
  index: number;
  /** Configuration id. */
  config: string;
  /** Seconds it took (a batched run's time split evenly over its configurations). */
  seconds: number;
  /** (record, configuration) steps done so far. */
  done: number;
  /** Steps in the whole run. */
  total: number;
}

/** Parse `i/n` (0 ≤ i < n). */
export function parseShard(text: string): Shard {
  const m = /^(\d+)\/(\d+)$/.exec(text.trim());
  const index = m ? Number(m[1]) : NaN;
  const count = m ? Number(m[2]) : NaN;
  if (!m || count < 1 || index >= count) throw new XqConfigError('E_CONFIG', `shard must be 'i/n' with 0 ≤ i < n (e.g. 0/4); got '${text}'`);
  return { index, count };
}

/** A record picked by {@link selectRecords}. */
export interface SelectedRecord {
  /** Its file. */
  file: EvalFile;
  /** Index in the file. */
  index: number;
}

/**
 * The records a shard evaluates: the `limit` first of each file (then `sample` of those, evenly spaced), then every
 * `count`-th of the concatenated list.
 */
export function selectRecords(files: readonly EvalFile[], limit?: number, shard?: Shard, sample?: number): SelectedRecord[] {
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) throw new XqConfigError('E_CONFIG', `limit must be a positive integer; got ${String(limit)}`);
  if (sample !== undefined && (!Number.isInteger(sample) || sample < 1)) throw new XqConfigError('E_CONFIG', `sample must be a positive integer; got ${String(sample)}`);
  if (shard && (!Number.isInteger(shard.index) || !Number.isInteger(shard.count) || shard.count < 1 || shard.index < 0 || shard.index >= shard.count)) {
    throw new XqConfigError('E_CONFIG', `shard must satisfy 0 ≤ index < count; got ${shard.index}/${shard.count}`);
  }
  const all: SelectedRecord[] = [];
  for (const file of files) {
    const n = Math.min(file.records.length, limit ?? Infinity);
    if (sample !== undefined && sample < n) {
      for (let i = 0; i < sample; i++) all.push({ file, index: Math.floor((i * n) / sample) });
    } else {
      for (let i = 0; i < n; i++) all.push({ file, index: i });
    }
  }
  return shard ? all.filter((_, p) => p % shard.count === shard.index) : all;
}

/** GPU tensors cannot be read synchronously: on webgpu, feed caches with `forwardAsync` (elsewhere the sync path, unchanged). */
function onGpu(model: EvalModel): boolean {
  return tf.getBackend() === 'webgpu' && typeof model.forwardAsync === 'function';
}

function forward(model: EvalModel, ids: ArrayLike<number>, cache: KvCache): tf.Tensor2D | Promise<tf.Tensor2D> {
  return onGpu(model) ? model.forwardAsync!(ids, cache) : model.forward(ids, cache);
}

async function readLogits(logits: tf.Tensor2D | Promise<tf.Tensor2D>): Promise<Float32Array> {
  const t = await logits;
  try {
    return (await t.data()) as Float32Array;
  } finally {
    t.dispose();
  }
}

/** Per-layer K/V of a full-precision prefill, to be copied into each cache. */
type KvSnapshot = { keys: tf.Tensor3D; values: tf.Tensor3D }[];

function snapshot(cache: KvCache): KvSnapshot {
  return Array.from({ length: cache.shape.layers }, (_, l) => cache.dequantize(l));
}

function disposeSnapshot(s: KvSnapshot): void {
  for (const { keys, values } of s) {
    keys.dispose();
    values.dispose();
  }
}

async function loadSnapshot(cache: KvCache, s: KvSnapshot, async: boolean): Promise<void> {
  const ac = cache as Partial<AsyncKvCache> & KvCache;
  for (const [l, { keys, values }] of s.entries()) {
    if (async && ac.prefillAsync) await ac.prefillAsync(l, keys, values);
    else cache.prefill(l, keys, values);
  }
}

/** Index completed records by `file#index`, checking they belong to this run. */
function completedByKey(completed: readonly CompletedRecord[], selected: readonly SelectedRecord[], configIds: readonly string[]): Map<string, CompletedRecord> {
  const wanted = new Map(selected.map((s) => [`${s.file.name}#${s.index}`, s.file.records[s.index]!.kind]));
  const ids = [...configIds].sort().join(',');
  const out = new Map<string, CompletedRecord>();
  for (const c of completed) {
    const key = `${c.result.file}#${c.result.index}`;
    if (wanted.get(key) !== c.kind) throw new XqConfigError('E_CONFIG', `runEval: completed record ${c.result.index} of ${c.result.file} (${c.kind}) is not one this run selects`);
    if (out.has(key)) throw new XqConfigError('E_CONFIG', `runEval: completed record ${c.result.index} of ${c.result.file} appears twice`);
    const got = Object.keys(c.result.perCache).sort().join(',');
    if (got !== ids) throw new XqConfigError('E_CONFIG', `runEval: completed record ${c.result.index} of ${c.result.file} has configurations [${got}], this run [${ids}]`);
    out.set(key, c);
  }
  return out;
}

/** Timer and per-config accounting shared by the record runners. */
class Ledger {
  readonly timing: EvalResults['timing'] = {};
  private done = 0;
  /** Seconds and steps per config so far. */
  snapshot(): Record<string, { seconds: number; steps: number }> {
    return Object.fromEntries(Object.entries(this.timing).map(([id, t]) => [id, { seconds: t.seconds, steps: t.steps }]));
  }
  /** What was spent per config since `before` (a {@link Ledger.snapshot}). */
  since(before: Record<string, { seconds: number; steps: number }>): Record<string, { seconds: number; steps: number }> {
    return Object.fromEntries(
      Object.entries(this.timing).map(([id, t]) => [id, { seconds: t.seconds - (before[id]?.seconds ?? 0), steps: t.steps - (before[id]?.steps ?? 0) }]),
    );
  }
  /** Account a record finished by an earlier run (reported to `onStep` as if it had just run). */
  restore(file: string, index: number, timing: Record<string, { seconds: number; steps: number }>): void {
    for (const [id, t] of Object.entries(timing)) this.step(file, index, id, t.seconds, t.steps);
  }
  constructor(
    private readonly total: number,
    private readonly onStep: RunEvalOptions['onStep'],
  ) {}
  private step(file: string, index: number, config: string, seconds: number, steps: number): void {
    const acc = (this.timing[config] ??= { seconds: 0, steps: 0, records: 0 });
    acc.seconds += seconds;
    acc.steps += steps;
    acc.records += 1;
    this.onStep?.({ file, index, config, seconds, done: ++this.done, total: this.total });
  }
  async time<T>(file: string, index: number, config: string, fn: () => Promise<{ value: T; steps: number }>): Promise<T> {
    const t0 = performance.now();
    const { value, steps } = await fn();
    this.step(file, index, config, (performance.now() - t0) / 1000, steps);
    return value;
  }
  /** Time a run of several configurations together; its wall time is split evenly over them. */
  async timeBatch<T>(file: string, index: number, configs: readonly string[], fn: () => Promise<{ value: T; steps: Record<string, number> }>): Promise<T> {
    const t0 = performance.now();
    const { value, steps } = await fn();
    const seconds = (performance.now() - t0) / 1000 / configs.length;
    for (const config of configs) this.step(file, index, config, seconds, steps[config] ?? 0);
    return value;
  }
}

interface Ctx {
  model: EvalModel;
  tokenizer: EvalTokenizer;
  caches: readonly CacheSpec[];
  prosePrefill: number;
  passkeyTail: number;
  passkeyMaxNew: number;
  eos: Set<number>;
  shared: boolean;
  batch: boolean;
  ledger: Ledger;
}

/** Prefill length P, number of predictions n (positions P−1 … T−2) and vocabulary size of a prose record. */
function proseLayout(ctx: Ctx, file: string, index: number, rec: ProseRecord): { ids: readonly number[]; P: number; n: number; V: number } {
  const ids = rec.inputIds;
  const P = ctx.prosePrefill;
  if (ids.length < P + 1) throw new XqShapeError(`${file} record ${index}: ${ids.length} tokens, the prose protocol needs more than the ${P}-token prefill`);
  return { ids, P, n: ids.length - P, V: ctx.model.config.vocabSize };
}

/** Prefill length of a passkey record (all but the tail). */
function passkeyPrefill(ctx: Ctx, file: string, index: number, rec: PasskeyRecord): number {
  const P = rec.inputIds.length - ctx.passkeyTail;
  if (P < 1) throw new XqShapeError(`${file} record ${index}: ${rec.inputIds.length} tokens, the passkey protocol needs more than the ${ctx.passkeyTail}-token tail`);
  return P;
}

/** Decoded continuation and whether its first run of digits is the answer. */
function passkeyOutcome(ctx: Ctx, rec: PasskeyRecord, gen: number[]): PasskeyOutcome {
  const text = ctx.tokenizer.decode(gen, { skipSpecialTokens: true });
  return { ids: gen, text, correct: firstDigits(text) === rec.answer };
}

/**
 * One prose record under every configuration: full first (its log-probabilities at the 448 positions stay in memory
 * as float64), then each cache with the same teacher-forced ids, scored against them.
 */
async function runProseRecord(ctx: Ctx, file: string, index: number, rec: ProseRecord): Promise<ProseRecordResult> {
  const { model } = ctx;
  const { ids, P, n, V } = proseLayout(ctx, file, index, rec);
  const fullLogp = new Float64Array(n * V);
  const fullTop = new Int32Array(n);
  const row = new Float64Array(V);
  const perCache: Record<string, ProseSums> = {};

  const score = (logp: Float64Array, off: number, j: number, sums: ProseSums) => {
    const lp = -logp[off + ids[P + j]!]!;
    sums.nll += lp;
    if (j > 0) sums.nllExclFirst += lp;
    sums.kl += klDivergence(fullLogp, logp, j * V, off, V);
    if (argmax(logp, off, V) === fullTop[j]) sums.top1++;
    sums.n++;
  };

  const full = createCacheFor(ctx.caches.find((c) => c.id === FULL_ID)!, model.cacheShape);
  const held: { snap: KvSnapshot | null } = { snap: null };
  try {
    await ctx.ledger.time(file, index, FULL_ID, async () => {
      logSoftmax(await readLogits(forward(model, ids.slice(0, P), full)), fullLogp.subarray(0, V));
      if (ctx.shared) held.snap = snapshot(full);
      for (let j = 1; j < n; j++) {
        logSoftmax(await readLogits(forward(model, [ids[P + j - 1]!], full)), fullLogp.subarray(j * V, (j + 1) * V));
      }
      for (let j = 0; j < n; j++) fullTop[j] = argmax(fullLogp, j * V, V);
      const sums: ProseSums = { n: 0, nll: 0, nllExclFirst: 0, kl: 0, top1: 0 };
      for (let j = 0; j < n; j++) score(fullLogp, j * V, j, sums);
      perCache[FULL_ID] = sums;
      return { value: undefined, steps: n };
    });
    full.dispose();
    for (const spec of ctx.caches) {
      if (spec.id === FULL_ID) continue;
      perCache[spec.id] = await ctx.ledger.time(file, index, spec.id, async () => {
        const cache = createCacheFor(spec, model.cacheShape);
        try {
          const sums: ProseSums = { n: 0, nll: 0, nllExclFirst: 0, kl: 0, top1: 0 };
          if (held.snap) {
            await loadSnapshot(cache, held.snap, onGpu(model));
            score(fullLogp, 0, 0, sums); // position P−1 comes from the (full-precision) prefill
          } else {
            logSoftmax(await readLogits(forward(model, ids.slice(0, P), cache)), row);
            score(row, 0, 0, sums);
          }
          for (let j = 1; j < n; j++) {
            logSoftmax(await readLogits(forward(model, [ids[P + j - 1]!], cache)), row);
            score(row, 0, j, sums);
          }
          return { value: sums, steps: n };
        } finally {
          cache.dispose();
        }
      });
    }
  } finally {
    full.dispose();
    if (held.snap) disposeSnapshot(held.snap);
  }
  return { file, index, id: rec.id, perCache };
}

/** Feed the tail one token at a time, then greedy-decode up to maxNew tokens, stopping at EOS. */
async function passkeyContinue(ctx: Ctx, cache: KvCache, tail: readonly number[]): Promise<{ ids: number[]; steps: number }> {
  let logits: Float32Array | null = null;
  let steps = 0;
  for (const id of tail) {
    logits = await readLogits(forward(ctx.model, [id], cache));
    steps++;
  }
  const out: number[] = [];
  let tok = argmax(logits!);
  while (!ctx.eos.has(tok)) {
    out.push(tok);
    if (out.length >= ctx.passkeyMaxNew) break;
    tok = argmax(await readLogits(forward(ctx.model, [tok], cache)));
    steps++;
  }
  return { ids: out, steps };
}

async function runPasskeyRecord(ctx: Ctx, file: string, index: number, rec: PasskeyRecord): Promise<PasskeyRecordResult> {
  const { model } = ctx;
  const ids = rec.inputIds;
  const P = passkeyPrefill(ctx, file, index, rec);
  const tail = ids.slice(P);
  const perCache: Record<string, PasskeyOutcome> = {};
  const outcome = (gen: number[]) => passkeyOutcome(ctx, rec, gen);
  const full = createCacheFor(ctx.caches.find((c) => c.id === FULL_ID)!, model.cacheShape);
  const held: { snap: KvSnapshot | null } = { snap: null };
  try {
    perCache[FULL_ID] = await ctx.ledger.time(file, index, FULL_ID, async () => {
      await readLogits(forward(model, ids.slice(0, P), full));
      if (ctx.shared) held.snap = snapshot(full);
      const r = await passkeyContinue(ctx, full, tail);
      return { value: outcome(r.ids), steps: r.steps };
    });
    full.dispose();
    for (const spec of ctx.caches) {
      if (spec.id === FULL_ID) continue;
      perCache[spec.id] = await ctx.ledger.time(file, index, spec.id, async () => {
        const cache = createCacheFor(spec, model.cacheShape);
        try {
          if (held.snap) await loadSnapshot(cache, held.snap, onGpu(model));
          else await readLogits(forward(model, ids.slice(0, P), cache));
          const r = await passkeyContinue(ctx, cache, tail);
          return { value: outcome(r.ids), steps: r.steps };
        } finally {
          cache.dispose();
        }
      });
    }
  } finally {
    full.dispose();
    if (held.snap) disposeSnapshot(held.snap);
  }
  return { file, index, id: rec.id, length: rec.length, answer: rec.answer, perCache };
}

/** One step of every cache in `caches` (each fed `ids[b]`): logits `[B·V]`, row b for cache b. */
async function stepBatch(model: EvalModel, ids: ArrayLike<number>[], caches: KvCache[]): Promise<Float32Array> {
  return readLogits(model.forwardBatch!(ids, caches, 'last'));
}

/** The caches of a record, the full-precision one first, filled with the shared prefill (or each prefilling itself). */
async function prefillAll(ctx: Ctx, prefix: readonly number[]): Promise<{ caches: KvCache[]; first: Float32Array }> {
  const caches = ctx.caches.map((spec) => createCacheFor(spec, ctx.model.cacheShape));
  try {
    if (ctx.shared) {
      // full first: its prefill logits serve every cache (prefill attention is full precision in all of them)
      const fullLogits = await readLogits(ctx.model.forward(prefix, caches[0]!));
      const snap = snapshot(caches[0]!);
      try {
        for (const c of caches.slice(1)) await loadSnapshot(c, snap, false);
      } finally {
        disposeSnapshot(snap);
      }
      const V = ctx.model.config.vocabSize;
      const first = new Float32Array(caches.length * V);
      for (let b = 0; b < caches.length; b++) first.set(fullLogits, b * V);
      return { caches, first };
    }
    return { caches, first: await stepBatch(ctx.model, caches.map(() => prefix), caches) };
  } catch (e) {
    for (const c of caches) c.dispose();
    throw e;
  }
}

/** {@link runProseRecord} with every configuration in lockstep (`ctx.caches[0]` is full, see {@link runEval}). */
async function runProseRecordBatched(ctx: Ctx, file: string, index: number, rec: ProseRecord): Promise<ProseRecordResult> {
  const { model } = ctx;
  const { ids, P, n, V } = proseLayout(ctx, file, index, rec);
  const configs = ctx.caches.map((c) => c.id);
  const B = configs.length;
  const fullRow = new Float64Array(V);
  const row = new Float64Array(V);
  const sums: ProseSums[] = configs.map(() => ({ n: 0, nll: 0, nllExclFirst: 0, kl: 0, top1: 0 }));
  // score position j of every cache against full's row (cache 0 is full)
  const scoreAll = (logits: Float32Array, j: number) => {
    logSoftmax(logits.subarray(0, V), fullRow);
    const fullTop = argmax(fullRow);
    for (let b = 0; b < B; b++) {
      const lp = b === 0 ? fullRow : logSoftmax(logits.subarray(b * V, (b + 1) * V), row);
      const s = sums[b]!;
      const nll = -lp[ids[P + j]!]!;
      s.nll += nll;
      if (j > 0) s.nllExclFirst += nll;
      s.kl += b === 0 ? 0 : klDivergence(fullRow, lp, 0, 0, V);
      if (argmax(lp) === fullTop) s.top1++;
      s.n++;
    }
  };
  return ctx.ledger.timeBatch(file, index, configs, async () => {
    const { caches, first } = await prefillAll(ctx, ids.slice(0, P));
    try {
      scoreAll(first, 0);
      for (let j = 1; j < n; j++) {
        const tok = [ids[P + j - 1]!];
        scoreAll(await stepBatch(model, caches.map(() => tok), caches), j);
      }
    } finally {
      for (const c of caches) c.dispose();
    }
    const perCache: Record<string, ProseSums> = {};
    configs.forEach((id, b) => (perCache[id] = sums[b]!));
    return { value: { file, index, id: rec.id, perCache }, steps: Object.fromEntries(configs.map((id) => [id, n])) };
  });
}

/** {@link runPasskeyRecord} with every configuration in lockstep; a cache leaves the batch when its generation stops. */
async function runPasskeyRecordBatched(ctx: Ctx, file: string, index: number, rec: PasskeyRecord): Promise<PasskeyRecordResult> {
  const { model } = ctx;
  const ids = rec.inputIds;
  const P = passkeyPrefill(ctx, file, index, rec);
  const V = model.config.vocabSize;
  const configs = ctx.caches.map((c) => c.id);
  const B = configs.length;
  return ctx.ledger.timeBatch(file, index, configs, async () => {
    const { caches } = await prefillAll(ctx, ids.slice(0, P));
    const steps = configs.map(() => 0);
    const gen: number[][] = configs.map(() => []);
    try {
      let logits: Float32Array | null = null;
      for (const id of ids.slice(P)) {
        logits = await stepBatch(model, caches.map(() => [id]), caches);
        for (let b = 0; b < B; b++) steps[b]!++;
      }
      // as passkeyContinue, per cache: stop at EOS or after maxNew tokens
      let next = configs.map((_, b) => argmax(logits!, b * V, V));
      let active = configs.map((_, b) => b);
      for (;;) {
        const going: number[] = [];
        for (const [i, b] of active.entries()) {
          const tok = next[i]!;
          if (ctx.eos.has(tok)) continue;
          gen[b]!.push(tok);
          if (gen[b]!.length < ctx.passkeyMaxNew) going.push(b);
        }
        if (!going.length) break;
        const out = await stepBatch(model, going.map((b) => [gen[b]!.at(-1)!]), going.map((b) => caches[b]!));
        next = going.map((_, i) => argmax(out, i * V, V));
        for (const b of going) steps[b]!++;
        active = going;
      }
    } finally {
      for (const c of caches) c.dispose();
    }
    const perCache: Record<string, PasskeyOutcome> = {};
    configs.forEach((id, b) => (perCache[id] = passkeyOutcome(ctx, rec, gen[b]!)));
    return {
      value: { file, index, id: rec.id, length: rec.length, answer: rec.answer, perCache },
      steps: Object.fromEntries(configs.map((id, b) => [id, steps[b]!])),
    };
  });
}

/**
 * Run the reference-fidelity protocol (reference-fidelity README §2) for every configuration on every selected record.
 *
 * - Prose: prefill ids[0:P] (P = 64) at full precision, then feed ids[P … T−2] one at a time through the cache
 *   (teacher forcing): T − P predictions per record at positions P−1 … T−2 (448 for 512 tokens). Per record and cache:
 *   Σ NLL, Σ NLL without position P−1, Σ KL(full ‖ cache) and top-1 agreement with `full`, all in float64; the full run's
 *   log-probabilities are kept in memory per record.
 * - Passkey: prefill all but the last 16 tokens, feed those one at a time, greedy-decode up to 8 tokens in all
 *   (stopping at EOS); decode without special tokens; correct iff the first run of digits equals the answer.
 *
 * Records are processed one at a time, each under `full` then every cache; results are sorted canonically so shards
 * merge to the unsharded result exactly.
 */
export async function runEval(options: RunEvalOptions): Promise<EvalResults> {
  const { model, files } = options;
  if (!files.length) throw new XqConfigError('E_CONFIG', 'runEval: no eval files given');
  const prosePrefill = options.prosePrefill ?? 64;
  const passkeyTail = options.passkeyTail ?? 16;
  const passkeyMaxNew = options.passkeyMaxNew ?? 8;
  for (const [v, what] of [[prosePrefill, 'prosePrefill'], [passkeyTail, 'passkeyTail'], [passkeyMaxNew, 'passkeyMaxNew']] as const) {
    if (!Number.isInteger(v) || v < 1) throw new XqConfigError('E_CONFIG', `${what} must be a positive integer; got ${String(v)}`);
  }
  const eosIds = options.eosIds ?? (model.config.eosTokenIds?.length ? model.config.eosTokenIds : [1]);
  const caches = options.caches.some((c) => c.id === FULL_ID) ? options.caches : [FULL_SPEC, ...options.caches];
  const ids = caches.map((c) => c.id);
  if (new Set(ids).size !== ids.length) throw new XqConfigError('E_CONFIG', `runEval: configuration ids must be unique; got ${ids.join(', ')}`);
  const selected = selectRecords(files, options.limit, options.shard, options.sample);
  const ledger = new Ledger(selected.length * caches.length, options.onStep);
  const ctx: Ctx = {
    model,
    tokenizer: options.tokenizer,
    caches,
    prosePrefill,
    passkeyTail,
    passkeyMaxNew,
    eos: new Set(eosIds),
    shared: options.sharedPrefill ?? true,
    batch: (options.batch ?? true) && typeof model.forwardBatch === 'function' && !onGpu(model),
    ledger,
  };
  if (options.batch && !ctx.batch) {
    throw new XqConfigError('E_CONFIG', `runEval: batch needs a model with forwardBatch on a backend other than webgpu (backend ${tf.getBackend()})`);
  }
  const shape = model.cacheShape;
  const configs = caches.map((c) => ({ ...configRecord(c), ...specBits(c, shape, options.bitsTokens ?? 2048) }));
  const prose: ProseRecordResult[] = [];
  const passkey: PasskeyRecordResult[] = [];
  const done = completedByKey(options.completed ?? [], selected, ids);
  for (const { file, index } of selected) {
    const rec = file.records[index]!;
    const prior = done.get(`${file.name}#${index}`);
    if (prior) {
      ledger.restore(file.name, index, prior.timing);
      if (prior.kind === 'prose') prose.push(prior.result);
      else passkey.push(prior.result);
      continue;
    }
    const before = ledger.snapshot();
    let record: CompletedRecord;
    if (rec.kind === 'prose') {
      const result = await (ctx.batch ? runProseRecordBatched : runProseRecord)(ctx, file.name, index, rec);
      prose.push(result);
      record = { kind: 'prose', result, timing: ledger.since(before) };
    } else {
      const result = await (ctx.batch ? runPasskeyRecordBatched : runPasskeyRecord)(ctx, file.name, index, rec);
      passkey.push(result);
      record = { kind: 'passkey', result, timing: ledger.since(before) };
    }
    await options.onRecord?.(record);
  }
  let layerErrorResult: EvalResults['layerErrors'];
  if (options.layerErrorPrompt) {
    const cap = await captureLayers(model, options.layerErrorPrompt);
    const perCache: NonNullable<EvalResults['layerErrors']>['perCache'] = {};
    for (const spec of caches) perCache[spec.id] = layerErrors(cap, (s) => createCacheFor(spec, s));
    layerErrorResult = { promptTokens: cap.tokens, queryRows: cap.queryRows, perCache };
  }
  const fileList = files.map((f) => ({
    name: f.name,
    kind: f.kind,
    records: f.records.length,
    selected: selected.filter((s) => s.file === f).length,
  }));
  const path = options.modelInfo?.path ?? '';
  return {
    format: RESULTS_FORMAT,
    model: {
      name: options.modelInfo?.name ?? (path ? basename(path) : 'model'),
      path,
      architecture: model.config.architecture ?? 'unknown',
      layers: shape.layers,
      kvHeads: shape.kvHeads,
      headDim: shape.headDim,
      vocabSize: model.config.vocabSize,
    },
    backend: tf.getBackend(),
    protocol: { prosePrefill, passkeyTail, passkeyMaxNew, eosIds: [...eosIds], sharedPrefill: ctx.shared, batched: ctx.batch },
    files: fileList,
    limit: options.limit ?? null,
    sample: options.sample ?? null,
    shards: options.shard ? [{ ...options.shard }] : [],
    configs,
    prose: sortRecords(prose, fileList),
    passkey: sortRecords(passkey, fileList),
    timing: ledger.timing,
    ...(layerErrorResult ? { layerErrors: layerErrorResult } : {}),
  };
}
