import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { XqConfigError, XqShapeError, XqStateError } from '@xquant/quant';
import type { KvCacheShape } from './types.js';

/** Throws unless `shape` has positive integer layers, kvHeads, headDim and (if given) maxTokens. */
export function validateCacheShape(shape: KvCacheShape): Readonly<KvCacheShape> {
  if (typeof shape !== 'object' || shape === null) throw new XqShapeError(`cache shape must be an object; got ${String(shape)}`);
  for (const k of ['layers', 'kvHeads', 'headDim'] as const) {
    const v = shape[k];
    if (!Number.isInteger(v) || v <= 0) throw new XqShapeError(`cache shape: ${k} must be a positive integer; got ${String(v)}`);
  }
  if (shape.maxTokens !== undefined && (!Number.isInteger(shape.maxTokens) || shape.maxTokens <= 0)) {
    throw new XqShapeError(`cache shape: maxTokens must be a positive integer when given; got ${String(shape.maxTokens)}`);
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

/** Validates new keys/values `[kvHeads, n, headDim]` (n = 1 for append) and returns n. */
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
  if (shape.maxTokens !== undefined && held + n > shape.maxTokens) {
    throw new XqStateError('E_CAPACITY', `cache capacity is ${shape.maxTokens} tokens; it holds ${held} and ${n} more were appended`);
  }
  return n;
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
