/** A stream a progress bar can write to (process.stderr fits). */
export interface ProgressStream {
  /** Write text. */
  write(s: string): unknown;
  /** Redraw in place when true. */
  isTTY?: boolean;
  /** Terminal width (lines are cut to it). */
  columns?: number;
}

/** Options of {@link ProgressBar}. */
export interface ProgressBarOptions {
  /** Where to draw; default process.stderr. */
  stream?: ProgressStream;
  /** Shown before the bar. */
  label?: string;
  /** Bars appear only after this many ms (short tasks stay silent). Default 1000. */
  delayMs?: number;
  /** On a non-TTY stream, print a line at most this often (ms). Default 10000. */
  lineIntervalMs?: number;
  /** Clock (tests). */
  now?: () => number;
}

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/**
 * A progress bar on stderr: `label [#####.....] 12/40 30% 1m02s left  detail`. Redraws in place on a TTY (at most
 * ~10 times a second); elsewhere (logs, CI) prints a plain line every `lineIntervalMs`. Silent for the first
 * `delayMs`, so only work that takes longer than a second shows one.
 */
export class ProgressBar {
  private readonly stream: ProgressStream;
  private readonly start: number;
  private readonly now: () => number;
  private lastDraw = -Infinity;
  private drawn = false;
  private done = 0;
  private detail = '';

  constructor(
    private readonly total: number,
    private readonly options: ProgressBarOptions = {},
  ) {
    this.now = options.now ?? (() => Date.now());
    this.stream = options.stream ?? process.stderr;
    this.start = this.now();
  }

  /** Advance by `n` units (default 1), with an optional short detail (e.g. the current config). */
  tick(n = 1, detail?: string): void {
    this.done += n;
    if (detail !== undefined) this.detail = detail;
    this.maybeDraw(false);
  }

  /** Set the detail text without advancing. */
  note(detail: string): void {
    this.detail = detail;
    this.maybeDraw(false);
  }

  /** Draw the final state (if the bar was ever shown) and end the line. */
  finish(): void {
    this.maybeDraw(true);
    if (this.drawn && this.stream.isTTY) this.stream.write('\n');
  }

  /** The text of the bar now (exposed for tests). */
  render(): string {
    const width = 24;
    const frac = this.total > 0 ? Math.min(1, this.done / this.total) : 1;
    const filled = Math.round(frac * width);
    const elapsed = (this.now() - this.start) / 1000;
    const left = frac > 0 ? (elapsed * (1 - frac)) / frac : NaN;
    const label = this.options.label ? `${this.options.label} ` : '';
    const bar = `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
    const line = `${label}[${bar}] ${this.done}/${this.total} ${(frac * 100).toFixed(0)}% ${formatSeconds(elapsed)} elapsed, ${formatSeconds(left)} left${this.detail ? `  ${this.detail}` : ''}`;
    const cols = this.stream.columns ?? 120;
    return line.length > cols - 1 ? line.slice(0, cols - 1) : line;
  }

  private maybeDraw(final: boolean): void {
    const t = this.now();
    if (!final && t - this.start < (this.options.delayMs ?? 1000)) return;
    if (final && !this.drawn && t - this.start < (this.options.delayMs ?? 1000)) return;
    if (this.stream.isTTY) {
      if (!final && t - this.lastDraw < 100) return;
      this.stream.write(`\r${this.render()}\x1b[K`);
    } else {
      if (!final && t - this.lastDraw < (this.options.lineIntervalMs ?? 10_000)) return;
      this.stream.write(`${this.render()}\n`);
    }
    this.lastDraw = t;
    this.drawn = true;
  }
}
