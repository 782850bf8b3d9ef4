/**
 * @packageDocumentation
 * Fidelity evaluation of quantized KV caches on real models: the reference protocol (perplexity, KL to the full
 * cache, top-1 agreement, passkey retrieval), sharding and merging, markdown tables, comparison with anchor results,
 * benchmarks, per-layer attention error, and the bit-budget planner (it measures KL through the protocol).
 */
export * from './records.js';
export * from './metrics.js';
export * from './configs.js';
export * from './results.js';
export * from './protocol.js';
export * from './runtime.js';
export * from './layer-error.js';
export * from './planner.js';
export * from './codebook-planner.js';
export * from './bench.js';
export * from './anchor.js';
export * from './validate.js';
