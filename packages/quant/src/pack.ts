import { XqShapeError } from './errors.js';
import { assertBits, codesPerWord, type Bits } from './types.js';

/**
 * Pack codes into 32-bit words, least-significant code first — the reference layout:
 * word `w` of a row holds codes `w·(32/bits) … w·(32/bits)+32/bits−1`, code `i` of the word in bits `[i·bits, (i+1)·bits)`.
 * `codes` is row-major `[rows, cols]`; `cols` must be a multiple of `32/bits`.
 */
export function packCodes(codes: ArrayLike<number>, rows: number, cols: number, bits: Bits): Uint32Array {
  assertBits(bits);
  const fpw = codesPerWord(bits);
  if (cols % fpw !== 0) throw new XqShapeError(`cols (${cols}) must be a multiple of ${fpw} for ${bits}-bit packing`);
  if (codes.length !== rows * cols) throw new XqShapeError(`codes: expected ${rows * cols} elements, got ${codes.length}`);
  const m = (1 << bits) - 1;
  const words = new Uint32Array((rows * cols) / fpw);
  for (let w = 0, c = 0; w < words.length; w++) {
    let word = 0;
    for (let i = 0; i < fpw; i++, c++) word |= (codes[c]! & m) << (i * bits);
    words[w] = word >>> 0;
  }
  return words;
}

/** Inverse of {@link packCodes}: returns `[rows, cols]` codes. */
export function unpackCodes(packed: Uint32Array | Int32Array, rows: number, cols: number, bits: Bits): Uint8Array {
  assertBits(bits);
  const fpw = codesPerWord(bits);
  if (cols % fpw !== 0) throw new XqShapeError(`cols (${cols}) must be a multiple of ${fpw} for ${bits}-bit packing`);
  if (packed.length !== (rows * cols) / fpw) {
    throw new XqShapeError(`packed: expected ${(rows * cols) / fpw} words, got ${packed.length}`);
  }
  const m = (1 << bits) - 1;
  const out = new Uint8Array(rows * cols);
  for (let w = 0, c = 0; w < packed.length; w++) {
    const word = packed[w]! >>> 0;
    for (let i = 0; i < fpw; i++, c++) out[c] = (word >>> (i * bits)) & m;
  }
  return out;
}
