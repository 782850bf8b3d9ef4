/**
 * @packageDocumentation
 * The invariants every KV-cache strategy must satisfy, as a test kit for strategy authors (`@xquant/tfjs/testing`):
 * shapes, the residual schedule, `memory()` against the bit accounting, no tensor leaks, and attention within
 * tolerance of dequantize-then-attend. Framework-free: each invariant is `{ name, run() }` (run it in `it()` of vitest,
 * jest, mocha or `node:test`), or run them all with {@link checkStrategy}. Uses the active tfjs backend (set one
 * first, e.g. `await selectBackend({ prefer: 'cpu' })`).
 * @example
 * import { strategyInvariants } from '@xquant/tfjs/testing';
 * for (const inv of strategyInvariants('sandwich', { options: { residualLength: 32 } })) it(inv.name, () => inv.run());
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { accountBits } from '@xquant/cross-layer';
import { XqError, XqShapeError } from '@xquant/quant';
// the package itself (the build maps this import to '@xquant/tfjs', so the kit shares the caller's registries)
import { plainAttention, resolveStrategy, type KvCache, type KvCacheShape, type KvCacheStrategy } from '../index.js';

/** A broken invariant: `invariant` names it, the message says what was expected and what came. */
export class StrategyInvariantError extends XqError {
  /** Name of the invariant that failed. */
  readonly invariant: string;
  constructor(invariant: string, message: string) {
    super('E_INVARIANT', `${invariant}: ${message}`);
    this.name = 'StrategyInvariantError';
    this.invariant = invariant;
  }
}

/** What the invariants run on. Every field has a default. */
export interface StrategyCheckOptions {
  /** Options for the strategy (passed to `resolveStrategy` with an id, or applied over a strategy object's own). */
  options?: Record<string, unknown>;
  /** Cache shape (default `{ layers: 4, kvHeads: 2, headDim: 64 }`). */
  shape?: KvCacheShape;
  /** Query heads, a multiple of kvHeads (default 2 × kvHeads: grouped-query attention). */
  queryHeads?: number;
  /** Tokens prefilled per layer (default 70, or 2R + 6 when the residual length R is larger than 32). */
  promptTokens?: number;
  /** Decode steps after the prompt (default 40). */
  decodeSteps?: number;
  /**
   * Attention tolerance: |attend − dequantize-then-attend| ≤ tolerance · max|reference| + 1e-5 (default 2e-3: the
   * dequantized K/V are rounded to fp16 like the reference, the kernels use exact code·scale + zero).
   */
  tolerance?: number;
  /** Seed of the random K/V/queries (default 1). */
  seed?: number;
}

/** One invariant: run it (async); it throws a {@link StrategyInvariantError} when the strategy breaks it. */
export interface StrategyInvariant {
  /** What it checks, as a test title. */
  readonly name: string;
  /** Check it on fresh caches; resolves when it holds. */
  run(): Promise<void>;
}

/** What {@link checkStrategy} found. */
export interface StrategyCheckReport {
  /** Strategy id. */
  strategyId: string;
  /** Names of the invariants that hold. */
  passed: string[];
  /** The invariants that failed, with their errors. */
  failed: { name: string; error: Error }[];
}

/** Deterministic normal samples (mulberry32 + Box–Muller). */
function normals(n: number, seed: number, scale = 1): Float32Array {
  let a = seed >>> 0;
  const u = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(u() + 1e-12)) * Math.cos(2 * Math.PI * u()) * scale);
}

function maxAbs(x: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]!));
  return m;
}

