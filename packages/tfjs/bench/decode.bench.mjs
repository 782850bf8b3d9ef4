// One decode step of attention (append + attend) per layer, each preset vs `full` on the same backend in the same run.
// Shape: 32 query heads, 8 KV heads, d = 128; contexts 1K/4K/16K/32K; a 2-layer cache (so xquant-1.38's odd layer
// reads layer 0's value codes). Writes docs/bench/tfjs-decode.{json,md}. Usage: node bench/decode.bench.mjs [--webgpu-all] [--quick]
// [--contexts=32768] [--presets=xquant-1.38] [--backends=wasm] (partial runs print only)
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import { rng } from '../../../scripts/rng.mjs';

process.env.XDG_RUNTIME_DIR ??= '/tmp'; // Dawn/Mesa want it set
let api;
try {
  api = await import('@xquant/tfjs');
} catch (e) {
  console.error(`cannot load @xquant/tfjs from dist (${e.message.split('\n')[0]}); run \`pnpm build\` first`);
  process.exit(1);
}
const { createKvCache, selectBackend, releaseWebgpu, attentionKernelFor } = api;
const { accountBits } = await import('@xquant/cross-layer');
const tf = await import('@tensorflow/tfjs-core');
tf.enableProdMode();

const args = new Set(process.argv.slice(2));
const QUICK = args.has('--quick');
const opt = (name) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
const CONTEXTS = opt('contexts') ? opt('contexts').split(',').map(Number) : QUICK ? [1024, 4096] : [1024, 4096, 16384, 32768];
const REPS = { 1024: 10, 4096: 6, 16384: 4, 32768: 3 };
const PRESETS = opt('presets') ? ['full', ...opt('presets').split(',')] : ['full', 'kivi-2', 'kivi-1', 'asymkv-1.5', 'xquant-1.38'];
// WebGPU runs when an adapter exists (on lavapipe it is a software rasterizer: correctness, not speed), at ≤ 4K tokens
// unless --webgpu-all.
const BACKENDS = opt('backends') ? opt('backends').split(',') : ['cpu', 'wasm', 'webgpu'];
const WRITE = !opt('contexts') && !opt('presets') && !opt('backends');
const L = 2, KVH = 8, QH = 32, D = 128, R = 128, GS = 32;
const ROW = KVH * D;

function normals(n, seed, scale = 1) {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.sqrt(-2 * Math.log(r() + 1e-12)), v = 2 * Math.PI * r();
    out[i] = u * Math.cos(v) * scale;
    if (i + 1 < n) out[i + 1] = u * Math.sin(v) * scale;
  }
  return out;
}
const maxT = Math.max(...CONTEXTS);
console.error(`generating K/V for ${maxT} tokens…`);
const K = normals(KVH * maxT * D, 1);
for (let i = 0; i < K.length; i += D) K[i] += 6; // an outlier channel, as in real keys
const V = normals(KVH * maxT * D, 2, 0.8);

/** `[KVH, n, D]` slice of head-major data holding `maxT` tokens. */
function prefix(x, n) {
  if (n === maxT) return tf.tensor3d(x, [KVH, n, D]);
  const out = new Float32Array(KVH * n * D);
  for (let h = 0; h < KVH; h++) out.set(x.subarray(h * maxT * D, (h * maxT + n) * D), h * n * D);
  return tf.tensor3d(out, [KVH, n, D]);
}

/** Bytes an attend reads on a layer: codes (the donor's when borrowed), scales/zeros, full-precision tokens. */
function bytesRead(cache, preset, T) {
  if (preset === 'full') return 2 * T * ROW * 4;
  let b = 0;
  for (let l = 0; l < L; l++) {
    const v = cache.view(l);
    for (const k of v.keyBlocks) b += k.packed.byteLength + k.scale.byteLength + k.zero.byteLength;
    for (const c of v.valueChunks) {
      const frac = c.filled / c.capacity;
      b += (c.packed.byteLength + c.scale.byteLength + c.zero.byteLength) * frac;
    }
    b += v.residualKeys.byteLength + v.residualValues.byteLength;
  }
  return b / L;
}

