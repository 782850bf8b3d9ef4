import { XqBackendError, XqConfigError } from '../errors.js';
import type { PackedKv } from '../kv.js';
import { denseKeyScoresImpl, denseValueMixImpl } from './dense.js';
import { keyScoresJs } from './keys.js';
import { checkDense, checkPackedBlock } from './validate.js';
import { valueMixDirect, valueMixLut, valuesLutApplies } from './values.js';
import {
  wasmDenseApplies,
  wasmDenseKeyScores,
  wasmDenseValueMix,
  wasmKeyScores,
  prepareWasm,
  wasmPackedApplies,
  wasmSimdSupported,
  wasmValueMix,
} from './wasm/runtime.js';

/**
 * Which implementation the attention kernels (packed and dense) run:
 * - `'auto'` (default): WebAssembly SIMD where the runtime supports it and the shape has a SIMD kernel, else JS;
 * - `'wasm'`: like `'auto'`, but throws {@link XqBackendError} when WebAssembly SIMD is unavailable;
 * - `'js'`: plain JavaScript only.
 */
export type KernelBackend = 'auto' | 'wasm' | 'js';

let backend: KernelBackend = 'auto';

/**
 * Selects the implementation of {@link packedKeyScores}, {@link packedValueMix}, {@link denseKeyScores} and
 * {@link denseValueMix} for this process. Results agree to float32 rounding across backends.
 * @throws {@link XqConfigError} for an unknown name; {@link XqBackendError} for `'wasm'` without WebAssembly SIMD.
 */
export function setKernelBackend(b: KernelBackend): void {
  if (b !== 'auto' && b !== 'wasm' && b !== 'js') throw new XqConfigError('E_CONFIG', `kernel backend must be 'auto', 'wasm' or 'js'; got ${String(b)}`);
  if (b === 'wasm' && !wasmSimdSupported()) {
    throw new XqBackendError('E_BACKEND_UNAVAILABLE', 'WebAssembly SIMD is not available in this runtime; use kernel backend \'js\' or \'auto\'');
  }
  backend = b;
}

/** The kernel backend selected with {@link setKernelBackend} (default `'auto'`). */
export function getKernelBackend(): KernelBackend {
  return backend;
}

/** True when this runtime compiles WebAssembly SIMD, i.e. when `'auto'` can use the SIMD kernels. */
export function wasmKernelsAvailable(): boolean {
  return wasmSimdSupported();
}

/**
 * Compiles the WebAssembly kernels for the given head dimensions ahead of time, asynchronously. Optional: kernels are
 * otherwise compiled synchronously on first use, which some browsers refuse on the main thread for modules of this
 * size (the kernels then run in JS). Resolves to true when every head dimension has SIMD kernels.
 */
export function prepareWasmKernels(headDims: readonly number[]): Promise<boolean> {
  return prepareWasm(headDims);
}

/** Implementation a packed kernel call takes: the SIMD kernel, the JS lookup-table kernel or the JS direct kernel. */
export type PackedKernelPath = 'wasm-simd' | 'js-lut' | 'js-direct';

/**
 * Which implementation {@link packedKeyScores} (block axis `'channel'`) or {@link packedValueMix} (`'token'`) uses for
 * this block with `qHeads` query heads under the current backend. SIMD kernels need 1- or 2-bit codes, a power-of-two
 * group size that is a multiple of 32/bits, headDim a multiple of 4 (values: of 64 at 2 bits, 128 at 1 bit).
 * @throws {@link XqShapeError} when the block is inconsistent.
 */
export function packedKernelPath(block: PackedKv, qHeads: number): PackedKernelPath {
  const per = block.axis === 'channel' ? block.headDim : block.tokens;
  const g = checkPackedBlock('packedKernelPath', block, block.axis, { length: qHeads * per }, 'qHeads·' + per, undefined);
  if (backend !== 'js' && wasmPackedApplies(g, block.axis)) return 'wasm-simd';
  return block.axis === 'token' && valuesLutApplies(g) ? 'js-lut' : 'js-direct';
}

