import { XqError } from '@xquant/quant';
import { BlobSource, MemorySource, isBlob, type ByteSource } from './byte-source.js';
import { UrlSource, type UrlSourceOptions } from './url-source.js';

/**
 * The files of one model, by name (`config.json`, `tokenizer.json`, `model.safetensors`, shards, a `.gguf`): a Node
 * directory (`NodeDirectoryFiles`, Node entry), a base URL ({@link UrlModelFiles}), files picked in a browser or held in
 * memory ({@link FileMapModelFiles}). `loadModel` and the Hugging Face directory readers take one of these (or a
 * string that names one).
 */
export interface ModelFiles {
  /** Names the set in messages: a directory, a base URL, "selected files". */
  readonly name: string;
  /** Open the file called `file` (a plain name, no directories), or undefined when the set has none. */
  open(file: string): Promise<ByteSource | undefined>;
  /** Names of the files, when the set can list them (a URL cannot). */
  list?(): Promise<string[]>;
  /** How a member is named in messages (`dir/config.json`, the full URL, …). */
  pathOf(file: string): string;
}

/** True when `x` implements {@link ModelFiles}. */
export function isModelFiles(x: unknown): x is ModelFiles {
  const f = x as Partial<ModelFiles> | null;
  return typeof f === 'object' && f !== null && typeof f.open === 'function' && typeof f.pathOf === 'function' && typeof f.name === 'string';
}

/** A file name must be a plain name: no directory separators, not `.` or `..`. @internal */
export function checkFileName(set: string, file: string): void {
  if (file === '' || file === '.' || file === '..' || /[\\/]/.test(file)) {
    throw new XqError('E_IO', `${set}: '${file}' is not a plain file name`);
  }
}

/**
 * The files of a model served under one base URL (`https://host/models/xq-demo/` holds `config.json`, …): each file is
 * opened as a {@link UrlSource}, so weights are read by byte ranges. Listing is impossible over HTTP, so a directory
 * needs `model.safetensors` or `model.safetensors.index.json` (or name the weight file in the URL).
 */
export class UrlModelFiles implements ModelFiles {
  /** The base URL, always ending with `/`. */
  readonly name: string;
  /** @param base the directory URL (a missing trailing slash is added) @param options fetch options for every file */
  constructor(
    base: string | URL,
    private readonly options: UrlSourceOptions = {},
  ) {
    const href = String(base);
    this.name = href.endsWith('/') ? href : `${href}/`;
  }

  pathOf(file: string): string {
    return new URL(file, this.name).href;
  }

  async open(file: string): Promise<ByteSource | undefined> {
    checkFileName(this.name, file);
    // model files are never HTML: an HTML answer is a server's fallback page for a missing name
    return UrlSource.openIfExists(this.pathOf(file), this.options, !file.toLowerCase().endsWith('.html'));
  }
}

/** One member of a {@link FileMapModelFiles}: a `Blob` / `File` or bytes. */
export type FileData = Blob | ArrayBuffer | ArrayBufferView;

/**
 * Files given by name: a browser `FileList` (a directory picked with `<input type="file" webkitdirectory>` or files
 * dropped together), an array of `File`s, or a map / record of names to `Blob`s or bytes. Only the last path segment of
 * a name counts (`xq-demo/config.json` → `config.json`); two members with the same name are refused.
 */
export class FileMapModelFiles implements ModelFiles {
  private readonly files = new Map<string, FileData>();

  /**
   * @param files `File`s (named by `webkitRelativePath` or `name`), or a map / record of names to data
   * @param name names the set in messages
   */
  constructor(
    files: Iterable<Blob> | ArrayLike<Blob> | Map<string, FileData> | Record<string, FileData>,
    readonly name = 'selected files',
  ) {
    const entries: [string, FileData][] =
      files instanceof Map
        ? [...files.entries()]
        : isIterable(files) || isArrayLike(files)
          ? Array.from(files as ArrayLike<Blob>, (f, i) => [fileNameOf(f, i), f])
          : Object.entries(files as Record<string, FileData>);
    for (const [path, data] of entries) {
      const file = path.split(/[\\/]/).pop() ?? '';
      if (this.files.has(file)) throw new XqError('E_IO', `${this.name}: two files are named '${file}'; give the files of one model only`);
      if (!isBlob(data) && !(data instanceof ArrayBuffer) && !ArrayBuffer.isView(data)) {
        throw new XqError('E_IO', `${this.name}: '${path}' must be a Blob, File, ArrayBuffer or typed array`);
      }
      this.files.set(file, data);
    }
  }

  pathOf(file: string): string {
    return `${this.name}: ${file}`;
  }

  async list(): Promise<string[]> {
    return [...this.files.keys()];
  }

  async open(file: string): Promise<ByteSource | undefined> {
    checkFileName(this.name, file);
    const data = this.files.get(file);
    if (data === undefined) return undefined;
    return isBlob(data) ? new BlobSource(data, file) : new MemorySource(data, file);
  }
}

function isIterable(x: unknown): x is Iterable<unknown> {
  return typeof (x as { [Symbol.iterator]?: unknown })?.[Symbol.iterator] === 'function';
}

function isArrayLike(x: unknown): x is ArrayLike<unknown> {
  return typeof (x as { length?: unknown })?.length === 'number';
}

function fileNameOf(f: Blob, i: number): string {
  const file = f as Partial<File> & { webkitRelativePath?: string };
  if (!isBlob(f)) throw new XqError('E_IO', `file ${i} of the list is not a Blob or File`);
  const name = file.webkitRelativePath || file.name;
  if (!name) throw new XqError('E_IO', `file ${i} of the list has no name (pass a map of names to Blobs instead)`);
  return name;
}
