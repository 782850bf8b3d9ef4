#!/usr/bin/env node
// Issue 14: tables and the KL / passkey vs true-bits curve from the eval results in docs/report/fidelity14/
// (reduced protocol; with --full, the issue's full protocol: every record, baselines from the issue-5 study). Prose and
// passkey results of a model may be in separate files (<model>.*.json); configurations are matched by method name. 8-bit-metadata rows of the `planned` strategy
// ({ meta: 'e4m3' | 'e5m2' } calibration) are accounted with 8-bit scale/zero (`accountBits({ metadataBits: 8 })`).
// Usage: node scripts/fidelity14.mjs [dir] [--full]   → <dir>/tables.md, <dir>/curve.svg, <dir>/summary.json, <dir>/targets.md
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { accountBits } from '../packages/cross-layer/dist/index.js';
import { summarize } from '../packages/eval/dist/index.js';

const args = process.argv.slice(2);
const FULL = args.includes('--full');
const dir = args.find((a) => !a.startsWith('--')) ?? 'docs/report/fidelity14';
const PROTOCOL = FULL ? 'full protocol' : 'reduced protocol';
const MODELS = ['xq-llama-20m', 'xq-qwen2-30m'];
const LABEL = { 'xq-llama-20m': 'Llama', 'xq-qwen2-30m': 'Qwen2' };
const SHAPE = { kvHeads: 2, headDim: 64 };

/** Family of a method name, for the plot legend. */
function family(m) {
  if (m === 'full') return null;
  if (m.startsWith('tqplan')) return 'codebook plan (ours)';
  if (m.startsWith('tqx')) return 'codebook, 1 rotation + log8 lsq scale (ours)';
  if (m.startsWith('tq-2-') ) return 'TurboQuant-style, metadata ablations';
  if (m.startsWith('tq')) return 'TurboQuant-style (anchor)';
  if (m.includes('e4m3') || m.includes('e5m2')) return 'KIVI layout, 8-bit scale/zero';
  if (m.startsWith('plan')) return 'planner plan (issue 5)';
  return 'presets (kivi-1/2, asymkv-1.5, xquant-1.38)';
}

function storedBits(cfg) {
  const o = cfg.options ?? {};
  const meta8 = cfg.strategy === 'planned' && [o.keyCalibration, o.valueCalibration].flat().some((c) => c && typeof c === 'object' && 'meta' in c);
  if (!meta8) return cfg.storedBits;
  const config = { keys: o.keys, values: o.values, residualLength: o.residualLength, groupSize: o.groupSize, valueGroupSize: o.valueGroupSize ?? o.groupSize };
  return accountBits({ config, ...SHAPE, tokens: 2048, metadataBits: 8 }).storedBitsPerElement;
}

// Baselines not re-run here come from earlier runs (R = 32 rows), summarized over the prose records of this run —
// per-record sums make that exact: the reduced runs (docs/report/reduced), or with --full the issue-5 study (every record).
const REDUCED = (model) => (FULL ? [`docs/report/study/${model}.json`] : [`docs/report/reduced/${model}.json`, `docs/report/reduced/${model}.plan-v64.json`]);
const BASELINES = new Set(['kivi-2', 'asymkv-1.5', 'xquant-1.38', 'xquant-noshare', 'plan-v64-2.486b-R32', ...(FULL ? ['kivi-1'] : [])]);

