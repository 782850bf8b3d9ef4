/**
 * @packageDocumentation
 * `@xquant/models/gpu`: a Llama / Qwen2 decoder that runs every decode step on the GPU through raw WebGPU — fp16
 * weights, a device-resident KV cache from `@xquant/webgpu` (`full` fp16 rows or any quantized configuration),
 * sampling on the device, one token id read back per step.
 */
export { GpuDecoder, type ProfileKind, type GpuDecoderOptions, type GpuGenerateOptions, type GpuGenerateResult, type GpuDecoderMemory } from './engine.js';
export { loadGpuDecoder, type LoadedGpuDecoder } from './load.js';
