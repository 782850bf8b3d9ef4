import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { accountBits } from '@xquant/cross-layer';
import { XqConfigError, XqError, XqFormatError } from '@xquant/quant';
import { PRESETS, createKvCache, resolveStrategy, strategyIds, type CacheConfig, type KvCache, type KvCacheShape } from '@xquant/tfjs';

/** One cache configuration under evaluation: a preset (or strategy) with its options and resolved configuration. */
export interface CacheSpec {
  /** Unique id in results, e.g. `'kivi-2/R32/g32'`, or `'full'`. */
  id: string;
  /** Method name shown in tables (`'kivi-2'`, `'full'`, or a plan's name). */
  method: string;
  /** Preset name or registered strategy id passed to `createKvCache`. */
  strategy: string;
  /** Options / overrides passed to `createKvCache`. */
  options: Record<string, unknown>;
  /** The resolved configuration for the model's cache shape (`resolveCacheConfig`); null without quantized storage (`full`). */
  config: CacheConfig | null;
}

/** A reusable cache preset as written by the planner (`xquant plan --out plan.json`) and read by `--caches @plan.json`. */
export interface PresetFile {
  /** Name shown in results. */
  name: string;
  /** Registered strategy id (e.g. `'planned'`, `'xquant'`) or preset. */
  strategy: string;
  /** Its options. */
  options: Record<string, unknown>;
}

/** Options of {@link resolveCacheSpecs}. */
export interface ResolveCacheOptions {
  /** Residual lengths: every quantized preset is evaluated at each. Default: the strategy's (the resolver's default). */
  residualLengths?: readonly number[];
  /** Group sizes, as for residual lengths. */
  groupSizes?: readonly number[];
  /**
   * Channels per value group for every quantized configuration (keys keep the group size); default: the group size.
   * A preset file's own `valueGroupSize` wins. Lets e.g. group 128 run for keys where head_dim (64) caps value groups.
   */
  valueGroupSize?: number;
}

/** Id of the full-precision reference configuration. */
export const FULL_ID = 'full';

/** The `full` configuration. */
export const FULL_SPEC: Readonly<CacheSpec> = Object.freeze({ id: FULL_ID, method: FULL_ID, strategy: FULL_ID, options: {}, config: null });

/**
 * One configuration: `strategy` with `options`, its configuration resolved for `shape` (`resolveCacheConfig`; typed
 * errors on bad options); its id is `method/R<R>/g<G>`, with `/v<V>` when the value group size differs from the group size.
 */
export function cacheSpec(method: string, strategy: string, options: Record<string, unknown>, shape: KvCacheShape): CacheSpec {
  if (strategy === FULL_ID) return { ...FULL_SPEC, method };
  const s = resolveStrategy(strategy, options);
  const spec: CacheSpec = { id: method, method, strategy, options, config: s.resolveConfig ? s.resolveConfig(shape) : null };
  const { residualLength: R, groupSize: G, valueGroupSize: V } = sizesOf(spec);
  spec.id = [method, R !== null && `R${R}`, G !== null && `g${G}`, V !== G && `v${V}`].filter(Boolean).join('/');
  return spec;
}

/**
 * R and group sizes of a configuration: its resolved config's; for a strategy without quantized storage (`rotated`
 * over `full`) the sizes its options name, else null.
 */
function sizesOf({ config, options }: CacheSpec): Record<'residualLength' | 'groupSize' | 'valueGroupSize', number | null> {
  const given = (k: 'residualLength' | 'groupSize' | 'valueGroupSize') => config?.[k] ?? (typeof options[k] === 'number' ? options[k] : null);
  return { residualLength: given('residualLength'), groupSize: given('groupSize'), valueGroupSize: given('valueGroupSize') ?? given('groupSize') };
}

