/** One series of points for {@link svgChart}. */
export interface ChartSeries {
  /** Legend text. */
  name: string;
  /** Points (non-finite or non-positive-on-log-axis points are skipped). */
  points: ChartPoint[];
  /** Connect the points (in x order) with a line. */
  line?: boolean;
  /** Draw points as rings (e.g. reference numbers beside ours). */
  hollow?: boolean;
}

/** One point of a {@link ChartSeries}. */
export interface ChartPoint {
  /** Abscissa. */
  x: number;
  /** Ordinate. */
  y: number;
  /** Text drawn beside the point. */
  label?: string;
}

/** Options of {@link svgChart}. */
export interface ChartOptions {
  /** Drawn above the plot. */
  title: string;
  /** X axis label. */
  xLabel: string;
  /** Y axis label. */
  yLabel: string;
  /** Pixels (default 560). */
  width?: number;
  /** Pixels (default 360). */
  height?: number;
  /** Log₂ x axis. */
  xLog2?: boolean;
  /** Log₁₀ y axis. */
  yLog10?: boolean;
}

const PALETTE = [
  '#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22',
  '#393b79', '#ad494a', '#637939', '#e7969c', '#6b6ecf', '#8c6d31', '#31a354', '#843c39',
];

/** Escape text for HTML/SVG. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const step0 = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/**
 * Ticks for a log10 axis spanning [lo, hi] (in log10 units): decades, plus 2× and 5× when few decades show; a range
 * too narrow to hold two of those (e.g. perplexity ratios 1.04–1.23) gets evenly spaced round values instead.
 */
export function logTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  const mults = hi - lo < 2.5 ? [1, 2, 5] : [1];
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
    for (const m of mults) {
      const v = m * 10 ** e;
      if (Math.log10(v) >= lo && Math.log10(v) <= hi) out.push(Number(v.toPrecision(6)));
    }
  }
  if (out.length >= 2) return out;
  return niceTicks(10 ** lo, 10 ** hi).filter((v) => v > 0 && Math.log10(v) >= lo && Math.log10(v) <= hi);
}

function fmtTick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 10000) return v.toExponential(0);
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return String(Number(v.toFixed(2)));
  return String(Number(v.toPrecision(2)));
}

/** A self-contained SVG scatter/line chart (no external assets): axes, ticks, legend, optional point labels. */
export function svgChart(series: readonly ChartSeries[], o: ChartOptions): string {
  const W = o.width ?? 560;
  const H = o.height ?? 360;
  const m = { l: 64, r: 150, t: 34, b: 48 };
  const fx = (x: number) => (o.xLog2 ? Math.log2(x) : x);
  const fy = (y: number) => (o.yLog10 ? Math.log10(y) : y);
  const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(fx(p.x)) && Number.isFinite(fy(p.y)));
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${escapeHtml(o.title)}">`];
  parts.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="#fff"/>`);
  parts.push(`<text x="${m.l}" y="20" font-size="14" font-weight="bold" font-family="sans-serif">${escapeHtml(o.title)}</text>`);
  if (pts.length === 0) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle" font-family="sans-serif" fill="#888">no data</text></svg>`);
    return parts.join('');
  }
  let [x0, x1] = [Math.min(...pts.map((p) => fx(p.x))), Math.max(...pts.map((p) => fx(p.x)))];
  let [y0, y1] = [Math.min(...pts.map((p) => fy(p.y))), Math.max(...pts.map((p) => fy(p.y)))];
  if (x1 === x0) [x0, x1] = [x0 - 1, x1 + 1];
  if (y1 === y0) [y0, y1] = [y0 - 1, y1 + 1];
  const padX = (x1 - x0) * 0.06;
  const padY = (y1 - y0) * 0.08;
  const yLow = !o.yLog10 && y0 >= 0 ? Math.max(0, y0 - padY) : y0 - padY; // non-negative data keep a non-negative axis
  [x0, x1, y0, y1] = [x0 - padX, x1 + padX, yLow, y1 + padY];
  const px = (x: number) => m.l + ((fx(x) - x0) / (x1 - x0)) * (W - m.l - m.r);
  const py = (y: number) => H - m.b - ((fy(y) - y0) / (y1 - y0)) * (H - m.t - m.b);
  // axes and grid
  parts.push(`<g font-family="sans-serif" font-size="11" fill="#333">`);
  const xt = o.xLog2 ? Array.from({ length: Math.floor(x1) - Math.ceil(x0) + 1 }, (_, i) => 2 ** (Math.ceil(x0) + i)) : niceTicks(x0, x1);
  const yt = o.yLog10 ? logTicks(y0, y1) : niceTicks(y0, y1);
  for (const v of xt) {
    const X = px(v);
    parts.push(`<line x1="${X}" y1="${m.t}" x2="${X}" y2="${H - m.b}" stroke="#eee"/><text x="${X}" y="${H - m.b + 16}" text-anchor="middle">${fmtTick(v)}</text>`);
  }
  for (const v of yt) {
    const Y = py(v);
    parts.push(`<line x1="${m.l}" y1="${Y}" x2="${W - m.r}" y2="${Y}" stroke="#eee"/><text x="${m.l - 6}" y="${Y + 4}" text-anchor="end">${fmtTick(v)}</text>`);
  }
  parts.push(`<rect x="${m.l}" y="${m.t}" width="${W - m.l - m.r}" height="${H - m.t - m.b}" fill="none" stroke="#999"/>`);
  parts.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 10}" text-anchor="middle">${escapeHtml(o.xLabel)}</text>`);
  parts.push(`<text transform="translate(14 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">${escapeHtml(o.yLabel)}</text>`);
  parts.push('</g>');
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length]!;
    const ok = s.points.filter((p) => Number.isFinite(fx(p.x)) && Number.isFinite(fy(p.y)));
    if (s.line && ok.length > 1) {
      const d = [...ok].sort((a, b) => a.x - b.x).map((p, k) => `${k ? 'L' : 'M'}${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join('');
      const dash = i >= PALETTE.length ? ' stroke-dasharray="4 3"' : '';
      parts.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="1.5"${dash}/>`);
    }
    for (const p of ok) {
      const paint = s.hollow ? `fill="none" stroke="${color}" stroke-width="1.5"` : `fill="${color}"`;
      parts.push(`<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="4" ${paint}><title>${escapeHtml(`${s.name}${p.label ? ` ${p.label}` : ''}: x=${p.x}, y=${p.y}`)}</title></circle>`);
      if (p.label) parts.push(`<text x="${(px(p.x) + 6).toFixed(1)}" y="${(py(p.y) - 5).toFixed(1)}" font-size="10" font-family="sans-serif" fill="${color}">${escapeHtml(p.label)}</text>`);
    }
    const ly = m.t + 8 + i * 16;
    parts.push(`<circle cx="${W - m.r + 14}" cy="${ly}" r="4" ${s.hollow ? `fill="none" stroke="${color}" stroke-width="1.5"` : `fill="${color}"`}/><text x="${W - m.r + 24}" y="${ly + 4}" font-size="11" font-family="sans-serif">${escapeHtml(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('');
}
