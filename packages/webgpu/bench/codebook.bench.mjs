// GPU benchmark of the WGSL codebook (turboquant layout) decode-attention step: scores → softmax → values over random
// codes, for the layouts the codebook cache and its planner use, at long contexts. Writes OUT/codebook-gpu.json and a
// markdown table. Compare with gpu-decode.bench.mjs's attention rows (KIVI xquant-1.38 and fp16 `full`) and the torch
// peer of the same device call (scripts/gpu-run.sh with CODEBOOK=1).
//   node codebook.bench.mjs [--out DIR] [--tokens 32768,131072] [--heads 32/8,32/32] [--dims 64,128] [--quick]
import { mkdirSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createCodebookAttention, requestNodeDevice } from '@xquant/webgpu';
import { lloydMaxCodebook, scaleDecodeTable } from '@xquant/quant';
import { timePasses as timePassesOn } from './time-passes.mjs';

const { values: o } = parseArgs({
  options: {
    out: { type: 'string', default: 'bench-results' },
    tokens: { type: 'string', default: '32768,131072' },
    heads: { type: 'string', default: '32/8,14/2,32/32' },
    dims: { type: 'string', default: '64,128' },
    quick: { type: 'boolean', default: false },
  },
});
process.env.XDG_RUNTIME_DIR ??= '/tmp';
mkdirSync(o.out, { recursive: true });
const t00 = performance.now();
const log = (...a) => console.log(`[${((performance.now() - t00) / 1000).toFixed(1)}s]`, ...a);

const ng = await requestNodeDevice({ flags: ['disable-dawn-features=timestamp_quantization'] });
if (!ng || !ng.timestamps) {
  console.log(ng ? 'timestamp-query is needed' : 'no WebGPU adapter');
  process.exit(2);
}
const { device, info } = ng;
device.addEventListener('uncapturederror', (e) => console.log('WebGPU error:', e.error.message));
const K = createCodebookAttention(device);
const results = { device: info, node: process.version, date: new Date().toISOString(), rows: [] };
const save = () => writeFileSync(`${o.out}/codebook-gpu.json`, JSON.stringify(results, null, 1));

const CHUNKS = [512, 256, 128, 64];
let seed = 0x2545f491;
const xr = () => ((seed ^= seed << 13), (seed ^= seed >>> 17), (seed ^= seed << 5), seed >>> 0);

/** Layouts: [channels fraction, bits] segments, scale format, one scale slot per segment unless `shared`. */
const LAYOUTS = {
  'tq-2 (2-bit, log8 scale)': { keys: [[1, 2]], values: [[1, 2]], fmt: 'log8' },
  'K 2-bit / V 1-bit (log8)': { keys: [[1, 2]], values: [[1, 1]], fmt: 'log8' },
  'tq-2.5 (3+2-bit outlier split, fp16 norms)': { keys: [[0.5, 3], [0.5, 2]], values: [[0.5, 3], [0.5, 2]], fmt: 'fp16' },
};

function view(parts, fmt, heads, tokens, D) {
  const segments = [];
  let start = 0;
  let bitOffset = 0;
  for (const [frac, bits] of parts) {
    const length = Math.round(frac * D);
    segments.push({ start, length, bits, levels: Float32Array.from(lloydMaxCodebook(bits, length).levels), bitOffset, scaleSlot: segments.length });
    start += length;
    bitOffset += length * bits;
  }
  const rowWords = Math.ceil(bitOffset / 32);
  const rows = heads * tokens;
  const packed = new Uint32Array(rows * rowWords);
  for (let i = 0; i < packed.length; i++) packed[i] = xr();
  const scales = fmt === 'fp16' ? new Uint16Array(rows * segments.length) : new Uint8Array(rows * segments.length);
  const table = scaleDecodeTable(fmt);
  for (let i = 0; i < scales.length; i++) scales[i] = fmt === 'fp16' ? 0x3c00 + (xr() & 0x3ff) : 120 + (xr() & 15);
  return { heads, tokens, headDim: D, segments, rowWords, scalesPerRow: segments.length, packed, scales, scaleTable: table };
}

const timePasses = (encode, n) => timePassesOn(device, encode, n);

