import { readFileSync } from 'node:fs';
import { XqError, XqFormatError } from '@xquant/quant';

/** The golden families, one per file: a keys, b values, c calibration, d cross-layer, e anno=2, f packing, g attention. */
export const GOLDEN_FAMILIES = [
  'a_keys',
  'b_values',
  'c_calibration',
  'd_crosslayer',
  'e_anno2',
  'f_packing',
  'g_attention',
] as const;

/** One of {@link GOLDEN_FAMILIES}. */
export type GoldenFamily = (typeof GOLDEN_FAMILIES)[number];

/** Largest array a golden file may declare (elements); larger shapes are rejected before decoding. */
export const MAX_ARRAY_ELEMENTS = 2 ** 27;

/** Largest rank a golden array may declare. */
export const MAX_ARRAY_RANK = 8;

/** A decoded golden array: row-major little-endian data of `shape`. */
export interface GoldenArray {
  /** Row-major shape. */
  shape: number[];
  /** Storage dtype. */
  dtype: 'float32' | 'int32';
  /** The dtype the reference produced (`float16` values are stored widened to float32, exactly). */
  origDtype?: string;
  /** The decoded elements. */
  data: Float32Array | Int32Array;
}

/** One golden case: its parameters (see the golden README) and its decoded arrays. */
export interface GoldenCase {
  /** Unique within the file; encodes D, T, gs, bits (and η index). */
  name: string;
  /** kind, B, H, T, D, group_size, bits, dtype, gamma and per-family extras (see the package README). */
  params: Record<string, unknown>;
  /** Decoded arrays by name. */
  arrays: Record<string, GoldenArray>;
}

