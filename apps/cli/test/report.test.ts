import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { BENCH_FORMAT, RESULTS_FORMAT, validatePlanResult, type BenchResults, type EvalResults } from '@xquant/eval';
import { renderReport } from '../src/report/report.js';
import { logTicks, svgChart } from '../src/report/svg.js';

function fakeResults(): EvalResults {
  const methods: [string, number, number, number][] = [
    ['kivi-2', 3.1, 0.13, 23.6],
    ['kivi-1', 2.1, 3.4, 348],
    ['asymkv-1.5', 2.6, 0.5, 30.6],
    ['xquant-1.38', 2.49, 0.85, 44.8],
  ];
  const configs: EvalResults['configs'] = [
    { id: 'full', method: 'full', strategy: 'full', options: {}, residualLength: null, groupSize: null, paperBits: 16, storedBits: 16, heldBits: 32, tokens: 2048 },
  ];
  const perCache: EvalResults['prose'][number]['perCache'] = { full: { n: 448, nll: 448 * Math.log(21.7), nllExclFirst: 447 * Math.log(21.7), kl: 0, top1: 448 } };
  const pk: EvalResults['passkey'][number]['perCache'] = { full: { ids: [5], text: ' 12345', correct: true } };
  for (const R of [32, 128]) {
    for (const [m, bits, kl, ppl] of methods) {
      const id = `${m}/R${R}/g32`;
      configs.push({ id, method: m, strategy: m, options: {}, residualLength: R, groupSize: 32, paperBits: 2, storedBits: bits + (R === 128 ? 0.3 : 0), heldBits: bits + 0.2, tokens: 2048 });
      perCache[id] = { n: 448, nll: 448 * Math.log(ppl), nllExclFirst: 447 * Math.log(ppl), kl: kl * 448, top1: 300 };
      pk[id] = { ids: [5], text: ' 1', correct: kl < 1 };
    }
  }
  return {
    format: RESULTS_FORMAT,
    model: { name: 'xq-test<&>', path: 'x', architecture: 'llama', layers: 8, kvHeads: 2, headDim: 64, vocabSize: 8192 },
    backend: 'wasm',
    protocol: { prosePrefill: 64, passkeyTail: 16, passkeyMaxNew: 8, eosIds: [1], sharedPrefill: true },
    files: [{ name: 'prose_512.jsonl', kind: 'prose', records: 120, selected: 1 }, { name: 'passkey_256.jsonl', kind: 'passkey', records: 30, selected: 1 }],
    limit: 1,
    shards: [],
    configs,
    prose: [{ file: 'prose_512.jsonl', index: 0, id: 'r0', perCache }],
    passkey: [{ file: 'passkey_256.jsonl', index: 0, id: 'p0', length: 256, answer: '12345', perCache: pk }],
    timing: {},
    layerErrors: {
      promptTokens: 512,
      queryRows: 32,
      perCache: Object.fromEntries(configs.map((c, i) => [c.id, Array.from({ length: 8 }, (_, l) => ({ layer: l, attention: i === 0 ? 0 : 0.01 * i * (1 + l / 8), keys: 0.1, values: 0.2 }))])),
    },
  };
}

function fakeBench(): BenchResults {
  const ids = ['full', 'kivi-2/R128/g32', 'xquant-1.38/R128/g32'];
  return {
    format: BENCH_FORMAT,
    model: 'xq-test',
    backend: 'wasm',
    steps: 4,
    speed: ids.flatMap((config, i) => [256, 1024].map((context) => ({ config, method: config, residualLength: 128, groupSize: 32, context, msPerStep: 20 + i + context / 100, bytes: context * 1000 / (i + 1) }))),
    memory: ids.flatMap((config, i) => [256, 1024, 4096].map((context) => ({ config, method: config, context, heldBytes: context * 2048 / (i + 1), heldBits: 32 / (i + 1), storedBits: 16 / (i + 1), paperBits: 16 / (i + 1) }))),
  };
}

/** Distinct byte values of a PNG's decompressed image data (a blank page gives very few). */
function pngInfo(buf: Buffer): { width: number; height: number; distinct: number } {
  expect(buf.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
  let off = 8;
  let width = 0;
  let height = 0;
  const idat: Buffer[] = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off);
    const type = buf.subarray(off + 4, off + 8).toString('latin1');
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
    } else if (type === 'IDAT') idat.push(data);
    off += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const seen = new Set<number>();
  for (let i = 0; i < raw.length; i += 7) seen.add(raw[i]!);
  return { width, height, distinct: seen.size };
}

const chromium = ['chromium', 'chromium-browser', 'google-chrome'].find((c) => spawnSync('which', [c]).status === 0);

