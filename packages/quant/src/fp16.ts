/**
 * IEEE binary16 helpers. `roundHalf` rounds a number to the nearest fp16 value (ties to even),
 * which is what a CUDA fp16 tensor op does to its fp32 result.
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** 1.5·2^28: adding and subtracting it rounds |v| < 2^-14 to a multiple of 2^-24 (the fp16 subnormal step), ties to even. */
const SUBNORMAL_MAGIC = 402653184;

/**
 * Round `x` to float32 and then to the nearest fp16 value (ties to even) — the rounding a CUDA fp16
 * tensor op applies to its fp32 result. Overflow gives ±Infinity; NaN stays NaN; the sign of zero is kept.
 */
export function roundHalf(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const a = b & 0x7fffffff;
  if (a >= 0x38800000) {
    if (a >= 0x7f800000) return f32[0]!;
    if (a >= 0x477ff000) return b >>> 31 ? -Infinity : Infinity;
    u32[0] = (b & 0x80000000) | ((a + 0xfff + ((a >>> 13) & 1)) & 0xffffe000);
    return f32[0]!;
  }
  const v = f32[0]!;
  const r = ((v < 0 ? -v : v) + SUBNORMAL_MAGIC) - SUBNORMAL_MAGIC;
  return b >>> 31 ? -r : r;
}

/**
 * Round every element of a Float32Array to fp16 in place (ties to even, overflow to ±Infinity), over `[start, end)`.
 * Equivalent to `x[i] = roundHalf(x[i])` but works on the bit patterns directly.
 */
export function roundHalfInPlace(x: Float32Array, start = 0, end = x.length): void {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  for (let i = start; i < end; i++) {
    const b = u[i]!;
    const a = b & 0x7fffffff;
    if (a >= 0x38800000) {
      if (a >= 0x7f800000) continue;
      u[i] = a >= 0x477ff000 ? (b & 0x80000000) | 0x7f800000 : (b & 0x80000000) | ((a + 0xfff + ((a >>> 13) & 1)) & 0xffffe000);
    } else if (a !== 0) {
      const v = x[i]!;
      x[i] = ((v < 0 ? -v : v) + SUBNORMAL_MAGIC) - SUBNORMAL_MAGIC;
      u[i] = u[i]! | (b & 0x80000000);
    }
  }
}


/** Round to the nearest integer, ties to even (like `torch.round` / `numpy.round`). */
export function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Encode a number (rounded to fp16) as its 16-bit pattern. */
export function halfToBits(x: number): number {
  const h = roundHalf(x);
  if (h !== h) return 0x7e00;
  f32[0] = h; // exact: every fp16 value is an fp32 value
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00;
  if (exp === 0) return sign;
  const e = exp - 127 + 15;
  if (e <= 0) {
    // subnormal half: value = mant' * 2^-24
    return sign | Math.round(Math.abs(h) / 5.960464477539063e-8);
  }
  return sign | (e << 10) | (mant >>> 13);
}

let decodeTable: Float32Array | undefined;

/** Decode a 16-bit fp16 pattern to a number. */
export function bitsToHalf(bits: number): number {
  return halfTable()[bits & 0xffff]!;
}

/** A 65536-entry table mapping every fp16 bit pattern to its value (built once, 256 KiB). */
export function halfTable(): Float32Array {
  if (decodeTable) return decodeTable;
  const t = new Float32Array(65536);
  for (let b = 0; b < 65536; b++) {
    const sign = b & 0x8000 ? -1 : 1;
    const exp = (b >>> 10) & 0x1f;
    const mant = b & 0x3ff;
    let v: number;
    if (exp === 0) v = mant * 5.960464477539063e-8;
    else if (exp === 31) v = mant ? NaN : Infinity;
    else v = (1 + mant / 1024) * 2 ** (exp - 15);
    t[b] = sign * v;
  }
  decodeTable = t;
  return t;
}

/**
 * fp16 bit patterns of every element of a Float32Array (round to nearest, ties to even; overflow to ±Infinity,
 * NaN to 0x7e00) — {@link halfToBits} for arrays, working on the float32 bit patterns (weights uploads).
 */
export function halfBitsArray(x: Float32Array, out: Uint16Array = new Uint16Array(x.length)): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  for (let i = 0; i < u.length; i++) {
    const b = u[i]!;
    const sign = (b >>> 16) & 0x8000;
    const a = b & 0x7fffffff;
    let h: number;
    if (a >= 0x477ff000) h = a > 0x7f800000 ? 0x7e00 : 0x7c00;
    else if (a >= 0x38800000) h = ((a + 0xfff + ((a >>> 13) & 1)) >>> 13) - (112 << 10);
    else {
      const v = x[i]!;
      h = (((v < 0 ? -v : v) + SUBNORMAL_MAGIC) - SUBNORMAL_MAGIC) * 16777216;
    }
    out[i] = sign | h;
  }
  return out;
}
