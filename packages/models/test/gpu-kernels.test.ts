import { describe, expect, test } from 'vitest';
import { matmulRowsSource, matvecRowsPerWorkgroup, matvecSource, matvecSplit, type MatvecSpec } from '../src/gpu/kernels.js';

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

// Which decode products split their rows over several thread groups (numbers: gpu-matvec.test.ts on lavapipe).
describe('matrix-vector kernel: splitK', () => {
  const shape = (inFeatures: number, rows: number, rowsPerGroup: number, epilogue: MatvecSpec['epilogue']): MatvecSpec => ({ inFeatures, rows, rowsPerGroup, bias: false, epilogue });
  test('Llama-3.2-1B shapes: down split 4 ways (8 weight loads a thread instead of 32); q/k/v and gate/up (norm prologues), o (8 loads already) and the 4008-workgroup output head not', () => {
    const norm = { rmsNormEps: 1e-5 };
    const qkv = { ...shape(2048, 3072, 1, 'store'), ...norm };
    const o = shape(2048, 2048, 1, 'residual');
    const gateUp = { ...shape(2048, 8192, 2, 'swiglu'), ...norm };
    const down = shape(8192, 2048, 1, 'residual');
    const head = { ...shape(2048, 128256, 4, 'store'), ...norm };
    expect([qkv, o, gateUp, down, head].map(matvecSplit)).toEqual([1, 1, 1, 4, 1]);
    // gate/up without its norm would split 4 ways (32 loads a thread)
    expect(matvecSplit(shape(2048, 8192, 2, 'swiglu'))).toBe(4);
    // Qwen2.5-0.5B's down: 4864 features, 19 column blocks → 4 ways (5 blocks a group)
    expect(matvecSplit(shape(4864, 896, 1, 'residual'))).toBe(4);
    // rows per workgroup: 8 groups ÷ splitK × rows per group
    expect(matvecRowsPerWorkgroup({ ...shape(2048, 8192, 2, 'swiglu'), splitK: 4 })).toBe(4);
    expect(matvecRowsPerWorkgroup({ ...down, splitK: 4 })).toBe(2);
    expect(matvecRowsPerWorkgroup(down)).toBe(8);
    // a 64K-feature row: 256 blocks, 8 ways at most
    expect(matvecSplit(shape(65536, 64, 1, 'store'))).toBe(8);
  });
  test('the split kernel reads column block (kb + u) · splitK + slice, masks the blocks past the row, and sums splitK · P partials per row', () => {
    const src = matvecSource({ ...shape(8192, 2048, 1, 'residual'), splitK: 4 });
    expect(src).toContain('let slice = grp % 4u;');
    expect(src).toContain('let r0 = (wid * 2u + grp / 4u) * 1u;');
    expect(src).toContain('min(lane + ((kb + 0u) * 4u + slice) * 32u, 1023u)');
    expect(src).toContain('for (var kb = 0u; kb < 8u; kb = kb + 8u)');
    expect(src).toContain('for (var i = 0u; i < 128u; i = i + 1u) { v = v + red[((gr * 4u + i / 32u) * 1u + rr) * 32u + i % 32u]; }');
    expect(() => matvecSource({ ...shape(2048, 64, 1, 'store'), splitK: 3 })).toThrow(/splitK must be 1, 2, 4 or 8/);
  });
});

// The matrix-unit prefill product runs on lavapipe only emulated (no cooperative matrices there): what the hardware
// source holds, and that the emulation differs from it only where the products are.
describe('prefill product on the matrix units (source)', () => {
  const spec: MatvecSpec = { inFeatures: 2048, rows: 8192, rowsPerGroup: 1, rmsNormEps: 1e-5, bias: true, epilogue: 'swiglu' };
  const count = (src: string, what: string) => src.split(what).length - 1;

  test('16 × 8 × 16 f16 → f32 tiles: per 32-feature stage, two left loads per subgroup, each times four token tiles and both input parts; no branch around them', () => {
    const src = matmulRowsSource(spec, false);
    expect(src).toContain('enable chromium_experimental_subgroup_matrix;');
    expect(src).toContain('alias ML = subgroup_matrix_left<f16, 16, 16>;');
    expect(count(src, 'subgroupMatrixLoad<ML>')).toBe(2);
    expect(count(src, 'subgroupMatrixMultiplyAccumulate(')).toBe(16);
    expect(count(src, 'subgroupMatrixStore(')).toBe(4);
    // the subgroup is the hardware's; the matrix operations sit in no conditional
    expect(src).toContain('let sg = sgid;');
    expect(src).not.toMatch(/if \([^)]*\) \{\s*let w0 = subgroupMatrixLoad/);
    // the split by a bit mask (a compiler may fold v − f32(f16(v)) to zero)
    expect(src).toContain('& vec4<u32>(0xffffe000u)');
  });

  test('the emulation: the same prologue, staging and epilogue; only the product lines and the subgroup index differ', () => {
    const hw = matmulRowsSource(spec, false).split('\n');
    const em = matmulRowsSource(spec, true).split('\n');
    const isProduct = (l: string) => /subgroupMatrix|acc|alias |enable |requires |let sg = |fn main|let w |for \(var (nt|i|k) = 0u; (nt|i|k) < (min|4u)|let (el|r|tc) = |var a = 0\.0|a = a \+|^\s*\}$|^\{$/.test(l);
    expect(hw.filter((l) => !isProduct(l))).toEqual(em.filter((l) => !isProduct(l)));
    expect(em.join('\n')).not.toContain('subgroupMatrix');
  });
});
