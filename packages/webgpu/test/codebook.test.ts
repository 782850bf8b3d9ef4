import { describe, expect, test } from 'vitest';
import {
  XqShapeError,
  codebookKeyScores,
  codebookValueMix,
  encodeScale,
  lloydMaxCodebook,
  packCodebookRow,
  scaleDecodeTable,
  type CodebookKvView,
  type CodebookSegment,
  type ScaleFormat,
} from '@xquant/quant';
import { createCodebookAttention, type GpuCodebookKv } from '../src/index.js';
import { normal, openGpu, rng } from './helpers.js';

const { gpu, reason } = await openGpu();
const title = (s: string) => (gpu ? s : `${s} — skipped: ${reason}`);

/** Segments of [channels, bits] pairs laid end to end in the bit stream; `shared`: one scale slot for all. */
function segmentsOf(parts: [number, number][], shared: boolean): CodebookSegment[] {
  let start = 0;
  let bitOffset = 0;
  return parts.map(([length, bits], i) => {
    const s = { start, length, bits, levels: Float32Array.from(lloydMaxCodebook(bits, length).levels), bitOffset, scaleSlot: shared ? 0 : i };
    start += length;
    bitOffset += length * bits;
    return s;
  });
}

/** Random codes and scales (in format `fmt`) for every row of a view with these segments. */
function viewOf(segments: CodebookSegment[], heads: number, tokens: number, fmt: ScaleFormat, seed: number): CodebookKvView {
  const r = rng(seed);
  const last = segments[segments.length - 1]!;
  const D = last.start + last.length;
  const rowWords = Math.ceil((last.bitOffset + last.length * last.bits) / 32);
  const slots = Math.max(...segments.map((s) => s.scaleSlot)) + 1;
  const rows = tokens * heads;
  const packed = new Uint32Array(rows * rowWords);
  const scales = fmt === 'fp16' ? new Uint16Array(rows * slots) : new Uint8Array(rows * slots);
  const codes = new Uint8Array(D);
  for (let row = 0; row < rows; row++) {
    for (const s of segments) for (let c = s.start; c < s.start + s.length; c++) codes[c] = Math.floor(r() * 2 ** s.bits);
    packCodebookRow(segments, rowWords, codes, packed, row * rowWords);
    for (let k = 0; k < slots; k++) scales[row * slots + k] = encodeScale(fmt, 0.25 + 4 * r());
  }
  return { heads, tokens, headDim: D, segments, rowWords, scalesPerRow: slots, packed, scales, scaleTable: scaleDecodeTable(fmt) };
}

/** max over i of |a − b| / (tol·scale_i + 1e-5), where scale_i is the magnitude of the terms summed into b[i]. */
function worst(a: Float32Array, b: Float32Array, scale: Float32Array, tol: number): number {
  let w = 0;
  for (let i = 0; i < b.length; i++) w = Math.max(w, Math.abs(a[i]! - b[i]!) / (tol * scale[i]! + 1e-5));
  return w;
}

const absOf = (x: Float32Array) => x.map(Math.abs);

const LAYOUTS: { name: string; parts: [number, number][]; shared?: boolean; fmt: ScaleFormat }[] = [
  { name: '1-bit, log8', parts: [[64, 1]], fmt: 'log8' },
  { name: '2-bit, fp16', parts: [[64, 2]], fmt: 'fp16' },
  { name: '3-bit (codes straddle words), e4m3', parts: [[64, 3]], fmt: 'e4m3' },
  { name: '4-bit d=128, log8', parts: [[128, 4]], fmt: 'log8' },
  { name: '2.5 (3-bit outliers + 2-bit), fp16', parts: [[32, 3], [32, 2]], fmt: 'fp16' },
  { name: '1.5 with one shared scale, log8', parts: [[32, 2], [32, 1]], shared: true, fmt: 'log8' },
];

