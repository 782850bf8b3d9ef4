import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { XqConfigError, XqNumericError, XqShapeError, XqStateError } from '@xquant/quant';
import type { KvCacheShape } from './types.js';

/**
 * Upper limits of a cache's shape and configuration, checked (typed errors) before anything is allocated: far above any
 * model (Llama-3 405B: 126 layers, 8 KV heads, headDim 128), low enough that a typo cannot exhaust memory.
 */
export const CACHE_LIMITS: Readonly<{
  /** Most decoder layers (`E_SHAPE` above). */
  layers: number;
  /** Most KV heads per layer (`E_SHAPE` above). */
  kvHeads: number;
  /** Largest head dimension (`E_SHAPE` above). */
  headDim: number;
  /** Largest `maxTokens` (`E_SHAPE` above). */
  maxTokens: number;
  /** Largest residual length R (`E_RESIDUAL` above); the window is allocated as tokens arrive, not up front. */
  residualLength: number;
}> = Object.freeze({ layers: 4096, kvHeads: 1024, headDim: 8192, maxTokens: 2 ** 31, residualLength: 2 ** 20 });

/** Throws unless `shape` has positive integer layers, kvHeads, headDim and (if given) maxTokens, within {@link CACHE_LIMITS}. */
export function validateCacheShape(shape: KvCacheShape): Readonly<KvCacheShape> {
  if (typeof shape !== 'object' || shape === null) throw new XqShapeError(`cache shape must be an object; got ${String(shape)}`);
  for (const k of ['layers', 'kvHeads', 'headDim'] as const) {
    const v = shape[k];
    if (!Number.isInteger(v) || v <= 0) throw new XqShapeError(`cache shape: ${k} must be a positive integer; got ${String(v)}`);
    if (v > CACHE_LIMITS[k]) throw new XqShapeError(`cache shape: ${k} ${v} is above the limit CACHE_LIMITS.${k} = ${CACHE_LIMITS[k]}`);
  }
  if (shape.maxTokens !== undefined && (!Number.isInteger(shape.maxTokens) || shape.maxTokens <= 0)) {
    throw new XqShapeError(`cache shape: maxTokens must be a positive integer when given; got ${String(shape.maxTokens)}`);
  }
  if (shape.maxTokens !== undefined && shape.maxTokens > CACHE_LIMITS.maxTokens) {
    throw new XqShapeError(`cache shape: maxTokens ${shape.maxTokens} is above the limit CACHE_LIMITS.maxTokens = ${CACHE_LIMITS.maxTokens}`);
  }
  return Object.freeze({ ...shape });
}

/** Throws unless `layer` is an integer in `[0, layers)`. */
export function checkLayer(layer: number, layers: number): void {
  if (!Number.isInteger(layer) || layer < 0 || layer >= layers) {
    throw new XqShapeError(`layer must be an integer in [0, ${layers}); got ${String(layer)}`);
  }
}

function checkTensor3(x: unknown, what: string): asserts x is Tensor3D {
  if (!(x instanceof tf.Tensor)) throw new XqShapeError(`${what} must be a tfjs Tensor3D; got ${x === null ? 'null' : typeof x}`);
  if (x.isDisposed) throw new XqStateError('E_STATE', `${what} has been disposed`);
  if (x.rank !== 3) throw new XqShapeError(`${what} must be rank 3 [heads, tokens, headDim]; got shape [${x.shape}]`);
  if (x.dtype !== 'float32') throw new XqConfigError('E_DTYPE', `${what} must be float32; got ${x.dtype}`);
}

