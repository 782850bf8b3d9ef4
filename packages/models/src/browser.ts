/**
 * @packageDocumentation
 * The platform-neutral build of `@xquant/models` (browsers, workers, bundlers): everything the package exports except
 * the Node file-system readers; strings name URLs. Bundlers pick it through the `browser` / `default` export
 * conditions; `@xquant/models/browser` names it explicitly.
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
  type LoadGgufOptions,
} from './loaders/gguf.js';
export {
  GGUF_MAX_KV_COUNT,
  GGUF_MAX_TENSOR_COUNT,
  GGUF_MAX_STRING_LENGTH,
  GGUF_MAX_ARRAY_LENGTH,
  GGUF_MAX_ARRAY_DEPTH,
  GGUF_MAX_TENSOR_DIMS,
} from './loaders/gguf-parse.js';
export { ggufTokenizerJson, GGUF_PRE_TOKENIZERS } from './loaders/gguf-tokenizer.js';
export { MemorySource, BlobSource, isByteSource, type ByteSource, type SourceInput } from './io/byte-source.js';
export { UrlSource, URL_MAX_RANGE_BYTES, type UrlSourceOptions } from './io/url-source.js';
export { UrlModelFiles, FileMapModelFiles, isModelFiles, type ModelFiles, type FileData } from './io/model-files.js';
export { openSource, type OpenOptions } from './io/platform.js';
export * from './config.js';
export * from './tokenizer.js';
export { regexHazard, checkTokenizerRegexes, TOKENIZER_REGEX_MAX_LENGTH, TOKENIZER_REGEX_MAX_UNBOUNDED_RUN, type RegexHazard } from './regex-safety.js';
export { ropeInverseFrequencies } from './rope.js';
export { DecoderModel, type WeightSource, type LogitsSelection } from './model.js';
export { checkWeightsMatchConfig, expectedWeightNames, DERIVED_WEIGHT_PATTERNS } from './weight-check.js';
export * from './load-model.js';
export { generate, sampleToken, createRng, type Rng, type SamplingOptions, type GeneratedToken, type GenerateOptions, type GenerateResult } from './generate.js';