describe.skipIf(!gpu)(title('WGSL codebook kernels (turboquant layout) vs the CPU kernels'), () => {
  const k = gpu ? createCodebookAttention(gpu.device) : (undefined as never);
  const T = 1100; // 3 chunks, the last partial

  for (const [li, layout] of LAYOUTS.entries()) {
    const rep = [1, 4, 3][li % 3]!;
    const heads = 2;
    const qHeads = heads * rep;
    test(`${layout.name}: keyScores and valueMix, ${qHeads}/${heads} heads, ${T} tokens`, async () => {
      const view = viewOf(segmentsOf(layout.parts, layout.shared ?? false), heads, T, layout.fmt, 100 + li);
      const D = view.headDim;
      const r = rng(7 + li);
      const q = normal(qHeads * D, r);
      const kv = k.upload(view);

      const scoresCall = await k.keyScores({ q: k.base.createBuffer(q), qHeads, keys: kv });
      const gpuScores = await k.base.runAndRead(scoresCall);
      const cpuScores = codebookKeyScores(q, qHeads, view, new Float32Array(qHeads * T));
      const bound = codebookKeyScores(absOf(q), qHeads, { ...view, segments: view.segments.map((s) => ({ ...s, levels: absOf(s.levels) })) }, new Float32Array(qHeads * T));
      expect(worst(gpuScores, cpuScores, bound, 1e-5)).toBeLessThan(1);

      const p = Float32Array.from({ length: qHeads * T }, () => r());
      const mixCall = await k.valueMix({ p: k.base.createBuffer(p), qHeads, values: kv });
      const gpuMix = await k.base.runAndRead(mixCall);
      const cpuMix = codebookValueMix(p, qHeads, view, new Float32Array(qHeads * D));
      const mixBound = codebookValueMix(p, qHeads, { ...view, segments: view.segments.map((s) => ({ ...s, levels: absOf(s.levels) })) }, new Float32Array(qHeads * D));
      expect(worst(gpuMix, cpuMix, mixBound, 1e-5)).toBeLessThan(1);
      scoresCall.destroy();
      mixCall.destroy();
      k.release(kv);
    });
  }

  // keys and values in different layouts (as a plan gives them), one chunk and several, 4 and 7 query heads per KV head
  for (const [tokens, rep, fmt] of [[300, 4, 'log8'], [1600, 7, 'fp16']] as const) {
    test(`attention (fused scores → softmax → values, chunks merged), ${tokens} tokens, ${2 * rep}/2 heads, ${fmt} scales: softmax over the CPU scores, then the CPU mix`, { timeout: 300_000 }, async () => {
      const keys = viewOf(segmentsOf([[32, 3], [32, 2]], false), 2, tokens, fmt, 1);
      const values = viewOf(segmentsOf([[64, 1]], false), 2, tokens, fmt, 2);
      const qHeads = 2 * rep;
      const q = normal(qHeads * 64, rng(3), 0.5);
      const gk = k.upload(keys);
      const gv = k.upload(values);
      const call = await k.attention({ q: k.base.createBuffer(q), qHeads, keys: gk, values: gv });
      const got = await k.base.runAndRead(call);
      const s = codebookKeyScores(q, qHeads, keys, new Float32Array(qHeads * tokens));
      for (let j = 0; j < qHeads; j++) {
        const row = s.subarray(j * tokens, (j + 1) * tokens);
        const m = Math.max(...row.map((x) => x / 8));
        let z = 0;
        for (let t = 0; t < tokens; t++) z += row[t] = Math.exp(row[t]! / 8 - m);
        for (let t = 0; t < tokens; t++) row[t] = row[t]! / z;
      }
      const want = codebookValueMix(s, qHeads, values, new Float32Array(qHeads * 64));
      const scale = codebookValueMix(s, qHeads, { ...values, segments: values.segments.map((x) => ({ ...x, levels: absOf(x.levels) })) }, new Float32Array(qHeads * 64));
      expect(worst(got, want, scale, 1e-4)).toBeLessThan(1);
      call.destroy();
      for (const g of [gk, gv] as GpuCodebookKv[]) k.release(g);
    });
  }

  // a resident copy grown row by row (as the turboquant cache's flushes grow it): partial scale words, room doubling
  test.each(['log8', 'fp16'] as const)('extend() writes only new rows and gives the numbers of a fresh upload (%s scales)', async (fmt) => {
    const full = viewOf(segmentsOf([[32, 3], [32, 2]], false), 2, 160, fmt, 21);
    const rows = (n: number) => ({ ...full, tokens: n });
    let kv = k.upload(rows(1));
    const firstCodes = kv.codes;
    let replaced = 0;
    for (const n of [2, 3, 7, 8, 33, 70, 140]) {
      const before = kv.codes;
      kv = k.extend(kv, rows(n));
      if (kv.codes !== before) replaced++;
      expect(kv.tokens).toBe(n);
      const fresh = k.upload(rows(n));
      const q = normal(2 * 64, rng(n));
      const [a, b] = await Promise.all([kv, fresh].map(async (c) => k.base.runAndRead(await k.keyScores({ q: k.base.createBuffer(q), qHeads: 2, keys: c }))));
      expect(Array.from(a!)).toEqual(Array.from(b!));
      const p = Float32Array.from({ length: 2 * n }, (_, i) => (i % 7) / 7);
      const [x, y] = await Promise.all([kv, fresh].map(async (c) => k.base.runAndRead(await k.valueMix({ p: k.base.createBuffer(p), qHeads: 2, values: c }))));
      expect(Array.from(x!)).toEqual(Array.from(y!));
      k.release(fresh);
    }
    // room: 1 → 2 → 4 → 8 (8 rows fit: in place) → 33 → 70 → 140 (at least double, at least the rows): a whole copy
    // each time room ran out
    expect(kv.codes).not.toBe(firstCodes);
    expect(replaced).toBe(6);
    kv = k.extend(kv, rows(141)); // room for 280 rows
    const kept = kv;
    kv = k.extend(kv, rows(150));
    expect(kv.codes).toBe(kept.codes); // written in place
    // a bad scale among the new rows is rejected before anything is written; the copy stays usable
    const badScales = fmt === 'fp16' ? Uint16Array.from(full.scales as Uint16Array) : Uint8Array.from(full.scales as Uint8Array);
    badScales[155 * 2 * 2] = fmt === 'fp16' ? 0x7c00 : 255;
    const badTable = fmt === 'fp16' ? full.scaleTable : Float32Array.from(full.scaleTable, (v, i) => (i === 255 ? Number.POSITIVE_INFINITY : v));
    expect(() => k.extend(kv, { ...full, tokens: 160, scales: badScales, scaleTable: badTable })).toThrow(XqShapeError);
    expect(kv.tokens).toBe(150);
    // another layout: a fresh upload
    const other = viewOf(segmentsOf([[64, 2]], false), 2, 10, fmt, 3);
    const re = k.extend(kv, other);
    expect([re.tokens, re.rowWords]).toEqual([10, 4]);
    k.release(re);
  });

  test('bad shapes give XqShapeError', async () => {
    const view = viewOf(segmentsOf([[64, 2]], false), 2, 40, 'log8', 5);
    const kv = k.upload(view);
    await expect(k.keyScores({ q: k.base.createBuffer(new Float32Array(3 * 64)), qHeads: 3, keys: kv })).rejects.toThrow(XqShapeError);
    await expect(k.keyScores({ q: k.base.createBuffer(new Float32Array(64)), qHeads: 2, keys: kv })).rejects.toThrow(/q: buffer/);
    await expect(k.valueMix({ p: k.base.createBuffer(new Float32Array(2 * 40)), qHeads: 2, values: kv, pStride: 39 })).rejects.toThrow(XqShapeError);
    await expect(k.attention({ q: k.base.createBuffer(new Float32Array(2 * 64)), qHeads: 2, keys: kv, values: kv, chunkTokens: 100 })).rejects.toThrow(expect.objectContaining({ code: 'E_CONFIG' }));
    expect(() => k.upload({ ...view, tokens: 0 })).toThrow(XqShapeError);
    expect(() => k.upload({ ...view, rowWords: 3 })).toThrow(XqShapeError);
    // NaN/Inf: a level, an 8-bit scale whose table entry is not finite, a 16-bit scale code that is fp16 Inf
    expect(() => k.upload({ ...view, segments: [{ ...view.segments[0]!, levels: Float32Array.of(0, Number.NaN, 1, 2) }] })).toThrow(/non-finite level/);
    const nanTable = Float32Array.from(view.scaleTable);
    nanTable[view.scales[0]!] = Number.POSITIVE_INFINITY;
    expect(() => k.upload({ ...view, scaleTable: nanTable })).toThrow(/scale 0 .* decodes to Infinity/);
    const half = viewOf(segmentsOf([[64, 2]], false), 2, 40, 'fp16', 7);
    (half.scales as Uint16Array)[3] = 0x7c00;
    expect(() => k.upload(half)).toThrow(/scale 3 \(code 31744\)/);
    expect(() => k.upload({ ...half, scaleTable: new Float32Array(65536).fill(1) })).toThrow(/fp16 table/);
    const other = k.upload(viewOf(segmentsOf([[64, 2]], false), 2, 41, 'log8', 6));
    await expect(k.attention({ q: k.base.createBuffer(new Float32Array(2 * 64)), qHeads: 2, keys: kv, values: other })).rejects.toThrow(/keys hold 40 tokens/);
    k.release(other);
    k.release(kv);
  });
});