for (const T of o.tokens.split(',').map(Number)) {
  for (const [qHeads, kvHeads] of o.heads.split(',').map((h) => h.split('/').map(Number))) {
    for (const D of o.dims.split(',').map(Number)) {
      for (const [name, L] of Object.entries(LAYOUTS)) {
        try {
          const one = view(L.keys, L.fmt, kvHeads, T, D);
          const oneV = view(L.values, L.fmt, kvHeads, T, D);
          const probe = K.upload(one);
          const probeV = K.upload(oneV);
          const bytes = probe.packedBytes + probeV.packedBytes;
          K.release(probe);
          K.release(probeV);
          // independent copies so consecutive calls never find their data in the 50 MB L2 (≥ 128 MB per rotation; building
          // more copies on the host made a device call run out of time)
          const copies = Math.max(2, Math.min(12, Math.ceil((o.quick ? 1 << 20 : 128 << 20) / bytes)));
          const q = K.base.createBuffer(Float32Array.from({ length: qHeads * D }, () => (xr() / 2 ** 32 - 0.5) * 0.2));
          const p = K.base.createBuffer(Float32Array.from({ length: qHeads * T }, () => xr() / 2 ** 32 / T));
          const sets = [];
          for (let i = 0; i < copies; i++) {
            // fresh random codes per copy (a few words changed is enough to defeat caching: they are different buffers)
            for (let w = 0; w < 64; w++) one.packed[w] = xr();
            const keys = K.upload(one);
            const values = K.upload(oneV);
            const calls = {};
            for (const ch of CHUNKS) calls[ch] = await K.attention({ q, qHeads, keys, values, chunkTokens: ch }).catch(() => null);
            sets.push({ keys, values, call: await K.attention({ q, qHeads, keys, values }), calls, scores: await K.keyScores({ q, qHeads, keys }), mix: await K.valueMix({ p, qHeads, values }) });
          }
          await device.queue.onSubmittedWorkDone();
          const encode = (pass, i) => sets[i % copies].call.encode(pass);
          for (const t0 = performance.now(); performance.now() - t0 < (o.quick ? 0 : 600); ) await timePasses(encode, 20);
          const t = await timePasses(encode, o.quick ? 10 : 60);
          const byChunk = {};
          for (const ch of CHUNKS) if (sets[0].calls[ch]) byChunk[ch] = (await timePasses((pass, i) => sets[i % copies].calls[ch].encode(pass), o.quick ? 10 : 40)).ms;
          const ts = await timePasses((pass, i) => sets[i % copies].scores.encode(pass), o.quick ? 10 : 40);
          const tm = await timePasses((pass, i) => sets[i % copies].mix.encode(pass), o.quick ? 10 : 40);
          const row = { T, qHeads, kvHeads, headDim: D, layout: name, bytes, copies, ...t, scoresMs: ts.ms, mixMs: tm.ms, byChunk, GBps: bytes / (t.ms * 1e6) };
          results.rows.push(row);
          log(`codebook attention T=${T} ${qHeads}/${kvHeads} d=${D} ${name}: ${t.ms.toFixed(4)} ms (${row.GBps.toFixed(0)} GB/s; b2b ${t.b2bMs.toFixed(4)}; scores ${ts.ms.toFixed(4)}, values ${tm.ms.toFixed(4)}; by chunk ${JSON.stringify(byChunk)})`);
          await device.queue.onSubmittedWorkDone();
          for (const s of sets) {
            s.call.destroy();
            for (const c of Object.values(s.calls)) c?.destroy();
            s.scores.destroy();
            s.mix.destroy();
            K.release(s.keys);
            K.release(s.values);
          }
          q.destroy();
          p.destroy();
        } catch (e) {
          log(`codebook attention T=${T} ${qHeads}/${kvHeads} d=${D} ${name}: FAILED ${e.stack ?? e}`);
          results.rows.push({ T, qHeads, kvHeads, headDim: D, layout: name, error: String(e.message ?? e) });
        }
        save();
      }
    }
  }
}
const lines = ['| T | q/kv heads | d | layout | KV bytes | step ms (default chunk) | best chunk: ms | scores alone ms | values alone ms | GB/s |', '|---:|---|---:|---|---:|---:|---:|---:|---:|---:|'];
for (const r of results.rows) {
  if (r.error) continue;
  const [bc, bm] = Object.entries(r.byChunk).sort((a, b) => a[1] - b[1])[0] ?? ['–', NaN];
  lines.push(`| ${r.T} | ${r.qHeads}/${r.kvHeads} | ${r.headDim} | ${r.layout} | ${r.bytes} | ${r.ms.toFixed(4)} | ${bc}: ${bm.toFixed(4)} | ${r.scoresMs.toFixed(4)} | ${r.mixMs.toFixed(4)} | ${r.GBps.toFixed(0)} |`);
}
writeFileSync(`${o.out}/codebook-gpu.md`, `${lines.join('\n')}\n`);
console.log(lines.join('\n'));
save();
process.exit(0);
