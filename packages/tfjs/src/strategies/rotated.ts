import * as tf from '@tensorflow/tfjs-core';
import type { Tensor2D, Tensor3D } from '@tensorflow/tfjs-core';
import type { CrossLayerPlan } from '@xquant/cross-layer';
import { XqConfigError, XqShapeError } from '@xquant/quant';
import { CACHE_OVERRIDE_KEYS, type CacheConfig } from '../config.js';
import { resolveStrategy } from '../registry.js';
import type { AsyncKvCache, KvCache, KvCacheShape, KvCacheStrategy, KvMemoryReport, QuantizedCacheOptions } from '../types.js';
import { checkAlive, checkKv, checkLayer, checkQueries, validateCacheShape } from '../validate.js';

/** Options of the {@link rotated} strategy (plain JSON when `inner` is an id, so it fits a preset file). */
export interface RotatedOptions extends QuantizedCacheOptions {
  /** Strategy that stores the rotated K/V: a registered id or preset (`'kivi'`, `'xquant-noshare'`, …) or a strategy object. */
  inner: string | KvCacheStrategy;
  /** Options of the inner strategy (a preset's overrides). `residualLength`, `groupSize`, `valueGroupSize` and `precision` given at the top level win over these. */
  innerOptions?: Record<string, unknown>;
  /** Rotate keys (and the queries with them). Default true. */
  keys?: boolean;
  /** Rotate values (and the attention output back). Default false. */
  values?: boolean;
  /** Seed of the random ±1 diagonal D applied before H (QuaRot); null = plain Hadamard, no D. Default 0. */
  seed?: number | null;
}

const OPTION_KEYS = new Set<string>(['inner', 'innerOptions', 'keys', 'values', 'seed', ...CACHE_OVERRIDE_KEYS]);

/** True when `d` is a positive power of two. */
function isPowerOfTwo(d: number): boolean {
  return Number.isInteger(d) && d > 0 && (d & (d - 1)) === 0;
}

/**
 * In-place normalized fast Walsh–Hadamard transform of every row of `x` (consecutive rows of length `d`, a power of
 * two): each row r becomes r·H/√d, H the Sylvester Hadamard matrix (symmetric, H·Hᵀ = d·I). O(d log d) per row; the
 * transform is its own inverse.
 */
export function walshHadamard(x: Float32Array | Float64Array, d: number): void {
  if (!isPowerOfTwo(d)) throw new XqShapeError(`Walsh–Hadamard transform: row length must be a power of two; got ${String(d)}`);
  if (x.length % d !== 0) throw new XqShapeError(`Walsh–Hadamard transform: ${x.length} elements is not a whole number of rows of ${d}`);
  const norm = 1 / Math.sqrt(d);
  for (let base = 0; base < x.length; base += d) {
    for (let h = 1; h < d; h *= 2) {
      for (let i = base; i < base + d; i += 2 * h) {
        for (let j = i; j < i + h; j++) {
          const a = x[j]!;
          const b = x[j + h]!;
          x[j] = a + b;
          x[j + h] = a - b;
        }
      }
    }
    for (let j = base; j < base + d; j++) x[j] = x[j]! * norm;
  }
}

/** The ±1 diagonal of D for `seed` (mulberry32, one bit per channel), or all ones for null. */
export function randomSigns(d: number, seed: number | null): Float64Array {
  const s = new Float64Array(d).fill(1);
  if (seed === null) return s;
  let a = seed >>> 0;
  for (let i = 0; i < d; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    s[i] = ((t ^ (t >>> 14)) >>> 0) & 1 ? -1 : 1;
  }
  return s;
}

/**
 * The orthogonal rotation M = D·H/√d as a row-major `d × d` Float64Array (row i = signᵢ · row i of H/√d), so that a
 * row vector x rotates to x·M. Built with {@link walshHadamard}; M·Mᵀ = I.
 */
export function hadamardRotation(d: number, seed: number | null = 0): Float64Array {
  if (!isPowerOfTwo(d)) throw new XqShapeError(`Hadamard rotation: headDim must be a power of two; got ${String(d)}`);
  const signs = randomSigns(d, seed);
  const m = new Float64Array(d * d);
  for (let i = 0; i < d; i++) m[i * d + i] = signs[i]!;
  walshHadamard(m, d);
  return m;
}

