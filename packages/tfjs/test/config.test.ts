import { describe, expect, it } from 'vitest';
import { accountBits } from '@xquant/cross-layer';
import {
  DEFAULT_GROUP_SIZE,
  DEFAULT_RESIDUAL_LENGTH,
  createKvCache,
  kivi,
  resolveCacheConfig,
  rotated,
  type CacheConfig,
  type QuantizedKvCache,
} from '@xquant/tfjs';
import { codeOf, useCpu } from './helpers.js';

const shape = { layers: 8, kvHeads: 2, headDim: 64 };

describe('resolveCacheConfig', () => {
  it('applies every default once and returns a frozen config, the one the cache holds', async () => {
    await useCpu();
    const c = resolveCacheConfig('xquant-1.38', shape);
    expect(Object.isFrozen(c) && Object.isFrozen(c.keys) && Object.isFrozen(c.keys[0])).toBe(true);
    expect(c).toMatchObject({ strategyId: 'xquant', residualLength: DEFAULT_RESIDUAL_LENGTH, groupSize: DEFAULT_GROUP_SIZE, valueGroupSize: DEFAULT_GROUP_SIZE, precision: 'fp16' });
    expect(c.values.map((v) => v.codesFrom)).toEqual([null, null, null, null, null, 4, null, 6]);
    expect(c.keyCalibrators).toHaveLength(8);
    const cache = createKvCache('xquant-1.38', shape) as QuantizedKvCache;
    // the same config; calibrators are equal-valued new objects (each resolution makes its own)
    const strip = ({ keyCalibrators: _k, valueCalibrators: _v, ...r }: CacheConfig) => r;
    expect(strip(cache.config)).toEqual(strip(c));
    expect(cache.config.valueCalibrators.map((k) => k?.id)).toEqual(c.valueCalibrators.map((k) => k?.id));
    expect(cache.plan).toEqual({ keys: c.keys, values: c.values });
    cache.dispose();
    // overrides, a strategy object with overrides, and a wrapper (rotated reports its inner cache's config)
    expect(resolveCacheConfig('kivi-2', shape, { residualLength: 32, groupSize: 16, valueGroupSize: 64 })).toMatchObject({ residualLength: 32, groupSize: 16, valueGroupSize: 64 });
    expect(resolveCacheConfig(kivi({ bits: 4 }), shape, { precision: 'fp32' })).toMatchObject({ precision: 'fp32', keys: expect.arrayContaining([{ bits: 4, codesFrom: null }]) });
    expect(resolveCacheConfig(rotated({ inner: 'kivi-1', residualLength: 64 }), shape).residualLength).toBe(64);
  });

  it('typed errors on bad input, and none for a strategy without quantized storage', () => {
    expect(codeOf(() => resolveCacheConfig('full', shape))).toBe('E_CONFIG');
    expect(codeOf(() => resolveCacheConfig('kivi-7', shape))).toBe('E_STRATEGY_UNKNOWN');
    expect(codeOf(() => resolveCacheConfig('kivi-2', shape, { residualLength: 0 }))).toBe('E_RESIDUAL');
    expect(codeOf(() => resolveCacheConfig('kivi-2', shape, { residualLength: 48 }))).toBe('E_RESIDUAL');
    expect(codeOf(() => resolveCacheConfig('kivi-2', shape, { valueGroupSize: 48 }))).toBe('E_GROUP_SIZE');
    expect(codeOf(() => resolveCacheConfig('kivi-2', shape, { precision: 'bf16' as never }))).toBe('E_CONFIG');
    expect(codeOf(() => resolveCacheConfig('kivi-2', shape, { bits: 2 } as never))).toBe('E_CONFIG'); // presets take only the overrides
    expect(codeOf(() => resolveCacheConfig('kivi-2', { ...shape, headDim: 0 }))).toBe('E_SHAPE');
    expect(codeOf(() => resolveCacheConfig('asymkv', shape, { keyBits: [2, 2], valueBits: 1 }))).toBe('E_PLAN');
  });

  it('accountBits reads the config as it is (and the deprecated plan + sizes form gives the same account)', () => {
    const c = resolveCacheConfig('xquant-1.38', shape, { residualLength: 32, valueGroupSize: 64 });
    const a = accountBits({ config: c, kvHeads: 2, headDim: 64, tokens: 2048 });
    const legacy = accountBits({ plan: { keys: [...c.keys], values: [...c.values] }, residualLength: 32, groupSize: 32, valueGroupSize: 64, kvHeads: 2, headDim: 64, tokens: 2048 });
    expect(a).toEqual(legacy);
    expect(a.paperBits).toBe(1.375);
    expect(a.storedBitsPerElement).toBeCloseTo(2.486 - (0.5 * (2048 - 32)) / (2 * 2048), 3);
  });
});
