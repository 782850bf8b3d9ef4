#!/usr/bin/env node
// Turns one GPU run (the raw JSON that packages/models/bench/gpu-decode.bench.mjs and docs/gpu/torch_peer.py wrote)
// into docs/gpu/h200-summary.json (h100-summary.json for a run on an H100; one entry per measured row, medians) and the markdown tables of docs/gpu/results.md.
//   node scripts/gpu-report.mjs docs/gpu/h200-2026-12-02
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2] ?? 'docs/gpu/h200-2026-12-02';
const run = JSON.parse(readFileSync(join(dir, 'gpu-decode.json'), 'utf8'));
// (a run without the torch peer, e.g. prefill rows only, makes tables but leaves docs/gpu/h200-summary.json alone)
const hasTorch = existsSync(join(dir, 'torch-peer.json'));
const torch = hasTorch ? JSON.parse(readFileSync(join(dir, 'torch-peer.json'), 'utf8')) : { rows: [], readCeilingGBps: null };
// rows without headDim come from runs that measured head_dim 128 only
const torchBest = (T, kv, D) => torch.rows.find((r) => r.T === T && r.kvHeads === kv && (r.headDim ?? 128) === D && r.backend === 'best')?.ms ?? null;

// attention: the fastest geometry of each cache per shape (debug rows that skip a stage are left out)
// variant fields: workgroup x slot x unroll x value unroll x heads x value slot x debug skip (1-9) x int8 (1 keys, 2 values, 3 both, 8 f16 values) x prefetch (1 on, 2 off) x subgroups (1 on)
const field = (v, i) => Number(String(v).split('x')[i] ?? 0);
const measured = run.attention.filter((r) => !r.error && !(field(r.variant, 6) >= 1));
// which key path a row ran: the dispatch says so (since packed keys without GQA default to int8); older runs: the variant
const keysOf = (r) => r.dispatch?.keyScores ?? (field(r.variant, 7) & 1 ? 'int8' : 'f32');
const valuesInt8 = (r) => (field(r.variant, 7) & 2) !== 0;
const valuesF16 = (r) => (r.dispatch?.valueMix ?? ((field(r.variant, 7) & 8) !== 0 ? 'f16' : 'f32')) === 'f16';
// the default paths (float32 value mix; keys as the cache chose or were asked); int8 and f16 values (opt-in) beside them
const real = measured.filter((r) => !valuesInt8(r) && !valuesF16(r));
const int8Of = (mode) => measured.filter((r) => !valuesF16(r) && (keysOf(r) === 'int8' ? 1 : 0) + (valuesInt8(r) ? 2 : 0) === mode);
const shapes = [...new Set(real.map((r) => `${r.T}/${r.qHeads}/${r.kvHeads}/${r.headDim}`))];
const attention = shapes.map((k) => {
  const [T, qHeads, kvHeads, headDim] = k.split('/').map(Number);
  const best = (re) => real.filter((r) => `${r.T}/${r.qHeads}/${r.kvHeads}/${r.headDim}` === k && re.test(r.cache)).sort((a, b) => a.ms - b.ms)[0];
  const xq = best(/xquant/);
  const exact = real.filter((r) => `${r.T}/${r.qHeads}/${r.kvHeads}/${r.headDim}` === k && /xquant/.test(r.cache) && keysOf(r) === 'f32').sort((a, b) => a.ms - b.ms)[0];
  const full = best(/full/);
  const fastest = (mode) => int8Of(mode).filter((r) => `${r.T}/${r.qHeads}/${r.kvHeads}/${r.headDim}` === k).sort((a, b) => a.ms - b.ms)[0];
  const [q8, v8, b8] = [fastest(1), fastest(2), fastest(3)];
  const h16 = measured.filter((r) => valuesF16(r) && `${r.T}/${r.qHeads}/${r.kvHeads}/${r.headDim}` === k).sort((a, b) => a.ms - b.ms)[0];
  return {
    T, qHeads, kvHeads, headDim,
    xquantMs: xq.ms, xquantVariant: xq.variant, xquantKeyScores: keysOf(xq), xquantBytes: xq.bytes, xquantGBps: xq.GBps,
    ...(exact && exact !== xq ? { xquantFloatKeysMs: exact.ms, xquantFloatKeysVariant: exact.variant } : {}),
    fullFp16Ms: full?.ms ?? null, fullFp16GBps: full?.GBps ?? null,
    torchFp16Ms: torchBest(T, kvHeads, headDim),
    ...(q8 ? { xquantInt8KeysMs: q8.ms, xquantInt8KeysVariant: q8.variant } : {}),
    ...(v8 ? { xquantInt8ValuesMs: v8.ms, xquantInt8ValuesVariant: v8.variant } : {}),
    ...(b8 ? { xquantInt8BothMs: b8.ms, xquantInt8BothVariant: b8.variant } : {}),
    ...(h16 ? { xquantF16ValuesMs: h16.ms, xquantF16ValuesVariant: h16.variant } : {}),
    readCeilingGBps: run.ceiling.GBps,
  };
});
const endToEnd = run.endToEnd.filter((r) => !r.error).map((r) => ({
  model: r.model, context: r.context, cache: r.cache, msPerToken: r.msPerToken, floorMs: r.floorMs,
  tokensPerSecond: r.tokensPerSecond, kvBytes: r.kvBytes, kvTrueBits: r.kvTrueBits, peakGpuBytes: r.peakGpuBytes, gpuMs: r.profile?.total ?? null,
  attentionGpuMs: r.profile?.attention ?? null, hostMsPerToken: r.hostMsPerToken ?? null,
  // the GPU time of a whole position timed as one pass (runs from 2026-12-05e on)
  positionGpuMs: r.profile?.position ?? null,
}));
const summary = { device: run.device, date: run.date, readCeilingGBps: run.ceiling.GBps, torchReadCeilingGBps: torch.readCeilingGBps, attention, endToEnd };
// (the issue's summary is the H200's; a run on another card writes its own, e.g. docs/gpu/h100-summary.json)
const card = /h100/i.test(JSON.stringify(run.device)) ? 'h100' : 'h200';
if (hasTorch) writeFileSync(`docs/gpu/${card}-summary.json`, JSON.stringify(summary, null, 1) + '\n');
else console.error(`${dir}: no torch-peer.json, so docs/gpu/${card}-summary.json is left as it is`);

