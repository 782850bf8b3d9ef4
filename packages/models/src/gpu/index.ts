/**
 * @packageDocumentation
 * `@xquant/models/gpu`: a Llama / Qwen2 decoder that runs every decode step on the GPU through raw WebGPU — fp16
 * weights, a device-resident KV cache from `@xquant/webgpu` (`full` fp16 rows or any quantized configuration),
 * sampling on the device, one token id read back per step.
 */
import { setPlatform } from '../io/platform.js';
import { nodePlatform } from '../node/fs.js';

// this entry reads model files by path (Node), like the package's main entry
setPlatform(nodePlatform);

export { GpuDecoder, PREFILL_MATRIX_MIN_WORKGROUPS, type ProfileKind, type GpuDecoderOptions, type GpuGenerateOptions, type GpuGenerateResult, type GpuDecoderMemory } from './engine.js';
export { loadGpuDecoder, type LoadedGpuDecoder } from '../node/gpu-load.js';
