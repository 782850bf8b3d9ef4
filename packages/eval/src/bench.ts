import * as tf from '@tensorflow/tfjs-core';
import { XqConfigError } from '@xquant/quant';
import { createKvCache, type AsyncKvCache, type KvCache } from '@xquant/tfjs';
import { FULL_ID, FULL_SPEC, accountSpec, createCacheFor, fillRandom, lcg, type CacheSpec } from './configs.js';
import type { EvalModel } from './protocol.js';

/** Format tag of {@link BenchResults}. */
export const BENCH_FORMAT = 'xquant-bench/v1';

/** Upper limits of {@link runBench}'s options: beyond them a run would exhaust memory rather than measure anything. */
export const BENCH_LIMITS = Object.freeze({
  /** Timed decode steps per run. */
  steps: 100_000,
  /** Untimed warm-up steps per run. */
  warmup: 10_000,
  /** Longest speed context (one full-precision prefill through the model). */
  contextTokens: 65_536,
  /** Longest memory-sweep context (random K/V, no model). */
  memoryContextTokens: 1 << 20,
  /** Most context lengths per list. */
  contexts: 256,
});

/** Options of {@link runBench}. */
export interface BenchOptions {
  /** The model. */
  model: EvalModel;
  /** Configurations; `full` is added as the baseline. */
  caches: readonly CacheSpec[];
  /** Context lengths for the decode-speed runs. Default [256, 512, 1024, 2048]. */
  contexts?: readonly number[];
  /** Context lengths for the memory sweep (no model runs). Default 256 … 16384 (powers of two). */
  memoryContexts?: readonly number[];
  /** Timed decode steps per run. Default 16. */
  steps?: number;
  /** Untimed steps before timing. Default 2. */
  warmup?: number;
  /** Model name recorded in the results. */
  modelName?: string;
  /** Called before each run (progress). */
  log?: (line: string) => void;
}

/** Decode speed of one configuration at one context length. */
export interface BenchSpeedRow {
  /** Configuration id. */
  config: string;
  /** Method name. */
  method: string;
  /** Residual length (null for full). */
  residualLength: number | null;
  /** Group size (null for full). */
  groupSize: number | null;
  /** Tokens in the cache when timing started. */
  context: number;
  /** Mean wall time of one decode step (model forward through the cache + reading the logits), ms. */
  msPerStep: number;
  /** Bytes the cache holds after the timed steps (`cache.memory().totalBytes`). */
  bytes: number;
}

/** Memory of one configuration at one context length. */
export interface BenchMemoryRow {
  /** Configuration id. */
  config: string;
  /** Method name. */
  method: string;
  /** Tokens held. */
  context: number;
  /** Bytes held by this implementation (`cache.memory()`: float32 residual window and buffers included). */
  heldBytes: number;
  /** heldBytes · 8 / elements. */
  heldBits: number;
  /** True stored bits per element with an fp16 residual window (`accountBits`). */
  storedBits: number;
  /** Paper-style bits. */
  paperBits: number;
}

/** Output of {@link runBench}. */
export interface BenchResults {
  /** Always {@link BENCH_FORMAT}. */
  format: typeof BENCH_FORMAT;
  /** Model name. */
  model: string;
  /** tfjs backend. */
  backend: string;
  /** Timed steps per speed row. */
  steps: number;
  /** Decode speed rows. */
  speed: BenchSpeedRow[];
  /** Memory rows. */
  memory: BenchMemoryRow[];
}

/**
 * Decode-step speed and cache memory per configuration and context length on the active tfjs backend, with `full` as
 * the baseline in the same run. Speed: a full-precision prefill of `context` random tokens is copied into each cache,
 * then `warmup` + `steps` single-token forwards run through it. Memory: caches filled with random K/V, no model.
 */
