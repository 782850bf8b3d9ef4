/**
 * @packageDocumentation
 * Quantized KV caches for TensorFlow.js: `full` (float32), KIVI, AsymKV and XQuant (η-calibration + cross-layer code
 * sharing), the reference's flush schedule, memory accounting, causal GQA attention on packed codes, and backend
 * selection (tfjs-node-gpu → tfjs-node → WebGPU → wasm → cpu).
 */
export type * from './types.js';
export { plainAttention, chunkedAttention } from './attention.js';
export {
  selectBackend,
  releaseWebgpu,
  isMissingNativeBinding,
  BACKEND_ORDER,
  type BackendName,
  type BackendSelection,
  type SelectBackendOptions,
} from './backend.js';
export { FullKvCache, FULL_CHUNK_TOKENS } from './full-cache.js';
export {
  QuantizedKvCache,
  validateQuantizedConfig,
  paperBits,
  dequantizeView,
  dequantizeKeyBlock,
  dequantizeValueRange,
  type QuantizedCacheConfig,
} from './quantized/cache.js';
export type { StoredMeta, KindSpec } from './quantized/store.js';
export {
  registerAttentionKernel,
  unregisterAttentionKernel,
  attentionKernelFor,
  type AttentionKernel,
  type QuantizedLayerView,
  type KeyBlockView,
  type ValueChunkView,
} from './kernels/registry.js';
export { jsPackedAttentionKernel, layerKvViews } from './kernels/js-attention.js';
export { denseAttentionKernel } from './kernels/dense.js';
export { webgpuPackedAttentionKernel, type WebGpuPackedAttentionKernel, type WebGpuPackedCounts } from './kernels/webgpu-packed.js';
export {
  defineQuantizedStrategy,
  commonOptions,
  uniformLayers,
  perLayerBits,
  DEFAULT_GROUP_SIZE,
  DEFAULT_RESIDUAL_LENGTH,
  type QuantizedLayout,
  type QuantizedStrategyDefinition,
} from './strategies/define.js';
export { full, type FullOptions } from './strategies/full.js';
export { kivi, type KiviOptions } from './strategies/kivi.js';
export { asymkv, type AsymKvOptions } from './strategies/asymkv.js';
export { xquant, type XQuantOptions, type ShareFrom } from './strategies/xquant.js';
export { rotated, RotatedKvCache, walshHadamard, hadamardRotation, randomSigns, type RotatedOptions } from './strategies/rotated.js';
export {
  createKvCache,
  registerStrategy,
  resolveStrategy,
  strategyIds,
  PRESETS,
  type PresetInfo,
  type StrategyFactory,
} from './registry.js';
