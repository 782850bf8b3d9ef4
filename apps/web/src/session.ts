// The app's logic without the page: backend choice, cache choice (presets and plan JSON), what `full` would hold, and
// one generation run with live statistics. main.ts wires it to the DOM.
import * as tf from '@tensorflow/tfjs-core';
import { XqConfigError } from '@xquant/quant';
import { generate, loadModel, type GenerateResult, type LoadProgress, type LoadedModel, type ModelInput } from '@xquant/models';
import { createKvCache, selectBackend, type BackendSelection, type KvCache, type KvCacheShape, type KvMemoryReport } from '@xquant/tfjs';

/** Backends the page offers: WebGPU when the browser has a hardware adapter, else wasm ('auto'), or one of them. */
export type BackendChoice = 'auto' | 'webgpu' | 'wasm';

/** A KV-cache configuration: a preset, or a strategy with options from a plan JSON. */
export interface CacheChoice {
  /** Shown in the page. */
  label: string;
  /** Preset name or registered strategy id. */
  strategy: string;
  /** Options / overrides for `createKvCache`. */
  options: Record<string, unknown>;
}

/** Presets offered in the page (the list; any registered id works through a plan JSON). */
export const CACHE_PRESETS = ['full', 'kivi-2', 'asymkv-1.5', 'xquant-1.38'] as const;

/**
 * A cache from a plan JSON: `{ name, strategy, options }` as written by `xquant plan --out` (its `preset` field), or the
 * whole plan result holding one. Throws `XqConfigError` naming the file when the shape is wrong.
 */
export function parsePlanJson(text: string, file = 'plan JSON'): CacheChoice {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new XqConfigError('E_CONFIG', `${file}: not JSON (${(e as Error).message})`);
  }
  const top = raw as { preset?: unknown } | null;
  const p = (top && typeof top === 'object' && top.preset && typeof top.preset === 'object' ? top.preset : raw) as Partial<{ name: unknown; strategy: unknown; options: unknown }> | null;
  if (!p || typeof p !== 'object' || typeof p.strategy !== 'string' || typeof p.options !== 'object' || p.options === null || Array.isArray(p.options)) {
    throw new XqConfigError('E_CONFIG', `${file}: expected { name, strategy, options } or a plan result with "preset" (from 'xquant plan --out')`);
  }
  return { label: typeof p.name === 'string' ? p.name : file, strategy: p.strategy, options: p.options as Record<string, unknown> };
}

/** The cache for a preset with an optional residual length R. */
export function presetChoice(preset: string, residualLength?: number): CacheChoice {
  const options = preset !== 'full' && residualLength !== undefined ? { residualLength } : {};
  return { label: preset + (options.residualLength ? ` (R = ${residualLength})` : ''), strategy: preset, options };
}

/** What a `full` (float32) cache holds for `tokens` tokens of `shape`: exactly what `createKvCache('full', shape).memory()` reports. */
export function fullMemory(shape: KvCacheShape, tokens: number): KvMemoryReport {
  const elements = 2 * shape.layers * shape.kvHeads * shape.headDim * tokens;
  const bytes = 4 * elements;
  return {
    codeBytes: 0,
    metadataBytes: 0,
    residualBytes: bytes,
    totalBytes: bytes,
    tokens,
    elements,
    paperBitsPerElement: 16,
    trueBitsPerElement: elements === 0 ? 0 : 32,
  };
}

