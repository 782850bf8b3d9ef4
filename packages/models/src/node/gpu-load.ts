import { existsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { XqError } from '@xquant/quant';
import type { ModelConfig } from '../config.js';
import { loadGguf } from '../loaders/gguf.js';
import { SafetensorsWeights, openHfWeights, readHfConfig } from '../loaders/hf-dir.js';
import { loadTokenizer, type TextTokenizer } from '../tokenizer.js';
import { GpuDecoder, type GpuDecoderOptions } from '../gpu/engine.js';

/** A model loaded onto the GPU: the decoder, its tokenizer and configuration. */
export interface LoadedGpuDecoder {
  decoder: GpuDecoder;
  tokenizer: TextTokenizer;
  config: ModelConfig;
}

/**
 * Load a Llama or Qwen2 model (a Hugging Face directory, one `.safetensors` file with config.json beside it, or a
 * `.gguf` file) straight onto `device` as fp16 weights, one weight at a time (no tfjs tensors are made).
 */
export async function loadGpuDecoder(pathOrFile: string, device: GPUDevice, options: GpuDecoderOptions & { tokenizerPath?: string }): Promise<LoadedGpuDecoder> {
  if (!existsSync(pathOrFile)) throw new XqError('E_IO', `${pathOrFile}: no such file or directory`);
  const isDir = statSync(pathOrFile).isDirectory();
  if (!isDir && pathOrFile.toLowerCase().endsWith('.gguf')) {
    const g = await loadGguf(pathOrFile, { tokenizer: options.tokenizerPath === undefined });
    try {
      const tokenizer = options.tokenizerPath ? await loadTokenizer(options.tokenizerPath) : g.tokenizer;
      if (!tokenizer) throw new XqError('E_IO', `${pathOrFile}: the GGUF file has no tokenizer; pass tokenizerPath`);
      return { decoder: await GpuDecoder.create(device, g.config, g.weights, options), tokenizer, config: g.config };
    } finally {
      await g.weights.close();
    }
  }
  if (!isDir && !pathOrFile.toLowerCase().endsWith('.safetensors')) {
    throw new XqError('E_IO', `${pathOrFile}: expected a model directory, a .safetensors file or a .gguf file`);
  }
  const dir = isDir ? pathOrFile : dirname(pathOrFile);
  const config = await readHfConfig(dir);
  const tokenizer = await loadTokenizer(options.tokenizerPath ?? dir);
  const weights = isDir ? await openHfWeights(dir) : await SafetensorsWeights.openFile(pathOrFile);
  try {
    return { decoder: await GpuDecoder.create(device, config, weights, options), tokenizer, config };
  } finally {
    await weights.close();
  }
}
