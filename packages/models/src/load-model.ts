import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { XqBackendError, XqError } from '@xquant/quant';
import type { ModelConfig } from './config.js';
import { openHfWeights, readHfConfig, SafetensorsWeights } from './loaders/hf-dir.js';
import { loadGguf } from './loaders/gguf.js';
import { DecoderModel } from './model.js';
import type { TextTokenizer } from './tokenizer.js';
import { loadTokenizer } from './tokenizer.js';

/** A loaded model: its configuration, tokenizer and runtime. */
export interface LoadedModel {
  /** Normalised model configuration. */
  config: ModelConfig;
  /** The model's tokenizer (or the one given by `tokenizerPath`). */
  tokenizer: TextTokenizer;
  /** The runtime; call `dispose()` to free its weights. */
  model: DecoderModel;
  /** What was loaded: the format and the weight file (or shard index) path. */
  source: { format: 'safetensors' | 'gguf'; path: string };
}

/** Options of {@link loadModel}. */
export interface LoadModelOptions {
  /** A tokenizer.json (or a directory holding one) to use instead of the model's own. */
  tokenizerPath?: string;
}

async function ensureBackend(): Promise<void> {
  try {
    await tf.ready();
  } catch (e) {
    throw new XqBackendError(
      'E_BACKEND_UNAVAILABLE',
      `no TensorFlow.js backend is ready (${(e as Error).message}); register one first, e.g. selectBackend() from @xquant/tfjs or import '@tensorflow/tfjs-backend-cpu'`,
      { cause: e },
    );
  }
}

/**
 * Load a Llama or Qwen2 model from a Hugging Face directory (config.json, safetensors single or sharded,
 * tokenizer.json), from one `.safetensors` file (config.json and tokenizer.json beside it), or from a
 * `.gguf` file (F32/F16/Q8_0; tokenizer from GGUF metadata). Weights are up-cast to float32 on the active
 * tfjs backend. Errors: `E_IO` for a wrong path, `XqConfigError` for an unsupported architecture,
 * `XqFormatError` for corrupt files.
 */
export async function loadModel(pathOrFile: string, options: LoadModelOptions = {}): Promise<LoadedModel> {
  if (!existsSync(pathOrFile)) throw new XqError('E_IO', `${pathOrFile}: no such file or directory`);
  await ensureBackend();
  const isDir = statSync(pathOrFile).isDirectory();
  if (!isDir && pathOrFile.toLowerCase().endsWith('.gguf')) {
    const g = await loadGguf(pathOrFile, { tokenizer: options.tokenizerPath === undefined });
    try {
      const tokenizer = options.tokenizerPath ? await loadTokenizer(options.tokenizerPath) : g.tokenizer;
      if (!tokenizer) throw new XqError('E_IO', `${pathOrFile}: the GGUF file has no tokenizer; pass tokenizerPath`);
      const model = await DecoderModel.fromWeights(g.config, g.weights);
      return { config: g.config, tokenizer, model, source: { format: 'gguf', path: pathOrFile } };
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
    const model = await DecoderModel.fromWeights(config, weights);
    const path = isDir && existsSync(join(dir, 'model.safetensors.index.json')) ? join(dir, 'model.safetensors.index.json') : weights.source;
    return { config, tokenizer, model, source: { format: 'safetensors', path } };
  } finally {
    await weights.close();
  }
}
