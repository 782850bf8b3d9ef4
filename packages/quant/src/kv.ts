import { XqConfigError, XqShapeError } from './errors.js';
import { packCodes, unpackCodes } from './pack.js';
import { checkOptions, codesOfRounded, roundAndCheck, statsOfRounded } from './core.js';
import { dequantizeRows, type GroupStats, type PackedRows } from './quantize.js';
import { assertDim, assertLength, type GroupQuantOptions, type QuantAxis } from './types.js';

/** Shape of one layer's K or V block for one sequence: `[heads, tokens, headDim]`, row-major. */
export interface KvBlockShape {
  /** KV heads. */
  heads: number;
  /** Tokens (sequence positions). */
  tokens: number;
  /** Channels per head. */
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
}

/**
 * Copies `x` (`[heads, tokens, headDim]`) into the storage layout of `axis` (transposed for keys), rounds it to the
 * precision and rejects NaN/±Infinity and overflow, naming head, token and channel.
 */
function storageRounded(x: ArrayLike<number>, shape: KvBlockShape, axis: QuantAxis, precision: 'fp16' | 'fp32', what: string): Float32Array {
  const { tokens: T, headDim: D } = shape;
  if (axis === 'channel') {
    const xr = transposeTokensChannels(x, shape);
    roundAndCheck(xr, precision, what, (i) => {
      const h = Math.floor(i / (T * D));
      return `head ${h}, token ${i % T}, channel ${Math.floor(i / T) % D}`;
    }, (i) => x[Math.floor(i / (T * D)) * T * D + (i % T) * D + (Math.floor(i / T) % D)]!);
    return xr;
  }
  const xr = new Float32Array(shape.heads * T * D);
  xr.set(x);
  roundAndCheck(xr, precision, what, (i) => `head ${Math.floor(i / (T * D))}, token ${Math.floor(i / D) % T}, channel ${i % D}`, (i) => x[i]!);
  return xr;
}

/** `[heads, tokens, headDim]` → `[heads, headDim, tokens]` (as float32) */
export function transposeTokensChannels(x: ArrayLike<number>, shape: KvBlockShape): Float32Array {
  const { heads, tokens, headDim } = shape;
  const out = new Float32Array(heads * tokens * headDim);
  const B = 16;
  for (let h = 0; h < heads; h++) {
    const base = h * tokens * headDim;
    for (let t0 = 0; t0 < tokens; t0 += B) {
      const t1 = Math.min(t0 + B, tokens);
      for (let d = 0; d < headDim; d++) {
        for (let t = t0, o = base + d * tokens + t0, i = base + t0 * headDim + d; t < t1; t++, o++, i += headDim) out[o] = x[i]!;
      }
    }
  }
  return out;
}

/** `[heads, headDim, tokens]` → `[heads, tokens, headDim]` (as float32) */
export function transposeChannelsTokens(x: ArrayLike<number>, shape: KvBlockShape): Float32Array {
  const { heads, tokens, headDim } = shape;
  const out = new Float32Array(heads * tokens * headDim);
  const B = 16;
  for (let h = 0; h < heads; h++) {
    const base = h * tokens * headDim;
    for (let t0 = 0; t0 < tokens; t0 += B) {
      const t1 = Math.min(t0 + B, tokens);
      for (let d = 0; d < headDim; d++) {
        for (let t = t0, i = base + d * tokens + t0, o = base + t0 * headDim + d; t < t1; t++, i++, o += headDim) out[o] = x[i]!;
      }
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
  return quantizeKv(keys, shape, 'channel', opts);
}

function quantizeKv(x: ArrayLike<number>, shape: KvBlockShape, axis: QuantAxis, opts: GroupQuantOptions): PackedKv {
  const what = axis === 'channel' ? 'keys' : 'values';
  checkShape(x, shape, what);
  const [rows, cols] = rowsOf(axis, shape);
  const precision = checkOptions(rows, cols, opts, axis === 'channel' ? 'tokens' : 'headDim');
  const xr = storageRounded(x, shape, axis, precision, what);
  const stats = statsOfRounded(xr, rows, cols, opts.bits, opts.groupSize, precision);
  const packed = packCodes(codesOfRounded(xr, stats), rows, cols, opts.bits);
  return { ...stats, ...shape, axis, packed };
}

/**
 * Quantize and pack values per token: each token's channels are split into groups of `groupSize`.
 * `values` is `[heads, tokens, headDim]`; `headDim` must be a multiple of `groupSize` and of `32/bits`.
 */
export function quantizeValues(values: ArrayLike<number>, shape: KvBlockShape, opts: GroupQuantOptions): PackedKv {
  return quantizeKv(values, shape, 'token', opts);
}

/** Group statistics of keys or values without codes (the upper layer of a cross-layer group). */
export function kvStats(x: ArrayLike<number>, shape: KvBlockShape, axis: QuantAxis, opts: GroupQuantOptions): KvStats {
  const what = axis === 'channel' ? 'keys' : 'values';
  checkShape(x, shape, what);
  const [rows, cols] = rowsOf(axis, shape);
  const precision = checkOptions(rows, cols, opts, axis === 'channel' ? 'tokens' : 'headDim');
  const xr = storageRounded(x, shape, axis, precision, what);
  return { ...statsOfRounded(xr, rows, cols, opts.bits, opts.groupSize, precision), ...shape, axis };
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
