import { XqBackendError, XqConfigError } from '../errors.js';
import { denseKeyScoresImpl, denseValueMixImpl } from './dense.js';
import { keyScoresJs, valueMixJs } from './js.js';
import { checkCall, checkDense, type PackedKvView } from './view.js';
import {
  prepareWasm,
  privateInstance,
  stageDense,
  stageKeyScores,
  stageValueMix,
  wasmDense,
  wasmDenseApplies,
  wasmKeyScores,
  wasmPackedApplies,
  wasmSimdSupported,
  wasmValueMix,
  type StagedRun,
} from './wasm/runtime.js';

/**
 * Which implementation the attention kernels (packed, dense and codebook) run:
 * - `'auto'` (default): WebAssembly SIMD where the runtime supports it and the shape has a SIMD kernel, else JS;
 * - `'wasm'`: like `'auto'`, but throws {@link XqBackendError} when WebAssembly SIMD is unavailable (and the codebook
 *   kernels take SIMD even for views so short that `'auto'` takes JS);
 * - `'js'`: plain JavaScript only.
 */
export type KernelBackend = 'auto' | 'wasm' | 'js';

let backend: KernelBackend = 'auto';

/**
 * Selects the implementation of {@link packedKeyScores}, {@link packedValueMix}, {@link denseKeyScores},
 * {@link denseValueMix}, `codebookKeyScores` and `codebookValueMix` for this process. Results agree to float32
 * rounding across backends.
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

/** Implementation a packed kernel call takes: the WebAssembly SIMD kernels or the plain-JS kernels. */
export type PackedKernelPath = 'wasm-simd' | 'js';

/**
 * Which implementation {@link packedKeyScores} (views with axis `'channel'`) or {@link packedValueMix} (`'token'`)
 * uses for these views under the current backend. The SIMD kernels need 1- or 2-bit codes, a power-of-two group size
 * that is a multiple of 32/bits, headDim a multiple of 4 (values: of 64 at 2 bits, 128 at 1 bit).
 * @throws {@link XqShapeError} when a view is inconsistent.
 */
export function packedKernelPath(views: PackedKvView | readonly PackedKvView[], qHeads: number): PackedKernelPath {
  const first = Array.isArray(views) ? (views as readonly PackedKvView[])[0] : (views as PackedKvView);
  const axis = first?.axis === 'token' ? 'token' : 'channel';
  const tokens = axis === 'token' ? (Array.isArray(views) ? (views as readonly PackedKvView[]) : [views as PackedKvView]).reduce((n, v) => n + v.tokens, 0) : first?.headDim ?? 0;
  const g = checkCall('packedKernelPath', views, axis, { length: qHeads * tokens }, `qHeads·${tokens}`, undefined, undefined);
  return backend !== 'js' && wasmPackedApplies(g, axis) ? 'wasm-simd' : 'js';
}

/**
 * `scores[h, t] = Σ_d q[h, d]·k̂[kv(h), t, d]` over packed keys, without materializing `k̂` (no 1/√d factor).
 * `keys` is one {@link PackedKvView} (e.g. a `PackedKv` block) or a list of them, concatenated along tokens (e.g. the
 * key blocks of a cache). `q` is `[qHeads, headDim]`; query head `h` reads KV head `⌊h / (qHeads/kvHeads)⌋` (GQA).
 * Returns `[qHeads, rowStride]` (default rowStride: all tokens; written into `out` when given; columns past the
 * tokens are left as they are). Per token group the scale is folded into the query and the zero-point into one dot
 * product, and every code is read once for all query heads of its KV head. With WebAssembly SIMD (see
 * {@link setKernelBackend}), 1- and 2-bit codes are summed 4 channels at a time per bit plane through 16-entry tables
 * of f32x4 (4 query heads), accumulating in float32; the JS path accumulates in float64. The float32 partial sums
 * (`Σ q·zero` and `Σ q·scale·code` per group) stay finite, and so does the result, while
 * `Σ_d |q[h, d]|·(|zero| + (2^bits − 1)·scale) < 1e38` (the caches' `ATTENTION_BOUND` keeps attention inside it).
 * @throws {@link XqShapeError} when a view, `q` or `out` have inconsistent shapes.
 */
export function packedKeyScores(q: Float32Array, keys: PackedKvView | readonly PackedKvView[], out?: Float32Array, rowStride?: number): Float32Array {
  const g = checkCall('packedKeyScores', keys, 'channel', q, 'q', out, rowStride);
  const res = out ?? new Float32Array(g.qHeads * g.stride);
  if (backend !== 'js' && wasmPackedApplies(g, 'channel')) wasmKeyScores(q, g, res);
  else keyScoresJs(q, g, res);
  return res;
}

