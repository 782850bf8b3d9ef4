import { describe, expect, it } from 'vitest';
import { RESULTS_FORMAT, anchorMarkdown, compareWithAnchor, parseAnchor, type EvalResults } from '@xquant/eval';

const anchorJson = {
  models: {
    m: {
      R32: {
        full: { paper_bits: 16, stored_bits_T2048: 16, prose: { public: { ppl: 20, ppl_excl63: 20, kl: 0, top1: 1, records: 120 } }, passkey: { public: { 256: 1 } } },
        'kivi-2': { paper_bits: 2, stored_bits_T2048: 3.1, prose: { public: { ppl: 22, ppl_excl63: 22, kl: 0.1, top1: 0.8, records: 120 } }, passkey: { public: { 256: 0.9 } } },
      },
    },
  },
};

/** Every record evaluated (120 of 120): the subset SE terms vanish and the plain tolerances apply. */
function results(kl: number, pplRatio: number, correct: number): EvalResults {
  const rec = (i: number) => ({
    file: 'p', index: i, id: String(i),
    perCache: {
      full: { n: 448, nll: 448 * Math.log(25), nllExclFirst: 0, kl: 0, top1: 448 },
      'kivi-2/R32/g32': { n: 448, nll: 448 * Math.log(25 * pplRatio), nllExclFirst: 0, kl: 448 * kl, top1: 300 },
    },
  });
  const pk = Array.from({ length: 30 }, (_, i) => ({
    file: 'k', index: i, id: `k${i}`, length: 256, answer: '1',
    perCache: { full: { ids: [], text: '1', correct: true }, 'kivi-2/R32/g32': { ids: [], text: '', correct: i < correct } },
  }));
  return {
    format: RESULTS_FORMAT,
    model: { name: 'm', path: 'm', architecture: 'llama', layers: 8, kvHeads: 2, headDim: 64, vocabSize: 10 },
    backend: 'cpu',
    protocol: { prosePrefill: 64, passkeyTail: 16, passkeyMaxNew: 8, eosIds: [1], sharedPrefill: true },
    files: [{ name: 'p', kind: 'prose', records: 120, selected: 120 }, { name: 'k', kind: 'passkey', records: 30, selected: 30 }],
    limit: null, shards: [],
    configs: [
      { id: 'full', method: 'full', strategy: 'full', options: {}, residualLength: null, groupSize: null, paperBits: 16, storedBits: 16, heldBits: 32, tokens: 2048 },
      { id: 'kivi-2/R32/g32', method: 'kivi-2', strategy: 'kivi-2', options: {}, residualLength: 32, groupSize: 32, paperBits: 2, storedBits: 3.1, heldBits: 3.3, tokens: 2048 },
    ],
    prose: Array.from({ length: 120 }, (_, i) => rec(i)),
    passkey: pk,
    timing: {},
  };
}

describe('comparison with the anchor', () => {
  const anchor = parseAnchor(anchorJson);

  it('parses rows per model, R and config', () => {
    expect(anchor).toHaveLength(2);
    expect(anchor[1]).toMatchObject({ model: 'm', residualLength: 32, method: 'kivi-2', kl: 0.1, storedBits: 3.1, passkey: { 256: 0.9 } });
    expect(() => parseAnchor({})).toThrow(/models/);
  });

  it('judges ppl on the ratio to full (1 %), KL (5 %) and passkey (±2 of 30 prompts)', () => {
    const ok = compareWithAnchor(results(0.104, 1.1 * 1.009, 27), anchor).find((c) => c.method === 'kivi-2')!;
    expect(ok.pplRatioRel).toBeCloseTo(0.009, 9);
    expect(ok.ok).toEqual({ ppl: true, kl: true, passkey: true });
    const bad = compareWithAnchor(results(0.106, 1.1 * 1.012, 24), anchor).find((c) => c.method === 'kivi-2')!;
    expect(bad.ok).toEqual({ ppl: false, kl: false, passkey: false });
    expect(anchorMarkdown([ok, bad])).toMatch(/\| 32 \| kivi-2 \| 3\.100 \| .* \| yes \|\n.*no \(ppl, KL, passkey\) \|/);
  });
});
