import { afterEach, describe, expect, it } from 'vitest';
import {
  XqShapeError,
  codebookDequantize,
  codebookKernelPath,
  codebookKeyScores,
  codebookValueMix,
  encodeScale,
  lloydMaxCodebook,
  packCodebookRow,
  prepareCodebookKernels,
  scaleDecodeTable,
  setKernelBackend,
  wasmKernelsAvailable,
  type CodebookKvView,
  type CodebookSegment,
  type KernelBackend,
  type ScaleFormat,
} from '@xquant/quant';
import { forceCodebookVariant } from '../src/kernels/wasm/codebook-runtime.js';
import { rng } from './helpers.js';

/** A view with random codes and scale codes; `parts` are [length, bits] segments (own scale slot each unless shared). */
function randomView(parts: [number, number][], heads: number, tokens: number, fmt: ScaleFormat, seed: number, shared = false): CodebookKvView {
  const r = rng(seed);
  const segments: CodebookSegment[] = [];
  let start = 0;
  let bitOffset = 0;
  for (const [length, bits] of parts) {
    // Lloyd-Max levels where the package has them (1–4 bits), else random sorted ones
    const levels = bits <= 4 ? Float32Array.from(lloydMaxCodebook(bits, length).levels) : Float32Array.from({ length: 1 << bits }, () => r() * 2 - 1).sort();
    segments.push({ start, length, bits, levels, bitOffset, scaleSlot: shared ? 0 : segments.length });
    start += length;
    bitOffset += length * bits;
  }
  const D = start;
  // one spare word per row, so rows do not start at multiples of the code width
  const rowWords = Math.ceil(bitOffset / 32) + 1;
  const slots = shared ? 1 : parts.length;
  const packed = new Uint32Array(tokens * heads * rowWords);
  const scales = fmt === 'fp16' ? new Uint16Array(tokens * heads * slots) : new Uint8Array(tokens * heads * slots);
  const codes = new Uint8Array(D);
  for (let row = 0; row < tokens * heads; row++) {
    for (const s of segments) for (let c = s.start; c < s.start + s.length; c++) codes[c] = Math.floor(r() * (1 << s.bits));
    packCodebookRow(segments, rowWords, codes, packed, row * rowWords);
    packed[row * rowWords + rowWords - 1] = (r() * 2 ** 32) >>> 0; // garbage after the codes
    for (let si = 0; si < slots; si++) scales[row * slots + si] = encodeScale(fmt, 0.25 + 4 * r());
  }
  return { heads, tokens, headDim: D, segments, rowWords, scalesPerRow: slots, packed, scales, scaleTable: scaleDecodeTable(fmt) };
}

/** Layouts by name for head dimension D: single widths and the turboquant cache's half-bit splits. */
function layouts(D: number): { name: string; parts: [number, number][]; shared?: boolean }[] {
  const h = D / 2;
  return [
    { name: '1-bit', parts: [[D, 1]] },
    { name: '2-bit', parts: [[D, 2]] },
    { name: '3-bit', parts: [[D, 3]] },
    { name: '4-bit', parts: [[D, 4]] },
    { name: '2.5 (3+2, two slots)', parts: [[h, 3], [h, 2]] },
    { name: '2.5 (3+2, one shared slot)', parts: [[h, 3], [h, 2]], shared: true },
    { name: '3 (4+2, two slots)', parts: [[h, 4], [h, 2]] },
    { name: '3.5 (4+3, two slots)', parts: [[h, 4], [h, 3]] },
    { name: '1.5 (2+1, one shared slot)', parts: [[h, 2], [h, 1]], shared: true },
    { name: '5-bit and 8-bit', parts: [[h, 8], [h, 5]] },
  ];
}

const U = 2 ** -24;

