/** A property violation found by a fuzz target (see common.mjs for the kinds). */
export class FuzzFailure extends Error {
  constructor(kind: FuzzFailureKind, message: string, detail?: unknown);
  readonly kind: FuzzFailureKind;
  readonly detail: unknown;
}
/** What a fuzz target found wrong. */
export type FuzzFailureKind = 'untyped-error' | 'unexpected-error' | 'missing-error' | 'non-finite' | 'mismatch' | 'state-corruption' | 'leak';
export function typedCode(e: unknown, isXqError: (e: unknown) => boolean): string;
export const FP16_MAX: number;
export const FLT_MAX: number;
export function anyValue(options?: { nonFinite?: boolean }): import('fast-check').Arbitrary<number>;
export function prng(seed: number): () => number;
export function fill(n: number, palette: readonly number[], seed: number): Float32Array;
/** One fuzz target: draw inputs from `arbitrary`, call `check`; it throws a FuzzFailure on a violation. */
export interface FuzzTarget<I = unknown, R = void> {
  name: string;
  arbitrary: import('fast-check').Arbitrary<I>;
  check(input: I): R;
  /** Outcome counts over every case run so far (cache target). */
  stats?: Record<string, number>;
}
