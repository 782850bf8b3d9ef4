import { afterAll, describe, expect, it } from 'vitest';
import { bitsToHalf, halfToBits } from '@xquant/quant';
import { KernelCompiler } from '@xquant/webgpu';
import { MATMUL_TOKENS, matmulRowsSource, matmulUnsupported, matmulWorkgroups, matvecRowsPerWorkgroup, matvecRowsSource, matvecRowsTokens, matvecSource, type MatvecSpec } from '../src/gpu/kernels.js';
import { openGpu } from './support/gpu.js';
import { randn } from './support/tiny.js';

const { gpu, reason } = await openGpu();

const MV = ['read-only-storage', 'read-only-storage', 'storage', 'read-only-storage', 'read-only-storage'] as const;
const MVB = [...MV, 'uniform'] as const;

/**
 * Run one matrix-vector kernel on random data; returns the largest error over the float64 reference, relative to Σ|w·x|.
 * `batch`: the prefill form over that many rows of x (y has two more rows, which must come back unchanged);
 * `matrix`: that form on the matrix units, emulated (`matmulRowsSource`), with rows 1, 2 and 3 of x scaled by 1e5,
 * 1e-6 and 0 (beyond fp16's range, deep in its subnormals, all zero).
 */
async function check(spec: MatvecSpec, seed: number, batch?: number, matrix = false): Promise<number> {
  const dev = gpu!.device;
  // (roughly normal, about ±4 at most)
  const r = randn(seed);
  const IN = spec.inFeatures;
  const wRows = spec.epilogue === 'swiglu' ? 2 * spec.rows : spec.rows;
  // fp16 weights as the kernel reads them: row-major halves, two per u32
  const w = Float64Array.from({ length: wRows * IN }, () => bitsToHalf(halfToBits(r() * 0.12)));
  const packed = new Uint32Array((wRows * IN) / 2);
  for (let i = 0; i < packed.length; i++) packed[i] = (halfToBits(w[2 * i]!) | (halfToBits(w[2 * i + 1]!) << 16)) >>> 0;
  const T = batch ?? 1;
  const yRows = batch === undefined ? 1 : batch + 2;
  const x = Float32Array.from({ length: IN * T }, () => r() * 0.5);
  if (matrix) {
    for (const [t, f] of [[1, 1e5], [2, 1e-6], [3, 0]] as const) for (let i = t * IN; i < (t + 1) * IN && t < T; i++) x[i] = Math.fround(x[i]! * f);
  }
  const g = Float32Array.from({ length: IN }, () => 0.5 + r() * 0.06);
  const bias = Float32Array.from({ length: wRows }, () => r() * 0.25);
  const y0 = Float32Array.from({ length: spec.rows * yRows }, () => r() * 0.25);
  const want: number[] = [];
  const scale: number[] = [];
  for (let t = 0; t < T; t++) {
    // the reference in float64 (of the float32 inputs)
    let xin = Array.from(x.subarray(t * IN, (t + 1) * IN), Number);
    if (spec.rmsNormEps !== undefined) {
      const ms = xin.reduce((s, v) => s + v * v, 0) / IN;
      const inv = 1 / Math.sqrt(ms + spec.rmsNormEps);
      xin = xin.map((v, i) => v * inv * g[i]!);
    }
    const dotRow = (row: number) => {
      let s = 0;
      let m = 0;
      for (let i = 0; i < IN; i++) {
        s += w[row * IN + i]! * xin[i]!;
        m += Math.abs(w[row * IN + i]! * xin[i]!);
      }
      // (m: the magnitude float32 rounds against — every term of the sum, the bias included)
      return { s: s + (spec.bias ? bias[row]! : 0), m: m + (spec.bias ? Math.abs(bias[row]!) : 0) };
    };
    for (let o = 0; o < spec.rows; o++) {
      if (spec.epilogue === 'swiglu') {
        const ga = dotRow(2 * o);
        const up = dotRow(2 * o + 1);
        want.push((ga.s / (1 + Math.exp(-ga.s))) * up.s);
        scale.push((ga.m + Math.abs(ga.s)) * (up.m + Math.abs(up.s)) + 1e-6);
      } else {
        const d = dotRow(o);
        want.push(spec.epilogue === 'residual' ? y0[t * spec.rows + o]! + d.s : d.s);
        scale.push(d.m + (spec.epilogue === 'residual' ? Math.abs(y0[t * spec.rows + o]!) : 0) + 1e-6);
      }
    }
  }
  const buf = (data: ArrayBufferView, usage: number) => {
    const b = dev.createBuffer({ size: Math.max(16, Math.ceil(data.byteLength / 16) * 16), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | usage });
    dev.queue.writeBuffer(b, 0, data.buffer, data.byteOffset, data.byteLength);
    return b;
  };
  const bufs = [buf(packed, 0), buf(x, 0), buf(y0, GPUBufferUsage.COPY_SRC), buf(g, 0), buf(bias, 0)];
  if (batch !== undefined) {
    // the model step: pos, vocab, temperature, seed, rows
    const st = dev.createBuffer({ size: 32, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    dev.queue.writeBuffer(st, 0, new Uint32Array([0, 0, 0, 0, batch, 0, 0, 0]));
    bufs.push(st);
  }
  const layout = batch === undefined ? MV : MVB;
  const k = new KernelCompiler(dev);
  const pipe = await k.pipeline(batch === undefined ? matvecSource(spec) : matrix ? matmulRowsSource(spec, true) : matvecRowsSource(spec), layout, 'matvec under test');
  const bg = dev.createBindGroup({ layout: k.layout(layout), entries: bufs.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  const read = dev.createBuffer({ size: bufs[2]!.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = dev.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, bg);
  if (batch === undefined) {
    const wgs = Math.ceil(spec.rows / matvecRowsPerWorkgroup(spec));
    pass.dispatchWorkgroups(Math.min(wgs, 65535), Math.ceil(wgs / 65535));
  } else if (matrix) {
    pass.dispatchWorkgroups(matmulWorkgroups(spec), Math.ceil(batch / MATMUL_TOKENS));
  } else {
    pass.dispatchWorkgroups(Math.ceil(spec.rows / 8), Math.ceil(batch / matvecRowsTokens(spec)));
  }
  pass.end();
  enc.copyBufferToBuffer(bufs[2]!, 0, read, 0, read.size);
  dev.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const got = new Float32Array(read.getMappedRange().slice(0));
  read.destroy();
  for (const b of bufs) b.destroy();
  let worst = 0;
  for (let o = 0; o < spec.rows * T; o++) worst = Math.max(worst, Math.abs(got[o]! - want[o]!) / scale[o]!);
  // rows past the batch are not written
  for (let o = spec.rows * T; o < spec.rows * yRows; o++) if (got[o] !== y0[o]) return Infinity;
  return worst;
}

describe.skipIf(!gpu)(`matrix-vector kernels on the device vs float64 — ${reason}`, () => {
  afterAll(() => gpu?.device.destroy());
  const subgroupSize = (() => {
    const info = gpu?.adapter.info;
    const ok = gpu?.device.features.has('subgroups') && info?.subgroupMinSize !== undefined && info.subgroupMinSize === info.subgroupMaxSize;
    return ok ? info!.subgroupMinSize : undefined;
  })();
  // several weight batches per thread (in 8192: 32 column blocks of 8; in 2056: 9 blocks of 2, the last one ragged),
  // norm'd and plain products, every epilogue
  const specs: MatvecSpec[] = [
    { inFeatures: 2048, rows: 96, rowsPerGroup: 1, rmsNormEps: 1e-5, bias: true, epilogue: 'store' },
    { inFeatures: 8192, rows: 40, rowsPerGroup: 1, bias: false, epilogue: 'residual' },
    { inFeatures: 2056, rows: 52, rowsPerGroup: 2, rmsNormEps: 1e-6, bias: true, epilogue: 'swiglu' },
    { inFeatures: 1032, rows: 70, rowsPerGroup: 4, rmsNormEps: 1e-5, bias: false, epilogue: 'store' },
  ];
  const variants: { name: string; extra: Partial<MatvecSpec> }[] = [
    { name: 'plain', extra: {} },
    { name: 'prefetchWeights', extra: { prefetchWeights: true } },
    ...(subgroupSize ? [{ name: 'subgroups', extra: { subgroupSize } }, { name: 'both', extra: { subgroupSize, prefetchWeights: true } }] : []),
  ];
  it(`every epilogue, with and without the norm, bias, several and ragged weight batches: ${variants.map((v) => v.name).join(', ')} within float32 rounding of float64`, async () => {
    for (const [i, spec] of specs.entries()) {
      for (const v of variants) {
        const err = await check({ ...spec, ...v.extra }, 11 + i);
        expect(err, `${v.name} ${JSON.stringify(spec)}`).toBeLessThan(1e-5);
      }
    }
  }, 600_000);
  it(`splitK 2, 4, 8 (a row's column blocks shared by that many thread groups; block counts that do not divide, ragged rows, rows past the last workgroup's): every epilogue, norm and bias, ${variants.map((v) => v.name).join(', ')}, within float32 rounding of float64`, async () => {
    const split: MatvecSpec[] = [
      // 32 column blocks: 16 per group; 16 blocks: 2 per group (with the norm)
      { inFeatures: 8192, rows: 45, rowsPerGroup: 1, bias: true, epilogue: 'residual', splitK: 2 },
      { inFeatures: 4096, rows: 21, rowsPerGroup: 1, rmsNormEps: 1e-5, bias: false, epilogue: 'store', splitK: 8 },
      // 8 blocks over 4 groups, two W rows each (gate, up)
      { inFeatures: 2048, rows: 26, rowsPerGroup: 2, rmsNormEps: 1e-6, bias: true, epilogue: 'swiglu', splitK: 4 },
      // 9 blocks (the last ragged) over 4 and 8 groups: some groups get one block fewer
      { inFeatures: 2056, rows: 19, rowsPerGroup: 1, bias: false, epilogue: 'residual', splitK: 4 },
      { inFeatures: 2056, rows: 11, rowsPerGroup: 4, rmsNormEps: 1e-5, bias: true, epilogue: 'store', splitK: 8 },
      // fewer blocks (2) than groups (4): two groups of each row read nothing
      { inFeatures: 264, rows: 17, rowsPerGroup: 1, bias: true, epilogue: 'swiglu', splitK: 4 },
    ];
    for (const [i, spec] of split.entries()) {
      for (const v of variants) {
        const err = await check({ ...spec, ...v.extra }, 71 + i);
        expect(err, `${v.name} ${JSON.stringify(spec)}`).toBeLessThan(1e-5);
      }
    }
  }, 600_000);
  it('the prefill form over the rows of a batch (8 tokens per workgroup, 4 with SwiGLU): every epilogue, with and without the norm and bias, full and partial tiles, within float32 rounding of float64; rows past the batch untouched', async () => {
    for (const [i, spec] of specs.entries()) {
      for (const batch of [1, 5, 8, 13]) {
        const err = await check(spec, 31 + i, batch);
        expect(err, `batch ${batch} ${JSON.stringify(spec)}`).toBeLessThan(1e-5);
      }
    }
  }, 600_000);
  it.skipIf(!gpu?.device.features.has('shader-f16'))("the prefill form on the matrix units (prefillMatrix 'emulate': 64 weight rows × 32 tokens per workgroup, inputs split into two f16 parts and scaled per token): every epilogue, norm and bias, partial row and token tiles, inputs beyond fp16's range, subnormal and zero, within float32 rounding of float64; rows past the batch untouched", async () => {
    const specs: MatvecSpec[] = [
      { inFeatures: 2048, rows: 96, rowsPerGroup: 1, rmsNormEps: 1e-5, bias: true, epilogue: 'store' },
      { inFeatures: 1024, rows: 48, rowsPerGroup: 1, bias: false, epilogue: 'residual' },
      { inFeatures: 512, rows: 56, rowsPerGroup: 1, rmsNormEps: 1e-6, bias: true, epilogue: 'swiglu' },
      { inFeatures: 96, rows: 80, rowsPerGroup: 1, bias: true, epilogue: 'residual' },
    ];
    for (const [i, spec] of specs.entries()) {
      expect(matmulUnsupported(spec)).toBeNull();
      for (const batch of [1, 5, 32, 45]) {
        const err = await check(spec, 51 + i, batch, true);
        // (measured ≤ 2e-6, from the float32 bias sum of the 1e-6 row; with the hi part alone, as when a compiler folds
        // the split away, 2.3e-5 already at batch 1)
        expect(err, `batch ${batch} ${JSON.stringify(spec)}`).toBeLessThan(1e-5);
      }
    }
    expect(matmulUnsupported({ inFeatures: 1032, rows: 64, epilogue: 'store' })).toMatch(/1032 input features/);
    expect(matmulUnsupported({ inFeatures: 1024, rows: 8, epilogue: 'swiglu' })).toBeNull();
    expect(matmulUnsupported({ inFeatures: 1024, rows: 12, epilogue: 'swiglu' })).toMatch(/24 weight rows/);
    expect(matmulUnsupported({ inFeatures: 1024, rows: 12, epilogue: 'store' })).toMatch(/12 weight rows/);
  }, 600_000);
});
