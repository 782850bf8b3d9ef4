import { summarize, type AnchorRow, type BenchResults, type EvalResults, type PlanResult } from '@xquant/eval';
import { escapeHtml, svgChart, type ChartSeries } from './svg.js';

/** A plan result as `xquant plan --out` writes it. */
export interface PlanReportInput extends PlanResult {
  /** Model name. */
  model?: string;
  /** The budget planned for. */
  budgetBits?: number;
}

/** Inputs of {@link renderReport}. */
export interface ReportInput {
  /** Eval results (one per model, or merged shards). */
  results?: readonly EvalResults[];
  /** Bench results. */
  bench?: readonly BenchResults[];
  /** Planner outputs (`xquant plan --out`), shown as tables. */
  plans?: readonly PlanReportInput[];
  /** Reference numbers to draw beside ours (hollow points). */
  anchor?: readonly AnchorRow[];
  /** Page title. */
  title?: string;
  /** Free text (e.g. the command that produced the inputs), shown under the title. */
  note?: string;
}

function fmt(v: number | null | undefined, d: number): string {
  return v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(d);
}

function table(head: string[], rows: string[][]): string {
  return `<table><thead><tr>${head.map((h) => `<th>${escapeHtml(h)}</th>`).join('')}</tr></thead><tbody>${rows
    .map((r) => `<tr>${r.map((c, i) => `<td${i === 0 ? '' : ' class="num"'}>${escapeHtml(c)}</td>`).join('')}</tr>`)
    .join('')}</tbody></table>`;
}

function groupKey(r: number | null, g: number | null): string {
  return r === null ? 'full' : `R=${r}, g=${g}`;
}