/**
 * Runs both kernels under `backend` and under 'js' and checks them against each other. Tolerance: the SIMD kernels
 * accumulate in float32, the JS kernels in float64 (then round to float32 once). A key score is a sum of D products
 * formed along a chain of at most D + 4 float32 roundings (table entries of k codes, the units, the scale, the slot
 * sum), so |wasm − js| ≤ (D + 5)·u·Σ_c |q_c·x̂_c| (u = 2^-24; ≈ 8e-6 of the magnitude at D = 128). A mixed value adds
 * T weights into table entries, then at most 256 entries and 2^bits levels: (T + 256 + 16)·u·Σ_t |p_t·x̂_t,c|. Both
 * are worst-case bounds of the float32 rounding; a wrong code, level, scale or row is off by O(1) of the magnitude.
 */
function compare(view: CodebookKvView, rows: number, seed: number, backend: KernelBackend): { keys: Float32Array; mix: Float32Array; keysJs: Float32Array; mixJs: Float32Array; maxRel: number } {
  const { heads: H, tokens: T, headDim: D } = view;
  const r = rng(seed);
  const stride = T + 5;
  const q = Float32Array.from({ length: rows * D }, () => r() * 2 - 1);
  const p = Float32Array.from({ length: rows * stride }, () => r());
  setKernelBackend(backend);
  const keys = codebookKeyScores(q, rows, view, new Float32Array(rows * stride).fill(-7), stride);
  const mix = codebookValueMix(p, rows, view, new Float32Array(rows * D).fill(NaN), stride);
  setKernelBackend('js');
  const keysJs = codebookKeyScores(q, rows, view, new Float32Array(rows * stride).fill(-7), stride);
  const mixJs = codebookValueMix(p, rows, view, new Float32Array(rows * D), stride);
  const xhat = codebookDequantize(view);
  const per = rows / H;
  let maxRel = 0;
  for (let j = 0; j < rows; j++) {
    const h = Math.floor(j / per);
    for (let t = 0; t < stride; t++) {
      const i = j * stride + t;
      if (t >= T) {
        expect(keys[i]).toBe(-7); // columns past the tokens untouched
        continue;
      }
      let mag = 0;
      for (let c = 0; c < D; c++) mag += Math.abs(q[j * D + c]! * xhat[(h * T + t) * D + c]!);
      const err = Math.abs(keys[i]! - keysJs[i]!);
      if (mag > 0) maxRel = Math.max(maxRel, err / mag);
      if (!(err <= (D + 5) * U * mag)) expect.fail(`key score row ${j} token ${t}: ${keys[i]} vs ${keysJs[i]} (magnitude ${mag})`);
    }
    for (let c = 0; c < D; c++) {
      let mag = 0;
      for (let t = 0; t < T; t++) mag += Math.abs(p[j * stride + t]! * xhat[(h * T + t) * D + c]!);
      const i = j * D + c;
      const err = Math.abs(mix[i]! - mixJs[i]!);
      if (mag > 0) maxRel = Math.max(maxRel, err / mag);
      if (!(err <= (T + 272) * U * mag)) expect.fail(`value mix row ${j} channel ${c}: ${mix[i]} vs ${mixJs[i]} (magnitude ${mag})`);
    }
  }
  return { keys, mix, keysJs, mixJs, maxRel };
}

afterEach(() => {
  setKernelBackend('auto');
  forceCodebookVariant(undefined);
});

