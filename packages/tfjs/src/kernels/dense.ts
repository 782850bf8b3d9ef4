import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { plainAttention } from '../attention.js';
import { dequantizeKeyBlock, dequantizeValueRange } from '../quantized/cache.js';
import { tokenMajorToHeadMajor } from '../quantized/store.js';
import type { AttentionKernel, QuantizedLayerView } from './registry.js';

/** Device copy of one layer's dequantized quantized part, extended as blocks/tokens are flushed. */
interface Mirror {
  generation: number;
  keys: Tensor3D | null;
  nk: number;
  values: Tensor3D | null;
  nv: number;
}

const mirrors = new WeakMap<object, Map<number, Mirror>>();

function appendTo(t: Tensor3D | null, add: Tensor3D): Tensor3D {
  if (!t) return add;
  const out = tf.concat([t, add], 1);
  t.dispose();
  add.dispose();
  return out;
}

function sync(v: QuantizedLayerView): Mirror {
  let layers = mirrors.get(v.owner);
  if (!layers) mirrors.set(v.owner, (layers = new Map()));
  let m = layers.get(v.layer);
  if (!m || m.generation !== v.generation || m.nk > v.quantizedKeys || m.nv > v.quantizedValues) {
    if (m) tf.dispose([m.keys, m.values].filter((t): t is Tensor3D => t !== null));
    m = { generation: v.generation, keys: null, nk: 0, values: null, nv: 0 };
    layers.set(v.layer, m);
  }
  const { kvHeads: H, headDim: D } = v;
  for (const b of v.keyBlocks) {
    if (b.start < m.nk) continue;
    m.keys = appendTo(m.keys, tf.tensor3d(dequantizeKeyBlock(v, b), [H, b.tokens, D]));
    m.nk = b.start + b.tokens;
  }
  if (v.quantizedValues > m.nv) {
    const n = v.quantizedValues - m.nv;
    m.values = appendTo(m.values, tf.tensor3d(dequantizeValueRange(v, m.nv, v.quantizedValues), [H, n, D]));
    m.nv = v.quantizedValues;
  }
  return m;
}

/**
 * Fallback for backends without packed kernels (on WebGPU: prefill and layers the WGSL kernels cannot read): keeps a device
 * copy of the dequantized part of each layer (extended incrementally as blocks are flushed; its bytes are reported as
 * `memory().kernelBytes`), uploads the float32 window, and runs {@link plainAttention}. Reads no tensor synchronously.
 */
export const denseAttentionKernel: AttentionKernel = {
  id: 'dense-upload',
  attend(v: QuantizedLayerView, queries: Tensor3D): Tensor3D {
    const m = sync(v);
    const { kvHeads: H, headDim: D } = v;
    const rk = v.residualKeys.length / (H * D);
    const rv = v.residualValues.length / (H * D);
    return tf.tidy(() => {
      const ks: Tensor3D[] = m.keys ? [m.keys] : [];
      const vs: Tensor3D[] = m.values ? [m.values] : [];
      if (rk > 0) ks.push(tf.tensor3d(tokenMajorToHeadMajor(v.residualKeys, rk, H, D), [H, rk, D]));
      if (rv > 0) vs.push(tf.tensor3d(tokenMajorToHeadMajor(v.residualValues, rv, H, D), [H, rv, D]));
      const keys = ks.length === 1 ? ks[0]! : tf.concat(ks, 1);
      const values = vs.length === 1 ? vs[0]! : tf.concat(vs, 1);
      return plainAttention(queries, keys, values);
    });
  },
  release(owner: object): void {
    const layers = mirrors.get(owner);
    if (!layers) return;
    for (const m of layers.values()) tf.dispose([m.keys, m.values].filter((t): t is Tensor3D => t !== null));
    mirrors.delete(owner);
  },
  heldBytes(owner: object): number {
    let b = 0;
    for (const m of mirrors.get(owner)?.values() ?? []) b += 4 * ((m.keys?.size ?? 0) + (m.values?.size ?? 0));
    return b;
  },
};