/** The defaults applied, and a factory of fresh caches. */
function setup(strategy: string | KvCacheStrategy, o: StrategyCheckOptions) {
  const resolved = resolveStrategy(strategy, o.options);
  const shape: KvCacheShape = o.shape ?? { layers: 4, kvHeads: 2, headDim: 64 };
  const qHeads = o.queryHeads ?? 2 * shape.kvHeads;
  // by default past two residual windows, so both keys and values have quantized and full-precision tokens
  const R = resolved.resolveConfig?.(shape).residualLength;
  const P = o.promptTokens ?? Math.max(70, R === undefined ? 0 : 2 * R + 6);
  const steps = o.decodeSteps ?? 40;
  const tol = o.tolerance ?? 2e-3;
  const seed = o.seed ?? 1;
  if (qHeads % shape.kvHeads !== 0) throw new XqShapeError(`queryHeads ${qHeads} must be a multiple of kvHeads ${shape.kvHeads}`);
  const { layers: L, kvHeads: H, headDim: D } = shape;
  // keys with per-channel offsets and an outlier channel (as real keys have), values plain normal
  const kv = (layer: number, from: number, n: number) => {
    const k = normals(H * n * D, seed * 7919 + layer * 104729 + from * 31 + 1);
    for (let i = 0; i < k.length; i++) k[i] = k[i]! + (i % D === 0 ? 6 : ((i % D) % 7) * 0.3);
    return { k: tf.tensor3d(k, [H, n, D]), v: tf.tensor3d(normals(H * n * D, seed * 7919 + layer * 104729 + from * 31 + 2), [H, n, D]) };
  };
  const queries = (layer: number, step: number, n: number) => tf.tensor3d(normals(qHeads * n * D, seed * 31337 + layer * 997 + step * 13 + 3), [qHeads, n, D]);
  return { resolved, shape, qHeads, P, steps, tol, L, H, D, kv, queries, create: () => resolved.createCache(shape) };
}

function fail(name: string, message: string): never {
  throw new StrategyInvariantError(name, message);
}

/**
 * The invariants of a strategy (a registered id or preset, or a strategy object), each to run on its own:
 * 1. identity and shapes: `strategyId`, `shape`, `seqLength`, and the shapes `attend` and `dequantize` return;
 * 2. residual schedule: after `attend`, keys are quantized in whole multiples of R and values beyond the newest R
 *    (checked through `dequantize`: the full-precision window is returned as given, quantized tokens are not);
 * 3. `memory()`: its fields agree with each other, paper bits equal `accountBits` of `cache.config`, and the bytes
 *    held are at least what the accounting says must be stored (codes, scales and zeros in the cache's precision,
 *    float32 residual) and at most that plus one residual window of float32 slack per layer;
 * 4. no tensor leaks over decode steps, `reset()` and `dispose()`;
 * 5. `attend` within tolerance of plain attention over `dequantize()`, for prefill (causal) and decode;
 * 6. bad input (wrong layer, wrong shapes) throws a typed `XqError`.
 */
