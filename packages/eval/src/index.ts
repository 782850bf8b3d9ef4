/**
 * @packageDocumentation
 * Fidelity evaluation of quantized KV caches on real models: the reference protocol (perplexity, KL to the full
 * cache, top-1 agreement, passkey retrieval), sharding and merging, markdown tables, benchmarks, an HTML report,
 * inter-layer code agreement, per-layer attention error and a bit-budget planner.
 */
export * from './records.js';
export * from './metrics.js';
export * from './configs.js';
export * from './results.js';
export * from './progress.js';
export * from './protocol.js';
export * from './runtime.js';
export * from './planned.js';
export * from './layer-error.js';
export * from './similarity.js';
export * from './planner.js';
export * from './bench.js';
export * from './anchor.js';
export * from './svg.js';
export * from './report.js';
