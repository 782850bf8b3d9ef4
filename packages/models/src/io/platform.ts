import { XqError } from '@xquant/quant';
import { BlobSource, MemorySource, isBlob, isByteSource, type ByteSource, type SourceInput } from './byte-source.js';
import { UrlModelFiles, type ModelFiles } from './model-files.js';
import { UrlSource, type UrlSourceOptions } from './url-source.js';

/** Options for opening files: fetch settings for URLs, and `onBytes` to count the bytes read (progress). */
export type OpenOptions = UrlSourceOptions;

/** A model named by a string: its files, and the one file the string named, if it named a file rather than a directory. */
export interface ResolvedModel {
  /** The model's files (the named directory, or the directory of the named file). */
  files: ModelFiles;
  /** The file the string named (`model.gguf`, `model.safetensors`, an index JSON), if any. */
  entry?: string;
}

/**
 * How strings become files: URLs in browsers (the default), file-system paths in the Node entry (which also takes
 * `http(s):` and `file:` URLs). Set once by the Node entry when it loads.
 * @internal
 */
export interface Platform {
  /** The bytes of the file named by `s`. */
  openSource(s: string, options: OpenOptions): Promise<ByteSource>;
  /** The model named by `s` (a directory, or one file of it). */
  resolveModel(s: string, options: OpenOptions): Promise<ResolvedModel>;
}

/** Resolve a string against the page's address (browsers) or require it to be absolute (elsewhere). @internal */
export function toUrl(s: string | URL): URL {
  if (s instanceof URL) return s;
  const base = (globalThis as { location?: { href?: string } }).location?.href;
  try {
    return new URL(s, base);
  } catch (e) {
    throw new XqError(
      'E_IO',
      `'${s}' is not a URL: in this build of @xquant/models strings name URLs (relative ones resolve against the page). In Node, import the package normally to read files by path`,
      { cause: e },
    );
  }
}

const FILE_EXT = /\.(gguf|safetensors|json)$/i;

/** A URL names one file when its last segment ends with .gguf, .safetensors or .json; otherwise a directory. @internal */
export function resolveUrlModel(url: URL, options: OpenOptions): ResolvedModel {
  const last = url.pathname.split('/').pop() ?? '';
  if (FILE_EXT.test(last)) return { files: new UrlModelFiles(new URL('.', url), options), entry: decodeURIComponent(last) };
  return { files: new UrlModelFiles(url, options) };
}

/** Strings are URLs. */
const webPlatform: Platform = {
  openSource: (s, options) => UrlSource.open(toUrl(s), options),
  resolveModel: async (s, options) => resolveUrlModel(toUrl(s), options),
};

let current: Platform = webPlatform;

/** Install the platform (the Node entry does, once). @internal */
export function setPlatform(p: Platform): void {
  current = p;
}

/** The active platform. @internal */
export function platform(): Platform {
  return current;
}

/** Open any {@link SourceInput} as a {@link ByteSource} (a given `ByteSource` is returned as is). */
export async function openSource(input: SourceInput, options: OpenOptions = {}): Promise<ByteSource> {
  if (typeof input === 'string') return current.openSource(input, options);
  if (input instanceof URL) return current.openSource(input.href, options);
  if (isByteSource(input)) return input;
  if (isBlob(input)) return new BlobSource(input);
  if (input instanceof ArrayBuffer || ArrayBuffer.isView(input)) return new MemorySource(input);
  throw new XqError('E_IO', `expected a path or URL, a URL object, a Blob, an ArrayBuffer or a ByteSource; got ${describe(input)}`);
}

/** Resolve a string or URL naming a model (directory or file). */
export async function resolveModelString(s: string | URL, options: OpenOptions = {}): Promise<ResolvedModel> {
  return current.resolveModel(s instanceof URL ? s.href : s, options);
}

/** A short description of an unexpected value, for error messages. @internal */
export function describe(x: unknown): string {
  if (x === null) return 'null';
  if (typeof x !== 'object') return typeof x;
  return (x as object).constructor?.name ?? 'an object';
}