function evalSection(res: EvalResults, anchor: readonly AnchorRow[] | undefined): string {
  const rows = summarize(res);
  const lengths = [...new Set(res.passkey.map((r) => r.length))].sort((a, b) => a - b);
  const parts: string[] = [`<h2>${escapeHtml(res.model.name)}</h2>`];
  parts.push(
    `<p>${res.prose.length} prose records, ${res.passkey.length} passkey prompts; backend ${escapeHtml(res.backend)}; ` +
      `${res.limit ? `limit ${res.limit} per file; ` : ''}${res.sample ? `${res.sample} evenly spaced records per file; ` : ''}${res.shards.length ? `${res.shards.length} shard(s) merged; ` : ''}stored bits at ${rows[0]?.config.tokens ?? 2048} tokens.</p>`,
  );
  const head = ['config', 'R', 'group', 'paper bits', 'stored bits', 'held bits', 'ppl', 'KL', 'top-1'];
  if (lengths.length) head.push(`passkey % ${lengths.join('/')}`);
  parts.push(
    table(
      head,
      rows.map((r) => {
        const cells = [
          r.config.method,
          r.config.residualLength === null ? '–' : String(r.config.residualLength),
          r.config.groupSize === null ? '–' : String(r.config.groupSize),
          fmt(r.config.paperBits, 3),
          fmt(r.config.storedBits, 3),
          fmt(r.config.heldBits, 3),
          fmt(r.prose?.ppl, 2),
          fmt(r.prose?.kl, 4),
          fmt(r.prose?.top1, 4),
        ];
        if (lengths.length) cells.push(lengths.map((L) => (r.passkey[L] ? (r.passkey[L]!.accuracy * 100).toFixed(0) : '–')).join('/'));
        return cells;
      }),
    ),
  );
  // fidelity vs true stored bits, one series per (R, group size); the anchor as a separate series per R
  const groups = [...new Set(rows.filter((r) => r.config.residualLength !== null).map((r) => groupKey(r.config.residualLength, r.config.groupSize)))];
  const seriesOf = (metric: (r: (typeof rows)[number]) => number | undefined): ChartSeries[] => {
    const s: ChartSeries[] = groups.map((g) => ({
      name: `ours ${g}`,
      points: rows
        .filter((r) => groupKey(r.config.residualLength, r.config.groupSize) === g)
        .map((r) => ({ x: r.config.storedBits, y: metric(r) ?? NaN, label: r.config.method }))
        .filter((p) => Number.isFinite(p.y)),
    }));
    return s;
  };
  const anchorSeries = (metric: (a: AnchorRow) => number): ChartSeries[] => {
    const mine = (anchor ?? []).filter((a) => a.model === res.model.name && a.method !== 'full');
    return [...new Set(mine.map((a) => a.residualLength))].map((R) => ({
      name: `anchor R=${R}`,
      hollow: true,
      points: mine.filter((a) => a.residualLength === R).map((a) => ({ x: a.storedBits, y: metric(a) })),
    }));
  };
  const charts: string[] = [];
  charts.push(
    svgChart([...seriesOf((r) => r.prose?.kl), ...anchorSeries((a) => a.kl)], {
      title: `${res.model.name}: KL(full ‖ cache) vs true stored bits`,
      xLabel: 'true stored bits per element (fp16 metadata + residual, 2048 tokens)',
      yLabel: 'mean KL (nats), log scale',
      yLog10: true,
    }),
  );
  // perplexity relative to full, so that a subset of records compares with the anchor's 120
  const fullPpl = rows.find((r) => r.config.id === 'full')?.prose?.ppl;
  const anchorFull = (a: AnchorRow) => anchor?.find((x) => x.model === a.model && x.residualLength === a.residualLength && x.method === 'full')?.ppl;
  charts.push(
    svgChart([...seriesOf((r) => (r.prose && fullPpl ? r.prose.ppl / fullPpl : undefined)), ...anchorSeries((a) => a.ppl / (anchorFull(a) ?? NaN))], {
      title: `${res.model.name}: perplexity relative to full vs true stored bits`,
      xLabel: 'true stored bits per element',
      yLabel: 'ppl / ppl(full), log scale',
      yLog10: true,
    }),
  );
  if (lengths.length) {
    const mean = (r: (typeof rows)[number]) => {
      const v = Object.values(r.passkey);
      return v.length ? (100 * v.reduce((a, b) => a + b.accuracy, 0)) / v.length : undefined;
    };
    charts.push(
      svgChart(seriesOf(mean), { title: `${res.model.name}: passkey accuracy (mean over lengths) vs true stored bits`, xLabel: 'true stored bits per element', yLabel: 'passkey accuracy %' }),
    );
  }
  if (res.layerErrors) {
    const le = res.layerErrors;
    const s: ChartSeries[] = Object.entries(le.perCache)
      .filter(([id]) => id !== 'full')
      .map(([id, layers]) => ({ name: id, line: true, points: layers.map((l) => ({ x: l.layer, y: l.attention })) }));
    charts.push(
      svgChart(s, {
        title: `${res.model.name}: per-layer attention-output error (${le.promptTokens}-token prompt, last ${le.queryRows} queries)`,
        xLabel: 'layer',
        yLabel: '‖Â − A‖ / ‖A‖, log scale',
        yLog10: true,
        width: 760,
      }),
    );
  }
  parts.push(`<div class="charts">${charts.join('')}</div>`);
  return parts.join('\n');
}

function benchSection(b: BenchResults): string {
  const parts = [`<h2>Speed and memory: ${escapeHtml(b.model)} (${escapeHtml(b.backend)})</h2>`];
  const ids = [...new Set(b.memory.map((r) => r.config))];
  const charts: string[] = [];
  charts.push(
    svgChart(
      ids.map((id) => ({ name: id, line: true, points: b.memory.filter((r) => r.config === id).map((r) => ({ x: r.context, y: r.heldBytes / 1024 })) })),
      { title: 'KV-cache memory held vs context length', xLabel: 'context length (tokens), log scale', yLabel: 'KiB, log scale', xLog2: true, yLog10: true, width: 640 },
    ),
  );
  charts.push(
    svgChart(
      ids.map((id) => ({ name: id, line: true, points: b.memory.filter((r) => r.config === id).map((r) => ({ x: r.context, y: r.storedBits })) })),
      { title: 'True stored bits per element vs context length', xLabel: 'context length (tokens), log scale', yLabel: 'bits per element', xLog2: true, width: 640 },
    ),
  );
  const sids = [...new Set(b.speed.map((r) => r.config))];
  if (sids.length) {
    charts.push(
      svgChart(
        sids.map((id) => ({ name: id, line: true, points: b.speed.filter((r) => r.config === id).map((r) => ({ x: r.context, y: r.msPerStep })) })),
        { title: `Decode step time vs context length (${b.backend})`, xLabel: 'context length (tokens), log scale', yLabel: 'ms per step', xLog2: true, width: 640 },
      ),
    );
  }
  parts.push(`<div class="charts">${charts.join('')}</div>`);
  if (b.speed.length) {
    parts.push(
      table(
        ['config', 'context', 'ms/step', '× full', 'cache KiB'],
        b.speed.map((r) => {
          const base = b.speed.find((x) => x.config === 'full' && x.context === r.context);
          return [r.config, String(r.context), fmt(r.msPerStep, 1), base ? fmt(r.msPerStep / base.msPerStep, 2) : '–', fmt(r.bytes / 1024, 0)];
        }),
      ),
    );
  }
  return parts.join('\n');
}