const f = (x, d = 3) => (x == null ? '–' : x.toFixed(d));
const lines = [];
lines.push('### Decode-attention step alone (one layer, 1 query position, fastest geometry of each kernel)', '');
lines.push('| T | q/kv heads | d | xquant-1.38 layer (ms) | GB/s | % of read ceiling | int8 keys (ms) | int8 values (ms) | int8 both (ms) | f16 values (ms) | our fp16 (ms) | torch fp16 SDPA (ms) | torch ÷ xquant | torch ÷ int8 values |');
lines.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const a of attention) {
  lines.push(`| ${a.T} | ${a.qHeads}/${a.kvHeads} | ${a.headDim} | ${f(a.xquantMs, 4)} (${a.xquantVariant}) | ${a.xquantGBps.toFixed(0)} | ${((100 * a.xquantGBps) / a.readCeilingGBps).toFixed(0)}% | ${a.xquantInt8KeysMs ? `${f(a.xquantInt8KeysMs, 4)} (${a.xquantInt8KeysVariant})` : '–'} | ${a.xquantInt8ValuesMs ? `${f(a.xquantInt8ValuesMs, 4)} (${a.xquantInt8ValuesVariant})` : '–'} | ${a.xquantInt8BothMs ? `${f(a.xquantInt8BothMs, 4)} (${a.xquantInt8BothVariant})` : '–'} | ${a.xquantF16ValuesMs ? `${f(a.xquantF16ValuesMs, 4)} (${a.xquantF16ValuesVariant})` : '–'} | ${f(a.fullFp16Ms, 4)} | ${f(a.torchFp16Ms, 4)} | ${a.torchFp16Ms ? (a.torchFp16Ms / a.xquantMs).toFixed(2) + '×' : '–'} | ${a.torchFp16Ms && a.xquantInt8ValuesMs ? (a.torchFp16Ms / a.xquantInt8ValuesMs).toFixed(2) + '×' : '–'} |`);
}
lines.push('', '### End to end (wall ms per generated token, one token id read back per step)', '');
lines.push('| model | context | cache | ms/token | tok/s | KV MiB | KV true bits | floor (ms) | floor ÷ measured | GPU time, pass per operation (ms) | attention GPU (ms) | GPU time, one pass (ms) | host encode (ms/token) |');
lines.push('|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const e of endToEnd) {
  lines.push(`| ${e.model} | ${e.context} | ${e.cache} | ${f(e.msPerToken)} | ${e.tokensPerSecond.toFixed(0)} | ${(e.kvBytes / 2 ** 20).toFixed(1)} | ${e.kvTrueBits.toFixed(2)} | ${f(e.floorMs)} | ${((100 * e.floorMs) / e.msPerToken).toFixed(0)}% | ${f(e.gpuMs)} | ${f(e.attentionGpuMs)} | ${f(e.positionGpuMs)} | ${f(e.hostMsPerToken)} |`);
}
lines.push('', '### xquant-1.38 against `full`, same model and context (ratio of ms/token; above 1 = xquant faster)', '');
lines.push('| model | 4K | 32K | 128K |', '|---|---:|---:|---:|');
for (const m of [...new Set(endToEnd.map((e) => e.model))]) {
  const r = (ctx) => {
    const full = endToEnd.find((e) => e.model === m && e.context === ctx && e.cache === 'full');
    const xq = endToEnd.find((e) => e.model === m && e.context === ctx && e.cache === 'xquant-1.38');
    return full && xq ? (full.msPerToken / xq.msPerToken).toFixed(2) + '×' : '–';
  };
  lines.push(`| ${m} | ${r(4096)} | ${r(32768)} | ${r(131072)} |`);
}
// prefill rows (--prefill): the prompt in batches against one position at a time, same process, alternated
const prefill = (run.prefill ?? []).filter((r) => !r.error);
if (prefill.length) {
  lines.push('', '### Prefill (wall ms for the prompt; batches of `prefillBatch` positions per command buffer against one at a time)', '');
  // the plain-PyTorch fp16 prefill of the Llama-3.2-1B shape (PREFILL_PEER=1 of gpu-run.sh), where it ran
  const peer = existsSync(join(dir, 'torch-prefill.json')) ? JSON.parse(readFileSync(join(dir, 'torch-prefill.json'), 'utf8')) : null;
  const torchMs = (r) => (r.model === 'llama-3.2-1b' ? (peer?.rows.find((p) => p.promptTokens === r.promptTokens)?.ms ?? null) : null);
  lines.push('| model | cache | prompt attends over | products on matrix units | prompt tokens | batch | batched ms | tok/s | one at a time ms | speed-up | torch fp16 ms | ours ÷ torch |', '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of prefill) {
    const t = torchMs(r);
    lines.push(`| ${r.model} | ${r.cache} | ${r.prefillAttention ?? 'cache'} | ${r.prefillMatrixProducts ?? 0} | ${r.promptTokens} | ${r.prefillBatch} | ${f(r.batchedMs, 1)} | ${r.tokensPerSecond.toFixed(0)} | ${f(r.oneAtATimeMs, 1)} | ${r.speedup.toFixed(2)}× | ${f(t, 1)} | ${t ? (r.batchedMs / t).toFixed(2) + '×' : '–'} |`);
  }
}
// the load-pattern benchmark of the same call (packages/webgpu/bench/load-patterns.bench.mjs), where it ran
if (existsSync(join(dir, 'load-patterns.json'))) {
  const lp = JSON.parse(readFileSync(join(dir, 'load-patterns.json'), 'utf8'));
  lines.push('', `### The packed loops' loads alone (${lp.tokens} tokens, ${lp.kvHeads} KV heads, head dim ${lp.headDim}; no arithmetic)`, '');
  lines.push('| loads | layout | MB | ms | GB/s | before ÷ this |', '|---|---|---:|---:|---:|---:|');
  for (const r of lp.table) lines.push(`| ${r.name} | ${r.layout} | ${r.MB.toFixed(1)} | ${f(r.ms, 4)} | ${r.GBps.toFixed(0)} | ${r.beforeOverThis.toFixed(2)}× |`);
}
writeFileSync(join(dir, 'tables.md'), lines.join('\n') + '\n');
console.log(lines.join('\n'));
