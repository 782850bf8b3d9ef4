/**
 * @packageDocumentation
 * Llama and Qwen2 decoder runtime on TensorFlow.js that runs on any `KvCache` from `@xquant/tfjs`;
 * bounded safetensors / GGUF / tokenizer loading from files, URLs (byte ranges, progress), `Blob`s and bytes;
 * streaming generation. This is the Node build: strings name file-system paths (or `http(s):` / `file:` URLs).
 * Browsers and bundlers get the same API from the platform-neutral build, where strings name URLs.
 */
import { setPlatform } from './io/platform.js';
import { nodePlatform } from './node/fs.js';

export * from './browser.js';
export { NodeFileSource, NodeDirectoryFiles } from './node/fs.js';

setPlatform(nodePlatform);
