import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { XqError } from '@xquant/quant';
import { createKvCache, resolveStrategy, type KvCache, type KvCacheStrategy, type KvMemoryReport } from '@xquant/tfjs';
import { StrategyInvariantError, checkStrategy, strategyInvariants } from '@xquant/tfjs/testing';
import { useCpu } from './helpers.js';

beforeAll(useCpu);

const SMALL = { shape: { layers: 3, kvHeads: 2, headDim: 32 }, promptTokens: 40, decodeSteps: 30 };

describe('@xquant/tfjs/testing: every built-in strategy satisfies the invariants', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['full', {}],
    ['kivi-2', { residualLength: 32 }],
    ['kivi-1', { residualLength: 32 }],
    ['asymkv-1.5', { residualLength: 32 }],
    ['xquant-1.38', { residualLength: 32 }],
    ['xquant-k-share', { residualLength: 32, precision: 'fp32' }],
    ['planned', { residualLength: 32, keys: [16, 4, 2].map((bits) => ({ bits, codesFrom: null })), values: [{ bits: 2, codesFrom: null }, { bits: 1, codesFrom: null }, { bits: 1, codesFrom: 1 }], valueCalibration: 'least-squares' }],
    ['rotated', { inner: 'kivi-2', innerOptions: { residualLength: 32 } }],
  ];
  for (const [id, options] of cases) {
    it(`${id}: ${strategyInvariants(id, { ...SMALL, options }).length} invariants hold`, async () => {
      const report = await checkStrategy(id, { ...SMALL, options });
      expect(report.failed.map((f) => `${f.name}: ${f.error.message}`)).toEqual([]);
      expect(report.passed).toHaveLength(6);
    });
  }
  it('the default shape and lengths cover two residual windows (R = 128: 262 prompt tokens)', async () => {
    const report = await checkStrategy('kivi-2', { shape: { layers: 2, kvHeads: 1, headDim: 32 }, decodeSteps: 8 });
    expect(report.failed.map((f) => f.error.message)).toEqual([]);
  });
});

/** A strategy whose caches wrap a kivi-2 cache with some methods replaced: each breaks one invariant on purpose. */
function broken(id: string, patch: (inner: KvCache, held: Tensor3D[]) => Partial<KvCache>): KvCacheStrategy {
  const base = resolveStrategy('kivi-2', { residualLength: 32 });
  return {
    specificationVersion: 'v1',
    id,
    options: {},
    resolveConfig: base.resolveConfig,
    createCache(shape) {
      const inner = base.createCache(shape);
      const held: Tensor3D[] = [];
      const wrapped: KvCache = {
        get strategyId() {
          return inner.strategyId;
        },
        get shape() {
          return inner.shape;
        },
        get config() {
          return inner.config;
        },
        get plan() {
          return inner.plan;
        },
        prefill: (l, k, v) => inner.prefill(l, k, v),
        append: (l, k, v) => inner.append(l, k, v),
        attend: (l, q) => inner.attend(l, q),
        seqLength: (l) => inner.seqLength(l),
        memory: () => inner.memory(),
        dequantize: (l) => inner.dequantize(l),
        reset: () => inner.reset(),
        dispose: () => {
          inner.dispose();
        },
        ...patch(inner, held),
      };
      return wrapped;
    },
  };
}

describe('@xquant/tfjs/testing: each invariant catches the strategy that breaks it', () => {
  const failing = async (s: KvCacheStrategy) => (await checkStrategy(s, SMALL)).failed.map((f) => f.name.split(':')[0]);

  it('attend returning a wrong shape breaks "identity and shapes" (and attention)', async () => {
    const s = broken('bad-shape', (inner) => ({ attend: (l, q) => tf.tidy(() => tf.reshape(inner.attend(l, q), [q.shape[1], q.shape[0], q.shape[2]]) as Tensor3D) }));
    expect(await failing(s)).toContain('identity and shapes');
  });

  it('dequantize handing back the inputs (no quantization seen) breaks the residual schedule', async () => {
    const s = broken('never-quantizes', (inner) => {
      const full = createKvCache('full', inner.shape);
      return {
        prefill: (l, k, v) => (inner.prefill(l, k, v), full.prefill(l, k, v)),
        append: (l, k, v) => (inner.append(l, k, v), full.append(l, k, v)),
        dequantize: (l) => full.dequantize(l),
        dispose: () => (inner.dispose(), full.dispose()),
      };
    });
    expect(await failing(s)).toContain('residual schedule');
  });

  it('memory() under-reporting the codes breaks memory()', async () => {
    const s = broken('lies-about-memory', (inner) => ({
      memory: (): KvMemoryReport => {
        const m = inner.memory();
        return { ...m, codeBytes: 0, totalBytes: m.totalBytes - m.codeBytes, trueBitsPerElement: (8 * (m.totalBytes - m.codeBytes)) / Math.max(1, m.elements) };
      },
    }));
    expect(await failing(s)).toEqual(['memory()']);
  });

  it('an attend that keeps a tensor per call breaks "no tensor leaks"', async () => {
    const s = broken('leaks', (inner, held) => ({
      attend: (l, q) => {
        const out = inner.attend(l, q);
        held.push(out.clone());
        return out;
      },
    }));
    expect(await failing(s)).toEqual(['no tensor leaks over decode steps, reset() and dispose()']);
  });

  it('an attend off by 1% breaks the attention tolerance', async () => {
    const s = broken('off', (inner) => ({ attend: (l, q) => tf.tidy(() => tf.mul(inner.attend(l, q), 1.01) as Tensor3D) }));
    expect(await failing(s)).toEqual(['attend is within tolerance of plain attention over dequantize(), prefill and decode']);
  });

  it('swallowing bad input breaks the typed-errors invariant', async () => {
    const s = broken('lenient', (inner) => ({
      append: (l, k, v) => {
        try {
          inner.append(l, k, v);
        } catch {
          // ignored on purpose
        }
      },
    }));
    expect(await failing(s)).toEqual(['bad input (layer out of range, wrong K/V or query shapes) throws a typed XqError']);
  });

  it('failures are StrategyInvariantErrors with code E_INVARIANT naming the invariant; run() rejects', async () => {
    const s = broken('off', (inner) => ({ attend: (l, q) => tf.tidy(() => tf.mul(inner.attend(l, q), 1.5) as Tensor3D) }));
    const inv = strategyInvariants(s, SMALL).find((i) => i.name.startsWith('attend'))!;
    const e = await inv.run().then(() => null, (err: unknown) => err);
    expect(e).toBeInstanceOf(StrategyInvariantError);
    expect(XqError.isInstance(e) && e.code === 'E_INVARIANT').toBe(true);
    expect((e as StrategyInvariantError).invariant).toBe(inv.name);
    expect((e as Error).message).toMatch(/max \|attend − reference\| = /);
  });
});