const rows = [];
const t0All = performance.now();
for (const backend of BACKENDS) {
  let sel;
  try {
    sel = await selectBackend({ prefer: backend });
  } catch (e) {
    console.error(`${backend}: unavailable (${e.message})`);
    continue;
  }
  console.error(`backend ${sel.backend}: ${sel.reason}`);
  const q = tf.tensor3d(normals(QH * D, 3), [QH, 1, D]);
  for (const T of CONTEXTS) {
    if (sel.backend === 'webgpu' && T > 4096 && !args.has('--webgpu-all')) continue;
    const Kp = prefix(K, T - 1), Vp = prefix(V, T - 1);
    const kn = tf.tensor3d(normals(ROW, 4), [KVH, 1, D]), vn = tf.tensor3d(normals(ROW, 5), [KVH, 1, D]);
    // All caches of this context are filled first, then timed round-robin (rep r of every preset before rep r+1),
    // so load from other processes on this machine hits every preset alike.
    const caches = PRESETS.map((preset) => {
      const cache = createKvCache(preset, { layers: L, kvHeads: KVH, headDim: D }, preset === 'full' ? undefined : { residualLength: R, groupSize: GS });
      return cache;
    });
    // the async variants read tensors with data(): required on WebGPU, identical elsewhere
    for (const cache of caches) for (let l = 0; l < L; l++) await cache.prefillAsync(l, Kp, Vp);
    const step = async (cache) => {
      for (let l = 0; l < L; l++) {
        await cache.appendAsync(l, kn, vn);
        const o = cache.attend(l, q);
        await o.data();
        o.dispose();
      }
    };
    for (const cache of caches) {
      await step(cache); // flushes the prefill, warms up
      await step(cache);
    }
    const reps = QUICK || sel.backend === 'webgpu' ? 3 : REPS[T];
    const times = PRESETS.map(() => []);
    for (let i = 0; i < reps; i++) {
      for (let p = 0; p < PRESETS.length; p++) {
        const t = performance.now();
        await step(caches[p]);
        times[p].push((performance.now() - t) / L);
      }
    }
    let fullMs = NaN, fullBytes = NaN;
    for (let p = 0; p < PRESETS.length; p++) {
      const preset = PRESETS[p];
      const cache = caches[p];
      const ts = times[p].sort((a, b) => a - b);
      const ms = ts[Math.floor(ts.length / 2)];
      const tokens = cache.seqLength(0);
      const mem = cache.memory();
      const kernel = preset === 'full' ? 'tfjs ops' : attentionKernelFor(sel.backend).id;
      // the dense fallback (WebGPU) uploads the dequantized float32 K/V: it reads what full reads, and more
      const bytes = kernel === 'dense-upload' ? bytesRead(cache, 'full', tokens) : bytesRead(cache, preset, tokens);
      let accountedBytes = null;
      if (preset !== 'full') {
        const acc = accountBits({ plan: cache.plan, kvHeads: KVH, headDim: D, tokens, residualLength: R, groupSize: GS, residualBits: 32 });
        accountedBytes = acc.totalBytes;
      } else accountedBytes = 2 * L * tokens * ROW * 4;
      if (preset === 'full') { fullMs = ms; fullBytes = bytes; }
      const row = {
        backend: sel.backend, context: T, preset, kernel, msPerLayerStep: +ms.toFixed(3), speedupVsFull: +(fullMs / ms).toFixed(2),
        bytesReadPerLayerStep: Math.round(bytes), bytesReadVsFull: +(bytes / fullBytes).toFixed(4),
        heldBytes: mem.totalBytes, accountedBytes, heldVsAccounted: +(mem.totalBytes / accountedBytes).toFixed(4),
        paperBits: mem.paperBitsPerElement, trueBits: +mem.trueBitsPerElement.toFixed(3), reps,
      };
      rows.push(row);
      console.error(`${sel.backend} T=${T} ${preset}: ${ms.toFixed(2)} ms/layer-step (×${row.speedupVsFull} vs full), read ${(bytes / 2 ** 20).toFixed(2)} MiB, held/accounted ${row.heldVsAccounted}`);
      cache.dispose();
    }
    tf.dispose([Kp, Vp, kn, vn]);
  }
  q.dispose();
  if (sel.backend === 'webgpu') releaseWebgpu();
}
const totalS = (performance.now() - t0All) / 1000;