const rows = {};
for (const model of MODELS) {
  const byMethod = new Map();
  const own = readdirSync(dir).filter((n) => n.startsWith(`${model}.`) && n.endsWith('.json') && !n.includes('summary')).map((f) => `${dir}/${f}`);
  const sources = [...own.map((f) => ({ f, reduced: false })), ...REDUCED(model).map((f) => ({ f, reduced: true }))];
  // prose records of this run: the baselines are summarized over the same records
  const ownRecords = new Set();
  for (const f of own) for (const r of JSON.parse(readFileSync(f, 'utf8')).prose) ownRecords.add(r.index);
  for (const { f, reduced } of sources) {
    let res;
    try {
      res = JSON.parse(readFileSync(f, 'utf8'));
    } catch {
      continue;
    }
    if (reduced && ownRecords.size) res = { ...res, prose: res.prose.filter((r) => ownRecords.has(r.index)) };
    for (const s of summarize(res)) {
      const vg = s.config.options?.valueGroupSize ?? s.config.groupSize;
      // the reduced run named the value-group-64 plan 'plan-2.486b-R32' (its preset file: 'plan-v64-2.486b-R32')
      const m = reduced && s.config.method === 'plan-2.486b-R32' && vg === 64 ? 'plan-v64-2.486b-R32' : s.config.method;
      if (reduced && (!BASELINES.has(m) || s.config.residualLength !== 32 || vg !== (m.startsWith('plan-v64') ? 64 : 32))) continue;
      if (reduced && byMethod.has(m) && byMethod.get(m).source === 'this run') continue;
      const r = byMethod.get(m) ?? { method: m, family: family(m), paperBits: s.config.paperBits, storedBits: storedBits(s.config), kl: null, top1: null, records: 0, passkey: {}, source: reduced ? (FULL ? 'issue-5 study' : 'reduced') : FULL ? 'issue-14 runs' : 'this run' };
      if (s.prose) Object.assign(r, { kl: s.prose.kl, top1: s.prose.top1, ppl: s.prose.ppl, records: s.prose.records, recordIds: res.prose.filter((x) => x.perCache[s.config.id]).map((x) => x.index) });
      for (const [len, a] of Object.entries(s.passkey)) r.passkey[len] = { correct: a.correct, n: a.n };
      byMethod.set(m, r);
    }
  }
  rows[model] = [...byMethod.values()].sort((a, b) => a.storedBits - b.storedBits || (a.kl ?? 0) - (b.kl ?? 0));
}

const pk = (r) => ['256', '512', '1024', '2048'].map((l) => (r.passkey[l] ? `${Math.round((100 * r.passkey[l].correct) / r.passkey[l].n)}` : '–')).join('/');
const pkN = (r) => Object.values(r.passkey).map((a) => a.n).join('/');
const md = [];
for (const model of MODELS) {
  if (!rows[model].length) continue;
  const recs = Math.max(...rows[model].map((r) => r.records));
  const recIds = [...new Set(rows[model].flatMap((r) => r.recordIds ?? []))];
  const which = FULL ? `FULL protocol: all ${recs} prose records` : `REDUCED protocol: ${recs} spaced prose records (${recIds.join(', ')})`;
  md.push(`**${LABEL[model]} (${model}), R = 32 — ${which}; passkey prompts per length ${rows[model].find((r) => Object.keys(r.passkey).length)?.passkey ? pkN(rows[model].find((r) => Object.keys(r.passkey).length)) : '–'}**`, '');
  md.push('| config | family | paper bits | true bits @2048 | KL | top-1 | passkey 256/512/1024/2048 (%) | source |', '|---|---|---:|---:|---:|---:|---|---|');
  for (const r of rows[model]) {
    md.push(`| ${r.method} | ${r.family ?? '–'} | ${r.paperBits.toFixed(3)} | ${r.storedBits.toFixed(3)} | ${r.kl === null ? '–' : r.kl.toFixed(4)} | ${r.top1 === null ? '–' : r.top1.toFixed(4)} | ${pk(r)} | ${r.source} |`);
  }
  md.push('');
}
writeFileSync(`${dir}/tables.md`, md.join('\n'));
writeFileSync(`${dir}/summary.json`, `${JSON.stringify(rows, null, 1)}\n`);

