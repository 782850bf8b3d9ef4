#!/usr/bin/env node
// Long fuzz run over the built packages: every target of fuzz/targets (plus any given with --targets-dir or
// XQ_FUZZ_TARGETS) for --runs cases each (default 10^6). Writes counts and failures as JSON and prints a table.
//
//   pnpm build && node scripts/fuzz-long.mjs [--runs N] [--seed S] [--only a,b] [--targets-dir DIR|FILE]...
//                                            [--out fuzz-results.json] [--max-failures N] [--time-limit SECONDS]
//
// Exit code: 0 without failures, 1 with failures, 2 for bad arguments. See fuzz/README.md.
import { existsSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import fc from 'fast-check';
import { loadTargets, runTarget, targetFiles } from '../fuzz/run.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

let args;
try {
  args = parseArgs({
    options: {
      runs: { type: 'string', default: '1000000' },
      seed: { type: 'string', default: String(Date.now() % 2 ** 31) },
      only: { type: 'string' },
      'targets-dir': { type: 'string', multiple: true, default: [] },
      out: { type: 'string', default: 'fuzz-results.json' },
      'max-failures': { type: 'string', default: '20' },
      'time-limit': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  }).values;
} catch (e) {
  console.error(`fuzz-long: ${e.message}`);
  process.exit(2);
}
if (args.help) {
  console.log('usage: node scripts/fuzz-long.mjs [--runs N] [--seed S] [--only a,b] [--targets-dir DIR|FILE]... [--out FILE] [--max-failures N] [--time-limit SECONDS]');
  process.exit(0);
}
const int = (v, name) => {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) {
    console.error(`fuzz-long: --${name} must be a non-negative integer, got '${v}'`);
    process.exit(2);
  }
  return n;
};
const runs = int(args.runs, 'runs');
const seed = int(args.seed, 'seed');
const maxFailures = int(args['max-failures'], 'max-failures');
const timeLimitMs = args['time-limit'] === undefined ? Infinity : int(args['time-limit'], 'time-limit') * 1000;

/** A package name of a target → its built module (packages/<name>/dist/<entry>.js), else a bare import. */
async function loadPackage(name) {
  const [pkg, sub] = name.split('/');
  const file = join(root, 'packages', pkg, 'dist', `${sub ?? 'index'}.js`);
  if (existsSync(file)) return import(pathToFileURL(file).href);
  if (existsSync(join(root, 'packages', pkg))) throw new Error(`${file} is missing: run 'pnpm build' first`);
  return import(name);
}

const extra = [...args['targets-dir'], ...(process.env.XQ_FUZZ_TARGETS ?? '').split(':').filter(Boolean)];
let targets = (await Promise.all(targetFiles(extra).map(loadTargets))).flat();
if (args.only) {
  const only = new Set(args.only.split(','));
  targets = targets.filter((t) => only.has(t.name));
  if (targets.length === 0) {
    console.error(`fuzz-long: no target named ${args.only}`);
    process.exit(2);
  }
}

const report = { started: new Date().toISOString(), node: process.version, runsPerTarget: runs, seed, targets: [] };
// a promise a target left behind that rejects later is a failure of the target running then, not a crash of the run
let strays = [];
process.on('unhandledRejection', (e) => strays.push(String(e?.stack ?? e).slice(0, 2000)));
const save = () => writeFileSync(args.out, `${JSON.stringify(report, null, 1)}\n`);
for (const t of targets) {
  const packages = {};
  for (const name of t.packages) packages[name] = await loadPackage(name);
  process.stderr.write(`fuzz-long: ${t.name} (${t.file}) — ${runs} cases, seed ${seed}\n`);
  let last = 0;
  const result = await runTarget(t, {
    fc,
    packages,
    runs,
    seed,
    maxFailures,
    timeLimitMs,
    onChunk: ({ cases, failures, seconds }) => {
      if (seconds - last > 10 || cases >= runs) {
        process.stderr.write(`  ${t.name}: ${cases} cases, ${failures} failures, ${seconds.toFixed(0)} s\n`);
        last = seconds;
      }
    },
  });
  for (const error of strays) result.failures.push({ seed: null, path: null, counterexample: '(unknown: a promise rejected after its case)', error: `unhandled rejection: ${error}` });
  strays = [];
  report.targets.push(result);
  save();
}
report.finished = new Date().toISOString();
save();

const rows = report.targets.map((r) => [r.name, String(r.cases), Object.entries(r.outcomes).map(([k, v]) => `${k} ${v}`).join(', '), String(r.failures.length), r.seconds.toFixed(0)]);
const head = ['target', 'cases', 'outcomes (incl. shrinking)', 'failures', 'seconds'];
const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (cells) => `| ${cells.map((c, i) => c.padEnd(width[i])).join(' | ')} |`;
console.log([line(head), `|${width.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n'));
for (const r of report.targets) for (const f of r.failures) console.log(`\n${r.name} FAILURE (seed ${f.seed}, path ${f.path}): ${f.error}\n  counterexample: ${f.counterexample.slice(0, 500)}`);
console.log(`\nwrote ${args.out}`);
process.exit(report.targets.some((r) => r.failures.length) ? 1 : 0);
