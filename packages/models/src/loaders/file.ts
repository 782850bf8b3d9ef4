import { XqError, XqFormatError } from '@xquant/quant';
import type { ByteSource, SourceInput } from '../io/byte-source.js';
import { openSource, type OpenOptions } from '../io/platform.js';

/**
 * A file opened for bounded random-access reads, over any {@link ByteSource}: every read is checked against the
 * file size first, so a corrupt offset gives an `XqFormatError`, never a short read or a huge allocation.
 * @internal
 */
export class BoundedFile {
  private constructor(
    readonly path: string,
    readonly size: number,
    private source: ByteSource | undefined,
    private readonly onBytes: ((bytes: number) => void) | undefined,
  ) {}

  /** Open a path, URL, Blob, bytes or {@link ByteSource}; a missing file or a directory gives an `E_IO` error. */
  static async open(input: SourceInput, options: OpenOptions = {}): Promise<BoundedFile> {
    return BoundedFile.of(await openSource(input, options), options.onBytes);
  }

  /** Bounded reads over an open source (closing the `BoundedFile` closes the source). */
  static of(source: ByteSource, onBytes?: (bytes: number) => void): BoundedFile {
    if (!Number.isSafeInteger(source.size) || source.size < 0) {
      throw new XqError('E_IO', `${source.name}: the source reports an impossible size ${String(source.size)}`);
    }
    return new BoundedFile(source.name, source.size, source, onBytes);
  }

  /**
   * Read exactly `length` bytes at `position` into a buffer of its own (so 8-byte aligned).
   * `what` names the data in error messages.
   */
  async read(position: number, length: number, what: string): Promise<Uint8Array> {
    if (!this.source) throw new XqError('E_STATE', `${this.path}: file already closed`);
    if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0) {
      throw new XqFormatError(`${this.path}: ${what}: invalid byte range (offset ${position}, length ${length})`);
    }
    if (position + length > this.size) {
      throw new XqFormatError(
        `${this.path}: ${what}: bytes ${position}..${position + length} lie past the end of the file (${this.size} bytes); the file is truncated or corrupt`,
      );
    }
    const bytes = await this.source.read(position, length, this.onBytes);
    if (bytes.byteLength !== length) {
      throw new XqFormatError(`${this.path}: ${what}: unexpected end of file after ${bytes.byteLength} of ${length} bytes`);
    }
    // a view into a larger buffer (bytes in memory) is copied: callers view the result as typed arrays and keep it
    return bytes.byteOffset === 0 && bytes.buffer.byteLength === length ? bytes : bytes.slice();
  }

  /** Close the source (idempotent). */
  async close(): Promise<void> {
    const s = this.source;
    this.source = undefined;
    await s?.close?.();
  }
}

/** Read a whole small text file (e.g. JSON), refusing files larger than `maxBytes`. @internal */
async function readSmallText(file: BoundedFile, maxBytes: number, what: string): Promise<string> {
  try {
    if (file.size > maxBytes) {
      throw new XqFormatError(`${file.path}: ${what} is ${file.size} bytes, more than the ${maxBytes}-byte limit`);
    }
    return new TextDecoder('utf-8', { fatal: false }).decode(await file.read(0, file.size, what));
  } finally {
    await file.close();
  }
}

/** Parse JSON text, turning a syntax error into an `XqFormatError` that names the file. @internal */
export function parseJson(text: string, source: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new XqFormatError(`${source}: invalid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** Read and parse a JSON file of at most `maxBytes` (any {@link SourceInput}; the source is closed after). @internal */
export async function readJsonFile(input: SourceInput, maxBytes: number, what: string, options: OpenOptions = {}): Promise<unknown> {
  const file = await BoundedFile.open(input, options);
  return parseJson(await readSmallText(file, maxBytes, what), file.path);
}

/** True when `v` is a plain JSON object. @internal */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
