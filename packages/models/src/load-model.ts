import * as tf from '@tensorflow/tfjs-core';
import { XqBackendError, XqError } from '@xquant/quant';
import type { ModelConfig } from './config.js';
import { isBlob, isByteSource, type ByteSource } from './io/byte-source.js';
import { FileMapModelFiles, isModelFiles, type FileData, type ModelFiles } from './io/model-files.js';
import { describe, resolveModelString, type OpenOptions, type ResolvedModel } from './io/platform.js';
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
  /** What was loaded: the format and the weight file (or shard index): a path, a URL or a file name. */
  source: { format: 'safetensors' | 'gguf'; path: string };
}

/**
 * What {@link loadModel} loads:
 * - a string: a path in Node (`'models/xq-demo'`, a `.safetensors` or `.gguf` file), a URL in browsers (relative ones
 *   resolve against the page); in Node `http(s):` and `file:` strings are URLs too;
 * - a `URL` object (fetched by byte ranges);
 * - `ModelFiles` (a directory on disk, a base URL, picked files), or what makes one: a `FileList` or array of `File`s
 *   (e.g. a directory from `<input type="file" webkitdirectory>`), a `Map` or record of file names to `Blob`s or bytes;
 * - one file alone, which must be a `.gguf`: a `Blob` / `File`, an `ArrayBuffer`, a typed array or a `ByteSource`.
 */
export type ModelInput =
  | string
  | URL
  | ModelFiles
  | Blob
  | ArrayBuffer
  | ArrayBufferView
  | ByteSource
  | Iterable<Blob>
  | ArrayLike<Blob>
  | Map<string, FileData>
  | Record<string, FileData>;

/** Progress of {@link loadModel}: bytes of the weight files read so far. */
export interface LoadProgress {
  /** Bytes read from the weight files so far (headers and tensors). */
  loaded: number;
  /** Total size of the weight files opened so far (all of them once `loaded` starts to grow with tensor data). */
  total: number;
  /** The file being read (a path, URL or file name). */
  file: string;
}