/** Read a preset file (`{ name, strategy, options }`). */
export function readPresetFile(path: string): PresetFile {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT') throw new XqError('E_IO', `${path}: preset file not found`, { cause: e });
    throw new XqFormatError(`${path}: not a JSON preset file (${(e as Error).message})`, { cause: e });
  }
  const p = raw as Partial<PresetFile> & { preset?: PresetFile };
  const obj = p && typeof p === 'object' && p.preset && typeof p.preset === 'object' ? p.preset : p;
  if (!obj || typeof obj.strategy !== 'string' || typeof obj.options !== 'object' || obj.options === null) {
    throw new XqFormatError(`${path}: expected { name, strategy, options } (or a plan result with "preset"); got keys ${Object.keys(raw ?? {}).join(', ')}`);
  }
  return { name: typeof obj.name === 'string' ? obj.name : path, strategy: obj.strategy, options: obj.options };
}

/**
 * Check cache names without a model: presets, `full`, strategy ids registered with `registerStrategy` (e.g. by a CLI
 * plugin) and `@file.json` preset files (read and checked); throws `E_STRATEGY_UNKNOWN` listing the presets and the
 * registered ids, or the file's typed error. {@link resolveCacheSpecs} runs it first.
 */
export function validateCacheNames(names: readonly string[]): void {
  const presets = PRESETS.map((p) => p.id);
  const known = new Set([...presets, ...strategyIds()]);
  for (const raw of names) {
    const name = raw.trim();
    if (name.startsWith('@')) readPresetFile(name.slice(1));
    else if (name !== '' && !known.has(name)) {
      const registered = strategyIds().filter((id) => !presets.includes(id));
      throw new XqConfigError('E_STRATEGY_UNKNOWN', `unknown cache '${name}'; presets: ${presets.join(', ')} (or @preset.json, or a registered strategy: ${registered.join(', ')})`);
    }
  }
}

/**
 * Expand cache names into configurations for a model's cache `shape`: `'full'` once; each preset (`kivi-2`,
 * `xquant-1.38`, …) once per residual length × group size; `'@file.json'` a preset file, with its own R and group size
 * when it sets them (a wrapper preset such as `rotated` may set them in its inner options), else swept the same way.
 * `full` is always included first (KL and top-1 need it). Unknown names throw `E_STRATEGY_UNKNOWN` listing the presets;
 * bad sizes throw the resolver's typed errors.
 */
export function resolveCacheSpecs(names: readonly string[], shape: KvCacheShape, options: ResolveCacheOptions = {}): CacheSpec[] {
  validateCacheNames(names);
  const sweep = (list: readonly number[] | undefined) => (list?.length ? list : [undefined]);
  const specs: CacheSpec[] = [{ ...FULL_SPEC }];
  const add = (method: string, strategy: string, fixed: Record<string, unknown>, base: Record<string, unknown>) => {
    for (const R of 'residualLength' in fixed ? [fixed.residualLength] : sweep(options.residualLengths)) {
      for (const G of 'groupSize' in fixed ? [fixed.groupSize] : sweep(options.groupSizes)) {
        const V = 'valueGroupSize' in fixed ? fixed.valueGroupSize : options.valueGroupSize;
        const sizes = Object.fromEntries(Object.entries({ residualLength: R, groupSize: G, valueGroupSize: V }).filter(([, v]) => v !== undefined));
        const spec = cacheSpec(method, strategy, { ...base, ...sizes }, shape);
        // recorded as resolved (results name R and the group size even when the resolver's defaults applied)
        spec.options = { ...base, residualLength: spec.config?.residualLength ?? R, groupSize: spec.config?.groupSize ?? G, ...(V !== undefined ? { valueGroupSize: V } : {}) };
        specs.push(spec);
      }
    }
  };
  for (const raw of names) {
    const name = raw.trim();
    if (name === '' || name === FULL_ID) continue;
    if (name.startsWith('@')) {
      const p = readPresetFile(name.slice(1));
      // A preset that fixes R / group sizes (a plan: R is part of its budget) keeps them, also in a wrapper's inner options.
      const inner = (p.options.innerOptions ?? {}) as Record<string, unknown>;
      const fixed: Record<string, unknown> = {};
      for (const k of ['residualLength', 'groupSize', 'valueGroupSize']) if (typeof (p.options[k] ?? inner[k]) === 'number') fixed[k] = p.options[k] ?? inner[k];
      add(p.name, p.strategy, fixed, p.options);
    } else add(name, name, {}, {});
  }
  const seen = new Set<string>();
  return specs.filter((s) => (seen.has(s.id) ? false : (seen.add(s.id), true)));
}

