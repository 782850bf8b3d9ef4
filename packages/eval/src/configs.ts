import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { accountBits, type CrossLayerPlan } from '@xquant/cross-layer';
import { XqConfigError, XqError, XqFormatError } from '@xquant/quant';
import {
  DEFAULT_GROUP_SIZE,
  DEFAULT_RESIDUAL_LENGTH,
  PRESETS,
  createKvCache,
  resolveStrategy,
  type KvCache,
  type KvCacheShape,
} from '@xquant/tfjs';
import { registerPlannedStrategy } from './planned.js';

/** One cache configuration under evaluation: a preset (or strategy) with its residual length and group size. */
export interface CacheSpec {
  /** Unique id in results, e.g. `'kivi-2/R32/g32'`, or `'full'`. */
  id: string;
  /** Method name shown in tables (`'kivi-2'`, `'full'`, or a plan's name). */
  method: string;
  /** Preset name or registered strategy id passed to `createKvCache`. */
  strategy: string;
  /** Options / overrides passed to `createKvCache`. */
  options: Record<string, unknown>;
  /** Residual length R (null for `full`). */
  residualLength: number | null;
  /** Group size (null for `full`). */
  groupSize: number | null;
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
  /** Residual lengths: every quantized preset is evaluated at each. Default: the preset default (128). */
  residualLengths?: readonly number[];
  /** Group sizes, as for residual lengths. Default 32. */
  groupSizes?: readonly number[];
  /**
   * Channels per value group for every quantized configuration (keys keep the group size); default: the group size.
   * A preset file's own `valueGroupSize` wins. Lets e.g. group 128 run for keys where head_dim (64) caps value groups.
   */
  valueGroupSize?: number;
}

/** Id of the full-precision reference configuration. */
export const FULL_ID = 'full';

function checkPositiveInts(list: readonly number[] | undefined, what: string): void {
  for (const v of list ?? []) {
    if (!Number.isInteger(v) || v <= 0) throw new XqConfigError(what === 'residual length' ? 'E_RESIDUAL' : 'E_GROUP_SIZE', `${what} must be a positive integer; got ${String(v)}`);
  }
}