function planSection(p: PlanReportInput): string {
  const parts = [`<h2>Plan ${escapeHtml(p.preset.name)}${p.model ? ` for ${escapeHtml(p.model)}` : ''}</h2>`];
  parts.push(
    table(
      ['candidate', 'stored bits', 'paper bits', 'KL (calibration prompt)', 'top-1', 'predicted'],
      p.candidates.map((c) => [c.name, fmt(c.storedBits, 3), fmt(c.paperBits, 3), fmt(c.kl, 4), fmt(c.top1, 4), c.predicted.toExponential(2)]),
    ),
  );
  if (p.preset.strategy === 'turboquant' || !p.best) {
    // a codebook plan (`xquant plan --codebook`): widths per layer of every verified family
    const w = (x: unknown, l: number) => String(Array.isArray(x) ? x[l] : x);
    const first = p.candidates[0]?.options as unknown as Record<string, unknown> | undefined;
    const layers = Array.isArray(first?.keyBits) ? first.keyBits.length : 0;
    parts.push(
      table(
        ['candidate', ...Array.from({ length: layers }, (_, l) => `L${l} K/V bits`)],
        p.candidates.map((c) => {
          const o = c.options as unknown as Record<string, unknown>;
          return [c.name, ...Array.from({ length: layers }, (_, l) => `${w(o.keyBits, l)}/${w(o.valueBits, l)}`)];
        }),
      ),
    );
    return parts.join('\n');
  }
  const o = p.best.options;
  parts.push(
    table(
      ['layer', 'key bits', 'key donor', 'key calibration', 'value bits', 'value donor', 'value calibration'],
      o.keys.map((k, l) => {
        const v = o.values[l]!;
        const cal = (c: unknown) => (Array.isArray(c) ? JSON.stringify(c[l]) : JSON.stringify(c ?? 'eta')).replace(/"/g, '');
        return [String(l), String(k.bits), k.codesFrom === null ? '–' : String(k.codesFrom), cal(o.keyCalibration), String(v.bits), v.codesFrom === null ? '–' : String(v.codesFrom), cal(o.valueCalibration)];
      }),
    ),
  );
  return parts.join('\n');
}

/**
 * One self-contained HTML page (inline CSS and SVG, no scripts, no external assets): per model the results table and
 * plots of KL, perplexity and passkey accuracy against true stored bits (with the anchor's points when given) and
 * the per-layer attention error; per bench, memory and stored bits against context length and decode speed; plans.
 */
export function renderReport(input: ReportInput): string {
  const title = input.title ?? 'xquant-ts fidelity report';
  const body: string[] = [`<h1>${escapeHtml(title)}</h1>`];
  if (input.note) body.push(`<p class="note">${escapeHtml(input.note)}</p>`);
  for (const r of input.results ?? []) body.push(evalSection(r, input.anchor));
  for (const b of input.bench ?? []) body.push(benchSection(b));
  for (const p of input.plans ?? []) body.push(planSection(p));
  if (body.length === 1 + (input.note ? 1 : 0)) body.push('<p>No inputs.</p>');
  const css = `body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:12px 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:16px}.charts svg{border:1px solid #ddd}.note{color:#555;font-family:monospace;white-space:pre-wrap}`;
  return `<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title><style>${css}</style></head><body>\n${body.join('\n')}\n</body></html>\n`;
}
