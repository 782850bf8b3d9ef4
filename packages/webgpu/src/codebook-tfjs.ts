/**
 * The codebook kernel of `@xquant/tfjs`'s `turboquant` cache on the tfjs WebGPU backend: key scores and value mix by
 * the WGSL kernels of {@link CodebookAttentionGpu}, on the backend's own `GPUDevice`, with each layer's codes kept on
 * the device. The cache runs the rest of attention (rotation, residual window, softmax) as tfjs ops.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor2D } from '@tensorflow/tfjs-core';
import { XqBackendError } from '@xquant/quant';
import type { CodebookKernel, CodebookTensorView } from '@xquant/tfjs';
import { CodebookAttentionGpu, type GpuCodebookKv } from './codebook.js';
import type { KernelCall } from './raw.js';

/** Device copy of one layer's keys or values, for the rows of `version`. */
interface DeviceCopy {
  version: number;
  kv: GpuCodebookKv;
}

const copies = new WeakMap<object, Map<string, DeviceCopy>>();
const providers = new WeakMap<GPUDevice, CodebookAttentionGpu>();

/** How often each kernel ran and how device copies were updated (process-wide, since load or the last reset). */
export interface WebGpuCodebookCounts {
  keyScores: number;
  valueMix: number;
  /** Whole copies made (first use, or room ran out: capacity doubles). */
  uploads: number;
  /** Updates that wrote only the new rows. */
  appends: number;
}

/** {@link webgpuCodebookKernel}'s type: the kernel with its counters. */
export interface WebGpuCodebookKernel extends CodebookKernel {
  /** Calls since load or {@link WebGpuCodebookKernel.resetCounts}. */
  readonly counts: Readonly<WebGpuCodebookCounts>;
  /** Zero the counters. */
  resetCounts(): void;
}

const counts: WebGpuCodebookCounts = { keyScores: 0, valueMix: 0, uploads: 0, appends: 0 };

function kernelsOnBackend(): CodebookAttentionGpu {
  const device = (tf.backend() as unknown as { device?: GPUDevice }).device;
  if (!device) throw new XqBackendError('E_BACKEND_UNAVAILABLE', `webgpu codebook kernel: the active tfjs backend '${tf.getBackend()}' has no GPUDevice`);
  let k = providers.get(device);
  if (!k) providers.set(device, (k = CodebookAttentionGpu.create(device)));
  return k;
}

/** The device copy of a view's rows, rebuilt when the rows changed. */
function deviceCopy(k: CodebookAttentionGpu, v: CodebookTensorView): GpuCodebookKv {
  let layers = copies.get(v.owner);
  if (!layers) copies.set(v.owner, (layers = new Map()));
  const key = `${v.layer}/${v.kind}`;
  const c = layers.get(key);
  if (c && c.version === v.version) return c.kv;
  // new rows are written in place into room reserved ahead; a full upload only when that room runs out (work already
  // submitted keeps reading replaced buffers: destroying them only stops further use)
  const kv = c ? k.extend(c.kv, v.view) : k.upload(v.view);
  if (!c || kv.codes !== c.kv.codes) counts.uploads++;
  else counts.appends++;
  layers.set(key, { version: v.version, kv });
  return kv;
}

/** The GPU buffer of a tensor (a copy tfjs submits at once, so it is ordered before our dispatches). */
function bufferOf(t: Tensor): { buffer: GPUBuffer; ref: Tensor } {
  const g = t.dataToGPU();
  if (!g.buffer) throw new XqBackendError('E_BACKEND_UNAVAILABLE', `webgpu codebook kernel: the tensor is not on the GPU (backend '${tf.getBackend()}')`);
  return { buffer: g.buffer, ref: g.tensorRef };
}

/** Run a call and hand its output to tfjs as a new tensor (tfjs copies it and submits the copy at once). */
function runToTensor(k: CodebookAttentionGpu, call: KernelCall, shape: [number, number]): Tensor2D {
  try {
    k.base.run(call);
    return tf.tensor({ buffer: call.out }, shape, 'float32') as Tensor2D;
  } finally {
    call.destroy();
  }
}

/**
 * Codebook attention products on the tfjs `'webgpu'` backend (`registerWebGpuKernels` registers it). Each layer's
 * keys and values stay on the device until the cache's `reset()` or `dispose()`: newly quantized rows are written in
 * place into room reserved ahead (capacity doubles when full); their bytes count in `memory().kernelBytes`.
 */
export const webgpuCodebookKernel: WebGpuCodebookKernel = {
  id: 'webgpu-codebook',
  counts,
  resetCounts(): void {
    counts.keyScores = 0;
    counts.valueMix = 0;
    counts.uploads = 0;
    counts.appends = 0;
  },
  keyScores(q: Tensor2D, keys: CodebookTensorView): Tensor2D {
    const k = kernelsOnBackend();
    const kv = deviceCopy(k, keys);
    const rows = q.shape[0];
    const { buffer, ref } = bufferOf(q);
    try {
      const out = runToTensor(k, k.keyScoresNow({ q: buffer, qHeads: rows, keys: kv }), [rows, kv.tokens]);
      counts.keyScores++;
      return out;
    } finally {
      ref.dispose();
    }
  },
  valueMix(p: Tensor2D, values: CodebookTensorView): Tensor2D {
    const k = kernelsOnBackend();
    const kv = deviceCopy(k, values);
    const rows = p.shape[0];
    const { buffer, ref } = bufferOf(p);
    try {
      const out = runToTensor(k, k.valueMixNow({ p: buffer, qHeads: rows, values: kv, pStride: p.shape[1] }), [rows, kv.headDim]);
      counts.valueMix++;
      return out;
    } finally {
      ref.dispose();
    }
  },
  release(owner: object): void {
    const layers = copies.get(owner);
    if (!layers) return;
    for (const c of layers.values()) {
      c.kv.codes.destroy();
      c.kv.scales.destroy();
      c.kv.tables.destroy();
    }
    copies.delete(owner);
  },
  heldBytes(owner: object): number {
    let b = 0;
    for (const c of copies.get(owner)?.values() ?? []) b += c.kv.codes.size + c.kv.scales.size + c.kv.tables.size;
    return b;
  },
};