/** True for a CPU-emulated adapter (SwiftShader, lavapipe): correct, but slower than wasm. */
function isSoftware(adapter: GPUAdapter): boolean {
  const info = (adapter as { info?: { architecture?: string; device?: string; description?: string; vendor?: string } }).info;
  const text = `${info?.architecture ?? ''} ${info?.device ?? ''} ${info?.description ?? ''} ${info?.vendor ?? ''}`.toLowerCase();
  return (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter === true || /software|swiftshader|llvmpipe|lavapipe/.test(text);
}

/**
 * Activate a tfjs backend. `auto`: WebGPU when the browser has a hardware adapter, else wasm (a software adapter is
 * correct but slower than wasm). WebGPU also registers the WGSL packed-code attention kernel of `@xquant/webgpu`.
 */
export async function startBackend(choice: BackendChoice): Promise<BackendSelection> {
  let prefer: 'webgpu' | 'wasm' = choice === 'auto' ? 'wasm' : choice;
  let why = '';
  if (choice === 'auto') {
    const gpu = (navigator as { gpu?: GPU }).gpu;
    const adapter = gpu ? await gpu.requestAdapter().catch(() => null) : null;
    if (!gpu) why = 'this browser has no WebGPU';
    else if (!adapter) why = 'no WebGPU adapter';
    else if (isSoftware(adapter)) why = 'only a software WebGPU adapter (slower than wasm)';
    else prefer = 'webgpu';
  }
  if (prefer === 'webgpu') {
    const { registerWebGpuKernels } = await import('@xquant/webgpu/kv-cache');
    registerWebGpuKernels();
  }
  const sel = await selectBackend({ prefer });
  return why ? { ...sel, reason: `${sel.reason}; WebGPU not used: ${why}` } : sel;
}

/** Load a model (see `loadModel`), reporting weight bytes as they arrive. */
export function openModel(input: ModelInput, onProgress?: (p: LoadProgress) => void): Promise<LoadedModel> {
  return loadModel(input, onProgress ? { onProgress } : {});
}

/** Live statistics of a run, after each token. */
export interface RunStats {
  /** Generated token ids so far. */
  ids: number[];
  /** The chosen cache's `memory()`. */
  memory: KvMemoryReport;
  /** What `full` would hold for as many tokens. */
  full: KvMemoryReport;
  /** Generated tokens per second so far (from the start of the run, prefill included). */
  tokensPerSecond: number;
}

/** Options of {@link runGeneration}. */
export interface RunOptions {
  model: LoadedModel;
  cache: CacheChoice;
  prompt: string;
  maxNewTokens: number;
  /** Called with the text of each token and the statistics after it. */
  onToken?: (text: string, stats: RunStats) => void | Promise<void>;
  signal?: AbortSignal;
}

/** What {@link runGeneration} returns: the library's result, the final statistics and the cache's id. */
export interface RunResult {
  result: GenerateResult;
  stats: RunStats;
  strategyId: string;
  /** Tensors alive after the run minus before it (0: the run leaked nothing). */
  tensorDelta: number;
  /**
   * On WebGPU: how often the WGSL packed-code kernel ran (decode steps), the prefill path and the fallback, and how
   * often the WGSL codebook kernels ran key scores (the `turboquant` cache and codebook plans, one per layer and step).
   */
  kernel?: { packed: number; prefill: number; fallback: number; codebook: number };
}

/** Greedy generation through a fresh cache of the chosen kind; the cache is disposed after its memory is read. */
export async function runGeneration(o: RunOptions): Promise<RunResult> {
  const shape = o.model.model.cacheShape;
  const gpu = tf.getBackend() === 'webgpu' ? await import('@xquant/webgpu/kv-cache') : undefined;
  const gpuKernel = gpu?.webgpuPackedAttentionKernel;
  gpuKernel?.resetCounts();
  gpu?.webgpuCodebookKernel.resetCounts();
  const before = tf.memory().numTensors;
  let cache: KvCache | undefined;
  try {
    cache = createKvCache(o.cache.strategy, shape, o.cache.options);
    const c = cache;
    const ids: number[] = [];
    const t0 = performance.now();
    const stats = (): RunStats => {
      const memory = c.memory();
      return { ids: [...ids], memory, full: fullMemory(shape, memory.tokens), tokensPerSecond: ids.length / Math.max((performance.now() - t0) / 1000, 1e-9) };
    };
    const result = await generate({
      model: o.model.model,
      tokenizer: o.model.tokenizer,
      cache: c,
      prompt: o.prompt,
      maxNewTokens: o.maxNewTokens,
      temperature: 0,
      signal: o.signal,
      onToken: async (t) => {
        ids.push(t.id);
        await o.onToken?.(t.text, stats());
      },
    });
    const final = { ...stats(), tokensPerSecond: result.timings.tokensPerSecond };
    const strategyId = c.strategyId;
    c.dispose();
    cache = undefined;
    const counts = gpuKernel?.counts;
    const kernel = counts ? { packed: counts.packed, prefill: counts.prefill, fallback: counts.fallback, codebook: gpu!.webgpuCodebookKernel.counts.keyScores } : undefined;
    return { result, stats: final, strategyId, tensorDelta: tf.memory().numTensors - before, ...(kernel ? { kernel } : {}) };
  } finally {
    cache?.dispose();
  }
}
