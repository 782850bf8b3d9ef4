import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';
import { dequantizeKv, quantizeKeys, quantizeValues, unpackKv } from '@xquant/quant';

// ../shared relative to the repository root (CI checks shared/ out beside the clone)
const GOLDEN = fileURLToPath(new URL('../../../../shared/golden/', import.meta.url));
const present = existsSync(`${GOLDEN}a_keys.json`) && existsSync(`${GOLDEN}b_values.json`);

interface GoldenArray { shape: number[]; dtype: 'float32' | 'int32'; b64: string }

function dec(a: GoldenArray): Float32Array | Int32Array {
  const b = Buffer.from(a.b64, 'base64');
  const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  return a.dtype === 'int32' ? new Int32Array(ab) : new Float32Array(ab);
}

describe.skipIf(!present)(`golden a_keys/b_values bit-exact${present ? '' : ' (skipped: ../shared/golden not found beside the repository)'}`, () => {
  if (!present) test('a_keys, b_values', () => {}); // shows the skip reason; never runs
  for (const f of ['a_keys', 'b_values']) {
    const cases = present ? JSON.parse(readFileSync(`${GOLDEN}${f}.json`, 'utf8')).cases : [];
    for (const c of cases) {
      test(`${f} ${c.name}`, () => {
        const p = c.params;
        const A = c.arrays;
        const x = dec(A.x) as Float32Array;
        const shape = { heads: p.H, tokens: p.T, headDim: p.D };
        const opts = { bits: p.bits, groupSize: p.group_size, precision: p.dtype === 'float16' ? 'fp16' : 'fp32' } as const;
        const q = (p.kind === 'keys' ? quantizeKeys : quantizeValues)(x, shape, opts);
        expect(Array.from(unpackKv(q))).toEqual(Array.from(dec(A.codes)));
        expect(Array.from(new Int32Array(q.packed.buffer))).toEqual(Array.from(dec(A.packed)));
        expect(Array.from(q.scale)).toEqual(Array.from(dec(A.scale)));
        expect(Array.from(q.zero)).toEqual(Array.from(dec(A.mn)));
        const deq = dequantizeKv(q);
        const ref = dec(A.deq) as Float32Array;
        // reference deq layout: keys [B,H,D,T], values [B,H,T,D]
        let refT = ref;
        if (p.kind === 'keys') {
          refT = new Float32Array(ref.length);
          for (let h = 0; h < p.H; h++)
            for (let d = 0; d < p.D; d++)
              for (let t = 0; t < p.T; t++) refT[h * p.T * p.D + t * p.D + d] = ref[h * p.D * p.T + d * p.T + t]!;
        }
        expect(Array.from(deq)).toEqual(Array.from(refT));
      });
    }
  }
});
