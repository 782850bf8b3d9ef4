import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { packMeta, createPackedAttention, type GpuKvLayout } from '../src/index.js';
import { openGpu } from './helpers.js';

const FILE = '../shared/golden/g_attention.json';
const { gpu, reason } = await openGpu();
const skip = !gpu || !existsSync(FILE);
const why = !existsSync(FILE) ? `${FILE} not found` : reason;

interface Arr {
  shape: number[];
  dtype: 'float32' | 'int32';
  b64: string;
}
function dec(a: Arr): Float32Array | Int32Array {
  const b = Buffer.from(a.b64, 'base64');
  const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  return a.dtype === 'int32' ? new Int32Array(ab) : new Float32Array(ab);
}

describe.skipIf(skip)(skip ? `golden g_attention — skipped: ${why}` : 'golden g_attention (authors’ packed attention, |out − ref_f64| ≤ 2e-3·absum + 1e-6)', () => {
  const cases = skip ? [] : (JSON.parse(readFileSync(FILE, 'utf8')).cases as Array<{ name: string; params: Record<string, any>; arrays: Record<string, Arr> }>);
  const k = gpu ? createPackedAttention(gpu.device) : (undefined as never);
  for (const c of cases) {
    test(c.name, async () => {
      const p = c.params;
      const A = c.arrays;
      const { H, T, D, bits, group_size: gs } = p as { H: number; T: number; D: number; bits: 1 | 2 | 4; group_size: number };
      const metaFormat = p.dtype === 'float16' ? 'f16' : 'f32';
      const packed = new Uint32Array((dec(A.packed!) as Int32Array).buffer);
      const layout: GpuKvLayout = {
        axis: p.kind === 'keys' ? 'channel' : 'token',
        heads: H,
        tokens: T,
        capacity: T,
        headDim: D,
        bits,
        groupSize: gs,
        metaFormat,
        codes: packed,
        meta: packMeta(dec(A.scale!) as Float32Array, dec(A.mn!) as Float32Array, metaFormat),
      };
      const a = dec(A.a!) as Float32Array;
      const kv = k.uploadKv(layout);
      const call =
        p.kind === 'keys'
          ? await k.keyScores({ q: k.createBuffer(a), qHeads: H, keys: kv, headsPerGroup: 1, unroll: 2 })
          : await k.valueMix({ p: k.createBuffer(a), qHeads: H, values: kv, headsPerGroup: 1, unroll: 2 });
      const out = await k.runAndRead(call);
      const ref = dec(A.ref_f64!) as Float32Array;
      const absum = dec(A.absum!) as Float32Array;
      expect(out.length).toBe(ref.length);
      let worst = 0;
      for (let i = 0; i < ref.length; i++) {
        const e = Math.abs(out[i]! - ref[i]!);
        expect(e).toBeLessThanOrEqual(2e-3 * absum[i]! + 1e-6);
        worst = Math.max(worst, e / (absum[i]! + 1e-30));
      }
      // float32 accumulation of exact dequantization: far inside the authors' fp16 tolerance
      expect(worst).toBeLessThan(1e-5);
    });
  }
});
