/**
 * @packageDocumentation
 * KV-cache quantization primitives in pure TypeScript: asymmetric min/max group quantization (KIVI-style:
 * keys per channel, values per token) that reproduces the XQuant authors' arithmetic bit for bit, bit packing
 * in the reference layout, and attention kernels that run directly on packed codes.
 */
export * from './errors.js';
export * from './types.js';
export * from './fp16.js';
export * from './pack.js';
export * from './quantize.js';
export * from './kv.js';
export { boundScale, dequantizeValue, OVERFLOW_AT, PRECISION_MAX } from './core.js';
export * from './kernels/packed-attention.js';
export * from './codebook.js';
export * from './scale-format.js';
export {
  assertCodebookView,
  codebookDequantize,
  codebookKernelPath,
  prepareCodebookKernels,
  codebookKeyScores,
  codebookValueMix,
  packCodebookRow,
  type CodebookKvView,
  type CodebookSegment,
} from './kernels/codebook.js';
export {
  assertPackedKvLayout,
  packedKvSegments,
  packedKvStrides,
  type PackedKvLayout,
  type PackedKvSegmentOptions,
  type PackedKvStrides,
  type PackedKvView,
  type PackedMeta,
} from './kernels/view.js';