// ---- SVG: KL (log) vs true bits, one panel per model; passkey minimum over lengths as marker fill -------------
const W = 560, Hh = 380, M = { l: 60, r: 20, t: 30, b: 50 };
const COLORS = {
  'TurboQuant-style (anchor)': '#d62728',
  'TurboQuant-style, metadata ablations': '#ff9896',
  'codebook, 1 rotation + log8 lsq scale (ours)': '#1f77b4',
  'codebook plan (ours)': '#2ca02c',
  'planner plan (issue 5)': '#9467bd',
  'KIVI layout, 8-bit scale/zero': '#8c564b',
  'presets (kivi-1/2, asymkv-1.5, xquant-1.38)': '#7f7f7f',
};
const svg = [`<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W}" height="${Hh + 150}" font-family="sans-serif" font-size="11">`];
MODELS.forEach((model, pi) => {
  const pts = rows[model].filter((r) => r.family && r.kl !== null && r.storedBits <= 4.3);
  if (!pts.length) return;
  const x0 = pi * W;
  const xmin = 1.25, xmax = 4.3;
  const kls = pts.map((r) => r.kl);
  const ymin = Math.log10(Math.min(...kls) * 0.8), ymax = Math.log10(Math.max(...kls) * 1.25);
  const X = (b) => x0 + M.l + ((b - xmin) / (xmax - xmin)) * (W - M.l - M.r);
  const Y = (k) => M.t + (1 - (Math.log10(k) - ymin) / (ymax - ymin)) * (Hh - M.t - M.b);
  svg.push(`<text x="${x0 + W / 2}" y="18" text-anchor="middle" font-size="13">${LABEL[model]}: KL vs true stored bits (R = 32, ${PROTOCOL})</text>`);
  svg.push(`<rect x="${X(xmin)}" y="${M.t}" width="${X(xmax) - X(xmin)}" height="${Hh - M.t - M.b}" fill="none" stroke="#444"/>`);
  for (let b = 1.5; b <= 4.25; b += 0.5) svg.push(`<line x1="${X(b)}" x2="${X(b)}" y1="${M.t}" y2="${Hh - M.b}" stroke="#eee"/><text x="${X(b)}" y="${Hh - M.b + 14}" text-anchor="middle">${b}</text>`);
  for (let e = Math.ceil(ymin * 3) / 3; e <= ymax; e += 1 / 3) {
    const k = 10 ** e;
    svg.push(`<line x1="${X(xmin)}" x2="${X(xmax)}" y1="${Y(k)}" y2="${Y(k)}" stroke="#eee"/><text x="${X(xmin) - 4}" y="${Y(k) + 4}" text-anchor="end">${k < 0.1 ? k.toFixed(3) : k.toFixed(2)}</text>`);
  }
  // target box: ≤ 2.0 bits, KL ≤ kivi-2's
  const kivi = rows[model].find((r) => r.method === 'kivi-2');
  if (kivi) svg.push(`<rect x="${X(xmin)}" y="${Y(kivi.kl)}" width="${X(2) - X(xmin)}" height="${Hh - M.b - Y(kivi.kl)}" fill="#2ca02c" opacity="0.08"/><text x="${X(1.3)}" y="${Y(kivi.kl) - 4}" fill="#2ca02c">target: ≤ 2.0 bits, KL ≤ kivi-2</text>`);
  svg.push(`<text x="${x0 + W / 2}" y="${Hh - 12}" text-anchor="middle">true stored bits per K/V element at 2048 tokens (codes + metadata + fp16 residual)</text>`);
  svg.push(`<text transform="translate(${x0 + 14},${Hh / 2}) rotate(-90)" text-anchor="middle">KL(full ‖ cache), log scale</text>`);
  // lines through each scalar family, points for all
  for (const fam of Object.keys(COLORS)) {
    const f = pts.filter((r) => r.family === fam).sort((a, b) => a.storedBits - b.storedBits);
    if (f.length > 1 && /anchor|ours\)$/.test(fam)) svg.push(`<polyline fill="none" stroke="${COLORS[fam]}" stroke-width="1.2" points="${f.map((r) => `${X(r.storedBits).toFixed(1)},${Y(r.kl).toFixed(1)}`).join(' ')}"/>`);
  }
  for (const r of pts) {
    const pkMin = Object.values(r.passkey).length ? Math.min(...Object.values(r.passkey).map((a) => a.correct / a.n)) : null;
    const fill = pkMin === null ? 'white' : pkMin >= 0.95 ? COLORS[r.family] : 'white';
    svg.push(`<circle cx="${X(r.storedBits).toFixed(1)}" cy="${Y(r.kl).toFixed(1)}" r="4" fill="${fill}" stroke="${COLORS[r.family]}" stroke-width="1.5"><title>${r.method}: ${r.storedBits.toFixed(3)} bits, KL ${r.kl.toFixed(4)}, passkey ${pk(r)}</title></circle>`);
    svg.push(`<text x="${(X(r.storedBits) + 5).toFixed(1)}" y="${(Y(r.kl) - 5).toFixed(1)}" font-size="8" fill="#333">${r.method.replace(/^plan-v64-2\.486b-R32$/, 'plan-v64').replace('-2.486b-R32', '')}</text>`);
  }
});
let ly = Hh + 10;
for (const [fam, c] of Object.entries(COLORS)) {
  svg.push(`<circle cx="${M.l}" cy="${ly + 6}" r="4" fill="${c}" stroke="${c}"/><text x="${M.l + 10}" y="${ly + 10}">${fam}</text>`);
  ly += 16;
}
svg.push(`<text x="${W}" y="${Hh + 20}">filled marker: passkey ≥ 95 % at every measured length; hollow: below, or not measured</text>`);
svg.push('</svg>');
writeFileSync(`${dir}/curve.svg`, svg.join('\n'));
console.log(md.join('\n'));

