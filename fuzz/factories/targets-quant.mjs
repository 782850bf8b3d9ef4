// Fuzz targets for the quantizers of @xquant/quant and @xquant/calibration (issue 13). Library-agnostic: pass the
// modules in (the sources under vitest, `packages/*/dist` from scripts/fuzz-long.mjs). Each target is
// { name, arbitrary, check(input) }: check returns normally when the property holds (typed errors where they are due
// count as holding) and throws a FuzzFailure otherwise.
import fc from 'fast-check';
import { FuzzFailure, anyValue, fill, typedCode } from './common.mjs';

const BITS = [1, 2, 4, 8];

/**
 * @param {{ quant: typeof import('@xquant/quant'), calibration: typeof import('@xquant/calibration') }} libs
 * @returns {{ name: string, arbitrary: import('fast-check').Arbitrary<any>, check(input: any): void }[]}
 */
export function quantTargets({ quant, calibration }) {
  const { XqError, quantizeRows, dequantizeRows, dequantizeValue, roundHalf, quantizeKeys, quantizeValues, dequantizeKv, packedKeyScores, packedValueMix, OVERFLOW_AT } = quant;
  const isXq = (e) => XqError.isInstance(e);
  const round = (p) => (p === 'fp16' ? roundHalf : Math.fround);
  /** Representable in the precision after rounding (what the quantizers accept). */
  const ok = (x, p) => Number.isFinite(x) && Math.abs(round(p)(x)) < OVERFLOW_AT[p];

  const rowsInput = fc.record({
    bits: fc.constantFrom(...BITS),
    precision: fc.constantFrom('fp16', 'fp32'),
    groupSize: fc.constantFrom(32, 64),
    rows: fc.integer({ min: 1, max: 3 }),
    palette: fc.array(anyValue({ nonFinite: true }), { minLength: 1, maxLength: 6 }),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    eta: fc.constantFrom(0, 0.045, 1 / 6, 0.3, 0.49),
  });

  /** quantizeRows → dequantizeRows (and calibrated): finite in → finite out within the bound, or a typed error. */
  function checkRows({ bits, precision, groupSize, rows, palette, seed, eta }) {
    const cols = 64;
    const x = fill(rows * cols, palette, seed);
    const valid = x.every((v) => ok(v, precision));
    let q;
    try {
      q = quantizeRows(x, rows, cols, { bits, groupSize, precision });
    } catch (e) {
      const code = typedCode(e, isXq);
      if (valid) throw new FuzzFailure('unexpected-error', `quantizeRows threw ${code} on representable input`, { bits, precision, palette });
      if (code !== 'E_NON_FINITE') throw new FuzzFailure('unexpected-error', `expected E_NON_FINITE, got ${code}`);
      return;
    }
    if (!valid) throw new FuzzFailure('missing-error', 'quantizeRows accepted a non-finite or overflowing input', { palette });
    const deq = dequantizeRows(q.codes, q);
    const r = round(precision);
    const m = (1 << bits) - 1;
    const ulp = precision === 'fp16' ? 2 ** -9 : 2 ** -21;
    const G = cols / groupSize;
    for (let i = 0; i < x.length; i++) {
      const g = Math.floor(i / cols) * G + Math.floor((i % cols) / groupSize);
      const s = q.scale[g], z = q.zero[g], xr = r(x[i]), d = deq[i];
      if (!Number.isFinite(d)) throw new FuzzFailure('non-finite', `dequantizeRows gave ${d} for ${x[i]}`, { bits, precision, palette, s, z });
      const bound = s / 2 + Math.max(0, xr - (z + m * s)) + ulp * (Math.abs(xr) + Math.abs(z) + m * s) + 1e-30;
      if (!(Math.abs(d - xr) <= bound)) throw new FuzzFailure('mismatch', `|x̂ − x| = ${Math.abs(d - xr)} > ${bound} (x ${xr}, s ${s}, z ${z})`, { bits, precision, palette });
      if (d !== dequantizeValue(q.codes[i], s, z, bits, precision)) throw new FuzzFailure('mismatch', 'dequantizeRows disagrees with dequantizeValue');
    }
    const c = calibration.calibrateStats(q, eta);
    const dc = dequantizeRows(q.codes, c);
    for (let i = 0; i < dc.length; i++) {
      if (!Number.isFinite(dc[i])) throw new FuzzFailure('non-finite', `calibrated (η ${eta}) dequantization gave ${dc[i]}`, { bits, precision, palette });
    }
  }

  const kvInput = fc.record({
    bits: fc.constantFrom(...BITS),
    precision: fc.constantFrom('fp16', 'fp32'),
    heads: fc.integer({ min: 1, max: 2 }),
    tokens: fc.constantFrom(32, 64),
    rep: fc.constantFrom(1, 2),
    palette: fc.array(anyValue(), { minLength: 1, maxLength: 6 }),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    qScale: fc.constantFrom(1, 1e-3, 10),
  });

  /** Keys/values blocks: dequantizeKv finite, and the packed kernels within tolerance of float64 over dequantizeKv. */
  function checkKv({ bits, precision, heads, tokens, rep, palette, seed, qScale }) {
    const D = 32;
    const shape = { heads, tokens, headDim: D };
    const x = fill(heads * tokens * D, palette, seed);
    if (!x.every((v) => ok(v, precision))) {
      for (const f of [quantizeKeys, quantizeValues]) {
        try {
          f(x, shape, { bits, groupSize: 32, precision });
        } catch (e) {
          if (typedCode(e, isXq) !== 'E_NON_FINITE') throw new FuzzFailure('unexpected-error', `expected E_NON_FINITE, got ${e.code}`);
          continue;
        }
        throw new FuzzFailure('missing-error', 'an overflowing input was accepted');
      }
      return;
    }
    const K = quantizeKeys(x, shape, { bits, groupSize: 32, precision });
    const V = quantizeValues(x, shape, { bits, groupSize: 32, precision });
    const dk = dequantizeKv(K), dv = dequantizeKv(V);
    for (const [name, d] of [['keys', dk], ['values', dv]]) {
      for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) throw new FuzzFailure('non-finite', `dequantizeKv(${name}) gave ${d[i]}`, { bits, precision, palette });
    }
    const qH = heads * rep;
    // dequantizeKv rounds code·scale and the sum to the precision, the kernels do not: up to two subnormal steps apart
    const sub = precision === 'fp16' ? 2 ** -23 : 2 ** -148;
    // and r(code·scale) is rounded at the magnitude of |zero| + code·scale, before the zero-point cancels it
    const domTol = precision === 'fp16' ? 2 ** -10 : 2 ** -16;
    const r = fill(qH * D, [-1, -0.5, 0.25, 0.75, 1], seed ^ 0x5bd1e995).map((v) => v * qScale);
    const scores = packedKeyScores(r, K);
    for (let h = 0; h < qH; h++) {
      const kv = Math.floor(h / rep);
      for (let t = 0; t < tokens; t++) {
        let ref = 0, mag = 0, dom = 0, qAbs = 0;
        for (let d = 0; d < D; d++) {
          qAbs += Math.abs(r[h * D + d]);
          const a = r[h * D + d] * dk[(kv * tokens + t) * D + d];
          ref += a;
          mag += Math.abs(a);
          const g = (kv * D + d) * (tokens / 32) + Math.floor(t / 32); // key group of (head, channel, token)
          dom += Math.abs(r[h * D + d]) * (Math.abs(K.zero[g]) + ((1 << bits) - 1) * K.scale[g]);
        }
        const got = scores[h * tokens + t];
        // the kernels' documented domain: float32 partial sums below 1e38
        if (dom < 1e38 && !Number.isFinite(got)) throw new FuzzFailure('non-finite', `packedKeyScores gave ${got} (float64 ${ref})`, { bits, precision, palette });
        // relative to the result's terms, plus the cancellation of the folded zero-point (float32 partial sums)
        if (Number.isFinite(got) && !(Math.abs(got - ref) <= 2e-3 * mag + domTol * dom + sub * qAbs + 1e-30)) throw new FuzzFailure('mismatch', `packedKeyScores ${got} vs float64 over dequantizeKv ${ref}`, { bits, precision, palette });
      }
    }
    // p: a probability row per query head
    const p = fill(qH * tokens, [0, 0.1, 0.5, 1], seed ^ 0x1234567);
    for (let h = 0; h < qH; h++) {
      let s = 0;
      for (let t = 0; t < tokens; t++) s += p[h * tokens + t];
      for (let t = 0; t < tokens; t++) p[h * tokens + t] = s > 0 ? p[h * tokens + t] / s : 1 / tokens;
    }
    const mix = packedValueMix(p, V);
    for (let h = 0; h < qH; h++) {
      const kv = Math.floor(h / rep);
      for (let d = 0; d < D; d++) {
        let ref = 0, mag = 0, dom = 0;
        for (let t = 0; t < tokens; t++) {
          const a = p[h * tokens + t] * dv[(kv * tokens + t) * D + d];
          ref += a;
          mag += Math.abs(a);
          const g = (kv * tokens + t) * (D / 32) + Math.floor(d / 32); // value group of (head, token, channel)
          dom += p[h * tokens + t] * (Math.abs(V.zero[g]) + ((1 << bits) - 1) * V.scale[g]);
        }
        const got = mix[h * D + d];
        if (dom < 1e38 && !Number.isFinite(got)) throw new FuzzFailure('non-finite', `packedValueMix gave ${got} (float64 ${ref})`, { bits, precision, palette });
        if (Number.isFinite(got) && !(Math.abs(got - ref) <= 2e-3 * mag + domTol * dom + sub + 1e-30)) throw new FuzzFailure('mismatch', `packedValueMix ${got} vs float64 over dequantizeKv ${ref}`, { bits, precision, palette });
      }
    }
  }

  return [
    { name: 'quant-rows', arbitrary: rowsInput, check: checkRows },
    { name: 'quant-kv-kernels', arbitrary: kvInput, check: checkKv },
  ];
}
