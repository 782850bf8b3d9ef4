import * as tf from '@tensorflow/tfjs-core';
import { expect } from 'vitest';
import { createKvCache, type KvCache } from '@xquant/tfjs';
import { DeviceKvCache, type DeviceAttentionTuning, type DeviceCacheSpec, type DeviceQuantizedConfig } from '../src/index.js';
import { openGpu, rng } from './helpers.js';

export const { gpu, reason } = await openGpu();
export const device = gpu?.device;
/** Validation errors the device reported (a test fails on any). */
export const gpuErrors: string[] = [];
device?.addEventListener('uncapturederror', (e) => gpuErrors.push((e as GPUUncapturedErrorEvent).error.message));

/** Identity rotary table: cos 1, sin 0 for every position. */
export function identityRope(positions: number, D: number): Float32Array {
  const t = new Float32Array(positions * D);
  for (let p = 0; p < positions; p++) t.fill(1, p * D, p * D + D / 2);
  return t;
}

export function buffer(dev: GPUDevice, data: Float32Array, usage = 0): GPUBuffer {
  const b = dev.createBuffer({ size: Math.max(16, data.byteLength), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC | usage, mappedAtCreation: true });
  new Float32Array(b.getMappedRange()).set(data);
  b.unmap();
  return b;
}

export async function readF32(dev: GPUDevice, b: GPUBuffer, n: number): Promise<Float32Array> {
  const st = dev.createBuffer({ size: n * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = dev.createCommandEncoder();
  enc.copyBufferToBuffer(b, 0, st, 0, n * 4);
  dev.queue.submit([enc.finish()]);
  await st.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(st.getMappedRange().slice(0));
  st.destroy();
  return out;
}

export interface Case {
  tuning?: DeviceAttentionTuning;
  name: string;
  preset: string;
  options?: Record<string, unknown>;
  qHeads: number;
  kvHeads: number;
  /** Keys and values drawn in ±amplitude without channel offsets, queries divided by it (wide-range groups). */
  amplitude?: number;
}

/**
 * Run `steps` positions through a device cache and the CPU cache of the same configuration, position by position
 * and layer by layer, with the same random q/k/v; returns the largest relative error of the attention outputs.
 */
export async function compare(c: Case, steps: number, layers = 3, D = 64): Promise<{ maxRel: number; perStep: number[] }> {
  const dev = device!;
  const shape = { layers, kvHeads: c.kvHeads, headDim: D };
  const cpu = createKvCache(c.preset, shape, c.options ?? {}) as KvCache & { config?: DeviceQuantizedConfig };
  const spec: DeviceCacheSpec = c.preset === 'full' ? { kind: 'full' } : { kind: 'quantized', config: cpu.config! };
  const gcache = await DeviceKvCache.create(dev, { layers, qHeads: c.qHeads, kvHeads: c.kvHeads, headDim: D }, spec, { capacity: steps + 1, ...(c.tuning ? { tuning: c.tuning } : {}) });
  const width = (c.qHeads + 2 * c.kvHeads) * D;
  const qkv = buffer(dev, new Float32Array(width));
  const out = buffer(dev, new Float32Array(c.qHeads * D));
  const rope = buffer(dev, identityRope(gcache.capacity, D));
  gcache.attach({ qkv, rope, out });
  const r = rng(7);
  const chan = Float32Array.from({ length: layers * c.kvHeads * D }, (_, i) => (i % D < 2 ? 4 : 0) + (r() - 0.5));
  let maxRel = 0;
  const perStep: number[] = [];
  try {
    for (let p = 0; p < steps; p++) {
      gcache.beginPosition();
      let stepRel = 0;
      for (let l = 0; l < layers; l++) {
        const x = new Float32Array(width);
        for (let i = 0; i < width; i++) x[i] = 2 * r() - 1;
        if (c.amplitude) {
          for (let i = 0; i < width; i++) x[i] = i < c.qHeads * D ? x[i]! / c.amplitude : Math.fround(x[i]! * c.amplitude);
        } else {
          // keys with per-channel offsets (what makes per-channel quantization matter)
          for (let i = 0; i < c.kvHeads * D; i++) x[c.qHeads * D + i]! += chan[l * c.kvHeads * D + i]!;
        }
        dev.queue.writeBuffer(qkv, 0, x);
        const enc = dev.createCommandEncoder();
        const pass = enc.beginComputePass();
        gcache.encodeLayer(pass, l);
        pass.end();
        dev.queue.submit([enc.finish()]);
        const got = await readF32(dev, out, c.qHeads * D);
        const q = tf.tensor3d(x.subarray(0, c.qHeads * D), [c.qHeads, 1, D]);
        const k = tf.tensor3d(x.subarray(c.qHeads * D, (c.qHeads + c.kvHeads) * D), [c.kvHeads, 1, D]);
        const v = tf.tensor3d(x.subarray((c.qHeads + c.kvHeads) * D), [c.kvHeads, 1, D]);
        if (p === 0) cpu.prefill(l, k, v);
        else cpu.append(l, k, v);
        const o = cpu.attend(l, q);
        const want = o.dataSync() as Float32Array;
        tf.dispose([q, k, v, o]);
        let err = 0;
        let mag = 0;
        for (let i = 0; i < want.length; i++) {
          err = Math.max(err, Math.abs(got[i]! - want[i]!));
          mag = Math.max(mag, Math.abs(want[i]!));
        }
        expect(got.every(Number.isFinite)).toBe(true);
        stepRel = Math.max(stepRel, err / mag);
      }
      gcache.endPosition();
      perStep.push(stepRel);
      maxRel = Math.max(maxRel, stepRel);
    }
    expect(gpuErrors).toEqual([]);
  } finally {
    gcache.dispose();
    cpu.dispose();
    for (const b of [qkv, out, rope]) b.destroy();
  }
  return { maxRel, perStep };
}

/** A 4-layer plan mixing 1/2/4/16-bit keys and values, borrowed codes, η and least squares, with value groups of `valueGroupSize`. */
export function mixedPlan(valueGroupSize: number) {
  return {
    residualLength: 32,
    groupSize: 32,
    valueGroupSize,
    keys: [{ bits: 1, codesFrom: null }, { bits: 4, codesFrom: null }, { bits: 16, codesFrom: null }, { bits: 4, codesFrom: 1 }],
    values: [{ bits: 1, codesFrom: null }, { bits: 1, codesFrom: 0 }, { bits: 2, codesFrom: null }, { bits: 16, codesFrom: null }],
    keyCalibration: ['eta', 'eta', 'none', 'least-squares'],
    valueCalibration: ['eta', 'least-squares', { eta: 0.03 }, 'none'],
  };
}

/** Track the buffers `dev` creates and has not destroyed (`live`) until `restore()`. */
export function trackBuffers(dev: GPUDevice): { live: Set<GPUBuffer>; restore(): void } {
  const live = new Set<GPUBuffer>();
  const create = dev.createBuffer.bind(dev);
  dev.createBuffer = (d: GPUBufferDescriptor) => {
    const b = create(d);
    live.add(b);
    const destroy = b.destroy.bind(b);
    b.destroy = () => {
      live.delete(b);
      destroy();
    };
    return b;
  };
  return { live, restore: () => void (dev.createBuffer = create) };
}
