// Fuzz target: the GGUF header reader. Well-formed files give back every metadata value exactly (strings of any
// Unicode, arrays, 64-bit integers) and every tensor's shape and byte range; any mutation gives a typed error or a
// header whose tensors lie inside the file, aligned, without overlaps.
import { ggufBytes, ggufPlain, invariant, mutate, mutationsArb, typedOrThrow } from '../lib.mjs';

const BLOCK = { 0: [1, 4], 1: [1, 2], 30: [1, 2], 8: [32, 34], 2: [32, 18] };

function valueArb(fc, depth) {
  const scalar = fc.oneof(
    fc.record({ type: fc.constant('u8'), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ type: fc.constant('i16'), value: fc.integer({ min: -32768, max: 32767 }) }),
    fc.record({ type: fc.constant('u32'), value: fc.nat() }),
    fc.record({ type: fc.constant('i32'), value: fc.integer() }),
    fc.record({ type: fc.constant('f32'), value: fc.float({ noNaN: true }) }),
    fc.record({ type: fc.constant('f64'), value: fc.double({ noNaN: true }) }),
    fc.record({ type: fc.constant('bool'), value: fc.boolean() }),
    fc.record({ type: fc.constant('u64'), value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
    fc.record({ type: fc.constant('i64'), value: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }) }),
    fc.record({ type: fc.constant('str'), value: fc.string({ unit: 'binary', maxLength: 40 }) }),
  );
  if (depth >= 2) return scalar;
  // arrays hold one element type; arrays of arrays only at the top level (the inner ones hold scalars)
  const kinds = depth === 0 ? ['str', 'u32', 'i64', 'f32', 'arr'] : ['str', 'u32', 'i64', 'f32'];
  return fc.oneof(
    { weight: 4, arbitrary: scalar },
    {
      weight: 1,
      arbitrary: fc
        .constantFrom(...kinds)
        .chain((of) =>
          fc.record({
            type: fc.constant('arr'),
            of: fc.constant(of),
            value: fc.array(of === 'arr' ? arrayOf(fc, fc.constantFrom('str', 'u32')) : valueArb(fc, 2).filter((v) => v.type === of), { maxLength: 6 }),
          }),
        ),
    },
  );
}

/** An array value whose element type is drawn from `types` (scalars only). */
function arrayOf(fc, types) {
  return types.chain((of) => fc.record({ type: fc.constant('arr'), of: fc.constant(of), value: fc.array(valueArb(fc, 2).filter((v) => v.type === of), { maxLength: 4 }) }));
}

export default {
  name: 'gguf',
  description: 'readGgufHeader on generated and mutated GGUF v3 files',
  packages: ['quant', 'models'],
  arbitrary: (fc) =>
    fc.record({
      metadata: fc.uniqueArray(fc.tuple(fc.string({ unit: 'binary', maxLength: 16 }).filter((k) => !k.startsWith('general.alignment')), valueArb(fc, 0)), {
        maxLength: 6,
        selector: (e) => e[0],
      }),
      tensors: fc.uniqueArray(
        fc.record({
          name: fc.string({ unit: 'binary', maxLength: 12 }),
          type: fc.constantFrom(0, 1, 30, 8, 2),
          shape: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 3 }),
        }),
        { maxLength: 3, selector: (t) => t.name },
      ),
      mutations: mutationsArb(fc),
    }),
  async check(input, { quant, models }) {
    const tensors = input.tensors.map((t) => {
      const [elements, bytesPer] = BLOCK[t.type];
      const shape = [...t.shape];
      shape[shape.length - 1] *= elements; // GGML ne0 (the last row-major dim) must be a multiple of the block
      const count = shape.reduce((a, b) => a * b, 1);
      return { ...t, shape, bytes: new Uint8Array((count / elements) * bytesPer).fill(0x3c) };
    });
    const clean = ggufBytes(input.metadata, tensors);
    const bytes = mutate(clean, input.mutations);
    const intact = bytes.length === clean.length && bytes.every((b, i) => b === clean[i]);
    let h;
    try {
      h = await models.readGgufHeader(new models.MemorySource(bytes, 'fuzz.gguf'));
    } catch (e) {
      invariant(!intact, `a well-formed file was rejected: ${e?.message}`);
      return typedOrThrow(e, quant, 'readGgufHeader');
    }
    const spans = [...h.tensors.values()].sort((a, b) => a.byteOffset - b.byteOffset);
    let end = 0;
    for (const t of spans) {
      invariant(t.byteOffset >= end, `'${t.name}' overlaps the previous tensor`);
      invariant(t.byteOffset + t.byteLength <= h.fileSize, `'${t.name}' ends past the file`);
      const [elements, bytesPer] = BLOCK[t.type];
      invariant(t.byteLength === (t.shape.reduce((a, b) => a * b, 1) / elements) * bytesPer, `'${t.name}' byteLength ≠ shape × type`);
      end = t.byteOffset + t.byteLength;
    }
    if (intact) {
      for (const [k, v] of input.metadata) {
        const got = h.metadata[k];
        const want = ggufPlain(v);
        const same = (a, b) =>
          Array.isArray(a) ? Array.isArray(b) && a.length === b.length && a.every((x, i) => same(x, b[i])) : typeof a === 'number' ? Object.is(a, b) || a === b : a === b;
        invariant(same(want, got), `metadata ${JSON.stringify(k)} differs`);
      }
      invariant(h.tensors.size === tensors.length, `${h.tensors.size} tensors read, ${tensors.length} written`);
      for (const t of tensors) {
        const got = h.tensors.get(t.name);
        invariant(got && got.type === t.type && got.shape.join() === t.shape.join(), `tensor ${JSON.stringify(t.name)} differs`);
      }
    }
    return 'ok';
  },
};
