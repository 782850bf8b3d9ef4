import { readFileSync } from 'node:fs';
import { test, expect } from 'vitest';
import { quantizeKeys, quantizeValues, unpackKv, dequantizeKv } from '@xquant/quant';
function dec(a: any) { const b = Buffer.from(a.b64, 'base64'); const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength); return a.dtype === 'int32' ? new Int32Array(ab) : new Float32Array(ab); }
for (const f of ['a_keys', 'b_values']) {
  const j = JSON.parse(readFileSync(`../shared/golden/${f}.json`, 'utf8'));
  for (const c of j.cases) test(`${f} ${c.name}`, () => {
    const p = c.params; const A = c.arrays;
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
    // ref deq layout: keys [B,H,D,T]
    const refT = p.kind === 'keys' ? (() => { const o = new Float32Array(ref.length); for (let h=0;h<p.H;h++) for (let d=0;d<p.D;d++) for (let t=0;t<p.T;t++) o[h*p.T*p.D+t*p.D+d]=ref[h*p.D*p.T+d*p.T+t]; return o; })() : ref;
    expect(Array.from(deq)).toEqual(Array.from(refT));
  });
}