/** Create the KV cache of a configuration for a model's cache shape. */
export function createCacheFor(spec: CacheSpec, shape: KvCacheShape): KvCache {
  return spec.strategy === FULL_ID ? createKvCache(FULL_ID, shape) : createKvCache(spec.strategy, shape, spec.options);
}

/** A configuration as recorded in results (plain JSON). */
export interface ConfigRecord extends Omit<CacheSpec, 'config'> {
  /** Its residual length R (null for `full`). */
  residualLength: number | null;
  /** Its group size (null for `full`). */
  groupSize: number | null;
}

/** A configuration as recorded in results: its options and resolved sizes, without the calibrator objects. */
export function configRecord(spec: CacheSpec): ConfigRecord {
  const { id, method, strategy, options } = spec;
  const { residualLength, groupSize } = sizesOf(spec);
  return { id, method, strategy, options, residualLength, groupSize };
}

/** Bit accounting of a configuration at one context length. */
export interface SpecBits {
  /** Paper-style bits: code bits averaged over the 2L tensors (borrowed codes count 0). */
  paperBits: number;
  /** True stored bits per element with an fp16 residual window (the anchor's `stored_bits_T2048` convention). */
  storedBits: number;
  /** Bits per element this implementation actually holds (`cache.memory()`, float32 residual window and buffers). */
  heldBits: number;
  /** Context length used. */
  tokens: number;
}

/** A deterministic uniform [0, 1) generator (LCG). @internal */
export function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Prefill every layer of `cache` with `tokens` random K/V in [−2, 2) and attend once (the schedule's flush). @internal */
export function fillRandom(cache: KvCache, tokens: number, rand: () => number): void {
  const { layers, kvHeads, headDim } = cache.shape;
  const q = tf.zeros([kvHeads, 1, headDim]) as tf.Tensor3D;
  for (let l = 0; l < layers; l++) {
    const [k, v] = [0, 1].map(() => tf.tensor3d(Float32Array.from({ length: kvHeads * tokens * headDim }, () => rand() * 4 - 2), [kvHeads, tokens, headDim]));
    cache.prefill(l, k!, v!); // outside tf.tidy: the full cache keeps a clone
    tf.dispose([k!, v!]);
    cache.attend(l, q).dispose();
  }
  q.dispose();
}

/**
 * `accountBits` of a configuration (fp16 metadata and residual window); `full` is 16 bits of both kinds; a strategy
 * without a configuration that accounts itself (`KvCacheStrategy.accountBits`, e.g. `turboquant`) is asked.
 */
export function accountSpec(spec: CacheSpec, shape: KvCacheShape, tokens: number): { paperBits: number; storedBitsPerElement: number } {
  if (spec.config !== null) return accountBits({ config: spec.config, kvHeads: shape.kvHeads, headDim: shape.headDim, tokens });
  if (spec.strategy !== FULL_ID) {
    const own = resolveStrategy(spec.strategy, spec.options).accountBits;
    if (own) return own(shape, tokens);
  }
  return { paperBits: 16, storedBitsPerElement: 16 };
}

/**
 * Paper bits, true stored bits (via `accountBits` of @xquant/cross-layer, fp16 residual) and the bits the cache
 * really holds (fills a cache with `tokens` random tokens and reads `cache.memory()`).
 */
export function specBits(spec: CacheSpec, shape: KvCacheShape, tokens = 2048): SpecBits {
  const cache = createCacheFor(spec, shape);
  try {
    const acct = accountSpec(spec, shape, tokens);
    fillRandom(cache, tokens, lcg(12345));
    return { paperBits: acct.paperBits, storedBits: acct.storedBitsPerElement, heldBits: cache.memory().trueBitsPerElement, tokens };
  } finally {
    cache.dispose();
  }
}
