import { XqFormatError, halfTable } from '@xquant/quant';
import type { SourceInput } from '../io/byte-source.js';
import type { OpenOptions } from '../io/platform.js';
import { BoundedFile, isObject, parseJson } from './file.js';

/** Element types a safetensors file may declare. */
export type SafetensorsDtype =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'U8'
  | 'BOOL'
  | 'F8_E4M3'
  | 'F8_E5M2';

const DTYPE_BYTES: Record<SafetensorsDtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

/** Largest JSON header accepted (the safetensors format's own limit). */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;
/** Most dimensions a tensor may declare. */
export const SAFETENSORS_MAX_DIMS = 8;
/** Largest single dimension accepted. */
export const SAFETENSORS_MAX_DIM = 2 ** 32;

/** Where one tensor lives in a safetensors file. */
export interface SafetensorsTensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  byteOffset: number;
  byteLength: number;
}

/** The parsed, validated header of a safetensors file. */
export interface SafetensorsHeader {
  path: string;
  fileSize: number;
  /** Absolute offset of the data section (8 + header length). */
  dataOffset: number;
  tensors: Map<string, SafetensorsTensorInfo>;
  /** The optional `__metadata__` string map. */
  metadata: Record<string, string>;
}

/** A typed array holding a tensor's raw elements (fp16/bf16 as 16-bit patterns, 64-bit ints as bigint arrays). */
export type SafetensorsRawArray =
  | Float64Array
  | Float32Array
  | Uint16Array
  | BigInt64Array
  | BigUint64Array
  | Int32Array
  | Uint32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

function isDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, s);
}

/**
 * Validate the JSON header of a safetensors file against the file size: every entry has a known dtype,
 * a sane shape, data offsets inside the data section whose length equals shape × dtype size, and the
 * entries tile the data section exactly (no overlap, no hole).
 * @internal
 */