export function strategyInvariants(strategy: string | KvCacheStrategy, options: StrategyCheckOptions = {}): StrategyInvariant[] {
  let s: ReturnType<typeof setup> | undefined;
  const ctx = () => (s ??= setup(strategy, options));

  /**
   * Prefill every layer with P tokens and attend (causal), then `steps` decode steps. `each` is called before every
   * attend (what attention will see is what `dequantize` shows now: the flush comes after attend) and returns what to
   * do with the output.
   */
  type Each = (layer: number, q: Tensor3D, tokens: number) => ((out: Tensor3D) => void) | void;
  const drive = (cache: KvCache, steps: number, each?: Each) => {
    const c = ctx();
    const step1 = (l: number, q: Tensor3D, tokens: number) => {
      const after = each?.(l, q, tokens);
      const out = cache.attend(l, q);
      try {
        after?.(out);
      } finally {
        tf.dispose([q, out]);
      }
    };
    for (let l = 0; l < c.L; l++) {
      const { k, v } = c.kv(l, 0, c.P);
      cache.prefill(l, k, v);
      tf.dispose([k, v]);
      step1(l, c.queries(l, 0, c.P), c.P);
    }
    for (let step = 1; step <= steps; step++) {
      for (let l = 0; l < c.L; l++) {
        const { k, v } = c.kv(l, c.P + step - 1, 1);
        cache.append(l, k, v);
        tf.dispose([k, v]);
        step1(l, c.queries(l, step, 1), c.P + step);
      }
    }
  };

  const withCache = async (fn: (cache: KvCache) => void | Promise<void>) => {
    const cache = ctx().create();
    try {
      await fn(cache);
    } finally {
      cache.dispose();
    }
  };

  const shapes: StrategyInvariant = {
    name: 'identity and shapes: strategyId, shape, seqLength, attend and dequantize',
    run: () =>
      withCache((cache) => {
        const n = shapes.name;
        const c = ctx();
        if (typeof cache.strategyId !== 'string' || cache.strategyId === '') fail(n, `strategyId must be a non-empty string; got ${String(cache.strategyId)}`);
        if (cache.shape.layers !== c.L || cache.shape.kvHeads !== c.H || cache.shape.headDim !== c.D) {
          fail(n, `cache.shape is ${JSON.stringify(cache.shape)}; created for ${JSON.stringify(c.shape)}`);
        }
        for (let l = 0; l < c.L; l++) if (cache.seqLength(l) !== 0) fail(n, `a new cache holds ${cache.seqLength(l)} tokens in layer ${l}`);
        drive(cache, 3, (l, q, tokens) => (out) => {
          const want = [c.qHeads, q.shape[1], c.D];
          if (out.shape.join() !== want.join()) fail(n, `attend(layer ${l}) returned [${out.shape}]; expected [${want}]`);
          if (cache.seqLength(l) !== tokens) fail(n, `seqLength(${l}) is ${cache.seqLength(l)} after ${tokens} tokens`);
        });
        for (let l = 0; l < c.L; l++) {
          const { keys, values } = cache.dequantize(l);
          const want = [c.H, c.P + 3, c.D].join();
          const got = [keys.shape.join(), values.shape.join()];
          tf.dispose([keys, values]);
          if (got[0] !== want || got[1] !== want) fail(n, `dequantize(${l}) returned keys [${got[0]}], values [${got[1]}]; expected [${want}] for both`);
        }
      }),
  };

  const schedule: StrategyInvariant = {
    name: 'residual schedule: keys quantized in whole multiples of R, values beyond the newest R, after attend',
    run: () =>
      withCache((cache) => {
        const n = schedule.name;
        const c = ctx();
        const config = cache.config;
        const R = config?.residualLength;
        // the inputs, per layer, token-major per head: [H, T, D]
        const inputs = Array.from({ length: c.L }, () => ({ k: [] as Float32Array[], v: [] as Float32Array[] }));
        const T = c.P + c.steps;
        for (let l = 0; l < c.L; l++) {
          const { k, v } = c.kv(l, 0, c.P);
          inputs[l]!.k.push(k.dataSync() as Float32Array);
          inputs[l]!.v.push(v.dataSync() as Float32Array);
          tf.dispose([k, v]);
          for (let step = 1; step <= c.steps; step++) {
            const t = c.kv(l, c.P + step - 1, 1);
            inputs[l]!.k.push(t.k.dataSync() as Float32Array);
            inputs[l]!.v.push(t.v.dataSync() as Float32Array);
            tf.dispose([t.k, t.v]);
          }
        }
        drive(cache, c.steps);
        // token t of head h in the concatenated inputs
        const token = (parts: Float32Array[], h: number, t: number): Float32Array => {
          if (t < c.P) return parts[0]!.subarray((h * c.P + t) * c.D, (h * c.P + t + 1) * c.D);
          return parts[t - c.P + 1]!.subarray(h * c.D, (h + 1) * c.D);
        };
        for (let l = 0; l < c.L; l++) {
          const { keys, values } = cache.dequantize(l);
          const got = { k: keys.dataSync(), v: values.dataSync() };
          tf.dispose([keys, values]);
          for (const kind of ['k', 'v'] as const) {
            const bits = config ? (kind === 'k' ? config.keys : config.values)[l]!.bits : 16;
            // full-precision tokens: all of them at 16 bits; else the newest T mod R keys / min(T, R) values
            const exactFrom = bits === 16 || R === undefined ? 0 : kind === 'k' ? T - (T % R) : Math.max(0, T - R);
            let maxIn = 0;
            let errFull = 0;
            let errQuant = 0;
            for (let h = 0; h < c.H; h++) {
              for (let t = 0; t < T; t++) {
                const x = token(inputs[l]![kind], h, t);
                const y = got[kind].subarray((h * T + t) * c.D, (h * T + t + 1) * c.D);
                maxIn = Math.max(maxIn, maxAbs(x));
                for (let i = 0; i < c.D; i++) {
                  const e = Math.abs(x[i]! - y[i]!);
                  if (t >= exactFrom) errFull = Math.max(errFull, e);
                  else errQuant = Math.max(errQuant, e);
                }
              }
            }
            const what = kind === 'k' ? 'keys' : 'values';
            if (errFull > 1e-4 * maxIn) {
              fail(n, `layer ${l} ${what}: tokens ${exactFrom}…${T - 1} should be held in full precision (R = ${R ?? 'none'}, ${bits} bits), but differ from the input by ${errFull}`);
            }
            if (exactFrom > 0 && errQuant <= 1e-4 * maxIn) {
              fail(n, `layer ${l} ${what}: tokens 0…${exactFrom - 1} should be quantized to ${bits} bits after attend, but equal the input (max error ${errQuant})`);
            }
          }
        }
      }),
  };

  const memory: StrategyInvariant = {
    name: 'memory(): consistent fields, paper bits = accountBits, held bytes within the accounting plus slack',
    run: () =>
      withCache((cache) => {
        const n = memory.name;
        const c = ctx();
        const empty = cache.memory();
        if (empty.tokens !== 0 || empty.elements !== 0) fail(n, `an empty cache reports ${empty.tokens} tokens, ${empty.elements} elements`);
        drive(cache, c.steps);
        const m = cache.memory();
        const T = c.P + c.steps;
        const elements = 2 * c.L * c.H * c.D * T;
        const eq = (a: number, b: number, what: string) => {
          if (!(Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b)))) fail(n, `${what}: ${a}, expected ${b}`);
        };
        eq(m.tokens, cache.seqLength(0), 'tokens vs seqLength(0)');
        eq(m.tokens, T, 'tokens');
        eq(m.elements, elements, 'elements (2 · layers · kvHeads · headDim · tokens)');
        eq(m.totalBytes, m.codeBytes + m.metadataBytes + m.residualBytes, 'totalBytes vs codes + metadata + residual');
        eq(m.trueBitsPerElement, (8 * m.totalBytes) / elements, 'trueBitsPerElement (8 · totalBytes / elements)');
        for (const k of ['codeBytes', 'metadataBytes', 'residualBytes'] as const) if (!(m[k] >= 0) || !Number.isInteger(m[k])) fail(n, `${k} must be a whole number ≥ 0; got ${m[k]}`);
        const config = cache.config;
        if (!config) {
          // no quantized storage: every element held in full precision (float32), 16 paper bits
          eq(m.paperBitsPerElement, 16, 'paperBitsPerElement of a cache without quantized storage');
          if (m.totalBytes < 4 * elements) fail(n, `holds ${m.totalBytes} bytes, less than float32 K/V (${4 * elements})`);
          return;
        }
        const metadataBits = config.precision === 'fp32' ? 32 : 16;
        const acc = accountBits({ config, kvHeads: c.H, headDim: c.D, tokens: T, metadataBits, residualBits: 32 });
        eq(m.paperBitsPerElement, acc.paperBits, 'paperBitsPerElement vs accountBits(config).paperBits');
        if (m.codeBytes < acc.codeBytes) fail(n, `codeBytes ${m.codeBytes} is less than the ${acc.codeBytes} bytes the codes need (accountBits)`);
        if (m.metadataBytes < acc.metadataBytes) fail(n, `metadataBytes ${m.metadataBytes} is less than the ${acc.metadataBytes} bytes of scales and zeros (accountBits)`);
        if (m.residualBytes < acc.residualBytes) fail(n, `residualBytes ${m.residualBytes} is less than the ${acc.residualBytes} float32 bytes of the residual window (accountBits)`);
        const slack = c.L * 2 * c.H * c.D * 4 * (config.residualLength + 40);
        if (m.totalBytes > acc.totalBytes + slack) {
          fail(n, `holds ${m.totalBytes} bytes, more than the accounting (${acc.totalBytes}) plus one residual window of slack per layer (${slack})`);
        }
      }),
  };

  const leaks: StrategyInvariant = {
    name: 'no tensor leaks over decode steps, reset() and dispose()',
    run: async () => {
      const n = leaks.name;
      const c = ctx();
      const before = tf.memory().numTensors;
      const cache = c.create();
      try {
        drive(cache, 4);
        const after4 = tf.memory().numTensors;
        const more = () => {
          for (let l = 0; l < c.L; l++) {
            const { k, v } = c.kv(l, 999, 1);
            cache.append(l, k, v);
            tf.dispose([k, v]);
            const q = c.queries(l, 999, 1);
            tf.dispose([q, cache.attend(l, q)]);
          }
        };
        for (let i = 0; i < c.steps; i++) more();
        // steady state: more tokens may hold more tensors only if the cache chunks its storage; allow one chunk per layer
        const grown = tf.memory().numTensors - after4;
        if (grown > 2 * c.L * Math.ceil(c.steps / 16)) fail(n, `${grown} more tensors after ${c.steps} more decode steps`);
        cache.reset();
        if (cache.seqLength(0) !== 0) fail(n, `seqLength(0) is ${cache.seqLength(0)} after reset()`);
        drive(cache, 4);
        if (tf.memory().numTensors > after4) fail(n, `${tf.memory().numTensors - after4} more tensors after reset() and the same steps as before`);
      } finally {
        cache.dispose();
      }
      if (tf.memory().numTensors > before) fail(n, `${tf.memory().numTensors - before} tensors left after dispose()`);
    },
  };

  const attention: StrategyInvariant = {
    name: 'attend is within tolerance of plain attention over dequantize(), prefill and decode',
    run: () =>
      withCache((cache) => {
        const n = attention.name;
        const c = ctx();
        const check = (l: number, q: Tensor3D, tokens: number) => {
          const { keys, values } = cache.dequantize(l);
          const ref = plainAttention(q, keys, values);
          const b = ref.dataSync();
          tf.dispose([keys, values, ref]);
          return (out: Tensor3D) => {
            const a = out.dataSync();
            if (a.length !== b.length) fail(n, `layer ${l}: attend returned ${a.length} values, the reference ${b.length}`);
            let err = 0;
            for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i]! - b[i]!));
            if (!(err <= c.tol * maxAbs(b) + 1e-5)) fail(n, `layer ${l} at ${tokens} tokens (${q.shape[1]} queries): max |attend − reference| = ${err}, over ${c.tol} · ${maxAbs(b)} + 1e-5`);
          };
        };
        drive(cache, c.steps, check);
      }),
  };

  const errors: StrategyInvariant = {
    name: 'bad input (layer out of range, wrong K/V or query shapes) throws a typed XqError',
    run: () =>
      withCache((cache) => {
        const n = errors.name;
        const c = ctx();
        const typed = (what: string, f: () => unknown) => {
          let thrown: unknown;
          try {
            const r = f();
            if (r instanceof tf.Tensor) r.dispose();
          } catch (e) {
            thrown = e;
          }
          if (!XqError.isInstance(thrown)) fail(n, `${what}: expected a typed XqError; got ${thrown === undefined ? 'no error' : String(thrown)}`);
        };
        const t = {
          good: tf.zeros([c.H, 1, c.D]) as Tensor3D,
          wrongD: tf.zeros([c.H, 1, c.D + 1]) as Tensor3D,
          wrongH: tf.zeros([c.H + 1, 1, c.D]) as Tensor3D,
          q: tf.zeros([c.qHeads, 1, c.D]) as Tensor3D,
          qWrongD: tf.zeros([c.qHeads, 1, c.D + 1]) as Tensor3D,
          q2: tf.zeros([c.qHeads, 2, c.D]) as Tensor3D,
        };
        try {
          typed('attend before any token', () => cache.attend(0, t.q));
          typed('append to layer -1', () => cache.append(-1, t.good, t.good));
          typed(`append to layer ${c.L}`, () => cache.append(c.L, t.good, t.good));
          typed('append with headDim + 1', () => cache.append(0, t.wrongD, t.wrongD));
          typed('append with kvHeads + 1', () => cache.append(0, t.wrongH, t.wrongH));
          cache.append(0, t.good, t.good);
          typed('attend with queries of headDim + 1', () => cache.attend(0, t.qWrongD));
          typed('attend with more query positions than tokens', () => cache.attend(0, t.q2));
        } finally {
          tf.dispose(Object.values(t));
        }
      }),
  };

  return [shapes, schedule, memory, leaks, attention, errors];
}

/**
 * Run every invariant of {@link strategyInvariants} in turn and report which hold. Throws only when the strategy cannot
 * be resolved or the options are inconsistent; broken invariants are in `failed`.
 * @example
 * const report = await checkStrategy(mySandwich({ residualLength: 32 }));
 * if (report.failed.length) throw report.failed[0].error;
 */
export async function checkStrategy(strategy: string | KvCacheStrategy, options: StrategyCheckOptions = {}): Promise<StrategyCheckReport> {
  const resolved = resolveStrategy(strategy, options.options);
  const report: StrategyCheckReport = { strategyId: resolved.id, passed: [], failed: [] };
  for (const inv of strategyInvariants(resolved, { ...options, options: undefined })) {
    try {
      await inv.run();
      report.passed.push(inv.name);
    } catch (e) {
      report.failed.push({ name: inv.name, error: e as Error });
    }
  }
  return report;
}
