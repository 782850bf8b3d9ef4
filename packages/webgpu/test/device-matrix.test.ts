import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import { createKvCache } from '@xquant/tfjs';
import { DeviceKvCache, type DeviceQuantizedConfig } from '../src/index.js';
import { matrixDecodeSource, matrixSharedBytes, matrixUnsupported } from '../src/device/matrix-attention-wgsl.js';
import { buffer, compare, device, gpu, identityRope, reason } from './device-compare.js';

// The matrix kernel (tuning `matrix`) on lavapipe: no subgroup matrices there, so `'emulate'` runs the same kernel with
// the 16 × 8 × 16 products written as loops over the same workgroup-memory tiles; everything else (decode of the codes
// into f16 tiles, Q′ and P′, the bias and zero-point sums, softmax, rings, chunking, partials) is the real kernel's.
const emulate = { matrix: 'emulate' as const };

describe.skipIf(!gpu)(`device cache, matrix kernel (${reason ?? 'lavapipe'})`, () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });
  it('xquant-1.38 and kivi-2 over two chunks (300 positions), GQA 4 and 7 heads per KV head, head dims 64 and 32: the CPU cache\'s numbers within f16 rounding', async () => {
    if (!device!.features.has('subgroups') || !device!.features.has('shader-f16')) return;
    const xq = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32 }, qHeads: 8, kvHeads: 2, tuning: emulate }, 300, 2);
    console.log('matrix emulated xquant d64', xq.maxRel);
    expect(xq.maxRel).toBeLessThan(5e-3);
    const kivi = await compare({ name: 'kivi-2', preset: 'kivi-2', options: { residualLength: 32 }, qHeads: 14, kvHeads: 2, tuning: emulate }, 280, 2);
    console.log('matrix emulated kivi d64 rep7', kivi.maxRel);
    expect(kivi.maxRel).toBeLessThan(5e-3);
    const xq32 = await compare({ name: 'xquant', preset: 'xquant-1.38', options: { residualLength: 32 }, qHeads: 4, kvHeads: 1, tuning: emulate }, 270, 2, 32);
    console.log('matrix emulated xquant d32', xq32.maxRel);
    expect(xq32.maxRel).toBeLessThan(5e-3);
  }, 900_000);
});
