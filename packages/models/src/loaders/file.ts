import { open, stat, type FileHandle } from 'node:fs/promises';
import { XqError, XqFormatError } from '@xquant/quant';

/**
 * A file opened for bounded random-access reads: every read is checked against the file size first,
 * so a corrupt offset gives an `XqFormatError`, never a short read or a huge allocation.
 * @internal
 */
export class BoundedFile {
  private constructor(
    readonly path: string,
    readonly size: number,
    private handle: FileHandle | undefined,
  ) {}

  /** Open `path` for reading; a missing file or a directory gives an `E_IO` error. */
  static async open(path: string): Promise<BoundedFile> {
    let size: number;
    try {
      const s = await stat(path);
      if (!s.isFile()) throw new XqError('E_IO', `${path}: expected a file, got a directory or special file`);
      size = s.size;
    } catch (e) {
      if (XqError.isInstance(e)) throw e;
      throw new XqError('E_IO', `${path}: cannot open (${(e as Error).message})`, { cause: e });
    }
    const handle = await open(path, 'r').catch((e: unknown) => {
      throw new XqError('E_IO', `${path}: cannot open (${(e as Error).message})`, { cause: e });
    });
    return new BoundedFile(path, size, handle);
  }

  /**
   * Read exactly `length` bytes at `position` into a fresh (so 8-byte aligned) buffer.
   * `what` names the data in error messages.
   */
  async read(position: number, length: number, what: string): Promise<Uint8Array> {
    if (!this.handle) throw new XqError('E_STATE', `${this.path}: file already closed`);
    if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0) {
      throw new XqFormatError(`${this.path}: ${what}: invalid byte range (offset ${position}, length ${length})`);
    }
    if (position + length > this.size) {
      throw new XqFormatError(
        `${this.path}: ${what}: bytes ${position}..${position + length} lie past the end of the file (${this.size} bytes); the file is truncated or corrupt`,
      );
    }
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(out, done, length - done, position + done);
      if (bytesRead === 0) {
        throw new XqFormatError(`${this.path}: ${what}: unexpected end of file after ${done} of ${length} bytes`);
      }
      done += bytesRead;
    }
    return out;
  }

  /** Close the handle (idempotent). */
  async close(): Promise<void> {
    const h = this.handle;
    this.handle = undefined;
    await h?.close();
  }
}

/** Read a whole small text file (e.g. JSON), refusing files larger than `maxBytes`. @internal */
async function readSmallTextFile(path: string, maxBytes: number, what: string): Promise<string> {
  const f = await BoundedFile.open(path);
  try {
    if (f.size > maxBytes) {
      throw new XqFormatError(`${path}: ${what} is ${f.size} bytes, more than the ${maxBytes}-byte limit`);
    }
    return new TextDecoder('utf-8', { fatal: false }).decode(await f.read(0, f.size, what));
  } finally {
    await f.close();
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

/** Read and parse a JSON file of at most `maxBytes`. @internal */
export async function readJsonFile(path: string, maxBytes: number, what: string): Promise<unknown> {
  return parseJson(await readSmallTextFile(path, maxBytes, what), path);
}

/** True when `v` is a plain JSON object. @internal */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
