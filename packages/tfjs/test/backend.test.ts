import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { XqError } from '@xquant/quant';
import { createKvCache, isMissingNativeBinding, plainAttention, selectBackend } from '@xquant/tfjs';
import { kvLike, maxAbs, maxAbsDiff, randn } from './helpers.js';

describe('selectBackend', () => {
  it('detects the missing native binding, tries only one native package, and reports what runs', async () => {
    const sel = await selectBackend({ prefer: ['tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'] });
    // tfjs-node(-gpu) cannot be built here (no libtensorflow download): both are skipped with a reason
    expect(sel.skipped.map((s) => s.name)).toEqual(['tensorflow-gpu', 'tensorflow']);
    expect(sel.skipped[0]!.why).toMatch(/tfjs-node-gpu (is not installed|is installed but its native binding)/);
    expect(sel.skipped[1]!.why).toMatch(/not tried|not installed/);
    expect(sel.backend).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
    expect(sel.reason).toMatch(/wasm/);
  });

  it('an explicit override that is available wins; an unknown name is a typed error', async () => {
    const sel = await selectBackend({ prefer: 'cpu' });
    expect(sel).toMatchObject({ backend: 'cpu', skipped: [] });
    expect(tf.getBackend()).toBe('cpu');
    await expect(selectBackend({ prefer: 'webgl' as never })).rejects.toSatisfy((e: unknown) => XqError.isInstance(e) && e.code === 'E_CONFIG');
    await expect(selectBackend({ prefer: 'tensorflow' })).rejects.toSatisfy((e: unknown) => XqError.isInstance(e) && e.code === 'E_BACKEND_UNAVAILABLE');
  });

  it('classifies the native-binding failure modes', () => {
    expect(isMissingNativeBinding({ code: 'MODULE_NOT_FOUND', message: "Cannot find module '@tensorflow/tfjs-node'" })).toBe(true);
    expect(isMissingNativeBinding({ code: 'ERR_MODULE_NOT_FOUND', message: 'x' })).toBe(true);
    expect(
      isMissingNativeBinding(new Error('The Node.js native addon module (tfjs_binding.node) can not be found at path: /x/lib/napi-v8/tfjs_binding.node. Please run command')),
    ).toBe(true);
    expect(isMissingNativeBinding(new Error('segfault'))).toBe(false);
  });

  it.each(['kivi-2', 'xquant-1.38'])('%s on wasm gives the same attention as on cpu', async (id) => {
    const H = 2, D = 64, P = 150, qH = 8;
    const k = kvLike(H, P + 1, D, 3);
    const v = randn(H * (P + 1) * D, 4);
    const q = randn(qH * D, 5);
    const outs: Float32Array[] = [];
    for (const b of ['cpu', 'wasm'] as const) {
      await selectBackend({ prefer: b });
      const cache = createKvCache(id, { layers: 2, kvHeads: H, headDim: D }, { residualLength: 64 });
      const kt = tf.tensor3d(k, [H, P + 1, D]);
      const vt = tf.tensor3d(v, [H, P + 1, D]);
      for (const l of [0, 1]) {
        cache.prefill(l, tf.slice(kt, [0, 0, 0], [H, P, D]), tf.slice(vt, [0, 0, 0], [H, P, D]));
        cache.append(l, tf.slice(kt, [0, P, 0], [H, 1, D]), tf.slice(vt, [0, P, 0], [H, 1, D]));
      }
      cache.attend(0, tf.tensor3d(q, [qH, 1, D])).dispose(); // layers run in order: layer 1 reads layer 0's value codes
      const { keys, values } = cache.dequantize(1); // what attend(1) sees (it flushes afterwards)
      outs.push((await cache.attend(1, tf.tensor3d(q, [qH, 1, D])).data()) as Float32Array);
      const plain = (await plainAttention(tf.tensor3d(q, [qH, 1, D]), keys, values).data()) as Float32Array;
      expect(maxAbsDiff(outs[outs.length - 1]!, plain)).toBeLessThan(2e-3 * maxAbs(plain) + 1e-5);
    }
    expect(maxAbsDiff(outs[0]!, outs[1]!)).toBeLessThan(1e-5 * maxAbs(outs[0]!) + 1e-6);
  });
});