function validate(o: RotatedOptions): void {
  if (typeof o !== 'object' || o === null) throw new XqConfigError('E_CONFIG', `rotated: options must be an object with 'inner'; got ${String(o)}`);
  for (const k of Object.keys(o)) {
    if (!OPTION_KEYS.has(k)) throw new XqConfigError('E_CONFIG', `rotated: unknown option '${k}'; expected ${[...OPTION_KEYS].join(', ')}`);
  }
  const inner = o.inner as unknown;
  const isStrategy = typeof inner === 'object' && inner !== null && typeof (inner as KvCacheStrategy).createCache === 'function';
  if (!(typeof inner === 'string' && inner.length > 0) && !isStrategy) {
    throw new XqConfigError('E_CONFIG', `rotated: 'inner' must be a strategy id or preset name (e.g. 'kivi-2') or a strategy object; got ${JSON.stringify(inner) ?? String(inner)}`);
  }
  if (o.innerOptions !== undefined && (typeof o.innerOptions !== 'object' || o.innerOptions === null || Array.isArray(o.innerOptions))) {
    throw new XqConfigError('E_CONFIG', `rotated: 'innerOptions' must be an object; got ${JSON.stringify(o.innerOptions)}`);
  }
  for (const k of ['keys', 'values'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'boolean') throw new XqConfigError('E_CONFIG', `rotated: '${k}' must be true or false; got ${JSON.stringify(o[k])}`);
  }
  if (!(o.keys ?? true) && !(o.values ?? false)) {
    throw new XqConfigError('E_CONFIG', "rotated: nothing to rotate ('keys' and 'values' both false); use the inner strategy directly");
  }
  const seed = o.seed;
  if (seed !== undefined && seed !== null && !(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32)) {
    throw new XqConfigError('E_CONFIG', `rotated: 'seed' must be an integer in [0, 2^32) or null; got ${JSON.stringify(seed)}`);
  }
}

/** The inner strategy with the top-level `residualLength`/`groupSize`/`valueGroupSize`/`precision` applied over `innerOptions`. */
function innerStrategy(o: RotatedOptions): KvCacheStrategy {
  const common: Record<string, unknown> = {};
  for (const k of CACHE_OVERRIDE_KEYS) if (o[k] !== undefined) common[k] = o[k];
  return resolveStrategy(o.inner, { ...(o.innerOptions ?? {}), ...common });
}

/**
 * Keys (and optionally values) rotated by a fixed orthogonal Hadamard matrix before an inner cache stores them, as in
 * QuaRot/TurboQuant: k' = k·D·H/√d, and queries rotated the same way in `attend`, so q'·k'ᵀ = q·kᵀ and attention is
 * unchanged up to the inner cache's quantization error. Rotated values give o' = o·M, rotated back on the way out.
 * `dequantize` returns K/V in the original basis. headDim must be a power of two.
 * @example
 * const s = rotated({ inner: 'kivi', innerOptions: { bits: 2 }, keys: true, residualLength: 32 });
 * const cache = s.createCache({ layers: 8, kvHeads: 2, headDim: 64 });
 */
export function rotated(options: RotatedOptions): KvCacheStrategy<RotatedOptions> {
  validate(options);
  const opts = Object.freeze({ ...options });
  const inner = innerStrategy(opts);
  const seed = opts.seed === undefined ? 0 : opts.seed;
  return {
    specificationVersion: 'v1',
    id: 'rotated',
    options: opts,
    ...(inner.resolveConfig ? { resolveConfig: (shape: KvCacheShape) => inner.resolveConfig!(shape) } : {}),
    createCache(shape: KvCacheShape): KvCache {
      const s = validateCacheShape(shape);
      if (!isPowerOfTwo(s.headDim)) {
        throw new XqShapeError(`rotated: headDim must be a power of two for the Walsh–Hadamard rotation; got ${s.headDim}`);
      }
      return new RotatedKvCache(inner.createCache(s), hadamardRotation(s.headDim, seed), opts.keys ?? true, opts.values ?? false);
    },
  };
}

/** `x·m` for every row of `x` (`[heads, tokens, d]`). */
function rotate(x: Tensor3D, m: Tensor2D): Tensor3D {
  return tf.tidy(() => {
    const [h, t, d] = x.shape;
    return tf.reshape(tf.matMul(tf.reshape(x, [h * t, d]), m), [h, t, d]) as Tensor3D;
  });
}

/**
 * The cache of the {@link rotated} strategy: rotates what goes in (keys, values, queries) and what comes out (attention
 * output when values are rotated, `dequantize`), and delegates storage and attention to the inner cache.
 */
export class RotatedKvCache implements AsyncKvCache {
  /** Id of the strategy that created this cache. */
  readonly strategyId = 'rotated';
  /** The shape the cache was created for. */
  readonly shape: Readonly<KvCacheShape>;
  private readonly m: Tensor2D;
  private readonly mT: Tensor2D;
  private disposed = false;