/** A parsed, validated golden file. */
export interface GoldenFile {
  /** Which computation the cases exercise. */
  family: GoldenFamily;
  /** Free text from the generator. */
  description?: string;
  /** The cases, in file order. */
  cases: GoldenCase[];
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Decodes strict base64 (no whitespace, padded) into a fresh, aligned byte buffer. */
function decodeBase64(b64: string, where: string): Uint8Array {
  if (b64.length % 4 !== 0 || !BASE64.test(b64)) {
    throw new XqFormatError(`${where}: b64 is not valid padded base64 (length ${b64.length})`);
  }
  const buf = Buffer.from(b64, 'base64');
  const out = new Uint8Array(buf.byteLength);
  out.set(buf);
  return out;
}

/** Validates and decodes one `{shape, dtype, orig_dtype?, b64}` entry. */
export function decodeGoldenArray(raw: unknown, where: string): GoldenArray {
  if (!isRecord(raw)) throw new XqFormatError(`${where}: expected {shape, dtype, b64}, got ${raw === null ? 'null' : typeof raw}`);
  const { shape, dtype, b64 } = raw;
  if (!Array.isArray(shape) || shape.length > MAX_ARRAY_RANK || !shape.every((d) => Number.isInteger(d) && (d as number) >= 0)) {
    throw new XqFormatError(`${where}: shape must be an array of at most ${MAX_ARRAY_RANK} non-negative integers; got ${JSON.stringify(shape)}`);
  }
  const n = (shape as number[]).reduce((a, b) => a * b, 1);
  if (n > MAX_ARRAY_ELEMENTS) throw new XqFormatError(`${where}: shape [${shape.join(', ')}] has ${n} elements, more than ${MAX_ARRAY_ELEMENTS}`);
  if (dtype !== 'float32' && dtype !== 'int32') {
    throw new XqFormatError(`${where}: dtype must be 'float32' or 'int32'; got ${JSON.stringify(dtype)}`);
  }
  if (typeof b64 !== 'string') throw new XqFormatError(`${where}: b64 must be a string; got ${typeof b64}`);
  const bytes = decodeBase64(b64, where);
  if (bytes.byteLength !== 4 * n) {
    throw new XqFormatError(`${where}: b64 decodes to ${bytes.byteLength} bytes, expected ${4 * n} (shape [${shape.join(', ')}] × 4 bytes)`);
  }
  const data = dtype === 'int32' ? new Int32Array(bytes.buffer) : new Float32Array(bytes.buffer);
  const origDtype = typeof raw.orig_dtype === 'string' ? raw.orig_dtype : undefined;
  return { shape: [...(shape as number[])], dtype, ...(origDtype ? { origDtype } : {}), data };
}

/**
 * Validates and decodes a golden file given as JSON text or as the parsed object
 * `{family, cases: [{name, params, arrays: {NAME: {shape, dtype, b64}}}]}`. Throws {@link @xquant/quant!XqFormatError} (with the
 * case and array name) on invalid JSON, an unknown family, a missing field, bad base64, or a byte length that does
 * not match the shape.
 */
export function parseGoldenFile(input: string | unknown): GoldenFile {
  let obj: unknown = input;
  if (typeof input === 'string') {
    try {
      obj = JSON.parse(input);
    } catch (e) {
      throw new XqFormatError(`golden file is not valid JSON: ${(e as Error).message}`, { cause: e });
    }
  }
  if (!isRecord(obj)) throw new XqFormatError('golden file must be a JSON object {family, cases}');
  const { family, cases } = obj;
  if (typeof family !== 'string' || !(GOLDEN_FAMILIES as readonly string[]).includes(family)) {
    throw new XqFormatError(`unknown golden family ${JSON.stringify(family)}; expected one of ${GOLDEN_FAMILIES.join(', ')}`);
  }
  if (!Array.isArray(cases) || cases.length === 0) throw new XqFormatError(`${family}: 'cases' must be a non-empty array`);
  const names = new Set<string>();
  const parsed = cases.map((c, i): GoldenCase => {
    if (!isRecord(c)) throw new XqFormatError(`${family}: case #${i} must be an object {name, params, arrays}`);
    const { name, params, arrays } = c;
    if (typeof name !== 'string' || name.length === 0) throw new XqFormatError(`${family}: case #${i} has no name`);
    if (names.has(name)) throw new XqFormatError(`${family}: duplicate case name '${name}'`);
    names.add(name);
    if (!isRecord(params)) throw new XqFormatError(`${family}/${name}: 'params' must be an object`);
    if (!isRecord(arrays)) throw new XqFormatError(`${family}/${name}: 'arrays' must be an object`);
    const decoded: Record<string, GoldenArray> = {};
    for (const [k, v] of Object.entries(arrays)) decoded[k] = decodeGoldenArray(v, `${family}/${name}: array '${k}'`);
    return { name, params, arrays: decoded };
  });
  return { family: family as GoldenFamily, ...(typeof obj.description === 'string' ? { description: obj.description } : {}), cases: parsed };
}

/** Reads and parses a golden file from disk. I/O failures throw `XqError` with code `E_IO`; bad content {@link @xquant/quant!XqFormatError}. */
export function readGoldenFile(path: string): GoldenFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new XqError('E_IO', `cannot read golden file '${path}': ${(e as Error).message}`, { cause: e });
  }
  try {
    return parseGoldenFile(text);
  } catch (e) {
    if (e instanceof XqFormatError) throw new XqFormatError(`${path}: ${e.message}`, { cause: e });
    throw e;
  }
}

/** A golden file from a path, JSON text (a string starting with `{`), a parsed JSON object, or an already parsed file. */
export type GoldenSource = string | GoldenFile | Record<string, unknown>;

/** Loads a {@link GoldenSource}: a path is read from disk, JSON text or an object is validated. */
export function loadGolden(source: GoldenSource): GoldenFile {
  if (typeof source === 'string') return source.trimStart().startsWith('{') ? parseGoldenFile(source) : readGoldenFile(source);
  if (isRecord(source) && Array.isArray(source.cases) && source.cases.every((c) => isRecord(c) && isDecoded(c.arrays))) {
    return source as unknown as GoldenFile;
  }
  return parseGoldenFile(source);
}

function isDecoded(arrays: unknown): boolean {
  return isRecord(arrays) && Object.values(arrays).every((a) => isRecord(a) && (a.data instanceof Float32Array || a.data instanceof Int32Array));
}