/** Validates new keys/values `[kvHeads, n, headDim]` (n = 1 for append) and returns n (values are checked by {@link checkMagnitude}). */
export function checkKv(shape: KvCacheShape, keys: Tensor3D, values: Tensor3D, held: number, single: boolean): number {
  checkTensor3(keys, 'keys');
  checkTensor3(values, 'values');
  const [h, n, d] = keys.shape;
  for (const [name, t] of [['keys', keys], ['values', values]] as const) {
    if (t.shape[0] !== shape.kvHeads || t.shape[2] !== shape.headDim) {
      throw new XqShapeError(`${name}: expected [${shape.kvHeads}, n, ${shape.headDim}] ([kvHeads, tokens, headDim]); got [${t.shape}]`);
    }
  }
  if (values.shape[1] !== n) throw new XqShapeError(`keys and values hold different token counts: ${n} vs ${values.shape[1]}`);
  if (n === 0) throw new XqShapeError('keys/values hold no tokens');
  if (single && n !== 1) throw new XqShapeError(`append takes one token ([${h}, 1, ${d}]); got ${n} tokens — use prefill for more`);
  checkCapacity(shape, held, n);
  return n;
}

/** Throws `E_CAPACITY` when `held + n` tokens exceed `shape.maxTokens`. */
export function checkCapacity(shape: KvCacheShape, held: number, n: number): void {
  if (shape.maxTokens !== undefined && held + n > shape.maxTokens) {
    throw new XqStateError('E_CAPACITY', `cache capacity is ${shape.maxTokens} tokens; it holds ${held} and ${n} more were appended`);
  }
}

/** Largest finite float32. */
const FLOAT32_MAX = 3.4028234663852886e38;
/** Bound on |q·k| (unscaled) and |v| under which attention in float32 cannot overflow (a margin below FLOAT32_MAX). */
export const ATTENTION_BOUND = 1e38;

/**
 * `max |x|` of a tensor, NaN when any element is NaN or ±Infinity: one reduction, one number read back (`max|x| + Σ x·0`).
 */
export function maxAbsOf(x: Tensor3D): tf.Scalar {
  return tf.tidy(() => tf.add(tf.max(tf.abs(x)), tf.sum(tf.mul(x, tf.scalar(0)))) as tf.Scalar);
}

/** `max |x|` of an array, NaN when any element is NaN or ±Infinity. */
export function maxAbsArray(x: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    if (v - v !== 0) return NaN;
    const a = v < 0 ? -v : v;
    if (a > m) m = a;
  }
  return m;
}

/**
 * The input policy of every cache (one for all strategies): keys, values and queries must be finite, and K/V must be
 * representable where they are stored (`limit`: 65504 for fp16-quantized layers, the float32 maximum otherwise).
 * `m` is `max |x|` (NaN for a non-finite element, see {@link maxAbsOf}; undefined: not known, nothing to check).
 * `x` (head-major `[heads, n, headDim]`) lets the message name the first bad element. Throws `E_NON_FINITE`.
 */
export function checkMagnitude(
  m: number | undefined,
  what: string,
  layer: number,
  limit = FLOAT32_MAX,
  storage = 'float32',
  x?: { data: ArrayLike<number>; n: number; headDim: number; first: number },
): void {
  if (m === undefined) return;
  if (m !== m || m === Infinity) {
    let where = '';
    if (x) {
      const { data, n, headDim: D, first } = x;
      for (let i = 0; i < data.length; i++) {
        const v = data[i]!;
        if (v - v !== 0) {
          where = ` (${v} at head ${Math.floor(i / (n * D))}, token ${first + (Math.floor(i / D) % n)}, channel ${i % D})`;
          break;
        }
      }
    }
    throw new XqNumericError(`${what} for layer ${layer} contain NaN or ±Infinity${where}`);
  }
  if (m > limit) throw new XqNumericError(`${what} for layer ${layer}: |x| = ${m} overflows ${storage} (largest finite value ${limit})`);
}

/** Backends whose tensors are read synchronously at little cost: the synchronous calls validate there. */
const SYNC_READ_BACKENDS = new Set(['cpu', 'wasm', 'tensorflow']);

/**
 * `max |x|` of a tensor (NaN for a non-finite element), read synchronously on backends where that is cheap (cpu, wasm,
 * tensorflow); undefined elsewhere (WebGPU: tensors cannot be read synchronously in Node, and a read stalls the queue):
 * there the synchronous calls skip the check and the async ones (`prefillAsync`/`appendAsync`) make it.
 */
