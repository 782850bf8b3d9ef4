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

  test('prefetchWeights: the first batch of weight loads before the norm prologue, each next one before the current products', () => {
    const src = matvecSource({ ...spec, prefetchWeights: true });
    const firstBarrier = src.indexOf('workgroupBarrier()');
    // 8 columns × 1 row in the first batch, declared as registers before the norm's first barrier
    expect(count(src.slice(0, firstBarrier), ' = W[')).toBe(8);
    expect(src.slice(0, firstBarrier)).toContain('var fw0_0 = W[');
    // in the loop: the current batch from the registers, the next one assigned to them before the products
    const loop = src.slice(src.indexOf('for (var kb = 0u;'));
    expect(loop.indexOf('let w0_0 = fw0_0;')).toBeLessThan(loop.indexOf('fw0_0 = W['));
    expect(loop.indexOf('fw7_0 = W[')).toBeLessThan(loop.indexOf('a0 = a0 +'));
    // the default kernel has none of it
    expect(matvecSource(spec)).not.toContain('fw0_0');
    // without a norm (gate/up's 4 batches of 2 columns × 4 rows, here a residual product): one batch ahead as well
    const down = matvecSource({ inFeatures: 8192, rows: 2048, rowsPerGroup: 1, bias: false, epilogue: 'residual', prefetchWeights: true });
    expect(down).toContain('min(kb + 8u, 24u)');
  });

  test('8-wide subgroups (lavapipe): three shuffle steps per row, four partials; SwiGLU rows in pairs', () => {
    const sg = matvecSource({ ...spec, rowsPerGroup: 2, epilogue: 'swiglu', subgroupSize: 8 });
    // 2 output rows × 2 weight rows (gate, up) per group, 3 steps each
    expect(count(sg, 'subgroupShuffleXor(')).toBe(3 * 4);
    expect(sg).toContain('for (var i = 0u; i < 4u; i = i + 1u)');
    expect(() => matvecSource({ ...spec, subgroupSize: 24 })).toThrow(/power of two/);
  });
});