describe('HTML report', () => {
  const html = renderReport({ results: [fakeResults()], bench: [fakeBench()], title: 'test report', note: 'xquant eval …' });

  it('is one self-contained page: inline SVG plots, no scripts, no external assets, escaped text', () => {
    expect(html.startsWith('<!DOCTYPE html>')).toBe(true);
    expect((html.match(/<svg /g) ?? []).length).toBe(7); // KL, ppl, passkey, per-layer; memory, stored bits, speed
    expect(html).not.toMatch(/<script|<link|<img|<iframe|src=|@import|url\(/i);
    const urls = html.match(/https?:\/\/[^"' )]+/g) ?? [];
    expect(urls.every((u) => u === 'http://www.w3.org/2000/svg')).toBe(true);
    expect(html).toContain('xq-test&lt;&amp;&gt;');
    expect(html).not.toContain('xq-test<&>');
    expect(html).toContain('per-layer attention-output error');
    expect(html).toContain('KV-cache memory held vs context length');
  });

  it('charts place points in the plot area and handle empty or degenerate data', () => {
    const svg = svgChart([{ name: 'a', points: [{ x: 1, y: 2 }, { x: 3, y: 4, label: 'b' }] }], { title: 't', xLabel: 'x', yLabel: 'y' });
    const cx = [...svg.matchAll(/<circle cx="([\d.]+)" cy="([\d.]+)" r="4"/g)].map((m) => [Number(m[1]), Number(m[2])]);
    expect(cx).toHaveLength(3); // two points + legend
    expect(cx[0]![0]).toBeLessThan(cx[1]![0]!);
    expect(cx[0]![1]).toBeGreaterThan(cx[1]![1]!); // larger y is higher on screen
    expect(svgChart([], { title: 't', xLabel: 'x', yLabel: 'y' })).toContain('no data');
    expect(svgChart([{ name: 'a', points: [{ x: 1, y: 0 }] }], { title: 't', xLabel: 'x', yLabel: 'y', yLog10: true })).toContain('no data');
  });

  it('a log axis over a narrow range (perplexity ratios 1.04–1.23) still has labelled ticks', () => {
    expect(logTicks(Math.log10(1.04), Math.log10(1.23))).toEqual([1.05, 1.1, 1.15, 1.2]);
    expect(logTicks(0, 3)).toEqual([1, 10, 100, 1000]);
    expect(logTicks(Math.log10(3), Math.log10(60))).toEqual([5, 10, 20, 50]);
    const svg = svgChart([{ name: 'ppl', points: [{ x: 1, y: 1.04 }, { x: 2, y: 1.23 }] }], { title: 't', xLabel: 'x', yLabel: 'ppl / ppl(full)', yLog10: true });
    // y tick labels are right-aligned (text-anchor end) beside the axis
    const labels = [...svg.matchAll(/<text x="58" y="[\d.]+" text-anchor="end">([^<]+)<\/text>/g)].map((m) => m[1]);
    expect(labels.length).toBeGreaterThanOrEqual(3);
    expect(labels.every((l) => Number(l) > 1 && Number(l) < 1.3)).toBe(true);
  });

  it.skipIf(!chromium)('renders in headless chromium: the screenshot exists and is not blank — needs chromium (apt-get install chromium)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'xq-report-'));
    const file = join(dir, 'report.html');
    writeFileSync(file, html);
    const png = join(dir, 'shot.png');
    const blankFile = join(dir, 'blank.html');
    writeFileSync(blankFile, '<!DOCTYPE html><html><body style="background:#fff"></body></html>');
    const shoot = (page: string, out: string) =>
      spawnSync(
        chromium!,
        ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', `--user-data-dir=${join(dir, 'profile')}`, `--screenshot=${out}`, '--window-size=1200,1600', `file://${page}`],
        { timeout: 90_000, encoding: 'utf8' },
      );
    const r = shoot(file, png);
    expect(existsSync(png), `chromium failed: ${r.stderr}`).toBe(true);
    const info = pngInfo(readFileSync(png));
    expect(info.width).toBe(1200);
    expect(info.height).toBe(1600);
    const blankPng = join(dir, 'blank.png');
    shoot(blankFile, blankPng);
    const blank = pngInfo(readFileSync(blankPng));
    expect(blank.distinct).toBeLessThan(8); // the detector sees a blank page as blank
    expect(info.distinct).toBeGreaterThan(40);
  }, 180_000);
});

describe('report of a codebook plan (xquant plan --codebook)', () => {
  it('lists every verified family with its per-layer key/value widths', () => {
    const candidate = (name: string, k: number[], v: number[], kl: number) => ({ name, options: { residualLength: 32, keyBits: k, valueBits: v }, storedBits: 1.97, paperBits: 1.6, predicted: 0.01, kl, top1: 0.8 });
    const plan = {
      model: 'tiny',
      budgetBits: 2,
      preset: { name: 'tqplan-2b-R32', strategy: 'turboquant', options: { residualLength: 32, keyBits: [3, 2], valueBits: [1, 1.5] } },
      candidates: [candidate('rotated-log8-lsq-hadamard', [3, 2], [1, 1.5], 0.12), candidate('outliers-fp16-norm-hadamard', [2, 2], [1, 1], 0.14)],
      sensitivity: [],
    };
    const html = renderReport({ results: [], plans: [plan as never] });
    expect(html).toContain('Plan tqplan-2b-R32 for tiny');
    expect(html).toContain('rotated-log8-lsq-hadamard');
    expect(html).toContain('<td class="num">3/1</td>');
    expect(html).toContain('<td class="num">2/1.5</td>');
    expect(html).toContain('<td class="num">0.1400</td>');
    // the files 'xquant report' reads are checked first: a codebook plan has no `best` and passes, a broken one names its field
    const file = { format: 'xquant-plan/v1', ...plan };
    expect(validatePlanResult(file, 'plan.json').preset.name).toBe('tqplan-2b-R32');
    const broken = { ...file, candidates: [{ ...file.candidates[0], options: undefined }] };
    expect(() => validatePlanResult(broken, 'plan.json')).toThrow(/plan.json.*candidates\[0\]\.options/);
    const kiviWithoutBest = { ...file, preset: { ...file.preset, strategy: 'planned' } };
    expect(() => validatePlanResult(kiviWithoutBest, 'plan.json')).toThrow(/best/);
  });
});
