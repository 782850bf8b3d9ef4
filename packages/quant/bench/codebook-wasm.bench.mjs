#!/usr/bin/env node
// Codebook (TurboQuant-style) kernels, JS vs WebAssembly SIMD, side by side with the KIVI packed SIMD kernels and the
// dense float32 SIMD baseline on the same shapes: 2 KV heads, 4 and 7 query rows per KV head, head_dim 64 and 128,
// T = 512, 2048, 8192 tokens. Every timing is one whole kernel call (staging included), median of RUNS. Prints a
// table and writes codebook-wasm.{json,md}. Usage: node bench/codebook-wasm.bench.mjs [--quick] [--out <dir>]
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import * as Q from '../dist/index.js';
import { rng } from '../../../scripts/rng.mjs';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const outDir = args.includes('--out') ? args[args.indexOf('--out') + 1] : fileURLToPath(new URL('../../../docs/bench/', import.meta.url));
const H = 2;
const TOKENS = quick ? [512, 2048] : [512, 2048, 8192];
const PER = [4, 7];
const DIMS = [64, 128];
const RUNS = quick ? 5 : 15;

/**
 * Times the named calls in interleaved rounds (one call of each per round, so load bursts hit all of them alike) after
 * a warm-up of each (≥ 100 ms or 1000 calls: V8 runs baseline code first and tiers hot functions up in the background).
 * `fns` maps a name to [set-up, call]; the set-up (e.g. the kernel backend) runs untimed before every call.
 */
function timeRounds(fns) {
  const entries = Object.entries(fns);
  for (const [, [setup, fn]] of entries) {
    setup();
    for (let i = 0, t0 = performance.now(); i < 3 || (i < 1000 && performance.now() - t0 < 100); i++) fn();
  }
  const samples = Object.fromEntries(entries.map(([k]) => [k, []]));
  for (let r = 0; r < RUNS; r++) {
    for (const [k, [setup, fn]] of entries) {
      setup();
      const t0 = performance.now();
      fn();
      samples[k].push(performance.now() - t0);
    }
  }
  return Object.fromEntries(entries.map(([k]) => {
    const s = samples[k].sort((a, b) => a - b);
    return [k, { median: s[Math.floor(s.length / 2)], p10: s[Math.floor(s.length * 0.1)], p90: s[Math.min(s.length - 1, Math.floor(s.length * 0.9))], runs: s.length }];
  }));
}
/** A codebook view with random codes of the given [length, bits] parts (own scale slot each), fp16 scale codes. */
function codebookView(parts, D, T, seed) {
  const r = rng(seed);
  const segments = [];
  let start = 0, bitOffset = 0;
  parts.forEach(([length, bits], i) => {
    segments.push({ start, length, bits, levels: Float32Array.from(Q.lloydMaxCodebook(bits, length).levels), bitOffset, scaleSlot: i });
    start += length;
    bitOffset += length * bits;
  });
  const rowWords = Math.ceil(bitOffset / 32);
  const packed = new Uint32Array(T * H * rowWords);
  for (let i = 0; i < packed.length; i++) packed[i] = (r() * 2 ** 32) >>> 0;
  const scales = new Uint16Array(T * H * parts.length).map(() => Q.halfToBits(1 + r()));
  return { heads: H, tokens: T, headDim: D, segments, rowWords, scalesPerRow: parts.length, packed, scales, scaleTable: Q.scaleDecodeTable('fp16') };
}
/** Codebook layouts: keys / values parts for head dimension D (the half-bit split as the turboquant cache builds it). */
const LAYOUTS = [
  { name: 'tq 2/1', keys: (D) => [[D, 2]], values: (D) => [[D, 1]] },
  { name: 'tq 2.5/1.5', keys: (D) => [[D / 2, 3], [D / 2, 2]], values: (D) => [[D / 2, 2], [D / 2, 1]] },
];

