import { describe, expect, it } from 'vitest';
import {
  XqShapeError,
  codebookDequantize,
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
import { rng } from './helpers.js';

const rand = rng;

/** A random view with the given segment widths ([length, bits] …), codes and scales drawn at random. */
function randomView(parts: [number, number][], heads: number, tokens: number, fmt: ScaleFormat, seed: number, shared = false): { view: CodebookKvView; codes: Uint8Array; scales: Float64Array } {
  const r = rand(seed);
  const segments: CodebookSegment[] = [];
  let start = 0;
  let bitOffset = 0;
  for (const [length, bits] of parts) {
    segments.push({ start, length, bits, levels: Float32Array.from(lloydMaxCodebook(bits, length).levels), bitOffset, scaleSlot: shared ? 0 : segments.length });
    start += length;
    bitOffset += length * bits;
  }
  const D = start;
  const rowWords = Math.ceil(bitOffset / 32);
  const slots = shared ? 1 : parts.length;
  const packed = new Uint32Array(tokens * heads * rowWords);
  const scaleCodes = fmt === 'fp16' ? new Uint16Array(tokens * heads * slots) : new Uint8Array(tokens * heads * slots);
  const codes = new Uint8Array(tokens * heads * D);
  const scales = new Float64Array(tokens * heads * slots);
  const table = scaleDecodeTable(fmt);
  for (let row = 0; row < tokens * heads; row++) {
    for (const s of segments) for (let c = s.start; c < s.start + s.length; c++) codes[row * D + c] = Math.floor(r() * (1 << s.bits));
    packCodebookRow(segments, rowWords, codes.subarray(row * D, (row + 1) * D), packed, row * rowWords);
    for (let si = 0; si < slots; si++) {
      const code = encodeScale(fmt, 0.5 + 8 * r());
      scaleCodes[row * slots + si] = code;
      scales[row * slots + si] = table[code]!;
    }
  }
  return { view: { heads, tokens, headDim: D, segments, rowWords, scalesPerRow: slots, packed, scales: scaleCodes, scaleTable: table }, codes, scales };
}

const LAYOUTS: { name: string; parts: [number, number][]; shared?: boolean }[] = [
  { name: '1.5 with one shared scale', parts: [[32, 2], [32, 1]], shared: true },
  { name: '1-bit', parts: [[64, 1]] },
  { name: '2-bit', parts: [[64, 2]] },
  { name: '3-bit (codes straddle words)', parts: [[64, 3]] },
  { name: '4-bit', parts: [[32, 4]] },
  { name: '2.5 (3-bit outliers + 2-bit)', parts: [[32, 3], [32, 2]] },
  { name: '3.5 (4-bit outliers + 3-bit)', parts: [[32, 4], [32, 3]] },
  { name: '1.5 (2-bit outliers + 1-bit)', parts: [[32, 2], [32, 1]] },
];

describe('codebook kernels', () => {
  for (const { name, parts, shared } of LAYOUTS) {
    it(`${name}: packing round-trips and the kernels equal dequantize-then-attend`, () => {
      const H = 2, T = 37;
      // 1, 3 and 5 query rows per KV head (the kernels take query rows 4 at a time)
      for (const [fmt, rows] of [['fp16', 6], ['e4m3', 6], ['log8', 6], ['fp16', 2], ['fp16', 10]] as [ScaleFormat, number][]) {
        const { view, codes, scales } = randomView(parts, H, T, fmt, 11 + parts.length, shared);
        const D = view.headDim;
        // oracle 1: dequantize from the known codes and scales
        const xhat = codebookDequantize(view);
        for (let t = 0; t < T; t++) {
          for (let h = 0; h < H; h++) {
            const row = t * H + h;
            view.segments.forEach((s) => {
              for (let c = s.start; c < s.start + s.length; c++) {
                expect(xhat[(h * T + t) * D + c]).toBe(Math.fround(Math.fround(scales[row * view.scalesPerRow + s.scaleSlot]!) * s.levels[codes[row * D + c]!]!));
              }
            });
          }
        }
        // oracle 2: float64 products over the dequantized rows
        const r = rand(5);
        const stride = T + 3;
        const q = Float32Array.from({ length: rows * D }, () => r() * 2 - 1);
        const got = codebookKeyScores(q, rows, view, new Float32Array(rows * stride).fill(-7), stride);
        const p = Float32Array.from({ length: rows * stride }, () => r());
        const mix = codebookValueMix(p, rows, view, new Float32Array(rows * D), stride);
        for (let j = 0; j < rows; j++) {
          const h = Math.floor(j / (rows / H));
          for (let t = 0; t < T; t++) {
            let s = 0;
            let mag = 0;
            for (let c = 0; c < D; c++) {
              s += q[j * D + c]! * xhat[(h * T + t) * D + c]!;
              mag += Math.abs(q[j * D + c]! * xhat[(h * T + t) * D + c]!);
            }
            expect(Math.abs(got[j * stride + t]! - s)).toBeLessThanOrEqual(1e-6 * mag + 1e-7);
          }
          for (let t = T; t < stride; t++) expect(got[j * stride + t]).toBe(-7); // untouched past `tokens`
          for (let c = 0; c < D; c++) {
            let s = 0;
            let mag = 0;
            for (let t = 0; t < T; t++) {
              s += p[j * stride + t]! * xhat[(h * T + t) * D + c]!;
              mag += Math.abs(p[j * stride + t]! * xhat[(h * T + t) * D + c]!);
            }
            expect(Math.abs(mix[j * D + c]! - s)).toBeLessThanOrEqual(1e-6 * mag + 1e-7);
          }
        }
      }
    });
  }

  it('a segment list edited in place between calls is read afresh (the kernels keep flat tables per list)', () => {
    const { view } = randomView([[32, 3], [32, 2]], 2, 9, 'fp16', 5);
    const q = Float32Array.from({ length: 4 * 64 }, (_, i) => Math.sin(i));
    const before = codebookKeyScores(q, 4, view, new Float32Array(4 * 9)).slice();
    const p = Float32Array.from({ length: 4 * 9 }, (_, i) => 0.1 + Math.cos(i) ** 2);
    const mixBefore = codebookValueMix(p, 4, view, new Float32Array(4 * 64)).slice();
    for (const s of view.segments) for (let k = 0; k < s.levels.length; k++) s.levels[k] = s.levels[k]! * 2;
    const after = codebookKeyScores(q, 4, view, new Float32Array(4 * 9));
    const mixAfter = codebookValueMix(p, 4, view, new Float32Array(4 * 64));
    before.forEach((x, i) => expect(after[i]).toBeCloseTo(2 * x, 4));
    mixBefore.forEach((x, i) => expect(mixAfter[i]).toBeCloseTo(2 * x, 4));
  });

  it('reject inconsistent views and short arrays with XqShapeError', () => {
    const { view } = randomView([[64, 2]], 2, 4, 'fp16', 3);
    const q = new Float32Array(2 * 64);
    expect(() => codebookKeyScores(q, 3, view, new Float32Array(64))).toThrow(XqShapeError); // rows not a multiple of heads
    expect(() => codebookKeyScores(q, 2, view, new Float32Array(3))).toThrow(XqShapeError);
    expect(() => codebookKeyScores(q, 2, { ...view, rowWords: 3 }, new Float32Array(8))).toThrow(XqShapeError);
    expect(() => codebookValueMix(new Float32Array(8), 2, { ...view, headDim: 65 }, new Float32Array(130))).toThrow(XqShapeError);
    const [seg] = view.segments;
    expect(() => codebookDequantize({ ...view, segments: [{ ...seg!, levels: new Float32Array(3) }] })).toThrow(XqShapeError);
    expect(() => codebookDequantize({ ...view, segments: [{ ...seg!, scaleSlot: 1 }] })).toThrow(XqShapeError);
  });
});