/** Id of a configuration: `name/R<R>/g<G>`, with `/v<V>` when the value group size differs from the group size. */
function specId(name: string, R: number, G: number, Gv: unknown): string {
  return `${name}/R${R}/g${G}${typeof Gv === 'number' && Gv !== G ? `/v${Gv}` : ''}`;
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
 * Expand cache names into configurations: `'full'` once; each preset (`kivi-2`, `xquant-1.38`, …) once per residual
 * length × group size; `'@file.json'` a preset file, with its own R and group size when it sets them, else swept the same way. `full` is always included first (KL and top-1 need it).
 * Unknown names throw `E_STRATEGY_UNKNOWN` listing the presets.
 */
export function resolveCacheSpecs(names: readonly string[], options: ResolveCacheOptions = {}): CacheSpec[] {
  registerPlannedStrategy();
  checkPositiveInts(options.residualLengths, 'residual length');
  checkPositiveInts(options.groupSizes, 'group size');
  if (options.valueGroupSize !== undefined) checkPositiveInts([options.valueGroupSize], 'value group size');
  const Rs = options.residualLengths?.length ? options.residualLengths : [DEFAULT_RESIDUAL_LENGTH];
  const Gs = options.groupSizes?.length ? options.groupSizes : [DEFAULT_GROUP_SIZE];
  const specs: CacheSpec[] = [{ id: FULL_ID, method: FULL_ID, strategy: FULL_ID, options: {}, residualLength: null, groupSize: null }];
  const known = new Set(PRESETS.map((p) => p.id));
  for (const raw of names) {
    const name = raw.trim();
    if (name === '' || name === FULL_ID) continue;
    if (name.startsWith('@')) {
      const p = readPresetFile(name.slice(1));
      // A preset that fixes R / group size (a plan: R is part of its budget) keeps them; otherwise it is swept like a preset.

      // a wrapper preset (e.g. `rotated`) that fixes them in its inner options fixes them too
      const inner = (p.options.innerOptions ?? {}) as Record<string, unknown>;
      const fixed = (key: string): unknown => p.options[key] ?? inner[key];
      const R0 = fixed('residualLength'), G0 = fixed('groupSize'), V0 = fixed('valueGroupSize');
      const Rp = typeof R0 === 'number' ? [R0] : Rs;
      const Gp = typeof G0 === 'number' ? [G0] : Gs;
      const Gv = V0 ?? options.valueGroupSize; // kept as set (a plan's value group size need not divide R)
      for (const R of Rp) {
        for (const G of Gp) {
          const opts = { ...p.options, residualLength: R, groupSize: G, ...(typeof Gv === 'number' ? { valueGroupSize: Gv } : {}) };
          resolveStrategy(p.strategy, opts); // validate now
          specs.push({ id: specId(p.name, R, G, Gv), method: p.name, strategy: p.strategy, options: opts, residualLength: R, groupSize: G });
        }
      }
      continue;
    }
    if (!known.has(name)) {
      throw new XqConfigError('E_STRATEGY_UNKNOWN', `unknown cache '${name}'; presets: ${[...known].join(', ')} (or @preset.json)`);
    }
    for (const R of Rs) {
      for (const G of Gs) {
        const Gv = options.valueGroupSize;
        const opts = { residualLength: R, groupSize: G, ...(Gv !== undefined ? { valueGroupSize: Gv } : {}) };
        resolveStrategy(name, opts);
        specs.push({ id: specId(name, R, G, Gv), method: name, strategy: name, options: opts, residualLength: R, groupSize: G });
      }
    }
  }
  const seen = new Set<string>();
  return specs.filter((s) => (seen.has(s.id) ? false : (seen.add(s.id), true)));
}

/** Create the KV cache of a configuration for a model's cache shape. */
export function createCacheFor(spec: CacheSpec, shape: KvCacheShape): KvCache {
  registerPlannedStrategy();
  return spec.strategy === FULL_ID ? createKvCache(FULL_ID, shape) : createKvCache(spec.strategy, shape, spec.options);
}

/** The storage plan of a cache (quantized caches expose one; `full` is 16 bits everywhere). */
export function cachePlan(cache: KvCache): CrossLayerPlan {
  const p = (cache as { plan?: CrossLayerPlan }).plan;
  if (p && Array.isArray(p.keys) && Array.isArray(p.values)) return p;
  const L = cache.shape.layers;
  const fp = () => Array.from({ length: L }, () => ({ bits: 16 as const, codesFrom: null }));
  return { keys: fp(), values: fp() };
}

/**
 * Channels per value scale/zero group of a configuration: its `valueGroupSize` option when set, else its group size
 * (null for `full`).
 */
export function valueGroupSizeOf(spec: Pick<CacheSpec, 'options' | 'groupSize'>): number | null {
  const v = spec.options.valueGroupSize;
  return typeof v === 'number' ? v : spec.groupSize;
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

/**
 * Paper bits, true stored bits (via `accountBits` of @xquant/cross-layer, fp16 residual) and the bits the cache
 * really holds (fills a cache with `tokens` random tokens and reads `cache.memory()`).
 */
export function specBits(spec: CacheSpec, shape: KvCacheShape, tokens = 2048): SpecBits {
  const cache = createCacheFor(spec, shape);
  try {
    const plan = cachePlan(cache);
    const isFull = spec.strategy === FULL_ID;
    const acct = isFull
      ? { paperBits: 16, storedBitsPerElement: 16 }
      : accountBits({
          plan, kvHeads: shape.kvHeads, headDim: shape.headDim, tokens, residualLength: spec.residualLength!, groupSize: spec.groupSize!,
          valueGroupSize: valueGroupSizeOf(spec)!,
        });
    const { kvHeads, headDim } = shape;
    let seed = 12345;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff - 0.5;
    };
    const q = tf.zeros([kvHeads, 1, headDim]) as tf.Tensor3D;
    for (let l = 0; l < shape.layers; l++) {
      const k = tf.tensor3d(new Float32Array(kvHeads * tokens * headDim).map(rand), [kvHeads, tokens, headDim]);
      const v = tf.tensor3d(new Float32Array(kvHeads * tokens * headDim).map(rand), [kvHeads, tokens, headDim]);
      cache.prefill(l, k, v); // outside tf.tidy: the full cache keeps a clone
      k.dispose();
      v.dispose();
      cache.attend(l, q).dispose(); // attend ends with the schedule's flush
    }
    q.dispose();
    return { paperBits: acct.paperBits, storedBits: acct.storedBitsPerElement, heldBits: cache.memory().trueBitsPerElement, tokens };
  } finally {
    cache.dispose();
  }
}
