import {
  dequantizeRows,
  groupStats,
  packCodes,
  packedKeyScores,
  packedValueMix,
  quantizeRows,
  type Bits,
  type GroupQuantOptions,
  type GroupStats,
  type PackedKvView,
  type QuantizedRows,
} from '@xquant/quant';
import { calibrateStats } from '@xquant/calibration';
import { quantizeRowsAnno2Quirk } from './anno2.js';

/** A value or a promise of it: targets may be asynchronous (e.g. GPU kernels). */
export type MaybePromise<T> = T | Promise<T>;

/**
 * The operations the golden runner checks. Every block is row-major `[rows, cols]`, quantized along `cols`
 * (keys: rows = heads·headDim channels, cols = tokens; values: rows = heads·tokens, cols = headDim), exactly the
 * reference's function layout. Pass a partial target to {@link runGoldenFile} to check your own port; missing
 * operations fall back to xquant-ts.
 */
export interface ConformanceTarget {
  /** Min/max group quantization (reference `anno=0`): codes, scale, zero-point. */
  quantizeRows(x: Float32Array, rows: number, cols: number, opts: GroupQuantOptions): MaybePromise<QuantizedRows>;
  /** Scale and zero-point without codes (reference `anno=1`). */
  groupStats(x: Float32Array, rows: number, cols: number, opts: GroupQuantOptions): MaybePromise<GroupStats>;
  /** XQuant η calibration of scale and zero-point. */
  calibrateStats(stats: GroupStats, eta: number): MaybePromise<GroupStats>;
  /** `x̂ = h(h(code·scale) + zero)` for `[rows, cols]` codes. */
  dequantizeRows(codes: Uint8Array, stats: GroupStats): MaybePromise<Float32Array>;
  /** Packs `[rows, cols]` codes into 32-bit words along `cols`, LSB first. */
  packCodes(codes: Uint8Array, rows: number, cols: number, bits: Bits): MaybePromise<Uint32Array | Int32Array>;
  /** The reference's `anno=2` variant (a quirk; see {@link quantizeRowsAnno2Quirk}). */
  quantizeRowsAnno2(x: Float32Array, rows: number, cols: number, opts: GroupQuantOptions): MaybePromise<QuantizedRows>;
  /**
   * `scores[h, t] = Σ_d q[h, d]·k̂[h, t, d]` over packed keys (no 1/√d); `q` is `[heads, headDim]`. Called with the
   * golden block (a `PackedKv`) and with the same keys in a cache's layout: a list of key blocks with fp16 metadata
   * bit patterns (see `PackedKvView`).
   */
  packedKeyScores(q: Float32Array, keys: PackedKvView | readonly PackedKvView[]): MaybePromise<Float32Array>;
  /**
   * `out[h, d] = Σ_t p[h, t]·v̂[h, t, d]` over packed values; `p` is `[heads, tokens]`. Called with the golden block and
   * with the values as a cache keeps them: token-major chunks (`PackedKvView` with `tokenMajor`).
   */
  packedValueMix(p: Float32Array, values: PackedKvView | readonly PackedKvView[]): MaybePromise<Float32Array>;
}

/**
 * The xquant-ts implementations (`@xquant/quant`, `@xquant/calibration`, and the anno=2 quirk of this package). The
 * attention entries are `@xquant/quant`'s `packedKeyScores` / `packedValueMix` themselves: the functions a
 * quantized cache of `@xquant/tfjs` calls on cpu and wasm.
 */
export const xquantTarget: ConformanceTarget = Object.freeze({
  quantizeRows,
  groupStats,
  calibrateStats,
  dequantizeRows,
  packCodes,
  quantizeRowsAnno2: quantizeRowsAnno2Quirk,
  packedKeyScores,
  packedValueMix,
});
