import { XqShapeError } from '../errors.js';
import type { PackedKv } from '../kv.js';
import { assertBits, type QuantAxis } from '../types.js';

/** Checked geometry of a packed K or V block, as the kernels use it. */
export interface KernelGeometry {
  kvHeads: number;
  tokens: number;
  headDim: number;
  bits: 1 | 2 | 4 | 8;
  groupSize: number;
  /** Query heads; a multiple of `kvHeads`. */
  qHeads: number;
  /** Query heads per KV head (`qHeads / kvHeads`). */
  rep: number;
}

function positiveInt(n: unknown, what: string, fn: string): number {
  if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0) {
    throw new XqShapeError(`${fn}: ${what} must be a positive integer; got ${String(n)}`);
  }
  return n;
}

/**
 * Validates a packed block against the layout its axis implies and derives the query-head count from the length of
 * the activation `a` (`q` for keys, `p` for values). Throws {@link XqShapeError} on any mismatch.
 */
export function checkPackedBlock(
  fn: string,
  block: PackedKv,
  axis: QuantAxis,
  a: ArrayLike<number>,
  aName: string,
  out: ArrayLike<number> | undefined,
): KernelGeometry {
  if (block === null || typeof block !== 'object') throw new XqShapeError(`${fn}: expected a PackedKv block; got ${String(block)}`);
  if (block.axis !== axis) {
    const want = axis === 'channel' ? "keys quantized per channel (axis 'channel')" : "values quantized per token (axis 'token')";
    throw new XqShapeError(`${fn}: needs ${want}; got axis '${String(block.axis)}'`);
  }
  const kvHeads = positiveInt(block.heads, 'heads', fn);
  const tokens = positiveInt(block.tokens, 'tokens', fn);
  const headDim = positiveInt(block.headDim, 'headDim', fn);
  assertBits(block.bits);
  const bits = block.bits;
  const groupSize = positiveInt(block.groupSize, 'groupSize', fn);
  const qAxis = axis === 'channel' ? tokens : headDim;
  const qName = axis === 'channel' ? 'tokens' : 'headDim';
  if (qAxis % groupSize !== 0) throw new XqShapeError(`${fn}: groupSize ${groupSize} does not divide ${qName} (${qAxis})`);
  const fpw = 32 / bits;
  if (qAxis % fpw !== 0) {
    throw new XqShapeError(`${fn}: ${qName} (${qAxis}) must be a multiple of ${fpw} for ${bits}-bit codes`);
  }
  const words = (kvHeads * tokens * headDim) / fpw;
  const groups = (kvHeads * tokens * headDim) / groupSize;
  const layout = axis === 'channel' ? '[heads, headDim, ·]' : '[heads, tokens, ·]';
  const packed: unknown = block.packed;
  if (!(packed instanceof Uint32Array) && !(packed instanceof Int32Array)) {
    throw new XqShapeError(`${fn}: packed must be a Uint32Array or Int32Array`);
  }
  if (block.packed.length !== words) {
    throw new XqShapeError(`${fn}: packed ${layout}: expected ${words} words, got ${block.packed.length}`);
  }
  for (const k of ['scale', 'zero'] as const) {
    const arr = block[k];
    if (!arr || typeof arr.length !== 'number') throw new XqShapeError(`${fn}: ${k} is missing`);
    if (arr.length !== groups) throw new XqShapeError(`${fn}: ${k} ${layout}: expected ${groups} elements, got ${arr.length}`);
  }
  const per = axis === 'channel' ? headDim : tokens;
  if (!a || typeof a.length !== 'number') throw new XqShapeError(`${fn}: ${aName} must be an array of numbers`);
  if (a.length === 0 || a.length % per !== 0) {
    throw new XqShapeError(`${fn}: ${aName} must be [qHeads, ${per}] (a positive multiple of ${per} elements); got ${a.length}`);
  }
  const qHeads = a.length / per;
  if (qHeads % kvHeads !== 0) {
    throw new XqShapeError(`${fn}: ${qHeads} query heads is not a multiple of ${kvHeads} KV heads (GQA)`);
  }
  const outLen = qHeads * (axis === 'channel' ? tokens : headDim);
  if (out !== undefined && out.length !== outLen) {
    throw new XqShapeError(`${fn}: out must have ${outLen} elements ([${qHeads}, ${axis === 'channel' ? tokens : headDim}]); got ${out.length}`);
  }
  return { kvHeads, tokens, headDim, bits, groupSize, qHeads, rep: qHeads / kvHeads };
}

/** Validates the dense baselines' shapes: `x` is `[kvHeads, tokens, headDim]`, `a` is `[qHeads, per]`. */
export function checkDense(
  fn: string,
  a: ArrayLike<number>,
  aName: string,
  x: ArrayLike<number>,
  xName: string,
  kvHeads: number,
  headDim: number,
  axis: QuantAxis,
  out: ArrayLike<number> | undefined,
): { tokens: number; qHeads: number; rep: number } {
  positiveInt(kvHeads, 'kvHeads', fn);
  positiveInt(headDim, 'headDim', fn);
  if (!x || typeof x.length !== 'number' || x.length === 0 || x.length % (kvHeads * headDim) !== 0) {
    throw new XqShapeError(`${fn}: ${xName} must be [kvHeads=${kvHeads}, tokens, headDim=${headDim}] with tokens ≥ 1; got ${x?.length} elements`);
  }
  const tokens = x.length / (kvHeads * headDim);
  const per = axis === 'channel' ? headDim : tokens;
  if (!a || typeof a.length !== 'number' || a.length === 0 || a.length % per !== 0) {
    throw new XqShapeError(`${fn}: ${aName} must be [qHeads, ${per}]; got ${a?.length} elements`);
  }
  const qHeads = a.length / per;
  if (qHeads % kvHeads !== 0) throw new XqShapeError(`${fn}: ${qHeads} query heads is not a multiple of ${kvHeads} KV heads (GQA)`);
  const outLen = qHeads * (axis === 'channel' ? tokens : headDim);
  if (out !== undefined && out.length !== outLen) throw new XqShapeError(`${fn}: out must have ${outLen} elements; got ${out.length}`);
  return { tokens, qHeads, rep: qHeads / kvHeads };
}

/** Splits `rep` query heads into chunks of 4, 2 and 1 (the widths the kernels specialize). */
export function headChunks(rep: number): Array<[start: number, width: 1 | 2 | 4]> {
  const chunks: Array<[number, 1 | 2 | 4]> = [];
  let h = 0;
  for (; h + 4 <= rep; h += 4) chunks.push([h, 4]);
  if (h + 2 <= rep) {
    chunks.push([h, 2]);
    h += 2;
  }
  if (h < rep) chunks.push([h, 1]);
  return chunks;
}
