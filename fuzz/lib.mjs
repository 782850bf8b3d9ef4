// Shared helpers of the fuzz targets: file writers and byte mutations. Plain ESM, no dependencies: the targets run
// under vitest (packages from src) and under scripts/fuzz-long.mjs (packages from dist).

const enc = new TextEncoder();

/** Raise a failure unless `e` is a typed error of the packages (`XqError` with a code); returns 'rejected'. */
export function typedOrThrow(e, quant, what) {
  if (quant.XqError.isInstance(e) && typeof e.code === 'string' && e.code.startsWith('E_')) return 'rejected';
  const err = new Error(`${what}: untyped ${e?.name ?? typeof e}: ${e?.message ?? String(e)}`);
  err.cause = e;
  throw err;
}

/** Fail with `message` unless `cond`. */
export function invariant(cond, message) {
  if (!cond) throw new Error(`invariant violated: ${message}`);
}

/** Mutations applied in order to a byte array: flip a byte, overwrite 8 bytes with a boundary u64, truncate, append. */
export function mutationsArb(fc) {
  const u64 = fc.constantFrom(0n, 1n, 2n, 7n, 8n, 255n, 2n ** 31n, 2n ** 32n, 2n ** 32n + 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n);
  return fc.array(
    fc.oneof(
      fc.record({ kind: fc.constant('flip'), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('u64'), at: fc.nat(), value: u64 }),
      fc.record({ kind: fc.constant('truncate'), at: fc.nat() }),
      fc.record({ kind: fc.constant('append'), bytes: fc.uint8Array({ maxLength: 16 }) }),
    ),
    { maxLength: 4 },
  );
}

/** Apply {@link mutationsArb} output to a copy of `bytes` (positions taken modulo the length). */
export function mutate(bytes, ops) {
  let b = bytes.slice();
  for (const op of ops) {
    if (b.length === 0) break;
    const at = op.at === undefined ? 0 : op.at % b.length;
    if (op.kind === 'flip') b[at] = op.byte;
    else if (op.kind === 'u64' && at + 8 <= b.length) new DataView(b.buffer, b.byteOffset).setBigUint64(at, op.value, true);
    else if (op.kind === 'truncate') b = b.slice(0, at);
    else if (op.kind === 'append') {
      const n = new Uint8Array(b.length + op.bytes.length);
      n.set(b);
      n.set(op.bytes, b.length);
      b = n;
    }
  }
  return b;
}

function concat(chunks) {
  const out = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** A safetensors file of `entries` ({ name, dtype, shape, bytes }), tensors packed in order. */
export function safetensorsBytes(entries, metadata) {
  const header = {};
  const set = (k, v) => Object.defineProperty(header, k, { value: v, enumerable: true, writable: true, configurable: true }); // '__proto__' too
  if (metadata) set('__metadata__', metadata);
  let off = 0;
  for (const e of entries) {
    set(e.name, { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.bytes.length] });
    off += e.bytes.length;
  }
  const json = enc.encode(JSON.stringify(header));
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
  return concat([len, json, ...entries.map((e) => e.bytes)]);
}

/** GGUF metadata value types (spec: ggml/docs/gguf.md). */
export const GGUF_TYPE = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, str: 8, arr: 9, u64: 10, i64: 11, f64: 12 };

class Writer {
  chunks = [];
  length = 0;
  bytes(b) {
    this.chunks.push(b);
    this.length += b.length;
  }
  num(type, v) {
    const size = { u8: 1, i8: 1, bool: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, u64: 8, i64: 8, f64: 8 }[type];
    const b = new Uint8Array(size);
    const dv = new DataView(b.buffer);
    if (type === 'u8' || type === 'bool') dv.setUint8(0, Number(v));
    else if (type === 'i8') dv.setInt8(0, Number(v));
    else if (type === 'u16') dv.setUint16(0, Number(v), true);
    else if (type === 'i16') dv.setInt16(0, Number(v), true);
    else if (type === 'u32') dv.setUint32(0, Number(v), true);
    else if (type === 'i32') dv.setInt32(0, Number(v), true);
    else if (type === 'f32') dv.setFloat32(0, Number(v), true);
    else if (type === 'f64') dv.setFloat64(0, Number(v), true);
    else if (type === 'u64') dv.setBigUint64(0, BigInt(v), true);
    else if (type === 'i64') dv.setBigInt64(0, BigInt(v), true);
    this.bytes(b);
  }
  str(s) {
    const b = enc.encode(s);
    this.num('u64', b.length);
    this.bytes(b);
  }
  value(v) {
    if (v.type === 'str') this.str(v.value);
    else if (v.type === 'arr') {
      this.num('u32', GGUF_TYPE[v.of]);
      this.num('u64', v.value.length);
      for (const x of v.value) this.value(x);
    } else this.num(v.type, v.value);
  }
  pad(alignment) {
    const n = (alignment - (this.length % alignment)) % alignment;
    if (n) this.bytes(new Uint8Array(n));
  }
}

/**
 * A GGUF v3 file: `metadata` is a list of [key, value] with value `{ type, value }` (arrays: `{ type: 'arr', of,
 * value: [{ type: of, value }, …] }`), `tensors` a list of { name, shape (row-major), type (GGML id), bytes }.
 */
export function ggufBytes(metadata, tensors, alignment = 32) {
  const w = new Writer();
  w.bytes(enc.encode('GGUF'));
  w.num('u32', 3);
  w.num('u64', tensors.length);
  w.num('u64', metadata.length);
  for (const [k, v] of metadata) {
    w.str(k);
    w.num('u32', GGUF_TYPE[v.type]);
    w.value(v);
  }
  let off = 0;
  for (const t of tensors) {
    w.str(t.name);
    w.num('u32', t.shape.length);
    for (const d of [...t.shape].reverse()) w.num('u64', d);
    w.num('u32', t.type);
    w.num('u64', off);
    off += Math.ceil(t.bytes.length / alignment) * alignment;
  }
  w.pad(alignment);
  for (const t of tensors) {
    w.bytes(t.bytes);
    w.pad(alignment);
  }
  return concat(w.chunks);
}

/** Plain JS value of a GGUF metadata value as the reader returns it (u64/i64 as bigint). */
export function ggufPlain(v) {
  if (v.type === 'arr') return v.value.map(ggufPlain);
  if (v.type === 'u64' || v.type === 'i64') return BigInt(v.value);
  if (v.type === 'bool') return Boolean(v.value);
  if (v.type === 'f32') return Math.fround(v.value);
  return v.value;
}
