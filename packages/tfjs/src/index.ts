/**
 * @packageDocumentation
 * Quantized KV caches for TensorFlow.js: `full` (float32), KIVI, AsymKV, XQuant (η-calibration + cross-layer code
 * sharing), `rotated` and `planned`; one resolver for a cache's configuration; the reference's flush schedule, memory
 * accounting, causal GQA attention on packed codes through a kernel registry, and backend selection
 * (tfjs-node-gpu → tfjs-node → WebGPU → wasm → cpu). Loading the package registers the built-in strategies and the
 * cpu/wasm/tensorflow attention kernels (`registerBuiltins`); WebGPU kernels come from `@xquant/webgpu/kv-cache`.
 */
import { registerBuiltins } from './builtins.js';

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
export {
  resolveCacheConfig,
  CACHE_OVERRIDE_KEYS,
  DEFAULT_GROUP_SIZE,
  DEFAULT_RESIDUAL_LENGTH,
  type CacheConfig,
  type QuantizedLayout,
} from './config.js';
export { FullKvCache, FULL_CHUNK_TOKENS } from './full-cache.js';
export { CACHE_LIMITS, ATTENTION_BOUND } from './validate.js';
export { QuantizedKvCache, dequantizeView, dequantizeKeyBlock, dequantizeValueRange } from './quantized/cache.js';
export type { StoredMeta } from './quantized/store.js';
export {
  registerKernel,
  unregisterKernel,
  findKernel,
  getKernel,
  registeredKernels,
  registerAttentionKernel,
  unregisterAttentionKernel,
  attentionKernelFor,
  type KernelName,
  type KernelTypes,
  type AttentionKernel,
  type CodebookKernel,
  type CodebookTensorView,
  type QuantizedLayerView,
  type KeyBlockView,
  type ValueChunkView,
} from './kernels/registry.js';
export { jsPackedAttentionKernel, layerKvViews } from './kernels/js-attention.js';
export { denseAttentionKernel } from './kernels/dense.js';
export { defineQuantizedStrategy, uniformLayers, perLayerBits, type QuantizedStrategyDefinition } from './strategies/define.js';
export { full, type FullOptions } from './strategies/full.js';
export { kivi, type KiviOptions } from './strategies/kivi.js';
export { asymkv, type AsymKvOptions } from './strategies/asymkv.js';
export { xquant, type XQuantOptions, type ShareFrom } from './strategies/xquant.js';
export { planned, calibratorFor, type PlannedOptions, type CalibrationChoice } from './strategies/planned.js';
export { rotated, RotatedKvCache, walshHadamard, hadamardRotation, randomSigns, type RotatedOptions } from './strategies/rotated.js';
export { turboquant, turboquantBits, turboquantLayout, TurboQuantKvCache, TURBOQUANT_BITS, type TurboQuantOptions, type TurboQuantLayout } from './strategies/turboquant.js';
export { createKvCache, registerStrategy, resolveStrategy, strategyIds, type StrategyFactory } from './registry.js';
export { PRESETS, registerBuiltins, type PresetInfo } from './builtins.js';

registerBuiltins();
