import * as tf from '@tensorflow/tfjs-core';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import {
  createKvCache,
  getKernel,
  jsPackedAttentionKernel,
  registerAttentionKernel,
  registerKernel,
  registeredKernels,
  registerStrategy,
  strategyIds,
  unregisterKernel,
  type AttentionKernel,
} from '@xquant/tfjs';
import { codeOf, randn, useCpu } from './helpers.js';

beforeAll(useCpu);

describe('registries on globalThis', () => {
  it('live under Symbol.for keys: kernels keyed backend/name, strategies by id, the built-ins registered on load', () => {
    const g = globalThis as { [k: symbol]: Map<string, unknown> | undefined };
    const kernels = g[Symbol.for('@xquant/tfjs/kernels/v1')]!;
    const strategies = g[Symbol.for('@xquant/tfjs/strategies/v1')]!;
    expect([...kernels.keys()]).toEqual(expect.arrayContaining(['cpu/attention', 'wasm/attention', 'tensorflow/attention']));
    expect(kernels.get('cpu/attention')).toBe(jsPackedAttentionKernel);
    expect(kernels.has('webgpu/attention')).toBe(false); // @xquant/webgpu registers it, not this package
    expect([...strategies.keys()]).toEqual(expect.arrayContaining(['full', 'kivi', 'asymkv', 'xquant', 'rotated', 'planned', 'kivi-2', 'xquant-1.38']));
    expect(registeredKernels('attention').map((r) => r.backend)).toEqual(expect.arrayContaining(['cpu', 'wasm', 'tensorflow']));
  });

  it('a second copy of the package (as a dual ESM/CJS install loads) shares them and replaces nothing', async () => {
    const mine: AttentionKernel = { id: 'mine', attend: (v, q) => jsPackedAttentionKernel.attend(v, q) };
    const previous = registerAttentionKernel('cpu', mine);
    try {
      registerStrategy('registry-test', (o) => createKvCacheStrategy(o));
      vi.resetModules();
      const copy = (await import('../src/index.js')) as typeof import('../src/index.js');
      expect(copy.createKvCache).not.toBe(createKvCache); // really another module instance
      expect(copy.strategyIds()).toContain('registry-test');
      expect(copy.attentionKernelFor('cpu')).toBe(mine); // its registerBuiltins() on load kept ours
      copy.registerStrategy('registry-test-2', (o) => createKvCacheStrategy(o));
      expect(strategyIds()).toContain('registry-test-2');
    } finally {
      registerAttentionKernel('cpu', previous!);
    }
  });

  it('a missing kernel is a typed E_KERNEL_MISSING naming the backends that have one; bad registrations are E_CONFIG', async () => {
    expect(codeOf(() => getKernel('no-such-backend', 'attention'))).toBe('E_KERNEL_MISSING');
    expect(() => getKernel('webgpu', 'attention')).toThrow(/registered on: .*cpu.*registerWebGpuKernels/);
    expect(codeOf(() => registerKernel('', 'attention', jsPackedAttentionKernel))).toBe('E_CONFIG');
    expect(codeOf(() => registerAttentionKernel('cpu', {} as AttentionKernel))).toBe('E_CONFIG');
    // a quantized cache on a tfjs backend nobody registered a kernel for fails at attend, with that error
    tf.registerBackend('cpu-without-xq', () => new MathBackendCPU());
    tf.copyRegisteredKernels('cpu', 'cpu-without-xq');
    await tf.setBackend('cpu-without-xq');
    try {
      const cache = createKvCache('kivi-2', { layers: 1, kvHeads: 1, headDim: 32 }, { residualLength: 32 });
      cache.prefill(0, tf.tensor3d(randn(32 * 40, 1), [1, 40, 32]), tf.tensor3d(randn(32 * 40, 2), [1, 40, 32]));
      expect(codeOf(() => cache.attend(0, tf.tensor3d(randn(32, 3), [1, 1, 32])))).toBe('E_KERNEL_MISSING');
      registerAttentionKernel('cpu-without-xq', jsPackedAttentionKernel);
      expect(cache.attend(0, tf.tensor3d(randn(32, 3), [1, 1, 32])).shape).toEqual([1, 1, 32]);
      cache.dispose();
    } finally {
      unregisterKernel('cpu-without-xq', 'attention');
      await tf.setBackend('cpu');
      tf.removeBackend('cpu-without-xq');
    }
  });
});

function createKvCacheStrategy(o?: Record<string, unknown>) {
  return { specificationVersion: 'v1' as const, id: 'registry-test', options: o ?? {}, createCache: (s: { layers: number; kvHeads: number; headDim: number }) => createKvCache('full', s) };
}
