#!/usr/bin/env node
// Old against new decode-attention kernels measured in one GPU call (gpu-run.sh with OLD_ARGS writes ab-old-1,
// ab-new-1, ab-old-2, ab-new-2 under its output folder): per attention row (T, heads, head dim, cache, variant) the
// median of each side's rounds, and old ÷ new (above 1 = the new code is faster). Prints a markdown table and writes
// it to <dir>/ab.md.
//   node scripts/gpu-ab.mjs docs/gpu/h200-…/
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: node scripts/gpu-ab.mjs <folder with ab-old-*/ and ab-new-*/>');
  process.exit(2);
}
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
/** Rows of every round of one side, keyed by shape, cache and variant. */
function side(name) {
  const rows = new Map();
  const rounds = readdirSync(dir).filter((d) => d.startsWith(`ab-${name}-`) && existsSync(join(dir, d, 'gpu-decode.json')));
  for (const d of rounds) {
    for (const r of JSON.parse(readFileSync(join(dir, d, 'gpu-decode.json'), 'utf8')).attention) {
      if (r.error || !(r.ms > 0)) continue;
      const key = `${r.T}|${r.qHeads}/${r.kvHeads}|${r.headDim}|${r.cache}|${r.variant}`;
      const e = rows.get(key) ?? { T: r.T, heads: `${r.qHeads}/${r.kvHeads}`, headDim: r.headDim, cache: r.cache, variant: r.variant, ms: [], b2b: [] };
      e.ms.push(r.ms);
      if (r.b2bMs > 0) e.b2b.push(r.b2bMs);
      rows.set(key, e);
    }
  }
  return { rows, rounds: rounds.length };
}
const old = side('old');
const now = side('new');
if (!old.rounds || !now.rounds) {
  console.error(`${dir}: no ab-old-*/ or ab-new-*/ rounds with gpu-decode.json`);
  process.exit(1);
}
const lines = [
  `Old ÷ new decode-attention step (median of ${old.rounds} old and ${now.rounds} new rounds, separate processes alternated; above 1 = new faster)`,
  '',
  '| T | q/kv | d | cache | variant | old ms | new ms | old ÷ new | old ÷ new, back to back |',
  '|---:|---|---:|---|---|---:|---:|---:|---:|',
];
for (const [key, n] of now.rows) {
  const o = old.rows.get(key);
  if (!o) continue;
  const f = (x) => (x === undefined ? '–' : x.toFixed(4));
  const b2b = o.b2b.length && n.b2b.length ? `${(median(o.b2b) / median(n.b2b)).toFixed(2)}×` : '–';
  lines.push(`| ${n.T} | ${n.heads} | ${n.headDim} | ${n.cache} | ${n.variant} | ${f(median(o.ms))} | ${f(median(n.ms))} | ${(median(o.ms) / median(n.ms)).toFixed(2)}× | ${b2b} |`);
}
writeFileSync(join(dir, 'ab.md'), lines.join('\n') + '\n');
console.log(lines.join('\n'));
