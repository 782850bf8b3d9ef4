import { XqConfigError } from './errors.js';
import { halfTable, halfToBits } from './fp16.js';

/**
 * Storage format of a per-vector (or per-group) scale:
 * - `'fp16'`: IEEE half (16 bits);
 * - `'e4m3'`: OCP fp8 E4M3FN (8 bits: 4 exponent bits, bias 7, 3 mantissa bits, max 448, no infinities);
 * - `'e5m2'`: OCP fp8 E5M2 (8 bits: 5 exponent bits, bias 15, 2 mantissa bits, max 57344);
 * - `'log8'`: a log-domain u8 (code 0 = 0; code i ≥ 1 = 2^(−10 + 20·(i−1)/254), i.e. 2^−10 … 2^10 in 254 equal
 *   log steps: relative rounding error ≤ 2.8 %, data-free).
 * Only non-negative values are stored (norms and scales); negative inputs are clamped to 0.
 */
export type ScaleFormat = 'fp16' | 'e4m3' | 'e5m2' | 'log8';

/** Every {@link ScaleFormat}. */
export const SCALE_FORMATS: readonly ScaleFormat[] = ['fp16', 'e4m3', 'e5m2', 'log8'];

/** Bits one stored scale of a format takes. */
export function scaleFormatBits(f: ScaleFormat): number {
  return f === 'fp16' ? 16 : 8;
}

/** Throws {@link XqConfigError} `E_CONFIG` unless `f` is a {@link ScaleFormat}. */
export function assertScaleFormat(f: unknown): asserts f is ScaleFormat {
  if (!(SCALE_FORMATS as readonly unknown[]).includes(f)) {
    throw new XqConfigError('E_CONFIG', `scale format must be one of ${SCALE_FORMATS.join(', ')}; got ${JSON.stringify(f)}`);
  }
}

function fp8Value(code: number, expBits: number, manBits: number, bias: number, fn: boolean): number {
  const sign = code >> 7 ? -1 : 1;
  const e = (code >> manBits) & ((1 << expBits) - 1);
  const m = code & ((1 << manBits) - 1);
  const emax = (1 << expBits) - 1;
  if (fn && e === emax && m === (1 << manBits) - 1) return NaN; // E4M3FN: S.1111.111 is NaN
  if (!fn && e === emax) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * 2 ** (1 - bias - manBits);
  return sign * (1 + m / (1 << manBits)) * 2 ** (e - bias);
}

interface FormatTables {
  /** code → value (all 2^bits codes; fp16 uses the shared half table). */
  decode: Float32Array;
  /** finite non-negative values ascending, and their codes (8-bit formats). */
  sorted: Float64Array;
  codes: Uint8Array;
}

const tables = new Map<ScaleFormat, FormatTables>();

function tablesOf(f: ScaleFormat): FormatTables {
  const hit = tables.get(f);
  if (hit) return hit;
  let decode: Float32Array;
  if (f === 'fp16') decode = halfTable();
  else {
    decode = new Float32Array(256);
    for (let c = 0; c < 256; c++) {
      if (f === 'e4m3') decode[c] = fp8Value(c, 4, 3, 7, true);
      else if (f === 'e5m2') decode[c] = fp8Value(c, 5, 2, 15, false);
      else decode[c] = c === 0 ? 0 : 2 ** (-10 + (20 * (c - 1)) / 254);
    }
  }
  const pairs: [number, number][] = [];
  if (f !== 'fp16') for (let c = 0; c < 256; c++) if (Number.isFinite(decode[c]!) && decode[c]! >= 0 && !Object.is(decode[c], -0)) pairs.push([decode[c]!, c]);
  pairs.sort((a, b) => a[0] - b[0]);
  const t = { decode, sorted: Float64Array.from(pairs, (p) => p[0]), codes: Uint8Array.from(pairs, (p) => p[1]) };
  tables.set(f, t);
  return t;
}

/**
 * The decode table of a format: `table[code]` is the stored value (65,536 entries for fp16, 256 for the 8-bit
 * formats). The codebook kernels read scales through it.
 */
export function scaleDecodeTable(f: ScaleFormat): Float32Array {
  return tablesOf(f).decode;
}

/**
 * The code of the representable value nearest to `x` (≥ 0; ties to the smaller value; values beyond the largest
 * finite value saturate to it, NaN and negatives encode 0).
 */
export function encodeScale(f: ScaleFormat, x: number): number {
  if (!(x > 0)) return 0;
  if (f === 'fp16') return halfToBits(Math.min(x, 65504));
  const { sorted, codes } = tablesOf(f);
  let lo = 0;
  let hi = sorted.length - 1;
  if (x >= sorted[hi]!) return codes[hi]!;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid]! <= x) lo = mid;
    else hi = mid;
  }
  // nearest in the format's own metric: linear for fp formats, log for log8
  const a = sorted[lo]!;
  const b = sorted[hi]!;
  const upper = f === 'log8' && a > 0 ? Math.log(x) - Math.log(a) > Math.log(b) - Math.log(x) : x - a > b - x;
  return codes[upper ? hi : lo]!;
}

/** The value a scale rounds to when stored in format `f` (`decode(encode(x))`). */
export function roundScale(f: ScaleFormat, x: number): number {
  return tablesOf(f).decode[encodeScale(f, x)]!;
}