describe.skipIf(!wasmKernelsAvailable())('codebook kernels: WebAssembly SIMD against JS', () => {
  for (const D of [64, 128]) {
    for (const { name, parts, shared } of layouts(D)) {
      it(`headDim ${D}, ${name}: tokens 1/31/300, 1–12 rows per KV head, 1–2 KV heads, 8- and 16-bit scale codes, both unit sets`, () => {
        let seed = 1;
        for (const T of [1, 31, 300]) {
          for (const [H, per, fmt] of [[1, 1, 'e4m3'], [2, 2, 'fp16'], [2, 4, 'e4m3'], [1, 7, 'fp16'], [2, 7, 'e4m3'], [2, 8, 'fp16'], [1, 4, 'log8'], [1, 12, 'e4m3']] as [number, number, ScaleFormat][]) {
            const view = randomView(parts, H, T, fmt, 100 * D + seed++, shared);
            setKernelBackend('auto');
            expect(codebookKernelPath(view, H * per)).toBe(T >= 8 ? 'wasm-simd' : 'js');
            // the kernels for short views (fewer codes per unit) and for long ones, whatever the cost model picks
            for (const variant of ['short', 'long'] as const) {
              forceCodebookVariant(variant);
              // in practice a few float32 ulps of the magnitude (≈ 2e-7 observed), far inside the bounds above
              expect(compare(view, H * per, seed, 'wasm').maxRel).toBeLessThan(2e-6);
            }
            forceCodebookVariant(undefined);
            compare(view, H * per, seed, 'wasm');
          }
        }
      });
    }
  }

  it("'wasm' forces the SIMD kernels: results are float32 sums (not the JS kernels' bits) and not zeros", () => {
    const view = randomView([[64, 3], [64, 2]], 2, 300, 'fp16', 9);
    setKernelBackend('wasm');
    expect(codebookKernelPath(view, 14)).toBe('wasm-simd');
    const { keys, mix, keysJs, mixJs } = compare(view, 14, 3, 'wasm');
    const differs = (a: Float32Array, b: Float32Array) => a.some((x, i) => x !== b[i]);
    expect(differs(keys, keysJs)).toBe(true);
    expect(differs(mix, mixJs)).toBe(true);
    expect(keys.filter((x) => x !== 0 && x !== -7).length).toBeGreaterThan(keys.length / 2);
    expect(mix.every((x) => x !== 0)).toBe(true);
  });

  it("'auto' gives the same results as 'wasm' where the path is wasm-simd", () => {
    const view = randomView([[64, 2]], 2, 40, 'e4m3', 4);
    setKernelBackend('auto');
    expect(codebookKernelPath(view, 8)).toBe('wasm-simd');
    const a = compare(view, 8, 5, 'auto');
    const w = compare(view, 8, 5, 'wasm');
    expect(Array.from(a.keys)).toEqual(Array.from(w.keys));
    expect(Array.from(a.mix)).toEqual(Array.from(w.mix));
  });

  it('a segment list whose levels change between calls is read afresh (levels are staged per call)', () => {
    const view = randomView([[32, 3], [32, 2]], 2, 50, 'fp16', 6);
    setKernelBackend('wasm');
    const q = Float32Array.from({ length: 4 * 64 }, (_, i) => Math.sin(i));
    const p = Float32Array.from({ length: 4 * 50 }, (_, i) => Math.cos(i) ** 2);
    const before = codebookKeyScores(q, 4, view, new Float32Array(4 * 50)).slice();
    const mixBefore = codebookValueMix(p, 4, view, new Float32Array(4 * 64)).slice();
    for (const s of view.segments) for (let k = 0; k < s.levels.length; k++) s.levels[k] = s.levels[k]! * 2;
    const after = codebookKeyScores(q, 4, view, new Float32Array(4 * 50));
    const mixAfter = codebookValueMix(p, 4, view, new Float32Array(4 * 64));
    before.forEach((x, i) => expect(after[i]).toBe(2 * x));
    mixBefore.forEach((x, i) => expect(mixAfter[i]).toBe(2 * x));
  });
});

