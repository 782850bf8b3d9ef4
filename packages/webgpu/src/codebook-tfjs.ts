/**
 * The codebook kernel of `@xquant/tfjs`'s `turboquant` cache on the tfjs WebGPU backend: key scores and value mix by
 * the WGSL kernels of {@link CodebookAttentionGpu}, on the backend's own `GPUDevice`, with each layer's codes kept on
 * the device. The cache runs the rest of attention (rotation, residual window, softmax) as tfjs ops.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Tensor, Tensor2D } from '@tensorflow/tfjs-core';
import { XqBackendError, XqConfigError, XqShapeError } from '@xquant/quant';
import type { CodebookKernel, CodebookTensorView } from '@xquant/tfjs';
import { CodebookAttentionGpu, releaseCodebookKv, type GpuCodebookKv } from './codebook.js';
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

/**
 * A GPU buffer holding a float32 2-D tensor's values, and how to free it: tfjs's copy of its device buffer (submitted
 * at once, so it is ordered before our dispatches), or an upload of values tfjs still keeps on the CPU (small tensors).
 */
function bufferOf(k: CodebookAttentionGpu, t: Tensor): { buffer: GPUBuffer; free(): void } {
  if (t.rank !== 2) throw new XqShapeError(`webgpu codebook kernel: expected a 2-D input; got shape [${t.shape}]`);
  if (t.dtype !== 'float32') throw new XqConfigError('E_DTYPE', `webgpu codebook kernel: the input must be float32; got ${t.dtype}`);
  let g: ReturnType<Tensor['dataToGPU']>;
  try {
    g = t.dataToGPU();
  } catch (e) {
    let values: Float32Array;
    try {
      values = t.dataSync() as Float32Array;
    } catch {
      throw new XqBackendError('E_BACKEND_UNAVAILABLE', `webgpu codebook kernel: the input is neither on the GPU nor readable (backend '${tf.getBackend()}')`, { cause: e });
    }
    const buffer = k.base.createBuffer(values, 0, 'codebook input');
    return { buffer, free: () => buffer.destroy() };
  }
  if (!g.buffer) {
    g.tensorRef.dispose();
    throw new XqBackendError('E_BACKEND_UNAVAILABLE', `webgpu codebook kernel: the tensor is not on the GPU (backend '${tf.getBackend()}')`);
  }
  const ref = g.tensorRef;
  return { buffer: g.buffer, free: () => ref.dispose() };
}

/**
 * One product over a layer's resident keys or values: the input's GPU buffer into `call`, the call run, its output
 * handed to tfjs as a new `[rows, columns(kv)]` tensor (tfjs copies it and submits the copy at once); the temporary
 * buffers and the input's copy are freed whatever happens.
 */
function product(input: Tensor2D, v: CodebookTensorView, call: (k: CodebookAttentionGpu, kv: GpuCodebookKv, input: GPUBuffer) => KernelCall, columns: (kv: GpuCodebookKv) => number): Tensor2D {
  const k = kernelsOnBackend();
  const kv = deviceCopy(k, v);
  const { buffer, free } = bufferOf(k, input);
  try {
    const c = call(k, kv, buffer);
    try {
      k.base.run(c);
      return tf.tensor({ buffer: c.out }, [input.shape[0], columns(kv)], 'float32') as Tensor2D;
    } finally {
      c.destroy();
    }
  } finally {
    free();
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
    const out = product(q, keys, (k, kv, buffer) => k.keyScoresNow({ q: buffer, qHeads: q.shape[0], keys: kv }), (kv) => kv.tokens);
    counts.keyScores++;
    return out;
  },
  valueMix(p: Tensor2D, values: CodebookTensorView): Tensor2D {
    const out = product(p, values, (k, kv, buffer) => k.valueMixNow({ p: buffer, qHeads: p.shape[0], values: kv, pStride: p.shape[1] }), (kv) => kv.headDim);
    counts.valueMix++;
    return out;
  },
  release(owner: object): void {
    for (const c of copies.get(owner)?.values() ?? []) releaseCodebookKv(c.kv);
    copies.delete(owner);
  },
  heldBytes(owner: object): number {
    let b = 0;
    for (const c of copies.get(owner)?.values() ?? []) b += c.kv.codes.size + c.kv.scales.size + c.kv.tables.size;
    return b;
  },
};
