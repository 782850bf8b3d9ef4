import { XqError } from '@xquant/quant';

/**
 * Random-access bytes of one file, wherever they live: a Node file ({@link NodeFileSource} from the Node entry), a
 * URL fetched with byte ranges ({@link UrlSource}), a `Blob` / `File` ({@link BlobSource}) or bytes in memory
 * ({@link MemorySource}). The loaders read only through this interface and check every range against `size` before
 * asking, so an implementation only has to return the bytes asked for.
 */
export interface ByteSource {
  /** Names the bytes in error messages: a path, a URL, a file name. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /**
   * Exactly `length` bytes starting at `position` (the caller guarantees `position + length <= size`). The result may
   * be a view into a larger buffer; the caller copies when it needs alignment. `onBytes` is told how many bytes
   * arrived, as they arrive (a streamed download calls it many times; other sources once).
   */
  read(position: number, length: number, onBytes?: (bytes: number) => void): Promise<Uint8Array>;
  /** Release what the source holds (a file handle); idempotent. Optional. */
  close?(): Promise<void>;
}

/** Whatever the loaders accept as one file: a path or URL string (see the package README), a `URL`, a `Blob`, bytes, or a {@link ByteSource}. */
export type SourceInput = string | URL | Blob | ArrayBuffer | ArrayBufferView | ByteSource;

/** True when `x` implements {@link ByteSource}. */
export function isByteSource(x: unknown): x is ByteSource {
  const s = x as Partial<ByteSource> | null;
  return typeof s === 'object' && s !== null && typeof s.read === 'function' && typeof s.size === 'number' && typeof s.name === 'string';
}

/** True for a `Blob` (or `File`), also one from another realm. */
export function isBlob(x: unknown): x is Blob {
  if (typeof Blob !== 'undefined' && x instanceof Blob) return true;
  const b = x as Partial<Blob> | null;
  return typeof b === 'object' && b !== null && typeof b.slice === 'function' && typeof b.arrayBuffer === 'function' && typeof b.size === 'number';
}

/** The bytes of an `ArrayBuffer` or a typed-array / DataView view, without copying. */
export function asBytes(x: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  return new Uint8Array(x);
}

/** A {@link ByteSource} over bytes already in memory (an `ArrayBuffer`, a typed array). Reads are views, not copies. */
export class MemorySource implements ByteSource {
  private readonly bytes: Uint8Array;
  /** Size in bytes. */
  readonly size: number;
  /** @param data the bytes (not copied) @param name names them in error messages */
  constructor(data: ArrayBuffer | ArrayBufferView, readonly name = 'bytes in memory') {
    this.bytes = asBytes(data);
    this.size = this.bytes.byteLength;
  }

  async read(position: number, length: number, onBytes?: (bytes: number) => void): Promise<Uint8Array> {
    onBytes?.(length);
    return this.bytes.subarray(position, position + length);
  }
}

/** A {@link ByteSource} over a `Blob` or `File` (e.g. from `<input type="file">` or drag and drop): each read is one `slice`. */
export class BlobSource implements ByteSource {
  /** Size in bytes. */
  readonly size: number;
  /** @param blob the file @param name names it in error messages (default: the `File`'s name) */
  constructor(
    private readonly blob: Blob,
    readonly name = (blob as Partial<File>).name || 'blob',
  ) {
    this.size = blob.size;
  }

  async read(position: number, length: number, onBytes?: (bytes: number) => void): Promise<Uint8Array> {
    let buf: ArrayBuffer;
    try {
      buf = await this.blob.slice(position, position + length).arrayBuffer();
    } catch (e) {
      throw new XqError('E_IO', `${this.name}: cannot read bytes ${position}..${position + length} (${(e as Error).message})`, { cause: e });
    }
    onBytes?.(buf.byteLength);
    return new Uint8Array(buf);
  }
}