describe('codebook kernel backend switch', () => {
  it('prepareCodebookKernels compiles a layout asynchronously; layouts beyond 2048 code units run in JS', async () => {
    const view = randomView([[48, 3], [48, 1]], 2, 40, 'e4m3', 8);
    expect(await prepareCodebookKernels([view, { segments: view.segments }])).toBe(wasmKernelsAvailable());
    setKernelBackend('auto');
    expect(codebookKernelPath(view, 2)).toBe(wasmKernelsAvailable() ? 'wasm-simd' : 'js');
    if (wasmKernelsAvailable()) compare(view, 6, 2, 'wasm');
    const huge = randomView([[4096, 5]], 1, 8, 'fp16', 9);
    expect(await prepareCodebookKernels([huge])).toBe(false);
    setKernelBackend(wasmKernelsAvailable() ? 'wasm' : 'js');
    expect(codebookKernelPath(huge, 1)).toBe('js');
  });

  it('prepareCodebookKernels rejects what is not a layout with XqShapeError', async () => {
    const { segments } = randomView([[32, 3], [32, 2]], 1, 1, 'fp16', 2);
    await expect(prepareCodebookKernels([{} as never])).rejects.toThrow(/layout 0 has no segments/);
    await expect(prepareCodebookKernels('x' as never)).rejects.toThrow(XqShapeError);
    await expect(prepareCodebookKernels([{ segments: [{ ...segments[0]!, bits: 9 }, segments[1]!] }])).rejects.toThrow(/bits must be 1…8/);
    await expect(prepareCodebookKernels([{ segments: [segments[1]!, segments[0]!] }])).rejects.toThrow(XqShapeError);
  });

  it("codebookKernelPath: 'js' forces JS; 'auto' takes SIMD from 8 tokens on (where available)", () => {
    const long = randomView([[64, 2]], 2, 8, 'fp16', 1);
    const short = randomView([[64, 2]], 2, 7, 'fp16', 2);
    setKernelBackend('js');
    expect(codebookKernelPath(long, 4)).toBe('js');
    setKernelBackend('auto');
    expect(codebookKernelPath(long, 4)).toBe(wasmKernelsAvailable() ? 'wasm-simd' : 'js');
    expect(codebookKernelPath(short, 4)).toBe('js');
    expect(codebookKernelPath({ ...long, tokens: 0 }, 4)).toBe('js');
    if (wasmKernelsAvailable()) {
      setKernelBackend('wasm');
      expect(codebookKernelPath(short, 4)).toBe('wasm-simd');
      expect(codebookKernelPath({ ...long, tokens: 0 }, 4)).toBe('js');
    }
  });

  it('bad input throws the same XqShapeError under every backend (checked before dispatch)', () => {
    const view = randomView([[64, 2]], 2, 32, 'fp16', 3);
    const q = new Float32Array(4 * 64);
    const p = new Float32Array(4 * 32);
    const cases: [string, () => unknown][] = [
      ['rows not a multiple of heads', () => codebookKeyScores(q, 3, view, new Float32Array(3 * 32))],
      ['short out', () => codebookKeyScores(q, 4, view, new Float32Array(4 * 32 - 1))],
      ['rowStride < tokens', () => codebookKeyScores(q, 4, view, new Float32Array(4 * 32), 31)],
      ['short q', () => codebookKeyScores(q.subarray(1), 4, view, new Float32Array(4 * 32))],
      ['rowWords too small', () => codebookKeyScores(q, 4, { ...view, rowWords: 3 }, new Float32Array(4 * 32))],
      ['short packed', () => codebookValueMix(p, 4, { ...view, packed: view.packed.subarray(1) }, new Float32Array(4 * 64))],
      ['short p', () => codebookValueMix(p.subarray(1), 4, view, new Float32Array(4 * 64))],
      ['short out (values)', () => codebookValueMix(p, 4, view, new Float32Array(4 * 64 - 1))],
      ['headDim mismatch', () => codebookValueMix(p, 4, { ...view, headDim: 65 }, new Float32Array(4 * 65))],
      ['path: bad rows', () => codebookKernelPath(view, 0)],
      ['path: bad view', () => codebookKernelPath({ ...view, scalesPerRow: 0 }, 4)],
    ];
    const backends: KernelBackend[] = wasmKernelsAvailable() ? ['js', 'auto', 'wasm'] : ['js', 'auto'];
    for (const [what, call] of cases) {
      const messages = backends.map((b) => {
        setKernelBackend(b);
        try {
          call();
        } catch (e) {
          expect(e, what).toBeInstanceOf(XqShapeError);
          return (e as Error).message;
        }
        return expect.fail(`${what}: no error under '${b}'`);
      });
      expect(new Set(messages).size, what).toBe(1);
    }
  });
});
