/**
 * @packageDocumentation
 * Llama and Qwen2 decoder runtime on TensorFlow.js that runs on any `KvCache` from `@xquant/tfjs`;
 * bounded safetensors / GGUF / tokenizer loading; streaming generation.
 */
export {
  SafetensorsFile,
  readSafetensorsHeader,
  SAFETENSORS_MAX_HEADER_BYTES,
  SAFETENSORS_MAX_DIMS,
  SAFETENSORS_MAX_DIM,
  type SafetensorsDtype,
  type SafetensorsHeader,
  type SafetensorsTensorInfo,
  type SafetensorsRawArray,
} from './loaders/safetensors.js';
export { SafetensorsWeights, readHfConfig, openHfWeights, CONFIG_JSON_MAX_BYTES } from './loaders/hf-dir.js';
export {
  readGgufHeader,
  loadGguf,
  ggufModelConfig,
  GGUF_SUPPORTED_TYPES,
  GGUF_MAX_DIM,
  type GgufHeader,
  type GgufTensorInfo,
  type GgufModel,
} from './loaders/gguf.js';
export { ggufTokenizerJson, GGUF_PRE_TOKENIZERS } from './loaders/gguf-tokenizer.js';
export * from './config.js';
export * from './tokenizer.js';
export { ropeInverseFrequencies } from './rope.js';
export { DecoderModel, type WeightSource, type LogitsSelection } from './model.js';
export * from './load-model.js';
export { generate, sampleToken, createRng, type Rng, type SamplingOptions, type GeneratedToken, type GenerateOptions, type GenerateResult } from './generate.js';
