import { XqConfigError, XqShapeError } from './errors.js';
import { packCodes, unpackCodes } from './pack.js';
import { dequantizeRows, groupStats, quantizeRows, type GroupStats, type PackedRows } from './quantize.js';
import { assertDim, assertFinite, assertLength, type GroupQuantOptions, type QuantAxis } from './types.js';

/** Shape of one layer's K or V block for one sequence: `[heads, tokens, headDim]`, row-major. */
export interface KvBlockShape {
  heads: number;
  tokens: number;
  headDim: number;
}

/** Group statistics of a K or V block, without codes. */
export interface KvStats extends GroupStats, KvBlockShape {
  /** `'channel'`: keys, rows = heads·headDim, cols = tokens. `'token'`: values, rows = heads·tokens, cols = headDim. */
  axis: QuantAxis;
}

/**
 * A packed K or V block.
 * Keys (`axis: 'channel'`): `packed` is `[heads, headDim, tokens·bits/32]`, `scale`/`zero` are `[heads, headDim, tokens/groupSize]`.
 * Values (`axis: 'token'`): `packed` is `[heads, tokens, headDim·bits/32]`, `scale`/`zero` are `[heads, tokens, headDim/groupSize]`.
 */
export interface PackedKv extends KvStats, PackedRows {}

function checkShape(x: ArrayLike<number>, shape: KvBlockShape, what: string): void {
  assertDim(shape.heads, 'heads');
  assertDim(shape.tokens, 'tokens');
  assertDim(shape.headDim, 'headDim');
  assertLength(x, shape.heads * shape.tokens * shape.headDim, `${what} [heads=${shape.heads}, tokens=${shape.tokens}, headDim=${shape.headDim}]`);
  const { tokens, headDim } = shape;
  assertFinite(x, what, (i) => {
    const h = Math.floor(i / (tokens * headDim));
    const t = Math.floor(i / headDim) % tokens;
    return `head ${h}, token ${t}, channel ${i % headDim}`;
  });
}

/** `[heads, tokens, headDim]` → `[heads, headDim, tokens]` */
export function transposeTokensChannels(x: ArrayLike<number>, shape: KvBlockShape): Float32Array {
  const { heads, tokens, headDim } = shape;
  const out = new Float32Array(heads * tokens * headDim);
  for (let h = 0; h < heads; h++) {
    const base = h * tokens * headDim;
    for (let t = 0; t < tokens; t++) {
      for (let d = 0; d < headDim; d++) out[base + d * tokens + t] = x[base + t * headDim + d]!;
    }
  }
  return out;
}

/** `[heads, headDim, tokens]` → `[heads, tokens, headDim]` */
export function transposeChannelsTokens(x: ArrayLike<number>, shape: KvBlockShape): Float32Array {
  const { heads, tokens, headDim } = shape;
  const out = new Float32Array(heads * tokens * headDim);
  for (let h = 0; h < heads; h++) {
    const base = h * tokens * headDim;
    for (let d = 0; d < headDim; d++) {
      for (let t = 0; t < tokens; t++) out[base + t * headDim + d] = x[base + d * tokens + t]!;
    }
  }
  return out;
}

function rowsOf(axis: QuantAxis, s: KvBlockShape): [number, number] {
  return axis === 'channel' ? [s.heads * s.headDim, s.tokens] : [s.heads * s.tokens, s.headDim];
}

/**
 * Quantize and pack keys per channel: each channel is split along tokens into groups of `groupSize`.
 * `keys` is `[heads, tokens, headDim]`; `tokens` must be a multiple of `groupSize` and of `32/bits`.
 */
export function quantizeKeys(keys: ArrayLike<number>, shape: KvBlockShape, opts: GroupQuantOptions): PackedKv {
  checkShape(keys, shape, 'keys');
  const [rows, cols] = rowsOf('channel', shape);
  const q = quantizeRows(transposeTokensChannels(keys, shape), rows, cols, opts);
  const { codes, ...stats } = q;
  return { ...stats, ...shape, axis: 'channel', packed: packCodes(codes, rows, cols, opts.bits) };
}

/**
 * Quantize and pack values per token: each token's channels are split into groups of `groupSize`.
 * `values` is `[heads, tokens, headDim]`; `headDim` must be a multiple of `groupSize` and of `32/bits`.
 */
export function quantizeValues(values: ArrayLike<number>, shape: KvBlockShape, opts: GroupQuantOptions): PackedKv {
  checkShape(values, shape, 'values');
  const [rows, cols] = rowsOf('token', shape);
  const q = quantizeRows(values, rows, cols, opts);
  const { codes, ...stats } = q;
  return { ...stats, ...shape, axis: 'token', packed: packCodes(codes, rows, cols, opts.bits) };
}

/** Group statistics of keys or values without codes (the upper layer of a cross-layer group). */
export function kvStats(x: ArrayLike<number>, shape: KvBlockShape, axis: QuantAxis, opts: GroupQuantOptions): KvStats {
  checkShape(x, shape, axis === 'channel' ? 'keys' : 'values');
  const [rows, cols] = rowsOf(axis, shape);
  const src = axis === 'channel' ? transposeTokensChannels(x, shape) : x;
  return { ...groupStats(src, rows, cols, opts), ...shape, axis };
}

/**
 * A block that borrows `donor`'s codes with its own scale and zero-point (cross-layer sharing).
 * Shapes, axis, bits and group size must match.
 */
export function shareCodes(stats: KvStats, donor: PackedKv): PackedKv {
  for (const k of ['axis', 'heads', 'tokens', 'headDim', 'bits', 'groupSize'] as const) {
    if (stats[k] !== donor[k]) {
      const Err = k === 'bits' ? XqConfigError : null;
      const msg = `cannot share codes: ${k} differs (own ${String(stats[k])}, donor ${String(donor[k])})`;
      if (Err) throw new Err('E_SHARE_BITS_MISMATCH', msg);
      throw new XqShapeError(msg);
    }
  }
  return { ...stats, packed: donor.packed };
}

/** Unpacked codes of a packed block, in its storage layout (`[rows, cols]`). */
export function unpackKv(block: PackedKv): Uint8Array {
  return unpackCodes(block.packed, block.rows, block.cols, block.bits);
}

/** Dequantize a packed K or V block back to `[heads, tokens, headDim]`. */
export function dequantizeKv(block: PackedKv): Float32Array {
  const deq = dequantizeRows(unpackKv(block), block);
  return block.axis === 'channel' ? transposeChannelsTokens(deq, block) : deq;
}