/**
 * `scores[h, t] = Σ_d q[h, d]·k̂[kv(h), t, d]` over packed keys, without materializing `k̂` (no 1/√d factor).
 * `q` is `[qHeads, headDim]`; query head `h` reads KV head `⌊h / (qHeads/kvHeads)⌋` (GQA). Returns `[qHeads, tokens]`
 * (written into `out` when given). Per token group the scale is folded into the query and the zero-point into one
 * dot product, and every code is read once for all query heads of its KV head. With WebAssembly SIMD (see
 * {@link setKernelBackend}), 1- and 2-bit codes are summed 2–4 channels at a time through 16-entry tables of f32x4
 * (4 query heads per lane group), accumulating in float32; the JS path accumulates in float64.
 * @throws {@link XqShapeError} when the block, `q` or `out` have inconsistent shapes.
 */
export function packedKeyScores(q: Float32Array, keys: PackedKv, out?: Float32Array): Float32Array {
  const g = checkPackedBlock('packedKeyScores', keys, 'channel', q, 'q', out);
  const res = out ?? new Float32Array(g.qHeads * g.tokens);
  if (backend !== 'js' && wasmPackedApplies(g, 'channel')) wasmKeyScores(q, keys, g, res);
  else keyScoresJs(q, keys, g, res);
  return res;
}

/**
 * `out[h, d] = Σ_t p[h, t]·v̂[kv(h), t, d]` over packed values. `p` is `[qHeads, tokens]`; query head `h` reads KV head
 * `⌊h / (qHeads/kvHeads)⌋`. Returns `[qHeads, headDim]` (written into `out` when given). The scale is folded into
 * `p` per token and channel group and the zero-point into one sum per group; 1- and 2-bit codes are summed 2–4
 * tokens at a time through 16-entry lookup tables (f32x4 of 4 query heads with WebAssembly SIMD, float32
 * accumulation; float64 tables in the JS path). See {@link packedKernelPath}.
 * @throws {@link XqShapeError} when the block, `p` or `out` have inconsistent shapes.
 */
export function packedValueMix(p: Float32Array, values: PackedKv, out?: Float32Array): Float32Array {
  const g = checkPackedBlock('packedValueMix', values, 'token', p, 'p', out);
  const res = out ?? new Float32Array(g.qHeads * g.headDim);
  if (backend !== 'js' && wasmPackedApplies(g, 'token')) wasmValueMix(p, values, g, res);
  else if (valuesLutApplies(g)) valueMixLut(p, values, g, res);
  else valueMixDirect(p, values, g, res);
  return res;
}

/**
 * Float32 baseline for {@link packedKeyScores}: `scores[h, t] = Σ_d q[h, d]·K[kv(h), t, d]` with `K` as
 * `[kvHeads, tokens, headDim]`. Reads each key row once per chunk of up to 4 query heads of its KV head
 * (register-blocked, float64 accumulation). Returns `[qHeads, tokens]`.
 * @throws {@link XqShapeError} on inconsistent shapes.
 */
export function denseKeyScores(q: Float32Array, keys: Float32Array, kvHeads: number, headDim: number, out?: Float32Array): Float32Array {
  const { tokens, qHeads, rep } = checkDense('denseKeyScores', q, 'q', keys, 'keys', kvHeads, headDim, 'channel', out);
  const res = out ?? new Float32Array(qHeads * tokens);
  if (backend !== 'js' && wasmDenseApplies(headDim, 'channel')) wasmDenseKeyScores(q, keys, kvHeads, headDim, tokens, rep, res);
  else denseKeyScoresImpl(q, keys, kvHeads, headDim, tokens, rep, res);
  return res;
}

/**
 * Float32 baseline for {@link packedValueMix}: `out[h, d] = Σ_t p[h, t]·V[kv(h), t, d]` with `V` as
 * `[kvHeads, tokens, headDim]`. Reads each value row once per chunk of up to 4 query heads (register-blocked,
 * float64 accumulation). Returns `[qHeads, headDim]`.
 * @throws {@link XqShapeError} on inconsistent shapes.
 */
export function denseValueMix(p: Float32Array, values: Float32Array, kvHeads: number, headDim: number, out?: Float32Array): Float32Array {
  const { tokens, qHeads, rep } = checkDense('denseValueMix', p, 'p', values, 'values', kvHeads, headDim, 'token', out);
  const res = out ?? new Float32Array(qHeads * headDim);
  if (backend !== 'js' && wasmDenseApplies(headDim, 'token')) wasmDenseValueMix(p, values, kvHeads, headDim, tokens, rep, res);
  else denseValueMixImpl(p, values, kvHeads, headDim, tokens, rep, res);
  return res;
}
