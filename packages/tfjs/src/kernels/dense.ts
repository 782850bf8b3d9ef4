import * as tf from '@tensorflow/tfjs-core';
import type { Tensor3D } from '@tensorflow/tfjs-core';
import { plainAttention } from '../attention.js';
import { dequantizeView } from '../quantized/cache.js';
import type { AttentionKernel, QuantizedLayerView } from './registry.js';

/**
 * Fallback for backends without packed kernels (WebGPU until `@xquant/webgpu` registers its kernels): dequantize the
 * layer on the host, upload it, run {@link plainAttention}. Correct everywhere, and reads no tensor synchronously,
 * but moves the whole dequantized layer each call.
 */
export const denseAttentionKernel: AttentionKernel = {
  id: 'dense-upload',
  attend(layer: QuantizedLayerView, queries: Tensor3D): Tensor3D {
    const { keys, values } = dequantizeView(layer);
    const shape: [number, number, number] = [layer.kvHeads, layer.tokens, layer.headDim];
    return tf.tidy(() => plainAttention(queries, tf.tensor3d(keys, shape), tf.tensor3d(values, shape)));
  },
};