const results = [];
for (const D of DIMS) {
  for (const T of TOKENS) {
    const r = rng(T + D);
    const X = Float32Array.from({ length: H * T * D }, () => r() - 0.5);
    const shape = { heads: H, tokens: T, headDim: D };
    const kivi = { keys: Q.quantizeKeys(X, shape, { bits: 2, groupSize: 32, precision: 'fp16' }), values: Q.quantizeValues(X, shape, { bits: 1, groupSize: 32, precision: 'fp16' }) };
    const views = LAYOUTS.map((l, i) => ({ name: l.name, keys: codebookView(l.keys(D), D, T, 7 + i), values: codebookView(l.values(D), D, T, 17 + i) }));
    for (const per of PER) {
      const M = H * per;
      const q = Float32Array.from({ length: M * D }, () => r() - 0.5);
      const p = Float32Array.from({ length: M * T }, () => r());
      const outK = new Float32Array(M * T), outV = new Float32Array(M * D);
      for (const tensor of ['keys', 'values']) {
        const row = { headDim: D, tokens: T, rowsPerKvHead: per, tensor, ms: {}, path: {} };
        const run = (v) => (tensor === 'keys' ? () => Q.codebookKeyScores(q, M, v, outK) : () => Q.codebookValueMix(p, M, v, outV));
        const js = () => Q.setKernelBackend('js');
        const auto = () => Q.setKernelBackend('auto');
        const fns = {};
        for (const v of views) {
          fns[`${v.name} js`] = [js, run(v[tensor])];
          fns[`${v.name} wasm`] = [auto, run(v[tensor])];
          auto();
          row.path[v.name] = Q.codebookKernelPath(v[tensor], M);
        }
        row.path.kivi = Q.packedKernelPath(kivi[tensor], M);
        fns['kivi 2/1'] = [auto, tensor === 'keys' ? () => Q.packedKeyScores(q, kivi.keys, outK) : () => Q.packedValueMix(p, kivi.values, outV)];
        fns['float32 wasm'] = [auto, tensor === 'keys' ? () => Q.denseKeyScores(q, X, H, D, outK) : () => Q.denseValueMix(p, X, H, D, outV)];
        row.ms = timeRounds(fns);
        results.push(row);
        const m = (k) => row.ms[k].median;
        console.log(`D=${D} T=${T} rows/kv=${per} ${tensor}: ` + Object.keys(row.ms).map((k) => `${k} ${m(k).toFixed(3)}`).join(' | ') + ' ms');
      }
    }
  }
}
Q.setKernelBackend('auto');

const fmt = (x) => (x >= 10 ? x.toFixed(1) : x >= 1 ? x.toFixed(2) : x.toFixed(3));
const ratio = (a, b) => (a / b).toFixed(2);
const header = [
  '| D | T | rows/kv | tensor | tq 2/1 js | tq 2/1 wasm | tq 2.5/1.5 js | tq 2.5/1.5 wasm | kivi 2/1 | f32 wasm | js/wasm (2/1, 2.5/1.5) | wasm/kivi (2/1, 2.5/1.5) | wasm/f32 (2/1, 2.5/1.5) |',
  '|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|',
];
const lines = results.map((x) => {
  const m = (k) => x.ms[k].median;
  const [a, b] = ['tq 2/1', 'tq 2.5/1.5'];
  return `| ${x.headDim} | ${x.tokens} | ${x.rowsPerKvHead} | ${x.tensor} | ${fmt(m(`${a} js`))} | ${fmt(m(`${a} wasm`))} | ${fmt(m(`${b} js`))} | ${fmt(m(`${b} wasm`))} | ${fmt(m('kivi 2/1'))}${x.path.kivi === 'js' ? ' (js)' : ''} | ${fmt(m('float32 wasm'))} | ` +
    `${ratio(m(`${a} js`), m(`${a} wasm`))}, ${ratio(m(`${b} js`), m(`${b} wasm`))} | ${ratio(m(`${a} wasm`), m('kivi 2/1'))}, ${ratio(m(`${b} wasm`), m('kivi 2/1'))} | ` +
    `${ratio(m(`${a} wasm`), m('float32 wasm'))}, ${ratio(m(`${b} wasm`), m('float32 wasm'))} |`;
});
const meta = { node: process.version, cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? '', wasm: Q.wasmKernelsAvailable(), kvHeads: H, runs: RUNS, loadavg: os.loadavg() };
const md = [
  '# Codebook kernels: JS vs WebAssembly SIMD, with the KIVI packed and float32 SIMD kernels',
  '',
  `Generated by \`node packages/quant/bench/codebook-wasm.bench.mjs\` (${meta.cpus} CPUs, ${meta.cpu}, Node ${meta.node}; load average at the end ${meta.loadavg.map((x) => x.toFixed(1)).join(' ')}). ` +
    `${H} KV heads; keys = q·K̂ᵀ, values = p·V̂ for ${H} × rows/kv query rows. Codebook layouts: tq 2/1 = 2-bit keys, 1-bit values; tq 2.5/1.5 = ` +
    'half-bit splits (keys 3+2 bits, values 2+1 bits over the two halves of the channels, one fp16 scale each). kivi 2/1 = KIVI 2-bit keys / 1-bit values ' +
    `(group 32, fp16 metadata; SIMD except where marked (js): 1-bit values need head_dim % 128 = 0). Whole calls (staging included), median ms of ${RUNS} interleaved rounds; ratios of medians.`,
  '',
  ...header,
  ...lines,
  '',
];
console.log(md.join('\n'));
mkdirSync(outDir, { recursive: true });
writeFileSync(`${outDir}/codebook-wasm.json`, `${JSON.stringify({ meta, results }, null, 1)}\n`);
writeFileSync(`${outDir}/codebook-wasm.md`, md.join('\n'));
