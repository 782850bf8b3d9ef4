import { XqFormatError } from '@xquant/quant';
import { summarize, type EvalResults } from './results.js';

/** One configuration of the reference ("anchor") fidelity results (`reference-fidelity/results.json`). */
export interface AnchorRow {
  /** Model name. */
  model: string;
  /** R. */
  residualLength: number;
  /** Config name (`kivi-2`, …). */
  method: string;
  /** Paper-style bits. */
  paperBits: number;
  /** Stored bits at 2048 tokens. */
  storedBits: number;
  /** Perplexity over 448 predictions per record. */
  ppl: number;
  /** Without position 63. */
  pplExclFirst: number;
  /** Mean KL(full ‖ config). */
  kl: number;
  /** Top-1 agreement with full. */
  top1: number;
  /** Prose records. */
  records: number;
  /** Passkey accuracy by length. */
  passkey: Record<number, number>;
}

/** Flatten the anchor's `results.json` (`models.<name>.R<r>.<config>.{prose.public, passkey.public, …}`) into rows. */
export function parseAnchor(json: unknown): AnchorRow[] {
  const models = (json as { models?: Record<string, Record<string, unknown>> })?.models;
  if (!models || typeof models !== 'object') throw new XqFormatError('anchor results: expected an object with "models"');
  const rows: AnchorRow[] = [];
  for (const [model, byR] of Object.entries(models)) {
    for (const [rKey, configs] of Object.entries(byR)) {
      const m = /^R(\d+)$/.exec(rKey);
      if (!m || typeof configs !== 'object' || configs === null) continue;
      for (const [method, c] of Object.entries(configs as Record<string, any>)) {
        const prose = c?.prose?.public;
        if (!prose) continue;
        const passkey: Record<number, number> = {};
        for (const [L, acc] of Object.entries(c?.passkey?.public ?? {})) passkey[Number(L)] = acc as number;
        rows.push({
          model,
          residualLength: Number(m[1]),
          method,
          paperBits: c.paper_bits,
          storedBits: c.stored_bits_T2048,
          ppl: prose.ppl,
          pplExclFirst: prose.ppl_excl63,
          kl: prose.kl,
          top1: prose.top1,
          records: prose.records,
          passkey,
        });
      }
    }
  }
  if (rows.length === 0) throw new XqFormatError('anchor results: no configurations found under models.<name>.R<r>');
  return rows;
}

/** Our numbers next to the anchor's for one configuration, with a sampling-aware verdict. */
export interface AnchorComparison {
  /** Model name. */
  model: string;
  /** R. */
  residualLength: number;
  /** Config name. */
  method: string;
  /** Our aggregates. */
  ours: {
    /** Perplexity. */
    ppl: number;
    /** Mean KL. */
    kl: number;
    /** Top-1 agreement. */
    top1: number;
    /** Stored bits at 2048 tokens. */
    storedBits: number;
    /** Prose records. */
    records: number;
    /** ppl / ppl(full) on the same records. */
    pplRatio: number;
    /** Passkey per length. */
    passkey: Record<number, PasskeyCount>;
  };
  /** The anchor's row. */
  anchor: AnchorRow;
  /** ppl relative to full, ours vs the anchor's: (ppl/ppl_full)_ours / (ppl/ppl_full)_anchor − 1. */
  pplRatioRel: number;
  /** The anchor's ppl / ppl(full). */
  anchorPplRatio: number;
  /** Plain ppl: ours / anchor − 1 (differs by record sampling when our records are a subset). */
  pplRel: number;
  /** KL: ours / anchor − 1. */
  klRel: number;
  /** Standard error of our mean per-prediction NLL difference to full (records as samples, finite-population corrected). */
  nllDiffSE: number;
  /** Standard error of our mean KL, likewise. */
  klSE: number;
  /** Passkey: ours − anchor in accuracy, per length. */
  passkeyDiff: Record<number, number>;
  /** Verdicts (tolerance + 2 standard errors of the subset, see {@link compareWithAnchor}). */
  ok: {
    /** ppl ratio to full within tolerance. */
    ppl: boolean;
    /** KL within tolerance. */
    kl: boolean;
    /** Passkey within tolerance at every length. */
    passkey: boolean;
  };
}

/** Correct answers out of n. */
export interface PasskeyCount {
  /** Correct. */
  correct: number;
  /** Prompts. */
  n: number;
}

function meanSE(xs: number[], population: number): number {
  const n = xs.length;
  if (n < 2) return Infinity;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const v = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1);
  const fpc = population > n ? (population - n) / (population - 1) : 0;
  return Math.sqrt((v / n) * fpc);
}

/**
 * Match our results (same model name, R, method; group size 32) with anchor rows and judge each with the issue's
 * tolerances, widened by the sampling error of a subset of records (the anchor's records are the population):
 * - ppl: the ratio to full within 1 % (kivi-1 at R = 32: 5 %), plus 2 SE of the mean per-record NLL difference;
 * - KL within 5 % (kivi-1 at R = 32: 20 %), plus 2 SE of the mean per-record KL;
 * - passkey within 2 prompts of 30 per length, plus 2 SE of a subset's accuracy.
 * With every record evaluated the SE terms are 0 and the plain tolerances apply.
 */
