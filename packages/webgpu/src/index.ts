/**
 * @packageDocumentation
 * WGSL decode-attention kernels that read 1/2/4-bit packed KV codes directly (the layouts of `@xquant/quant`'s
 * PackedKv): scores over per-channel packed keys, weighted sums over per-token packed values, and one fused
 * score → softmax → value pass (flash-decoding split with a merge pass) including the full-precision residual,
 * with GQA and cross-layer shared codes. This entry is raw WebGPU (`GPUDevice` + buffers); the tfjs-backend-webgpu
 * programs live in `@xquant/webgpu/tfjs`.
 */
export * from './layout.js';
export * from './raw.js';
export * from './codebook.js';
export * from './node.js';
export { CHUNK_TOKENS } from './wgsl.js';
export * from './device/cache.js';
