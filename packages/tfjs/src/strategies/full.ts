import { FULL_CHUNK_TOKENS, FullKvCache } from '../full-cache.js';
import type { KvCacheShape, KvCacheStrategy } from '../types.js';
import { XqConfigError } from '@xquant/quant';

/** Options of the {@link full} strategy. */
export interface FullOptions {
  /** Tokens per sealed tensor chunk (default 1024). */
  chunkTokens?: number;
}

/** Float32 cache, no quantization: the baseline every other strategy is compared against. */
export function full(options: FullOptions = {}): KvCacheStrategy<FullOptions> {
  const chunk = options.chunkTokens ?? FULL_CHUNK_TOKENS;
  if (!Number.isInteger(chunk) || chunk <= 0) throw new XqConfigError('E_CONFIG', `chunkTokens must be a positive integer; got ${String(chunk)}`);
  return {
    specificationVersion: 'v1',
    id: 'full',
    options: Object.freeze({ ...options }),
    createCache: (shape: KvCacheShape) => new FullKvCache('full', shape, chunk),
  };
}