export function compareWithAnchor(results: EvalResults, anchor: readonly AnchorRow[]): AnchorComparison[] {
  const out: AnchorComparison[] = [];
  const sums = summarize(results);
  const full = sums.find((s) => s.config.id === 'full');
  for (const s of sums) {
    const c = s.config;
    if (c.groupSize !== null && c.groupSize !== 32) continue;
    const Rs = c.residualLength === null ? [...new Set(anchor.map((a) => a.residualLength))] : [c.residualLength];
    for (const R of Rs) {
      const a = anchor.find((x) => x.model === results.model.name && x.residualLength === R && x.method === c.method);
      const af = anchor.find((x) => x.model === results.model.name && x.residualLength === R && x.method === 'full');
      if (!a || !af || !s.prose || !full?.prose) continue;
      const recs = results.prose.filter((r) => r.perCache[c.id] && r.perCache.full);
      const N = a.records;
      const nllDiffSE = meanSE(recs.map((r) => (r.perCache[c.id]!.nll - r.perCache.full!.nll) / r.perCache[c.id]!.n), N);
      const klSE = meanSE(recs.map((r) => r.perCache[c.id]!.kl / r.perCache[c.id]!.n), N);
      const chaotic = c.method === 'kivi-1' && R === 32;
      const oursRatio = s.prose.ppl / full.prose.ppl;
      const anchorRatio = a.ppl / af.ppl;
      const pplTol = Math.log(1 + (chaotic ? 0.05 : 0.01)) + 2 * (Number.isFinite(nllDiffSE) ? nllDiffSE : 0);
      const klTol = (chaotic ? 0.2 : 0.05) * a.kl + 2 * (Number.isFinite(klSE) ? klSE : 0);
      const passkey: Record<number, PasskeyCount> = {};
      const passkeyDiff: Record<number, number> = {};
      let passkeyOk = true;
      for (const [L, acc] of Object.entries(s.passkey)) {
        const len = Number(L);
        passkey[len] = { correct: acc.correct, n: acc.n };
        const pa = a.passkey[len];
        if (pa === undefined) continue;
        passkeyDiff[len] = acc.accuracy - pa;
        const population = 30;
        const se = acc.n < population ? Math.sqrt(((pa * (1 - pa)) / acc.n) * ((population - acc.n) / (population - 1))) : 0;
        if (Math.abs(acc.accuracy - pa) > 2 / 30 + 2 * se + 1e-9) passkeyOk = false;
      }
      out.push({
        model: results.model.name,
        residualLength: R,
        method: c.method,
        ours: { ppl: s.prose.ppl, kl: s.prose.kl, top1: s.prose.top1, storedBits: c.storedBits, records: s.prose.records, pplRatio: oursRatio, passkey },
        anchor: a,
        pplRatioRel: oursRatio / anchorRatio - 1,
        anchorPplRatio: anchorRatio,
        pplRel: s.prose.ppl / a.ppl - 1,
        klRel: a.kl === 0 ? (s.prose.kl === 0 ? 0 : Infinity) : s.prose.kl / a.kl - 1,
        nllDiffSE,
        klSE,
        passkeyDiff,
        ok: { ppl: Math.abs(Math.log(oursRatio / anchorRatio)) <= pplTol + 1e-12, kl: Math.abs(s.prose.kl - a.kl) <= klTol + 1e-12, passkey: passkeyOk },
      });
    }
  }
  return out;
}

/**
 * Markdown table of {@link compareWithAnchor}, rows by R then configuration: ours next to the anchor (ppl as the
 * ratio to full, which a subset of records can be compared on), with the verdicts.
 */
export function anchorMarkdown(rows: readonly AnchorComparison[]): string {
  const lengths = [...new Set(rows.flatMap((r) => Object.keys(r.ours.passkey).map(Number)))].sort((a, b) => a - b);
  const out = [
    `| R | config | stored bits | ppl/full ours | ppl/full anchor | KL ours ± SE | KL anchor | top-1 ours | top-1 anchor | passkey ${lengths.join('/')} ours | anchor | within tolerance |`,
    '|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|',
  ];
  const sorted = [...rows].sort((a, b) => a.residualLength - b.residualLength);
  for (const r of sorted) {
    const pk = (rec: Record<number, number>) => lengths.map((L) => (rec[L] === undefined ? '–' : (rec[L]! * 100).toFixed(0))).join('/');
    const oursPk: Record<number, number> = {};
    for (const [L, v] of Object.entries(r.ours.passkey)) oursPk[Number(L)] = v.correct / v.n;
    const verdict = [r.ok.ppl ? '' : 'ppl', r.ok.kl ? '' : 'KL', r.ok.passkey ? '' : 'passkey'].filter(Boolean);
    out.push(
      `| ${r.residualLength} | ${r.method} | ${r.ours.storedBits.toFixed(3)} | ${r.ours.pplRatio.toFixed(3)} | ${r.anchorPplRatio.toFixed(3)} | ${r.ours.kl.toFixed(4)} ± ${Number.isFinite(r.klSE) ? r.klSE.toFixed(4) : '–'} | ${r.anchor.kl.toFixed(4)} | ${r.ours.top1.toFixed(3)} | ${r.anchor.top1.toFixed(3)} | ${pk(oursPk)} | ${pk(r.anchor.passkey)} | ${verdict.length ? `no (${verdict.join(', ')})` : 'yes'} |`,
    );
  }
  return `${out.join('\n')}\n`;
}