export async function runBench(options: BenchOptions): Promise<BenchResults> {
  const { model } = options;
  const log = options.log ?? (() => {});
  const steps = options.steps ?? 16;
  const warmup = options.warmup ?? 2;
  const bounded = (v: number, what: string, min: number, max: number, limit: string) => {
    if (!Number.isInteger(v) || v < min) throw new XqConfigError('E_CONFIG', `${what} must be an integer ≥ ${min}; got ${String(v)}`);
    if (v > max) throw new XqConfigError('E_CONFIG', `${what} must be at most ${max} (BENCH_LIMITS.${limit}); got ${v}`);
  };
  bounded(steps, 'steps', 1, BENCH_LIMITS.steps, 'steps');
  bounded(warmup, 'warmup', 0, BENCH_LIMITS.warmup, 'warmup');
  const contexts = options.contexts ?? [256, 512, 1024, 2048];
  const memoryContexts = options.memoryContexts ?? [256, 512, 1024, 2048, 4096, 8192, 16384];
  for (const [list, what, max, limit] of [
    [contexts, 'context lengths', BENCH_LIMITS.contextTokens, 'contextTokens'],
    [memoryContexts, 'memory context lengths', BENCH_LIMITS.memoryContextTokens, 'memoryContextTokens'],
  ] as const) {
    if (list.length > BENCH_LIMITS.contexts) throw new XqConfigError('E_CONFIG', `at most ${BENCH_LIMITS.contexts} ${what} (BENCH_LIMITS.contexts); got ${list.length}`);
    for (const t of list) bounded(t, what, 1, max, limit);
  }
  const caches: readonly CacheSpec[] = options.caches.some((c) => c.id === FULL_ID) ? options.caches : [FULL_SPEC, ...options.caches];
  const shape = model.cacheShape;
  const V = model.config.vocabSize;
  const speed: BenchSpeedRow[] = [];
  // GPU tensors cannot be read synchronously: feed the caches asynchronously on webgpu (only there: timings elsewhere unchanged)
  const onGpu = tf.getBackend() === 'webgpu' && typeof model.forwardAsync === 'function';
  const forward = async (ids: number[], cache: KvCache): Promise<tf.Tensor2D> => (onGpu ? model.forwardAsync!(ids, cache) : model.forward(ids, cache));
  for (const T of contexts) {
    const rand = lcg(T);
    const ids = Array.from({ length: T }, () => 2 + Math.floor(rand() * (V - 2)));
    const next = Array.from({ length: warmup + steps }, () => 2 + Math.floor(rand() * (V - 2)));
    log(`bench: prefill ${T} tokens`);
    const full = createKvCache(FULL_ID, shape);
    (await forward(ids, full)).dispose();
    const snap = Array.from({ length: shape.layers }, (_, l) => full.dequantize(l));
    full.dispose();
    try {
      for (const spec of caches) {
        log(`bench: ${spec.id} at ${T} tokens`);
        const cache = createCacheFor(spec, shape);
        try {
          for (const [l, { keys, values }] of snap.entries()) {
            const ac = cache as Partial<AsyncKvCache> & KvCache;
            if (onGpu && ac.prefillAsync) await ac.prefillAsync(l, keys, values);
            else cache.prefill(l, keys, values);
          }
          let t0 = 0;
          for (let i = 0; i < warmup + steps; i++) {
            if (i === warmup) t0 = performance.now();
            const logits = await forward([next[i]!], cache);
            await logits.data();
            logits.dispose();
          }
          const ms = (performance.now() - t0) / steps;
          speed.push({ config: spec.id, method: spec.method, residualLength: spec.config?.residualLength ?? null, groupSize: spec.config?.groupSize ?? null, context: T, msPerStep: ms, bytes: cache.memory().totalBytes });
        } finally {
          cache.dispose();
        }
      }
    } finally {
      for (const s of snap) {
        s.keys.dispose();
        s.values.dispose();
      }
    }
  }
  const memory: BenchMemoryRow[] = [];
  for (const T of memoryContexts) {
    for (const spec of caches) {
      log(`bench: memory of ${spec.id} at ${T} tokens`);
      const cache = createCacheFor(spec, shape);
      try {
        fillRandom(cache, T, lcg(T + 7));
        const m = cache.memory();
        const acct = accountSpec(spec, shape, T);
        memory.push({ config: spec.id, method: spec.method, context: T, heldBytes: m.totalBytes, heldBits: m.trueBitsPerElement, storedBits: acct.storedBitsPerElement, paperBits: acct.paperBits });
      } finally {
        cache.dispose();
      }
    }
  }
  return { format: BENCH_FORMAT, model: options.modelName ?? 'model', backend: tf.getBackend(), steps, speed, memory };
}

/** Markdown tables of a bench run: speed (with the ratio to `full` at the same context) and memory. */
export function benchMarkdown(b: BenchResults): string {
  const out: string[] = [`**Decode step, ${b.model} on ${b.backend}** (mean of ${b.steps} steps; ratio = config / full at the same context)`, ''];
  out.push('| config | context | ms/step | × full | cache KiB | × full |', '|---|---:|---:|---:|---:|---:|');
  for (const r of b.speed) {
    const base = b.speed.find((x) => x.config === FULL_ID && x.context === r.context);
    out.push(
      `| ${r.config} | ${r.context} | ${r.msPerStep.toFixed(1)} | ${base ? (r.msPerStep / base.msPerStep).toFixed(2) : '–'} | ${(r.bytes / 1024).toFixed(0)} | ${base ? (r.bytes / base.bytes).toFixed(3) : '–'} |`,
    );
  }
  out.push('', `**Cache memory, ${b.model}** (held = this implementation, float32 residual window; stored = fp16 residual, the paper-comparable figure)`, '');
  out.push('| config | context | held KiB | held bits | stored bits | paper bits |', '|---|---:|---:|---:|---:|---:|');
  for (const r of b.memory) {
    out.push(`| ${r.config} | ${r.context} | ${(r.heldBytes / 1024).toFixed(0)} | ${r.heldBits.toFixed(3)} | ${r.storedBits.toFixed(3)} | ${r.paperBits.toFixed(3)} |`);
  }
  return `${out.join('\n')}\n`;
}