function validateSafetensorsHeader(
  json: unknown,
  path: string,
  headerLength: number,
  fileSize: number,
): SafetensorsHeader {
  if (!isObject(json)) throw new XqFormatError(`${path}: safetensors header must be a JSON object, got ${Array.isArray(json) ? 'an array' : typeof json}`);
  const dataOffset = 8 + headerLength;
  const dataSize = fileSize - dataOffset;
  const tensors = new Map<string, SafetensorsTensorInfo>();
  let metadata: Record<string, string> = {};
  const spans: { begin: number; end: number; name: string }[] = [];
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isObject(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        throw new XqFormatError(`${path}: __metadata__ must map strings to strings`);
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    const where = `${path}: tensor '${name}'`;
    if (!isObject(entry)) throw new XqFormatError(`${where}: entry must be an object with dtype, shape, data_offsets`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (!isDtype(dtype)) {
      throw new XqFormatError(`${where}: unknown dtype ${JSON.stringify(dtype)}; expected one of ${Object.keys(DTYPE_BYTES).join(', ')}`);
    }
    if (!Array.isArray(shape) || shape.length > SAFETENSORS_MAX_DIMS) {
      throw new XqFormatError(`${where}: shape must be an array of at most ${SAFETENSORS_MAX_DIMS} dimensions, got ${JSON.stringify(shape)}`);
    }
    let count = 1;
    for (const d of shape) {
      if (typeof d !== 'number' || !Number.isInteger(d) || d < 0 || d > SAFETENSORS_MAX_DIM) {
        throw new XqFormatError(`${where}: dimension ${JSON.stringify(d)} is not an integer in [0, 2^32]`);
      }
      count *= d;
    }
    const expectedBytes = count * DTYPE_BYTES[dtype];
    if (!Number.isSafeInteger(expectedBytes) || expectedBytes > dataSize) {
      throw new XqFormatError(
        `${where}: shape [${shape.join(', ')}] × ${dtype} needs ${expectedBytes} bytes, more than the ${dataSize}-byte data section`,
      );
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)) {
      throw new XqFormatError(`${where}: data_offsets must be two non-negative integers, got ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end || end > dataSize) {
      throw new XqFormatError(`${where}: data_offsets [${begin}, ${end}] out of range for a ${dataSize}-byte data section`);
    }
    if (end - begin !== expectedBytes) {
      throw new XqFormatError(
        `${where}: data_offsets span ${end - begin} bytes but shape [${shape.join(', ')}] × ${dtype} (${DTYPE_BYTES[dtype]} bytes) needs ${expectedBytes}`,
      );
    }
    tensors.set(name, { name, dtype, shape: shape as number[], byteOffset: dataOffset + begin, byteLength: expectedBytes });
    spans.push({ begin, end, name });
  }
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const s of spans) {
    if (s.begin < cursor) {
      throw new XqFormatError(`${path}: tensor '${s.name}' (bytes ${s.begin}..${s.end}) overlaps the previous tensor (ends at ${cursor})`);
    }
    if (s.begin > cursor) {
      throw new XqFormatError(`${path}: hole in the data section at bytes ${cursor}..${s.begin} before tensor '${s.name}'`);
    }
    cursor = s.end;
  }
  if (cursor !== dataSize) {
    throw new XqFormatError(
      `${path}: tensors cover ${cursor} bytes of data but the data section is ${dataSize} bytes (truncated file or trailing garbage)`,
    );
  }
  return { path, fileSize, dataOffset, tensors, metadata };
}

async function readHeader(file: BoundedFile): Promise<SafetensorsHeader> {
  const { path, size } = file;
  if (size < 8) throw new XqFormatError(`${path}: ${size} bytes is too short for a safetensors file (needs an 8-byte header length)`);
  const lenBytes = await file.read(0, 8, 'header length');
  const headerLength = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (headerLength > BigInt(size - 8)) {
    throw new XqFormatError(`${path}: header length ${headerLength} runs past the end of the file (${size} bytes); truncated or not a safetensors file`);
  }
  if (headerLength > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
    throw new XqFormatError(`${path}: header length ${headerLength} exceeds the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit`);
  }
  if (headerLength < 2n) throw new XqFormatError(`${path}: header length ${headerLength} is too small for a JSON object`);
  const n = Number(headerLength);
  const text = new TextDecoder('utf-8', { fatal: false }).decode(await file.read(8, n, 'header'));
  const json = parseJson(text, `${path} (safetensors header)`);
  return validateSafetensorsHeader(json, path, n, size);
}

/**
 * Read and validate only the header of a safetensors file (the JSON, not the data). `input`: a path (Node) or URL
 * (browsers) string, a `URL`, a `Blob`, bytes, or a `ByteSource`.
 */
export async function readSafetensorsHeader(input: SourceInput, options: OpenOptions = {}): Promise<SafetensorsHeader> {
  const f = await BoundedFile.open(input, options);
  try {
    return await readHeader(f);
  } finally {
    await f.close();
  }
}

/** Convert raw little-endian tensor bytes of a float dtype to float32 (F64/F32/F16/BF16). @internal */
function floatBytesToFloat32(bytes: Uint8Array, dtype: SafetensorsDtype, where: string): Float32Array {
  switch (dtype) {
    case 'F32':
      return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    case 'F16': {
      const bits = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
      const t = halfTable();
      const out = new Float32Array(bits.length);
      for (let i = 0; i < bits.length; i++) out[i] = t[bits[i]!]!;
      return out;
    }
    case 'BF16': {
      const bits = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
      const out = new Float32Array(bits.length);
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < bits.length; i++) u[i] = bits[i]! << 16;
      return out;
    }
    case 'F64':
      return Float32Array.from(new Float64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8));
    default:
      throw new XqFormatError(`${where}: dtype ${dtype} cannot be read as float32 (expected F32, F16, BF16 or F64)`);
  }
}

/**
 * An open safetensors file: the validated header plus per-tensor reads. Only the header is held in
 * memory; each read allocates exactly one tensor's bytes.
 */
export class SafetensorsFile {
  private constructor(
    private readonly file: BoundedFile,
    /** The validated header. */
    readonly header: SafetensorsHeader,
  ) {}

  /**
   * Open and validate a safetensors file: a path (Node) or URL (browsers) string, a `URL`, a `Blob`, bytes, or a
   * `ByteSource` (read by byte ranges: the header first, then one tensor per read). Call {@link SafetensorsFile.close}
   * when done.
   */
  static async open(input: SourceInput, options: OpenOptions = {}): Promise<SafetensorsFile> {
    const f = await BoundedFile.open(input, options);
    try {
      return new SafetensorsFile(f, await readHeader(f));
    } catch (e) {
      await f.close();
      throw e;
    }
  }

  /** Names of the tensors in the file. */
  names(): string[] {
    return [...this.header.tensors.keys()];
  }

  /** Dtype, shape and location of `name`; throws `XqFormatError` when absent. */
  info(name: string): SafetensorsTensorInfo {
    const t = this.header.tensors.get(name);
    if (!t) throw new XqFormatError(`${this.header.path}: no tensor named '${name}'`);
    return t;
  }

  private async bytes(name: string): Promise<{ info: SafetensorsTensorInfo; bytes: Uint8Array }> {
    const info = this.info(name);
    return { info, bytes: await this.file.read(info.byteOffset, info.byteLength, `tensor '${name}'`) };
  }

  /** Read a float tensor (F32, F16, BF16 or F64) converted to float32. */
  async readFloat32(name: string): Promise<Float32Array> {
    const { info, bytes } = await this.bytes(name);
    return floatBytesToFloat32(bytes, info.dtype, `${this.header.path}: tensor '${name}'`);
  }

  /** Read a tensor's elements in their stored type (F16/BF16 as raw 16-bit patterns). */
  async readRaw(name: string): Promise<SafetensorsRawArray> {
    const { info, bytes } = await this.bytes(name);
    const b = bytes.buffer;
    const o = bytes.byteOffset;
    const n = info.byteLength / DTYPE_BYTES[info.dtype];
    switch (info.dtype) {
      case 'F64':
        return new Float64Array(b, o, n);
      case 'F32':
        return new Float32Array(b, o, n);
      case 'F16':
      case 'BF16':
      case 'U16':
        return new Uint16Array(b, o, n);
      case 'I64':
        return new BigInt64Array(b, o, n);
      case 'U64':
        return new BigUint64Array(b, o, n);
      case 'I32':
        return new Int32Array(b, o, n);
      case 'U32':
        return new Uint32Array(b, o, n);
      case 'I16':
        return new Int16Array(b, o, n);
      case 'I8':
        return new Int8Array(b, o, n);
      default:
        return bytes;
    }
  }

  /** Close the file. */
  async close(): Promise<void> {
    await this.file.close();
  }
}
