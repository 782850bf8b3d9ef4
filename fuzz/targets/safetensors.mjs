// Fuzz target: the safetensors reader. Well-formed files read back exactly; any mutation of one (bit flips, boundary
// u64s over length fields, truncation, trailing bytes) gives a typed error or a header whose every tensor lies inside
// the data section, sized shape × dtype, tiling it, and whose reads return exactly that many elements.
import { invariant, mutate, mutationsArb, safetensorsBytes, typedOrThrow } from '../lib.mjs';

const DTYPE_BYTES = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1 };
const FLOAT = new Set(['F64', 'F32', 'F16', 'BF16']);

export default {
  name: 'safetensors',
  description: 'SafetensorsFile.open + readRaw/readFloat32 on generated and mutated files',
  packages: ['quant', 'models'],
  arbitrary: (fc) =>
    fc.record({
      tensors: fc.uniqueArray(
        fc.record({
          name: fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('model.embed_tokens.weight', '__proto__', 'constructor', '')),
          dtype: fc.constantFrom(...Object.keys(DTYPE_BYTES)),
          shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }),
          seed: fc.integer(),
        }),
        { maxLength: 4, selector: (t) => t.name },
      ),
      metadata: fc.option(fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 3 }), { nil: undefined }),
      mutations: mutationsArb(fc),
    }),
  async check(input, { quant, models }) {
    const entries = input.tensors
      .filter((t) => t.name !== '__metadata__')
      .map((t) => {
        const n = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
        const bytes = new Uint8Array(n);
        let s = t.seed >>> 0;
        for (let i = 0; i < n; i++) bytes[i] = (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) >>> 24;
        return { ...t, bytes };
      });
    const clean = safetensorsBytes(entries, input.metadata);
    const bytes = mutate(clean, input.mutations);
    const intact = bytes.length === clean.length && bytes.every((b, i) => b === clean[i]);
    let f;
    try {
      f = await models.SafetensorsFile.open(new models.MemorySource(bytes, 'fuzz.safetensors'));
    } catch (e) {
      invariant(!intact, `a well-formed file was rejected: ${e?.message}`);
      return typedOrThrow(e, quant, 'SafetensorsFile.open');
    }
    try {
      const h = f.header;
      const spans = [...h.tensors.values()].sort((a, b) => a.byteOffset - b.byteOffset || a.byteLength - b.byteLength);
      let at = h.dataOffset;
      for (const t of spans) {
        const count = t.shape.reduce((a, b) => a * b, 1);
        invariant(t.byteOffset === at, `'${t.name}' starts at ${t.byteOffset}, expected ${at} (tiling)`);
        invariant(t.byteLength === count * DTYPE_BYTES[t.dtype], `'${t.name}' byteLength ${t.byteLength} ≠ shape × dtype`);
        at += t.byteLength;
        let raw;
        try {
          raw = await f.readRaw(t.name);
        } catch (e) {
          return typedOrThrow(e, quant, `readRaw('${t.name}')`);
        }
        invariant(raw.length === count, `readRaw('${t.name}') returned ${raw.length} elements, expected ${count}`);
        if (FLOAT.has(t.dtype)) invariant((await f.readFloat32(t.name)).length === count, `readFloat32('${t.name}') length`);
      }
      invariant(at === h.fileSize, `tensors end at ${at}, the file at ${h.fileSize}`);
      if (intact) {
        // exact round trip of every tensor's bytes
        invariant(h.tensors.size === entries.length, `${h.tensors.size} tensors read, ${entries.length} written`);
        for (const e of entries) {
          const raw = await f.readRaw(e.name);
          const got = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
          invariant(got.length === e.bytes.length && got.every((b, i) => b === e.bytes[i]), `'${e.name}' bytes differ`);
        }
      }
      return 'ok';
    } finally {
      await f.close();
    }
  },
};
