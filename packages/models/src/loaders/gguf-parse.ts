import { XqFormatError } from '@xquant/quant';
import type { BoundedFile } from './file.js';

// Limits on what a GGUF header may declare, so a crafted file cannot make the parser allocate or loop without bound
// (the same limits as @huggingface/gguf's parser, CWE-770 / CWE-674 / CWE-1284).
/** Most metadata key/value pairs a GGUF header may declare. */
export const GGUF_MAX_KV_COUNT = 100_000;
/** Most tensors a GGUF header may declare. */
export const GGUF_MAX_TENSOR_COUNT = 10_000_000;
/** Longest string (key, value, tensor name) in bytes. */
export const GGUF_MAX_STRING_LENGTH = 10_000_000;
/** Most elements of one metadata array (a 150k-token vocabulary fits). */
export const GGUF_MAX_ARRAY_LENGTH = 1_000_000;
/** Deepest nesting of arrays of arrays. */
export const GGUF_MAX_ARRAY_DEPTH = 4;
/** Most dimensions a tensor may declare (GGML uses up to 4). */
export const GGUF_MAX_TENSOR_DIMS = 8;

/** Bytes read per window while parsing (larger values are read in one go). @internal */
export const GGUF_READ_WINDOW = 1 << 20;
const WINDOW = GGUF_READ_WINDOW;

/** Strict decoder: invalid UTF-8 is an error, not U+FFFD; a BOM is kept as data. */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** One tensor as declared by the header (GGML order: `shape[0]` is the fastest-varying dimension). @internal */
export interface RawGgufTensorInfo {
  name: string;
  n_dims: number;
  shape: bigint[];
  dtype: number;
  /** Offset relative to the start of the tensor data. */
  offset: bigint;
}

/** What {@link parseGgufHeader} reads. @internal */
export interface RawGgufHeader {
  /** Every key/value pair (u64/i64 as bigint), plus `version`, `tensor_count`, `kv_count`. */
  metadata: Record<string, unknown>;
  tensorInfos: RawGgufTensorInfo[];
  /** Absolute offset of the tensor data (end of the tensor infos, padded to `general.alignment`). */
  tensorDataOffset: bigint;
  littleEndian: true;
  /** Absolute byte range of the tensor infos (before padding). */
  tensorInfoByteRange: [number, number];
}

/** Sequential reads through a window of the file; every read is checked against the file size. */
class Cursor {
  private buf: Uint8Array = new Uint8Array(0);
  private view = new DataView(this.buf.buffer);
  private start = 0;
  constructor(
    private readonly file: BoundedFile,
    public offset: number,
  ) {}

  private fail(message: string): never {
    throw new XqFormatError(`${this.file.path}: corrupt GGUF header (${message})`);
  }

  /** Make bytes [offset, offset + n) available. */
  private async need(n: number, what: string): Promise<void> {
    if (this.offset + n <= this.start + this.buf.length) return;
    if (this.offset + n > this.file.size) {
      this.fail(`${what} at byte ${this.offset} needs ${n} bytes, past the end of the file (${this.file.size} bytes); the file is truncated`);
    }
    const length = Math.min(Math.max(n, WINDOW), this.file.size - this.offset);
    this.buf = await this.file.read(this.offset, length, 'GGUF header');
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.start = this.offset;
  }

  private at(): number {
    return this.offset - this.start;
  }

  async u32(what: string): Promise<number> {
    await this.need(4, what);
    const v = this.view.getUint32(this.at(), true);
    this.offset += 4;
    return v;
  }

  async u64(what: string): Promise<bigint> {
    await this.need(8, what);
    const v = this.view.getBigUint64(this.at(), true);
    this.offset += 8;
    return v;
  }

  /** A u64 count or length checked against `max`, as a number. */
  async count(what: string, max: number): Promise<number> {
    const at = this.offset;
    const v = await this.u64(what);
    if (v > BigInt(max)) this.fail(`${what} ${v} at byte ${at} exceeds the maximum of ${max}`);
    return Number(v);
  }

  /** A string of exactly its declared byte length, which must be valid UTF-8 (GGUF writers encode UTF-8). */
  async string(what: string): Promise<string> {
    const at = this.offset;
    const n = await this.count(`${what} length`, GGUF_MAX_STRING_LENGTH);
    await this.need(n, what);
    const bytes = this.buf.subarray(this.at(), this.at() + n);
    if (bytes.length !== n) this.fail(`${what} at byte ${at}: read ${bytes.length} of its ${n} bytes`);
    let s: string;
    try {
      s = UTF8.decode(bytes);
    } catch {
      // a lenient decode would replace bytes with U+FFFD and return another string than the file holds
      return this.fail(`${what} at byte ${at} (${n} bytes) is not valid UTF-8`);
    }
    this.offset += n;
    return s;
  }