if (!WRITE) process.exit(0); // partial runs do not overwrite the published tables
const out = fileURLToPath(new URL('../../../docs/bench/', import.meta.url));
mkdirSync(out, { recursive: true });
const meta = {
  loadAverage: os.loadavg().map((x) => +x.toFixed(2)),
  date: new Date().toISOString(), node: process.version, cpu: os.cpus()[0]?.model, cores: os.cpus().length,
  shape: { layers: L, kvHeads: KVH, queryHeads: QH, headDim: D, residualLength: R, groupSize: GS },
  note: 'median time of one decode step (append + attend) per layer; quantized presets run @xquant/quant\'s packed kernels (WebAssembly SIMD) on cpu/wasm (the backend only holds full\'s tensors); bytes read = codes (donor\'s when borrowed) + scales/zeros + float32 window per layer; held vs accounted = memory().totalBytes / accountBits(residualBits 32)',
  totalSeconds: +totalS.toFixed(1),
};
writeFileSync(out + 'tfjs-decode.json', JSON.stringify({ meta, rows }, null, 2) + '\n');
const md = [
  '# @xquant/tfjs decode-step attention benchmark',
  '',
  `Generated by \`pnpm --filter @xquant/tfjs bench\` (${meta.date}, Node ${meta.node}, ${meta.cpu}, ${meta.cores} cores, ${meta.totalSeconds} s).`,
  `Shape: ${QH} query heads / ${KVH} KV heads / d = ${D}, R = ${R}, group size ${GS}, ${L}-layer cache (so xquant-1.38's layer 1 reads layer 0's value codes: 1.25 paper bits here, 1.375 with 8 layers). Time = median of one decode step (append + attend) per layer.`,
  'Quantized presets on cpu/wasm run the `js-packed` kernel: `@xquant/quant`\'s `packedKeyScores` / `packedValueMix` (WebAssembly SIMD bit-plane kernels, the ones `xquant verify` checks) over the cache\'s own key blocks and token-major value chunks, no dequantization; the kernel adds the float32 window and the softmax. On WebGPU the kernel registered there (`webgpu-packed` for decode, `dense-upload` otherwise). `full` runs tfjs attention on the backend. Bytes read = codes (the donor\'s for a borrowing layer) + scales/zeros + float32 window.',
  'WebGPU here is Mesa lavapipe (software, 2 shared cores): its times show the path works, not GPU speed; it runs only at ≤ 4K tokens unless `--webgpu-all`.',
  `Load average during the run: ${meta.loadAverage.join(' / ')} (a shared 2-core machine: ratios are measured round-robin in the same process, absolute times are noisy).`,
  '',
  '| backend | context | preset | kernel | ms / step | speed-up vs full | MiB read / step | read vs full | held MiB | held / accounted | paper bits | true bits |',
  '|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ...rows.map((r) => `| ${r.backend} | ${r.context} | ${r.preset} | ${r.kernel} | ${r.msPerLayerStep} | ${r.speedupVsFull}× | ${(r.bytesReadPerLayerStep / 2 ** 20).toFixed(2)} | ${r.bytesReadVsFull} | ${(r.heldBytes / 2 ** 20).toFixed(2)} | ${r.heldVsAccounted} | ${r.paperBits} | ${r.trueBits} |`),
  '',
  '## Target',
  '',
  'xquant-1.38 decode step on wasm at 32K tokens ≥ 3× `full` (same run):',
  '',
  ...rows.filter((r) => r.backend === 'wasm' && r.context === 32768 && r.preset === 'xquant-1.38')
    .map((r) => `- ${r.msPerLayerStep} ms vs ${(r.msPerLayerStep * r.speedupVsFull).toFixed(1)} ms: ${r.speedupVsFull}× (${r.speedupVsFull >= 3 ? 'met' : 'not met'})`),
  '',
];
writeFileSync(out + 'tfjs-decode.md', md.join('\n'));
console.error(`wrote ${out}tfjs-decode.{json,md} in ${totalS.toFixed(1)} s`);
