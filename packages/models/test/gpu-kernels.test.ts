import { describe, expect, test } from 'vitest';
import { matvecSource, type MatvecSpec } from '../src/gpu/kernels.js';

// The subgroup reductions' numbers are checked on lavapipe against the float64 reference (gpu-decoder.test.ts); here,
// without a GPU, what they change in the matrix-vector kernel's structure.
describe('matrix-vector kernel with subgroup reductions', () => {
  const spec: MatvecSpec = { inFeatures: 2048, rows: 3072, rowsPerGroup: 1, rmsNormEps: 1e-5, bias: false, epilogue: 'store' };
  const count = (src: string, what: string) => src.split(what).length - 1;

  test('32-wide subgroups: one barrier for the norm instead of nine, five shuffles per row and one partial per row', () => {
    const plain = matvecSource(spec);
    const sg = matvecSource({ ...spec, subgroupSize: 32 });
    expect(count(plain, 'subgroup')).toBe(0);
    expect(count(sg, 'subgroupAdd(')).toBe(1);
    expect(count(sg, 'subgroupShuffleXor(')).toBe(5);
    // the norm's tree (a barrier after the stores, one per step: 1 + 8 in the source's loop) → one; the row sums keep one
    expect(count(plain, 'workgroupBarrier()')).toBe(4);
    expect(count(sg, 'workgroupBarrier()')).toBe(3);
    expect(sg).toContain('for (var i = 0u; i < 1u; i = i + 1u)');
    expect(plain).toContain('for (var i = 0u; i < 32u; i = i + 1u)');
  });

  test('prefetchWeights: the first batch of weight loads comes before the norm prologue; without a norm nothing changes', () => {
    const src = matvecSource({ ...spec, prefetchWeights: true });
    const firstBarrier = src.indexOf('workgroupBarrier()');
    const firstLoad = src.indexOf(' = W[');
    expect(firstLoad).toBeGreaterThan(0);
    expect(firstLoad).toBeLessThan(firstBarrier);
    // 8 columns × 1 row in the first batch, before the norm; the loop then starts at the second batch (none left here)
    expect(count(src.slice(0, firstBarrier), ' = W[')).toBe(8);
    expect(src).toContain('for (var kb = 8u; kb < 8u;');
    expect(matvecSource(spec).indexOf(' = W[')).toBeGreaterThan(matvecSource(spec).indexOf('workgroupBarrier()'));
    const plain = { ...spec, rmsNormEps: undefined, epilogue: 'residual' as const };
    expect(matvecSource({ ...plain, prefetchWeights: true })).toBe(matvecSource(plain));
  });

  test('8-wide subgroups (lavapipe): three shuffle steps per row, four partials; SwiGLU rows in pairs', () => {
    const sg = matvecSource({ ...spec, rowsPerGroup: 2, epilogue: 'swiglu', subgroupSize: 8 });
    // 2 output rows × 2 weight rows (gate, up) per group, 3 steps each
    expect(count(sg, 'subgroupShuffleXor(')).toBe(3 * 4);
    expect(sg).toContain('for (var i = 0u; i < 4u; i = i + 1u)');
    expect(() => matvecSource({ ...spec, subgroupSize: 24 })).toThrow(/power of two/);
  });
});