/**
 * `out[h, d] = Σ_t p[h, t]·v̂[kv(h), t, d]` over packed values: one {@link PackedKvView} or a list of them concatenated
 * along tokens (e.g. the token-major value chunks of a cache). `p` is `[qHeads, rowStride]` (default rowStride: all
 * tokens; columns past the tokens are ignored); query head `h` reads KV head `⌊h / (qHeads/kvHeads)⌋`. Returns
 * `[qHeads, headDim]` (written into `out` when given). The scale is folded into `p` per token and channel group and the
 * zero-point into one sum per group; with WebAssembly SIMD, 1- and 2-bit codes are summed 4 tokens at a time per bit
 * plane through 16-entry tables of f32x4 (float32 accumulation); the JS path accumulates in float64.
 * @throws {@link XqShapeError} when a view, `p` or `out` have inconsistent shapes.
 */
export function packedValueMix(p: Float32Array, values: PackedKvView | readonly PackedKvView[], out?: Float32Array, rowStride?: number): Float32Array {
  const g = checkCall('packedValueMix', values, 'token', p, 'p', out, rowStride);
  const res = out ?? new Float32Array(g.qHeads * g.headDim);
  if (backend !== 'js' && wasmPackedApplies(g, 'token')) wasmValueMix(p, g, res);
  else valueMixJs(p, g, res);
  return res;
}

/**
 * Float32 baseline for {@link packedKeyScores}: `scores[h, t] = Σ_d q[h, d]·K[kv(h), t, d]` with `K` as
 * `[kvHeads, tokens, headDim]`. Reads each key row once per chunk of up to 4 query heads of its KV head
 * (register-blocked; f32x4 with WebAssembly SIMD, float64 accumulation in JS). Returns `[qHeads, tokens]`.
 * @throws {@link XqShapeError} on inconsistent shapes.
 */
export function denseKeyScores(q: Float32Array, keys: Float32Array, kvHeads: number, headDim: number, out?: Float32Array): Float32Array {
  const { tokens, qHeads, rep } = checkDense('denseKeyScores', q, 'q', keys, 'keys', kvHeads, headDim, 'channel', out);
  const res = out ?? new Float32Array(qHeads * tokens);
  if (backend !== 'js' && wasmDenseApplies(headDim, 'channel')) wasmDense('channel', q, keys, kvHeads, headDim, tokens, rep, res);
  else denseKeyScoresImpl(q, keys, kvHeads, headDim, tokens, rep, res);
  return res;
}

/**
 * Float32 baseline for {@link packedValueMix}: `out[h, d] = Σ_t p[h, t]·V[kv(h), t, d]` with `V` as
 * `[kvHeads, tokens, headDim]`. Reads each value row once per chunk of up to 4 query heads (register-blocked).
 * Returns `[qHeads, headDim]`.
 * @throws {@link XqShapeError} on inconsistent shapes.
 */
export function denseValueMix(p: Float32Array, values: Float32Array, kvHeads: number, headDim: number, out?: Float32Array): Float32Array {
  const { tokens, qHeads, rep } = checkDense('denseValueMix', p, 'p', values, 'values', kvHeads, headDim, 'token', out);
  const res = out ?? new Float32Array(qHeads * headDim);
  if (backend !== 'js' && wasmDenseApplies(headDim, 'token')) wasmDense('token', p, values, kvHeads, headDim, tokens, rep, res);
  else denseValueMixImpl(p, values, kvHeads, headDim, tokens, rep, res);
  return res;
}

/**
 * @internal Benchmark hook: stages the K/V of a kernel call once, in a WebAssembly instance of its own, and returns a
 * function that runs only the kernels (activations in, results into `out`) — the time of the SIMD kernels on data
 * already resident in WebAssembly memory, without the per-call copies. `kv` is the packed view(s) of
 * {@link packedKeyScores} / {@link packedValueMix} or dense `[kvHeads, tokens, headDim]` data of the baselines. Null
 * when there is no SIMD kernel for the shape.
 */
export function benchResidentKernel(
  axis: 'channel' | 'token',
  a: Float32Array,
  kv: PackedKvView | readonly PackedKvView[] | { dense: Float32Array; kvHeads: number; headDim: number },
  out: Float32Array,
): StagedRun | null {
  if ('dense' in kv) {
    const fn = axis === 'channel' ? 'denseKeyScores' : 'denseValueMix';
    const { tokens, rep } = checkDense(fn, a, axis === 'channel' ? 'q' : 'p', kv.dense, 'x', kv.kvHeads, kv.headDim, axis, out);
    const inst = wasmDenseApplies(kv.headDim, axis) ? privateInstance(kv.headDim) : null;
    return inst && stageDense(inst, axis, a, kv.dense, kv.kvHeads, kv.headDim, tokens, rep, out);
  }
  const g = checkCall(axis === 'channel' ? 'packedKeyScores' : 'packedValueMix', kv, axis, a, axis === 'channel' ? 'q' : 'p', out, undefined);
  const inst = wasmPackedApplies(g, axis) ? privateInstance(g.headDim) : null;
  return inst && (axis === 'channel' ? stageKeyScores : stageValueMix)(inst, a, g, out);
}