/** Options of {@link loadModel}. */
export interface LoadModelOptions extends Omit<OpenOptions, 'onBytes'> {
  /** A tokenizer.json (or a directory holding one) to use instead of the model's own: a path (Node) or URL string, a `URL`, or `ModelFiles`. */
  tokenizerPath?: string | URL | ModelFiles;
  /** Called as weight bytes arrive (after every chunk of a download, every tensor of a file); the last call has `loaded === total`. */
  onProgress?: (progress: LoadProgress) => void;
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

/** A model input as files plus the file it names, or one lone file. @internal */
type Resolved = ResolvedModel | { single: ByteSource | Blob | ArrayBuffer | ArrayBufferView; name: string };

const isIterable = (x: unknown): x is Iterable<unknown> => typeof (x as { [Symbol.iterator]?: unknown })?.[Symbol.iterator] === 'function';

async function resolveInput(input: ModelInput, options: OpenOptions): Promise<Resolved> {
  if (typeof input === 'string' || input instanceof URL) return resolveModelString(input, options);
  if (isModelFiles(input)) return { files: input };
  if (isByteSource(input)) return { single: input, name: input.name };
  if (isBlob(input)) return { single: input, name: (input as Partial<File>).name || 'blob' };
  if (input instanceof ArrayBuffer || ArrayBuffer.isView(input)) return { single: input, name: 'bytes in memory' };
  if (input instanceof Map || isIterable(input) || typeof (input as ArrayLike<Blob>)?.length === 'number') {
    return { files: new FileMapModelFiles(input as Iterable<Blob>) };
  }
  if (typeof input === 'object' && input !== null) return { files: new FileMapModelFiles(input as Record<string, FileData>) };
  throw new XqError('E_IO', `loadModel: expected a path or URL, ModelFiles, files, a Blob or bytes; got ${describe(input)}`);
}

/** Counts weight bytes for {@link LoadModelOptions.onProgress}. @internal */
class Progress {
  loaded = 0;
  total = 0;
  file = '';
  constructor(private readonly report: ((p: LoadProgress) => void) | undefined) {}
  /** Options that count the bytes of one weight file of `size` bytes. */
  track(file: string, size: number): (bytes: number) => void {
    this.total += size;
    return (bytes) => {
      this.loaded += bytes;
      this.file = file;
      this.report?.({ loaded: this.loaded, total: this.total, file });
    };
  }
  done(): void {
    this.loaded = this.total;
    this.report?.({ loaded: this.loaded, total: this.total, file: this.file });
  }
}

/** Wrap a model's file set so every weight file it opens is counted. @internal */
function countedFiles(files: ModelFiles, progress: Progress): ModelFiles {
  return {
    name: files.name,
    pathOf: (f) => files.pathOf(f),
    ...(files.list ? { list: () => files.list!() } : {}),
    open: async (f) => {
      const s = await files.open(f);
      if (!s || !/\.safetensors$/i.test(f)) return s;
      const count = progress.track(files.pathOf(f), s.size);
      return { name: s.name, size: s.size, read: (p, n, onBytes) => s.read(p, n, (b) => (count(b), onBytes?.(b))), close: s.close ? () => s.close!() : undefined };
    },
  };
}

async function fromGguf(
  input: ByteSource | Blob | ArrayBuffer | ArrayBufferView | string,
  name: string,
  open: OpenOptions,
  tokenizerPath: LoadModelOptions['tokenizerPath'],
  progress: Progress,
  files?: ModelFiles,
): Promise<LoadedModel> {
  const source = typeof input === 'string' ? await files!.open(input) : input;
  if (!source) throw new XqError('E_IO', `${name}: no such file`);
  const size = isByteSource(source) || isBlob(source) ? source.size : source.byteLength;
  const onBytes = progress.track(name, size);
  const g = await loadGguf(source, { ...open, tokenizer: tokenizerPath === undefined, onBytes });
  try {
    const tokenizer = tokenizerPath ? await loadTokenizer(tokenizerPath, open) : g.tokenizer;
    if (!tokenizer) throw new XqError('E_IO', `${name}: the GGUF file has no tokenizer; pass tokenizerPath`);
    const model = await DecoderModel.fromWeights(g.config, g.weights);
    progress.done();
    return { config: g.config, tokenizer, model, source: { format: 'gguf', path: g.header.path } };
  } finally {
    await g.weights.close();
  }
}

/**
 * Load a Llama or Qwen2 model from a Hugging Face directory (config.json, safetensors single or sharded,
 * tokenizer.json), from one `.safetensors` file (config.json and tokenizer.json beside it), or from a
 * `.gguf` file (F32/F16/Q8_0; tokenizer from GGUF metadata), on disk (Node), over HTTP (byte ranges, with progress),
 * or from files picked in a browser or bytes in memory: see {@link ModelInput}. Weights are up-cast to float32 on the
 * active tfjs backend. Errors: `E_IO` for a wrong path or a failed request, `XqConfigError` for an unsupported
 * architecture, `XqFormatError` for corrupt files.
 * @example
 * await loadModel('models/xq-demo');                        // Node: a directory
 * await loadModel(new URL('models/xq-demo/', location.href)); // browser: fetched by byte ranges
 * await loadModel(input.files!);                            // browser: a picked directory, or a .gguf file
 */
export async function loadModel(input: ModelInput, options: LoadModelOptions = {}): Promise<LoadedModel> {
  const open: OpenOptions = { fetch: options.fetch, headers: options.headers, maxRangeBytes: options.maxRangeBytes, signal: options.signal };
  const r = await resolveInput(input, open);
  await ensureBackend();
  const progress = new Progress(options.onProgress);
  if ('single' in r) {
    if (/\.safetensors$/i.test(r.name)) {
      throw new XqError('E_IO', `${r.name}: a .safetensors file alone has no config.json or tokenizer.json; pass the model's files together (a directory or a list of files)`);
    }
    return fromGguf(r.single, r.name, open, options.tokenizerPath, progress);
  }
  const { entry } = r;
  let files = r.files;
  if (entry !== undefined && /\.gguf$/i.test(entry)) return fromGguf(entry, files.pathOf(entry), open, options.tokenizerPath, progress, files);
  if (entry !== undefined && !/\.safetensors$/i.test(entry)) {
    throw new XqError('E_IO', `${files.pathOf(entry)}: expected a model directory, a .safetensors file or a .gguf file`);
  }
  if (entry === undefined && files.list) {
    // a directory (or picked files) holding one .gguf and no config.json is that GGUF model
    const names = await files.list();
    const ggufs = names.filter((n) => /\.gguf$/i.test(n));
    if (!names.includes('config.json') && ggufs.length === 1) return fromGguf(ggufs[0]!, files.pathOf(ggufs[0]!), open, options.tokenizerPath, progress, files);
  }
  const config = await readHfConfig(files, open);
  const tokenizer = await loadTokenizer(options.tokenizerPath ?? files, open);
  files = countedFiles(files, progress);
  let weights: SafetensorsWeights;
  if (entry !== undefined) {
    const source = await files.open(entry);
    if (!source) throw new XqError('E_IO', `${files.pathOf(entry)}: no such file`);
    weights = await SafetensorsWeights.openFile(source, open);
  } else weights = await openHfWeights(files, open);
  try {
    const model = await DecoderModel.fromWeights(config, weights);
    progress.done();
    return { config, tokenizer, model, source: { format: 'safetensors', path: weights.source } };
  } finally {
    await weights.close();
  }
}
