// Shared pieces of the fuzz targets (issue 13): the failure type, typed-error classification, value arbitraries that
// cover the whole fp16/fp32 range, and a small deterministic PRNG to expand a few drawn values into a block.
import fc from 'fast-check';
import { rng } from '../../scripts/rng.mjs';

/**
 * A property violation found by a fuzz target. `kind`: 'untyped-error' (an error that is not an XqError),
 * 'unexpected-error' (a typed error where none was due, or the wrong code), 'missing-error' (none where one was due),
 * 'non-finite' (a non-finite output from finite inputs), 'mismatch' (outside the oracle's tolerance),
 * 'state-corruption' (the cache disagrees with its model), 'leak' (tensor count changed).
 */
export class FuzzFailure extends Error {
  constructor(kind, message, detail) {
    super(`${kind}: ${message}`);
    this.name = 'FuzzFailure';
    this.kind = kind;
    this.detail = detail;
  }
}

/** The XqError code of `e`; a FuzzFailure 'untyped-error' when `e` is not an XqError (FuzzFailures pass through). */
export function typedCode(e, isXqError) {
  if (e instanceof FuzzFailure) throw e;
  if (!isXqError(e)) throw new FuzzFailure('untyped-error', `${e?.name ?? typeof e}: ${e?.message ?? String(e)}`, { stack: e?.stack });
  return e.code;
}

export const FP16_MAX = 65504;
export const FLT_MAX = 3.4028234663852886e38;

/** Interesting magnitudes: the edges of fp16 and float32, subnormals, signed zeros. */
const SPECIAL = [0, -0, 1, -1, 65504, -65504, 65519, -65519, 65520, 65472, 32768, 21840, 1e-8, 6e-8, 5.96e-8, 6.1e-5, FLT_MAX, -FLT_MAX, 1e38, -1e38, 1.17549435e-38, 1e-45];

/** Any float32 (NaN and ±Infinity with `nonFinite`), biased towards the edges of the fp16 and float32 ranges. */
export function anyValue({ nonFinite = false } = {}) {
  return fc.oneof(
    { weight: 3, arbitrary: fc.float({ noNaN: !nonFinite, noDefaultInfinity: !nonFinite }) },
    { weight: 3, arbitrary: fc.float({ min: -65520, max: 65520, noNaN: true }) },
    { weight: 2, arbitrary: fc.double({ min: -1e3, max: 1e3, noNaN: true }) },
    { weight: 2, arbitrary: fc.constantFrom(...SPECIAL) },
    ...(nonFinite ? [{ weight: 1, arbitrary: fc.constantFrom(NaN, Infinity, -Infinity) }] : []),
  );
}

/** mulberry32 (the generator of the benchmarks too) */
export const prng = rng;

/** `n` values drawn from `palette` by a PRNG seeded with `seed` (cheap large blocks from a few drawn values). */
export function fill(n, palette, seed) {
  const r = prng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = palette[Math.floor(r() * palette.length)];
  return out;
}
