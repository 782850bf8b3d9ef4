import { describe, expect, it } from 'vitest';
import { argmax, firstDigits, klDivergence, logSoftmax, summarizeProse, type ProseSums } from '@xquant/eval';

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0), s / 2 ** 32);
}

describe('metrics vs float64 computations written here', () => {
  it('logSoftmax: exp sums to 1 and matches log(exp(x)/Σexp) on moderate logits', () => {
    const r = lcg(1);
    const x = Float32Array.from({ length: 300 }, () => (r() - 0.5) * 20);
    const lp = logSoftmax(x);
    let z = 0;
    for (const v of x) z += Math.exp(v);
    let total = 0;
    for (let i = 0; i < x.length; i++) {
      expect(lp[i]).toBeCloseTo(Math.log(Math.exp(x[i]!) / z), 12);
      total += Math.exp(lp[i]!);
    }
    expect(total).toBeCloseTo(1, 12);
  });

  it('logSoftmax is shift-stable (huge logits) and rejects NaN with the index', () => {
    const lp = logSoftmax([1000, 1001, 999]);
    const ref = logSoftmax([0, 1, -1]);
    for (let i = 0; i < 3; i++) expect(lp[i]).toBeCloseTo(ref[i]!, 12);
    expect(() => logSoftmax([0, NaN, 1])).toThrow(/logit 1 is NaN/);
    expect(() => logSoftmax([])).toThrow(/at least one/);
  });

  it('KL(p‖q) = Σ p log(p/q) computed directly from probabilities; 0 for p = q; ≥ 0', () => {
    const r = lcg(2);
    for (let trial = 0; trial < 5; trial++) {
      const a = Array.from({ length: 50 }, () => (r() - 0.5) * 8);
      const b = Array.from({ length: 50 }, () => (r() - 0.5) * 8);
      const za = a.reduce((s, v) => s + Math.exp(v), 0);
      const zb = b.reduce((s, v) => s + Math.exp(v), 0);
      let ref = 0;
      for (let i = 0; i < 50; i++) {
        const p = Math.exp(a[i]!) / za;
        const q = Math.exp(b[i]!) / zb;
        ref += p * Math.log(p / q);
      }
      const kl = klDivergence(logSoftmax(a), logSoftmax(b));
      expect(kl).toBeCloseTo(ref, 12);
      expect(kl).toBeGreaterThan(0);
      expect(klDivergence(logSoftmax(a), logSoftmax(a))).toBe(0);
    }
  });

  it('KL with offsets reads rows of larger buffers; p = 0 terms count 0', () => {
    const p = logSoftmax([0, 1, 2]);
    const q = logSoftmax([2, 1, 0]);
    const buf = new Float64Array(9);
    buf.set(q, 6);
    expect(klDivergence(p, buf, 0, 6, 3)).toBeCloseTo(klDivergence(p, q), 15);
    expect(klDivergence([0, -Infinity], [Math.log(0.5), Math.log(0.5)])).toBeCloseTo(Math.log(2), 15);
  });

  it('argmax takes the first maximum; firstDigits takes the first run of digits', () => {
    expect(argmax([1, 3, 3, 2])).toBe(1);
    expect(argmax([5, 1, 9, 9], 1, 3)).toBe(1);
    expect(firstDigits(' 48213. The')).toBe('48213');
    expect(firstDigits(' 48 213')).toBe('48');
    expect(firstDigits(' none')).toBeNull();
  });

  it('summarizeProse: ppl = exp(ΣNLL/N), excl-first drops one prediction per record, means per prediction', () => {
    const sums: ProseSums[] = [
      { n: 4, nll: 8, nllExclFirst: 5, kl: 0.4, top1: 3 },
      { n: 6, nll: 9, nllExclFirst: 8, kl: 0.6, top1: 6 },
    ];
    const s = summarizeProse(sums);
    expect(s.ppl).toBeCloseTo(Math.exp(17 / 10), 12);
    expect(s.pplExclFirst).toBeCloseTo(Math.exp(13 / 8), 12);
    expect(s.kl).toBeCloseTo(0.1, 12);
    expect(s.top1).toBeCloseTo(0.9, 12);
    expect(s.records).toBe(2);
    expect(s.predictions).toBe(10);
  });
});