export function maxAbsSync(x: Tensor3D): number | undefined {
  if (!SYNC_READ_BACKENDS.has(tf.getBackend())) return undefined;
  // a scan of the values read back: cheaper than a tfjs reduction here (cpu hands out its array without a copy)
  return maxAbsArray(x.dataSync() as Float32Array);
}

/**
 * Throws `E_NON_FINITE` when attention over K/V with `max |k| = maxK`, `max |v| = maxV` could overflow float32 for queries
 * with `max |q| = maxQ` (NaN for non-finite queries): `headDim·max|q|·max|k|` or `max|v|` above {@link ATTENTION_BOUND}.
 */
export function checkAttentionBound(layer: number, headDim: number, maxQ: number | undefined, maxK: number, maxV: number): void {
  checkMagnitude(maxQ, 'queries', layer);
  if (maxQ === undefined) return;
  if (headDim * maxQ * maxK > ATTENTION_BOUND) {
    throw new XqNumericError(`attend on layer ${layer}: scores could overflow float32 (headDim·max|q|·max|k| = ${headDim}·${maxQ}·${maxK} > ${ATTENTION_BOUND})`);
  }
  if (maxV > ATTENTION_BOUND) throw new XqNumericError(`attend on layer ${layer}: values up to ${maxV} could overflow float32 (bound ${ATTENTION_BOUND})`);
}

/**
 * Serialises a cache's asynchronous operations (issue 13 item 5): they run one after another in call order;
 * `reset()`/`dispose()` cancel the queued and running ones (they reject with `E_STATE`); synchronous mutations while any
 * is pending throw `E_STATE`.
 */
export class OpQueue {
  private tail: Promise<void> = Promise.resolve();
  private pending = 0;
  /** Increases on every cancel (reset, dispose). */
  epoch = 0;
  /** Runs `op` after every earlier queued operation; `op` gets `live()`, which throws `E_STATE` once cancelled. */
  run<T>(what: string, op: (live: () => void) => Promise<T>): Promise<T> {
    const epoch = this.epoch;
    const live = () => {
      if (this.epoch !== epoch) throw new XqStateError('E_STATE', `${what} was cancelled: the cache was reset or disposed before it completed`);
    };
    this.pending++;
    const result = this.tail.then(async () => {
      live();
      return op(live);
    });
    this.tail = result.then(
      () => void this.pending--,
      () => void this.pending--,
    );
    return result;
  }
  /** Throws `E_STATE` while an asynchronous operation is pending (a synchronous mutation would interleave with it). */
  assertIdle(what: string): void {
    if (this.pending > 0) throw new XqStateError('E_STATE', `${what} while ${this.pending} asynchronous operation(s) of this cache are pending; await them first`);
  }
  /** Cancels every pending operation. */
  cancel(): void {
    this.epoch++;
  }
}

/** Validates queries `[qHeads, q, headDim]` against a layer holding `held` tokens. */
export function checkQueries(shape: KvCacheShape, layer: number, queries: Tensor3D, held: number): void {
  checkTensor3(queries, 'queries');
  const [qh, q, d] = queries.shape;
  if (held === 0) throw new XqStateError('E_STATE', `attend on layer ${layer} before any prefill/append: the layer holds no tokens`);
  if (d !== shape.headDim) throw new XqShapeError(`queries: expected headDim ${shape.headDim}; got [${queries.shape}]`);
  if (qh === 0 || qh % shape.kvHeads !== 0) {
    throw new XqShapeError(`queries: ${qh} query heads is not a positive multiple of ${shape.kvHeads} KV heads (GQA/MQA)`);
  }
  if (q < 1 || q > held) throw new XqShapeError(`queries: ${q} positions but layer ${layer} holds ${held} tokens`);
}

/** Throws `E_STATE` when a disposed cache is used. */
export function checkAlive(disposed: boolean, what: string): void {
  if (disposed) throw new XqStateError('E_STATE', `${what} on a disposed cache`);
}