// ---- targets (issue 14), against kivi-2 and the TurboQuant-style cache on the same records -------------------------
const tmd = [];
for (const model of MODELS) {
  const by = new Map(rows[model].map((r) => [r.method, r]));
  const kivi = by.get('kivi-2');
  if (!kivi || kivi.kl === null) continue;
  tmd.push(`**${LABEL[model]}** (kivi-2 on these records: KL ${kivi.kl.toFixed(4)} at ${kivi.storedBits.toFixed(3)} bits)`, '');
  tmd.push('| target | configuration | true bits | KL | KL / kivi-2 | passkey 256/512/1024/2048 | met? |', '|---|---|---:|---:|---:|---|---|');
  const under = rows[model].filter((r) => r.storedBits <= 2.0 + 1e-9 && r.kl !== null).sort((a, b) => a.kl - b.kl);
  for (const r of under.slice(0, 3)) {
    const pkOk = Object.values(r.passkey).length === 4 && Object.values(r.passkey).every((a) => a.correct / a.n >= 0.95);
    tmd.push(`| ≤ 2.0 bits, KL ≤ kivi-2, passkey ≥ 95 % | ${r.method} | ${r.storedBits.toFixed(3)} | ${r.kl.toFixed(4)} | ${(r.kl / kivi.kl).toFixed(2)}× | ${pk(r)} | ${r.kl <= kivi.kl && pkOk ? 'yes' : `no (KL ${r.kl <= kivi.kl ? 'ok' : `+${((r.kl / kivi.kl - 1) * 100).toFixed(0)} %`}, passkey ${Object.values(r.passkey).length === 4 ? (pkOk ? 'ok' : 'below') : 'not measured at every length'})`} |`);
  }
  for (const [tq, ours] of [['tq-2.5', /^tqplan-3\.203/], ['tq-3.5', /^tqplan-4\.188/], ['tq-k2v1', /^tqplan-2b/], ['tq-2', /^tqx-2$/], ['tq-1.5', /^tqx-1\.5$/], ['tq-2.5', /^tqx-2\.5$/], ['tq-2', /^tqplan-2b/], ['tq-1.5', /^tqplan-2b/]]) {
    const a = by.get(tq);
    const b = rows[model].find((r) => ours.test(r.method));
    if (!a || !b || a.kl === null || b.kl === null) continue;
    const drop = 1 - b.kl / a.kl;
    tmd.push(`| ≥ 25 % lower KL than ${tq} (${a.storedBits.toFixed(3)} bits, KL ${a.kl.toFixed(4)}) at ≤ its bits | ${b.method} | ${b.storedBits.toFixed(3)} | ${b.kl.toFixed(4)} | ${(b.kl / kivi.kl).toFixed(2)}× | ${pk(b)} | ${b.storedBits <= a.storedBits + 1e-9 && drop >= 0.25 ? 'yes' : 'no'} (${(drop * 100).toFixed(0)} % lower) |`);
  }
  tmd.push('');
}
writeFileSync(`${dir}/targets.md`, tmd.join('\n'));
console.log(tmd.join('\n'));
