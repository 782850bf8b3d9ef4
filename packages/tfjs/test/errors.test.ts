import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqError } from '@xquant/quant';
import { createKvCache, kivi, registerStrategy, resolveStrategy, strategyIds, xquant, type KvCache } from '@xquant/tfjs';
import { randn, useCpu } from './helpers.js';

beforeAll(useCpu);

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (!XqError.isInstance(e)) throw e;
    return `${e.name}:${e.code}`;
  }
  return 'no error';
}

const shape = { layers: 2, kvHeads: 2, headDim: 32, maxTokens: 40 };
const t3 = (h: number, n: number, d: number, dtype: 'float32' | 'int32' = 'float32') =>
  dtype === 'float32' ? tf.tensor3d(randn(h * n * d, h + n + d), [h, n, d]) : tf.tensor3d(new Int32Array(h * n * d), [h, n, d], 'int32');

describe.each(['full', 'kivi-2', 'xquant-1.38'])('bad input on %s', (id) => {
  let cache: KvCache;
  beforeAll(() => {
    cache = createKvCache(id, shape, id === 'full' ? undefined : { residualLength: 32 });
  });
  it('typed errors for shapes, dtypes, state and capacity', () => {
    expect(code(() => cache.attend(0, t3(4, 1, 32)))).toBe('XqStateError:E_STATE'); // attend before prefill
    expect(code(() => cache.prefill(0, t3(3, 4, 32), t3(3, 4, 32)))).toBe('XqShapeError:E_SHAPE'); // heads
    expect(code(() => cache.prefill(0, t3(2, 4, 16), t3(2, 4, 16)))).toBe('XqShapeError:E_SHAPE'); // headDim
    expect(code(() => cache.prefill(0, t3(2, 4, 32), t3(2, 5, 32)))).toBe('XqShapeError:E_SHAPE'); // token counts differ
    expect(code(() => cache.prefill(0, t3(2, 4, 32, 'int32'), t3(2, 4, 32)))).toBe('XqConfigError:E_DTYPE');
    expect(code(() => cache.prefill(2, t3(2, 4, 32), t3(2, 4, 32)))).toBe('XqShapeError:E_SHAPE'); // layer out of range
    expect(code(() => cache.prefill(0, tf.zeros([2, 4]) as unknown as tf.Tensor3D, t3(2, 4, 32)))).toBe('XqShapeError:E_SHAPE');
    cache.prefill(0, t3(2, 38, 32), t3(2, 38, 32));
    expect(code(() => cache.append(0, t3(2, 2, 32), t3(2, 2, 32)))).toBe('XqShapeError:E_SHAPE'); // append takes one token
    expect(code(() => cache.attend(0, t3(3, 1, 32)))).toBe('XqShapeError:E_SHAPE'); // 3 query heads vs 2 KV heads
    expect(code(() => cache.attend(0, t3(4, 1, 16)))).toBe('XqShapeError:E_SHAPE');
    expect(code(() => cache.attend(0, t3(4, 39, 32)))).toBe('XqShapeError:E_SHAPE'); // more queries than tokens
    cache.append(0, t3(2, 1, 32), t3(2, 1, 32));
    cache.append(0, t3(2, 1, 32), t3(2, 1, 32));
    expect(code(() => cache.append(0, t3(2, 1, 32), t3(2, 1, 32)))).toBe('XqStateError:E_CAPACITY');
    expect(cache.seqLength(0)).toBe(40);
    cache.dispose();
    expect(code(() => cache.append(1, t3(2, 1, 32), t3(2, 1, 32)))).toBe('XqStateError:E_STATE');
    expect(code(() => cache.memory())).toBe('XqStateError:E_STATE');
    expect(code(() => cache.seqLength(0))).toBe('XqStateError:E_STATE');
    expect(code(() => cache.dequantize(0))).toBe('XqStateError:E_STATE');
    cache.dispose(); // idempotent
  });
});

describe('bad configuration', () => {
  const s = { layers: 8, kvHeads: 2, headDim: 64 };
  it('unknown preset lists the known ids', () => {
    try {
      createKvCache('kivi-3', s);
      expect.unreachable();
    } catch (e) {
      expect(XqError.isInstance(e) && e.code).toBe('E_STRATEGY_UNKNOWN');
      expect(String((e as Error).message)).toContain('xquant-1.38');
      expect(String((e as Error).message)).toContain('kivi-2');
    }
    expect(strategyIds()).toEqual(expect.arrayContaining(['full', 'kivi', 'asymkv', 'xquant', 'kivi-2', 'kivi-1', 'asymkv-1.5', 'xquant-1.38', 'xquant-nocal', 'xquant-noshare', 'xquant-k-share']));
  });
  it('invalid options throw typed errors', () => {
    expect(code(() => createKvCache('kivi-2', s, { residualLength: 40 }))).toBe('XqConfigError:E_RESIDUAL'); // not a multiple of 32
    expect(code(() => createKvCache('kivi-2', s, { residualLength: 0 }))).toBe('XqConfigError:E_RESIDUAL');
    expect(code(() => createKvCache('kivi-2', s, { groupSize: 48 }))).toBe('XqConfigError:E_RESIDUAL'); // R=128 not multiple of 48
    expect(code(() => createKvCache('kivi-2', { ...s, headDim: 48 }, { groupSize: 32 }))).toBe('XqConfigError:E_GROUP_SIZE');
    expect(code(() => createKvCache('kivi-2', s, { bits: 2 } as never))).toBe('XqConfigError:E_CONFIG'); // presets fix bits
    expect(code(() => createKvCache('kivi-2', s, { precision: 'bf16' as never }))).toBe('XqConfigError:E_CONFIG');
    expect(code(() => kivi({ bits: 3 as never }))).toBe('XqConfigError:E_BITS');
    expect(code(() => createKvCache('asymkv', s, { keyBits: [2, 2], valueBits: 1 }))).toBe('XqConfigError:E_PLAN');
    expect(code(() => createKvCache('xquant', s, { keyBits: [2, 2, 2, 2, 4, 2, 2, 2], keyShareFrom: 4 }))).toBe('XqConfigError:E_SHARE_BITS_MISMATCH');
    expect(code(() => xquant({ eta: { 1: 0.7 } }))).toBe('XqConfigError:E_CONFIG');
    expect(code(() => createKvCache('kivi-2', { ...s, layers: 0 }))).toBe('XqShapeError:E_SHAPE');
    expect(code(() => createKvCache('full', { ...s, maxTokens: -1 }))).toBe('XqShapeError:E_SHAPE');
    expect(code(() => createKvCache({ specificationVersion: 'v2', id: 'x', options: {}, createCache: () => null } as never, s))).toBe('XqConfigError:E_STRATEGY_VERSION');
    expect(code(() => registerStrategy('kivi', () => kivi({ bits: 2 })))).toBe('XqConfigError:E_CONFIG'); // taken
    expect(code(() => resolveStrategy('nope'))).toBe('XqConfigError:E_STRATEGY_UNKNOWN');
  });
  it('NaN in keys is reported with its position', () => {
    const cache = createKvCache('kivi-2', { layers: 1, kvHeads: 1, headDim: 32 }, { residualLength: 32 });
    const k = randn(32 * 3, 1);
    k[32 + 5] = NaN;
    try {
      cache.prefill(0, tf.tensor3d(k, [1, 3, 32]), tf.tensor3d(randn(96, 2), [1, 3, 32]));
      expect.unreachable();
    } catch (e) {
      expect(XqError.isInstance(e) && e.code).toBe('E_NON_FINITE');
      expect((e as Error).message).toContain('token 1, channel 5');
    }
  });
});
