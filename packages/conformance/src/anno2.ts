import {
  assertBits,
  assertDim,
  assertFinite,
  assertGroupSize,
  assertLength,
  rounder,
  roundHalfEven,
  type GroupQuantOptions,
  type QuantizedRows,
} from '@xquant/quant';

/**
 * **Reference quirk, not a recommended quantizer.** The reference's `anno=2` "mid-rise" variant
 * (dead code in the released model), reproduced exactly (golden README §3.9) so that golden family `e` can be checked.
 * With h the rounding of the precision, per group of `[rows, cols]` along `cols`:
 * - `R = h(max − min)`, bin width `sq = h(R·2^−b)`;
 * - `d = h(h(h(x − min) / sq) − 0.5)`, code = clamp(round_half_even(d), 0, 2^b − 1) with NaN → 0 (round, then clamp);
 * - returned scale = `h(f(R·f(1/m)))` (the min/max step, not the bin width `sq`);
 * - returned zero = `h(min + h(h(R·0.5)·2^−b))`, i.e. `min + R/2^{b+1}`.
 *
 * So `code·scale + zero` overshoots the range by `R/2^{b+1}` at the top: bins are `R/2^b` wide but the
 * reconstruction step is `R/(2^b − 1)`. Dequantize with `dequantizeRows` as usual.
 */
export function quantizeRowsAnno2Quirk(x: ArrayLike<number>, rows: number, cols: number, opts: GroupQuantOptions): QuantizedRows {
  assertDim(rows, 'rows');
  assertDim(cols, 'cols');
  assertBits(opts.bits);
  assertGroupSize(opts.groupSize, cols, opts.bits, 'cols');
  assertLength(x, rows * cols, 'input');
  assertFinite(x, 'input', (i) => `row ${Math.floor(i / cols)}, column ${i % cols}`);
  const precision = opts.precision ?? 'fp16';
  const r = rounder(precision);
  const { bits, groupSize } = opts;
  const m = (1 << bits) - 1;
  const inv2b = 2 ** -bits;
  const invM = Math.fround(1 / m);
  const groups = cols / groupSize;
  const scale = new Float32Array(rows * groups);
  const zero = new Float32Array(rows * groups);
  const codes = new Uint8Array(rows * cols);
  for (let row = 0; row < rows; row++) {
    for (let g = 0; g < groups; g++) {
      const base = row * cols + g * groupSize;
      let mn = Infinity;
      let mx = -Infinity;
      for (let j = 0; j < groupSize; j++) {
        const v = r(x[base + j]!);
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      const range = r(mx - mn);
      const sq = r(range * inv2b);
      for (let j = 0; j < groupSize; j++) {
        const d = r(r(r(r(x[base + j]!) - mn) / sq) - 0.5);
        const q = roundHalfEven(d);
        codes[base + j] = q !== q ? 0 : q < 0 ? 0 : q > m ? m : q;
      }
      scale[row * groups + g] = r(range * invM);
      zero[row * groups + g] = r(mn + r(r(range * 0.5) * inv2b));
    }
  }
  return { rows, cols, bits, groupSize, precision, scale, zero, codes };
}