  async value(type: number, what: string, depth: number): Promise<unknown> {
    const fixed = (n: number, get: (dv: DataView, o: number) => unknown) => async () => {
      await this.need(n, what);
      const v = get(this.view, this.at());
      this.offset += n;
      return v;
    };
    switch (type) {
      case 0:
        return fixed(1, (dv, o) => dv.getUint8(o))();
      case 1:
        return fixed(1, (dv, o) => dv.getInt8(o))();
      case 2:
        return fixed(2, (dv, o) => dv.getUint16(o, true))();
      case 3:
        return fixed(2, (dv, o) => dv.getInt16(o, true))();
      case 4:
        return fixed(4, (dv, o) => dv.getUint32(o, true))();
      case 5:
        return fixed(4, (dv, o) => dv.getInt32(o, true))();
      case 6:
        return fixed(4, (dv, o) => dv.getFloat32(o, true))();
      case 7:
        return fixed(1, (dv, o) => dv.getUint8(o) !== 0)();
      case 8:
        return this.string(what);
      case 9: {
        if (depth >= GGUF_MAX_ARRAY_DEPTH) this.fail(`${what}: arrays nested deeper than ${GGUF_MAX_ARRAY_DEPTH}`);
        const sub = await this.u32(`${what} element type`);
        const n = await this.count(`${what} array length`, GGUF_MAX_ARRAY_LENGTH);
        const out: unknown[] = new Array(n);
        for (let i = 0; i < n; i++) out[i] = await this.value(sub, what, depth + 1);
        return out;
      }
      case 10:
        return fixed(8, (dv, o) => dv.getBigUint64(o, true))();
      case 11:
        return fixed(8, (dv, o) => dv.getBigInt64(o, true))();
      case 12:
        return fixed(8, (dv, o) => dv.getFloat64(o, true))();
      default:
        return this.fail(`${what}: unknown metadata value type ${type}`);
    }
  }
}

/**
 * Parse the header of a little-endian GGUF v2/v3 file (magic and version already checked by the caller): metadata,
 * tensor infos, the data offset. Bounded by the named `GGUF_MAX_*` limits and the file size; anything else is an
 * `XqFormatError` "corrupt GGUF header (…)". Semantic checks (types, shapes, offsets) are the caller's.
 * @internal
 */
export async function parseGgufHeader(file: BoundedFile, version: number): Promise<RawGgufHeader> {
  const c = new Cursor(file, 8);
  const tensorCount = await c.count('tensor count', GGUF_MAX_TENSOR_COUNT);
  const kvCount = await c.count('metadata count', GGUF_MAX_KV_COUNT);
  const metadata: Record<string, unknown> = { version, tensor_count: BigInt(tensorCount), kv_count: BigInt(kvCount) };
  for (let i = 0; i < kvCount; i++) {
    const key = await c.string(`metadata key ${i}`);
    const type = await c.u32(`type of '${key}'`);
    // defineProperty, not assignment: a key named __proto__ must not replace the prototype
    Object.defineProperty(metadata, key, { value: await c.value(type, `metadata '${key}'`, 0), enumerable: true, writable: true, configurable: true });
  }
  const infoStart = c.offset;
  const tensorInfos: RawGgufTensorInfo[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = await c.string(`tensor name ${i}`);
    const nDims = await c.u32(`dimensions of '${name}'`);
    if (nDims > GGUF_MAX_TENSOR_DIMS) throw new XqFormatError(`${file.path}: corrupt GGUF header (tensor '${name}' declares ${nDims} dimensions, more than ${GGUF_MAX_TENSOR_DIMS})`);
    const shape: bigint[] = [];
    for (let d = 0; d < nDims; d++) shape.push(await c.u64(`dimension ${d} of '${name}'`));
    const dtype = await c.u32(`type of '${name}'`);
    const offset = await c.u64(`data offset of '${name}'`);
    tensorInfos.push({ name, n_dims: nDims, shape, dtype, offset });
  }
  const infoEnd = c.offset;
  const a = Number(metadata['general.alignment'] ?? 32);
  const pad = Number.isSafeInteger(a) && a > 0 ? a : 1;
  return {
    metadata,
    tensorInfos,
    tensorDataOffset: BigInt(Math.ceil(infoEnd / pad) * pad),
    littleEndian: true,
    tensorInfoByteRange: [infoStart, infoEnd],
  };
}