  /**
   * @param inner the cache that stores rotated K/V (owned: disposed with this one)
   * @param rotation row-major `d × d` orthogonal matrix M (x rotates to x·M)
   */
  constructor(
    readonly inner: KvCache,
    rotation: Float64Array,
    readonly rotatesKeys: boolean,
    readonly rotatesValues: boolean,
  ) {
    this.shape = inner.shape;
    const d = this.shape.headDim;
    if (rotation.length !== d * d) throw new XqShapeError(`rotated: rotation must be ${d}×${d}; got ${rotation.length} elements`);
    const mt = new Float32Array(d * d);
    for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) mt[j * d + i] = rotation[i * d + j]!;
    this.m = tf.keep(tf.tensor2d(Float32Array.from(rotation), [d, d]));
    this.mT = tf.keep(tf.tensor2d(mt, [d, d]));
  }

  /** The inner cache's per-layer storage plan, when it has one (quantized caches do). */
  get plan(): CrossLayerPlan | undefined {
    return this.inner.plan;
  }

  /** The inner cache's resolved configuration, when it has one. */
  get config(): CacheConfig | undefined {
    return this.inner.config;
  }

  private enter(layer: number, keys: Tensor3D, values: Tensor3D, single: boolean): { k: Tensor3D; v: Tensor3D } {
    checkAlive(this.disposed, 'prefill/append');
    checkLayer(layer, this.shape.layers);
    checkKv(this.shape, keys, values, this.inner.seqLength(layer), single);
    return { k: this.rotatesKeys ? rotate(keys, this.m) : keys, v: this.rotatesValues ? rotate(values, this.m) : values };
  }

  private leave(keys: Tensor3D, values: Tensor3D, r: { k: Tensor3D; v: Tensor3D }): void {
    if (r.k !== keys) r.k.dispose();
    if (r.v !== values) r.v.dispose();
  }

  prefill(layer: number, keys: Tensor3D, values: Tensor3D): void {
    const r = this.enter(layer, keys, values, false);
    try {
      this.inner.prefill(layer, r.k, r.v);
    } finally {
      this.leave(keys, values, r);
    }
  }
  append(layer: number, keys: Tensor3D, values: Tensor3D): void {
    const r = this.enter(layer, keys, values, true);
    try {
      this.inner.append(layer, r.k, r.v);
    } finally {
      this.leave(keys, values, r);
    }
  }
  async prefillAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    const r = this.enter(layer, keys, values, false);
    const a = this.inner as Partial<AsyncKvCache>;
    try {
      if (a.prefillAsync) await a.prefillAsync.call(this.inner, layer, r.k, r.v);
      else this.inner.prefill(layer, r.k, r.v);
    } finally {
      this.leave(keys, values, r);
    }
  }
  async appendAsync(layer: number, keys: Tensor3D, values: Tensor3D): Promise<void> {
    const r = this.enter(layer, keys, values, true);
    const a = this.inner as Partial<AsyncKvCache>;
    try {
      if (a.appendAsync) await a.appendAsync.call(this.inner, layer, r.k, r.v);
      else this.inner.append(layer, r.k, r.v);
    } finally {
      this.leave(keys, values, r);
    }
  }

  attend(layer: number, queries: Tensor3D): Tensor3D {
    checkAlive(this.disposed, 'attend');
    checkLayer(layer, this.shape.layers);
    checkQueries(this.shape, layer, queries, this.inner.seqLength(layer));
    const q = this.rotatesKeys ? rotate(queries, this.m) : queries;
    let out: Tensor3D;
    try {
      out = this.inner.attend(layer, q);
    } finally {
      if (q !== queries) q.dispose();
    }
    if (!this.rotatesValues) return out;
    const back = rotate(out, this.mT);
    out.dispose();
    return back;
  }

  seqLength(layer = 0): number {
    checkAlive(this.disposed, 'seqLength');
    return this.inner.seqLength(layer);
  }

  /** The inner cache's report; the two `d × d` rotation matrices are added to `kernelBytes`. */
  memory(): KvMemoryReport {
    checkAlive(this.disposed, 'memory');
    const m = this.inner.memory();
    return { ...m, kernelBytes: (m.kernelBytes ?? 0) + 2 * this.m.size * 4 };
  }

  /** The layer's K/V as the attention sees them, rotated back to the original basis. */
  dequantize(layer: number): { keys: Tensor3D; values: Tensor3D } {
    checkAlive(this.disposed, 'dequantize');
    const { keys, values } = this.inner.dequantize(layer);
    const back = (x: Tensor3D, rotated: boolean): Tensor3D => {
      if (!rotated || x.shape[1] === 0) return x;
      const y = rotate(x, this.mT);
      x.dispose();
      return y;
    };
    return { keys: back(keys, this.rotatesKeys), values: back(values, this.rotatesValues) };
  }

  reset(): void {
    checkAlive(this.disposed, 'reset');
    this.inner.reset();
  }

  dispose(): void {
    if (this.disposed) return;
    this.inner.dispose();
    this.m.dispose();
    this.mT.dispose();
    this.disposed = true;
  }
}
