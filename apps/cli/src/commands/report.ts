import { writeFileSync } from 'node:fs';
import { checkOutputPath, parseCommandArgs, readJsonFile, sharedOptions } from '../args.js';
import { renderReport, type ReportInput } from '../report/report.js';
import {
  BENCH_FORMAT,
  RESULTS_FORMAT,
  anchorMarkdown,
  benchMarkdown,
  compareWithAnchor,
  parseAnchor,
  resultsMarkdown,
  validateBenchResults,
  validateEvalResults,
  validatePlanResult,
  type BenchResults,
  type EvalResults,
} from '@xquant/eval';
import { XqFormatError } from '@xquant/quant';

/** One-line description shown by `xquant --help`. */
export const summary = 'render eval / bench / plan JSON as one self-contained HTML page with plots';

const USAGE = `usage: xquant report --in FILE.json... --out report.html [--anchor results.json] [--title TEXT] [--note TEXT]

Reads results of 'xquant eval' (or 'eval merge'), 'xquant bench' and 'xquant plan' (recognised by their format
field) and writes ONE HTML file with inline SVG plots: KL, perplexity and passkey accuracy vs true stored bits per
method, per-layer attention error, memory and stored bits vs context length, decode speed, and plan tables.

options:
  --in FILE...      input JSON files (more may follow as plain arguments)
  --out FILE        the HTML file to write (required)
  --anchor FILE     reference results (reference-fidelity/results.json) drawn as extra series
  --title TEXT      page title
  --note TEXT       text shown under the title (e.g. the command that made the inputs)
  --markdown FILE   also write the tables as markdown (results, comparison with --anchor, bench, plans)
  --json            print {"out": FILE, "bytes": N} on stdout
  -h, --help        show this help`;

/** `xquant report …`; returns the exit code. */
export async function run(argv: string[]): Promise<number> {
  const parsed = parseCommandArgs('report', USAGE, argv, {
    ...sharedOptions('out', 'json'),
    in: { type: 'string', multiple: true },
    anchor: { type: 'string' },
    title: { type: 'string' },
    note: { type: 'string' },
    markdown: { type: 'string' },
  }, { positionals: true });
  if (typeof parsed === 'number') return parsed;
  const values = parsed.values as { in?: string[]; out?: string; anchor?: string; title?: string; note?: string; markdown?: string; json?: boolean };
  const inputs = [...(values.in ?? []), ...parsed.positionals];
  if (!values.out || inputs.length === 0) {
    console.error(`xquant report: --in and --out are required\n\n${USAGE}`);
    return 2;
  }
  const input: { results: EvalResults[]; bench: BenchResults[]; plans: NonNullable<ReportInput['plans']>[number][] } = { results: [], bench: [], plans: [] };
  checkOutputPath(values.out, '--out');
  if (values.markdown) checkOutputPath(values.markdown, '--markdown');
  // every input is checked field by field: a malformed file is an E_FORMAT error naming the field, not a TypeError
  for (const f of inputs) {
    const j = readJsonFile(f) as { format?: unknown } | null;
    const format = typeof j === 'object' && j !== null ? j.format : undefined;
    if (format === RESULTS_FORMAT) input.results.push(validateEvalResults(j, f));
    else if (format === BENCH_FORMAT) input.bench.push(validateBenchResults(j, f));
    else if (format === 'xquant-plan/v1') input.plans.push(validatePlanResult(j, f) as NonNullable<ReportInput['plans']>[number]);
    else throw new XqFormatError(`${f}: not an xquant eval, bench or plan result (format ${JSON.stringify(format)})`);
  }
  const anchor = values.anchor ? parseAnchor(readJsonFile(values.anchor)) : undefined;
  if (values.markdown) {
    const md: string[] = [];
    for (const r of input.results) {
      md.push(resultsMarkdown(r));
      const rows = anchor ? compareWithAnchor(r, anchor) : [];
      if (rows.length) md.push(`**${r.model.name}: ours vs the anchor** (tolerances: see compareWithAnchor)`, '', anchorMarkdown(rows));
    }
    for (const b of input.bench) md.push(benchMarkdown(b));
    for (const p of input.plans) {
      md.push(`**Plan ${p.preset.name}${p.model ? ` (${p.model})` : ''}**`, '', '| candidate | stored bits | paper bits | KL (calibration) | top-1 |', '|---|---:|---:|---:|---:|');
      for (const c of p.candidates) md.push(`| ${c.name} | ${c.storedBits.toFixed(3)} | ${c.paperBits.toFixed(3)} | ${c.kl.toFixed(4)} | ${c.top1.toFixed(4)} |`);
      md.push('');
    }
    writeFileSync(values.markdown, `${md.join('\n')}\n`);
  }
  const html = renderReport({
    ...input,
    anchor,
    title: values.title,
    note: values.note,
  });
  writeFileSync(values.out, html);
  if (values.json) process.stdout.write(`${JSON.stringify({ out: values.out, bytes: Buffer.byteLength(html) })}\n`);
  else process.stderr.write(`xquant report: wrote ${values.out} (${Buffer.byteLength(html)} bytes, ${input.results.length} eval, ${input.bench.length} bench, ${input.plans.length} plan inputs)\n`);
  return 0;
}
