// GPU decode benchmark (raw WebGPU through Dawn): end-to-end decode of whole models with each KV cache, and the
// decode-attention step alone, with the WGSL read ceiling of the same run. Writes OUT/gpu-decode.json and prints tables.
//   node gpu-decode.bench.mjs --out DIR --models name=dir[,name=dir…] [--contexts 4096,32768,131072] [--steps 32]
//        [--caches full,kivi-2,xquant-1.38,plan] [--plan plan.json] [--attention 32768,131072] [--variants 64x8,128x4]
//        [--tuning 64x8] [--subgroups] [--prefetch-weights] [--matvec-split auto|off] [--in-flight N] [--attention-caches xquant,full] [--attention-flush] [--quick]
//        [--prefill 512,2048 [--prefill-batch 32] [--prefill-attention full-precision|cache] [--prefill-matrix on|emulate [--prefill-matrix-min N]]]   (prompt positions run in batches of
//        that many against one at a time, alternated; what a prompt attends over with a quantized cache)   (variants/tuning: workgroup x key slot x unroll x value unroll x heads per group x
//        value slot x debug skip (1-4; 5 = loads without arithmetic; 6 = 4 without the merge; 7 = empty main kernel; 8 = 7 without the merge; 9 = 4 without the lane reduction) x int8 (1 key scores, 2 value mix, 3 both, 4 float key scores, 8 f16 value mix) x
//        prefetch (1 on, 2 off) x subgroup reductions (1 on) x matrix units (1 on, 2 emulated) of the decode-attention kernel; 0 = default)
// On the GPU machine (no node there) run the bundle that scripts/gpu-carry.sh makes; docs/gpu/README.md has the recipe.
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DeviceKvCache, KernelCompiler, requestNodeDevice } from '@xquant/webgpu';
import { loadGpuDecoder } from '@xquant/models/gpu';
import { resolveCacheConfig } from '@xquant/tfjs';
import { timePasses as timePassesOn } from '../../webgpu/bench/time-passes.mjs';

const { values: o } = parseArgs({
  options: {
    out: { type: 'string', default: 'bench-results' },
    models: { type: 'string', default: '' },
    contexts: { type: 'string', default: '4096,32768,131072' },
    steps: { type: 'string', default: '32' },
    repeats: { type: 'string', default: '5' },
    caches: { type: 'string', default: 'full,kivi-2,xquant-1.38,plan' },
    plan: { type: 'string', default: '' },
    attention: { type: 'string', default: '32768,131072' },
    variants: { type: 'string', default: '64x8' },
    quick: { type: 'boolean', default: false },
    'dawn-flags': { type: 'string', default: '' },
    dims: { type: 'string', default: '128' },
    'attention-heads': { type: 'string', default: '32/32,32/8' },
    'attention-caches': { type: 'string', default: 'xquant,full' },
    // attention rows attend T tokens (the timed position completes a key block and flushes it) instead of T − 1
    'attention-flush': { type: 'boolean', default: false },
    tuning: { type: 'string', default: '' },
    // end to end: the decoder's subgroup reductions (matrix-vector products and, by default, attention)
    subgroups: { type: 'boolean', default: false },
    // end to end: the norm'd matrix-vector products issue their first weight loads before the norm
    'prefetch-weights': { type: 'boolean', default: false },
    // end to end: the single-wave matrix-vector products' rows split over several thread groups ('auto', the decoder's
    // default) or not ('off')
    'matvec-split': { type: 'string', default: 'auto' },
    // end to end: decode positions submitted ahead of the token read back (the decoder's inFlight; default 2)
    'in-flight': { type: 'string', default: '' },
    'warmup-s': { type: 'string', default: '8' },
    // end to end: prompt lengths whose prefill is timed in batches and one position at a time ('' = none)
    prefill: { type: 'string', default: '' },
    'prefill-batch': { type: 'string', default: '32' },
    // what a prompt attends over with a quantized cache: full-precision (the decoder's default) or cache
    'prefill-attention': { type: 'string', default: 'full-precision' },
    // the prefill batches' products on the matrix units ('on') or emulated ('emulate'; lavapipe)
    'prefill-matrix': { type: 'string', default: '' },
    // the fewest workgroups per batch a product needs to take the matrix units (default: the decoder's, 256; 0 = all)
    'prefill-matrix-min': { type: 'string', default: '' },
  },
});
process.env.XDG_RUNTIME_DIR ??= '/tmp';
mkdirSync(o.out, { recursive: true });
const t00 = performance.now();
const log = (...a) => console.log(`[${((performance.now() - t00) / 1000).toFixed(1)}s]`, ...a);
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const R = 32;
if (o['matvec-split'] !== 'auto' && o['matvec-split'] !== 'off') throw new Error(`--matvec-split must be auto or off; got ${o['matvec-split']}`);

const ng = await requestNodeDevice({ flags: ['disable-dawn-features=timestamp_quantization', ...(o['dawn-flags'] ? o['dawn-flags'].split(';') : [])] });
if (!ng) {
  console.log('no WebGPU adapter');
  process.exit(2);
}
const { device, info } = ng;
const gpuErrors = [];
device.addEventListener('uncapturederror', (e) => {
  gpuErrors.push(e.error.message);
  console.log('WebGPU error:', e.error.message);
});
const features = [...ng.adapter.features].sort();
// the subgroup sizes say whether `subgroups: true` can run (one size needed)
const subgroupSizes = [ng.adapter.info?.subgroupMinSize ?? null, ng.adapter.info?.subgroupMaxSize ?? null];
log('adapter', JSON.stringify(info), 'features', features.join(','), 'subgroup sizes', subgroupSizes.join('…'));
log('limits', JSON.stringify({ maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize, maxBufferSize: device.limits.maxBufferSize, wg: device.limits.maxComputeWorkgroupStorageSize }));
const results = { device: info, dawnFlags: o['dawn-flags'], features, subgroupSizes, node: process.version, date: new Date().toISOString(), ceiling: null, attention: [], endToEnd: [], prefill: [], errors: gpuErrors };
const save = () => writeFileSync(`${o.out}/gpu-decode.json`, JSON.stringify(results, null, 1));

// ---- timing helpers --------------------------------------------------------------------------------------------
/** GPU ms of each of `n` passes (timestamps), each pass encoded by `encode(pass, i)`; also the back-to-back mean. */
const timePasses = (encode, n) => {
  if (!ng.timestamps) throw new Error('timestamp-query is needed for kernel timing');
  return timePassesOn(device, encode, n);
};

// ---- WGSL read ceiling -----------------------------------------------------------------------------------------
async function readCeiling(warmMs = 0) {
  // (at most what one binding may hold: lavapipe allows less than 1 GiB)
  const unit = 16 * 256 * 16;
  const bytes = Math.min(o.quick ? 1 << 24 : 1 << 30, Math.floor(device.limits.maxStorageBufferBindingSize / unit) * unit);
  const buf = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE });
  const out = device.createBuffer({ size: 1 << 20, usage: GPUBufferUsage.STORAGE });
  const k = new KernelCompiler(device);
  const kinds = ['read-only-storage', 'storage'];
  const per = 16; // vec4 loads per thread
  const code = [
    '@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;',
    '@group(0) @binding(1) var<storage, read_write> o: array<u32>;',
    '@compute @workgroup_size(256)',
    'fn main(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32, @builtin(num_workgroups) nw: vec3<u32>) {',
    '  let wg = w.x + w.y * nw.x;',
    `  let base = wg * ${256 * per}u + l;`,
    '  var acc = vec4<u32>(0u);',
    `  for (var i = 0u; i < ${per}u; i = i + 1u) { acc = acc ^ a[base + i * 256u]; }`,
    '  let r = acc.x ^ acc.y ^ acc.z ^ acc.w;',
    '  if (r == 0x12345678u) { o[wg & 0x3ffffu] = r; }',
    '}',
  ].join('\n');
  const pipe = await k.pipeline(code, kinds, 'read ceiling');
  const bg = device.createBindGroup({ layout: k.layout(kinds), entries: [{ binding: 0, resource: { buffer: buf } }, { binding: 1, resource: { buffer: out } }] });
  const wgs = bytes / 16 / (256 * per);
  const encode = (pass) => {
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(Math.min(wgs, 65535), Math.ceil(wgs / 65535));
  };
  await timePasses(encode, 3);
  // warm-up on the same buffer (a fresh 1 GB buffer per round measured 1.9 TB/s afterwards instead of 4.5)
  for (const t0 = performance.now(); performance.now() - t0 < warmMs; ) await timePasses(encode, 20);
  const t = await timePasses(encode, 20);
  buf.destroy();
  out.destroy();
  return { GBps: bytes / (t.ms * 1e6), ms: t.ms };
}

/** `WGxSLOT[xUNROLLxVALUEUNROLLxHEADSxVALUESLOTxSKIPxINT8xPREFETCHxSUBGROUPS]` (0 = default; prefetch 1 = on, 2 = off; subgroups 1 = on) → decode-attention tuning. */
function tuningOf(v) {
  const [workgroup, slot, unroll, valueUnroll, headsPerGroup, valueSlot, skip, int8, prefetch, subgroups, matrix] = v.split('x').map(Number);
  // (0 = the cache's default, so `0x0x0x0x0x0x0x0x0x1` is the default geometry with subgroup reductions)
  const t = {};
  if (workgroup) t.workgroup = workgroup;
  if (slot) t.slot = slot;
  // int8 field: 1 = int8 key scores, 2 = int8 value mix, 3 = both; 4 = float key scores asked for; 8 = f16 value mix
  if (int8 & 1) t.keyDot = 'int8';
  if (int8 & 2) t.valueDot = 'int8';
  if (int8 & 8) t.valueDot = 'f16';
  if (int8 & 4) t.keyDot = 'f32'; // the float key scores asked for (packed keys without GQA default to int8)
  if (skip) t.debugSkip = ['keys', 'values', 'both', 'all', 'arith', 'nomerge', 'empty', 'empty-nomerge', 'nolanes'][skip - 1];
  if (unroll) t.unroll = unroll;
  if (valueUnroll) t.valueUnroll = valueUnroll;
  if (headsPerGroup) t.headsPerGroup = headsPerGroup;
  if (valueSlot) t.valueSlot = valueSlot;
  if (prefetch === 1) t.prefetch = true;
  if (prefetch === 2) t.prefetch = false;
  if (subgroups === 1) t.subgroups = true;
  // matrix field: 1 = the matrix-unit kernel (subgroup matrices; its own geometry), 2 = the same emulated with loops
  if (matrix === 1) t.matrix = true;
  if (matrix === 2) t.matrix = 'emulate';
  return t;
}

/**
 * Fill `cache` with synthetic tokens and begin the position the attention rows time, its update pass run for the
 * first `layers` layers. It attends T − 1 tokens: T is a multiple of R, and the position completing a key block also
 * flushes it (in the merge pass, once every R positions); the rows time the other positions (value quantization
 * included), end to end has both.
 */
async function synthesizePosition(cache, T, layers) {
  await cache.fillSynthetic(o['attention-flush'] ? T - 1 : T - 2, 7);
  cache.beginPosition();
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (let l = 0; l < layers; l++) cache.encodeUpdate(pass, l);
  pass.end();
  device.queue.submit([enc.finish()]);
}

/** Layer 0's attention output of cache `c` (attached to `io`, position begun) against the float kernel's on a cache filled the same way: { maxAbs, relative }. */
async function againstDefault(c, spec, layers, { qHeads, kvHeads, D, T }, io) {
  const readOut = async () => {
    const st = device.createBuffer({ size: qHeads * D * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(io.out, 0, st, 0, qHeads * D * 4);
    device.queue.submit([enc.finish()]);
    await st.mapAsync(GPUMapMode.READ);
    const a = new Float32Array(st.getMappedRange().slice(0));
    st.destroy();
    return a;
  };
  const run = async (cache) => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    cache.encodeAttention(pass, 0);
    pass.end();
    device.queue.submit([enc.finish()]);
    return readOut();
  };
  const got = await run(c);
  // (the float kernel in the matrix kernel's 256-token chunks: the same capacity, so the synthetic fill, which hashes
  // buffer indices, writes the same data)
  const ref = await DeviceKvCache.create(device, { layers, qHeads, kvHeads, headDim: D }, spec, { capacity: T + 1, tuning: { workgroup: 64, slot: 4, small: null, medium: null } });
  if (ref.capacity !== c.capacity) throw new Error(`internal: reference capacity ${ref.capacity} ≠ ${c.capacity}`);
  try {
    ref.attach(io);
    await synthesizePosition(ref, T, 1);
    const want = await run(ref);
    ref.endPosition();
    let err = 0;
    let mag = 0;
    let finite = true;
    for (let i = 0; i < want.length; i++) {
      if (!Number.isFinite(got[i])) finite = false;
      err = Math.max(err, Math.abs(got[i] - want[i]));
      mag = Math.max(mag, Math.abs(want[i]));
    }
    return { maxAbs: err, relative: finite ? err / mag : Infinity, magnitude: mag };
  } finally {
    ref.dispose();
  }
}

// ---- cache configurations ----------------------------------------------------------------------------------------
/** The plan (R = 32) of a trained 8-layer model, stretched to `layers` (layer l takes the settings of ⌊l·8/layers⌋). */
function stretchPlan(plan, layers) {
  const src = plan.preset.options;
  const L0 = src.keys.length;
  const map = (l) => Math.floor((l * L0) / layers);
  const storage = (list) =>
    Array.from({ length: layers }, (_, l) => {
      const s = list[map(l)];
      // a borrowing layer reads the previous layer's codes when that layer stands for its donor and owns codes
      const prev = l > 0 ? list[map(l - 1)] : null;
      const ok = s.codesFrom !== null && l > 0 && map(l - 1) === s.codesFrom && prev.codesFrom === null && prev.bits === s.bits;
      return { bits: s.bits, codesFrom: ok ? l - 1 : null };
    });
  const cal = (c) => (Array.isArray(c) ? Array.from({ length: layers }, (_, l) => c[map(l)]) : c);
  return { ...src, keys: storage(src.keys), values: storage(src.values), keyCalibration: cal(src.keyCalibration), valueCalibration: cal(src.valueCalibration) };
}

function cacheSpec(name, shape) {
  if (name === 'full') return { kind: 'full' };
  if (name === 'plan') {
    const plan = JSON.parse(readFileSync(o.plan, 'utf8'));
    return { kind: 'quantized', config: resolveCacheConfig('planned', shape, stretchPlan(plan, shape.layers)) };
  }
  return { kind: 'quantized', config: resolveCacheConfig(name, shape, { residualLength: R }) };
}

// ---- decode-attention step alone ----------------------------------------------------------------------------------
async function attentionBench(T, qHeads, kvHeads, D, cacheName, variant) {
  const tuning = { ...tuningOf(variant), small: null };
  const { workgroup, slot, unroll, valueUnroll } = tuning;
  // enough independent layers that consecutive calls never find their data in L2 (≥ 256 MB per rotation)
  const shape1 = { layers: 1, kvHeads, headDim: D };
  const spec = cacheName === 'full' ? { kind: 'full' } : { kind: 'quantized', config: resolveCacheConfig('xquant-1.38', shape1, { residualLength: R }) };
  const probe = await DeviceKvCache.create(device, { layers: 1, qHeads, kvHeads, headDim: D }, spec, { capacity: T + 1, tuning });
  const per = probe.memory().allocatedBytes;
  probe.dispose();
  const layers = Math.max(1, Math.min(16, Math.ceil((o.quick ? 1 << 20 : 256 << 20) / per)));
  const spec2 = cacheName === 'full' ? spec : { kind: 'quantized', config: resolveCacheConfig('xquant-noshare', { ...shape1, layers }, { residualLength: R }) };
  const c = await DeviceKvCache.create(device, { layers, qHeads, kvHeads, headDim: D }, spec2, { capacity: T + 1, tuning });
  const mk = (n) => device.createBuffer({ size: 4 * n, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
  const io = { qkv: mk((qHeads + 2 * kvHeads) * D), rope: mk(c.capacity * D), out: mk(qHeads * D) };
  c.attach(io);
  await synthesizePosition(c, T, layers);
  const bytes = c.attentionBytes(0);
  const dispatch = c.attentionDispatch(0);
  const encode = (pass, i) => c.encodeAttention(pass, i % layers);
  // the clocks drop while the host builds and fills the cache: keep the GPU busy on this kernel for a while first
  // (measured: an 8-pass warm-up left whole groups of rows 2-4× slow)
  for (const t0 = performance.now(); performance.now() - t0 < (o.quick ? 0 : 600); ) await timePasses(encode, 20);
  const t = await timePasses(encode, o.quick ? 10 : 60);
  const up = await timePasses((pass, i) => c.encodeUpdate(pass, i % layers), 20);
  // the matrix kernel checks itself: layer 0's output against the default float kernel's on the same synthetic cache
  const check = tuning.matrix ? await againstDefault(c, spec2, layers, { qHeads, kvHeads, D, T }, io) : undefined;
  c.dispose();
  for (const b of Object.values(io)) b.destroy();
  return {
    ...(check ? { check } : {}), T, qHeads, kvHeads, headDim: D, cache: cacheName === 'full' ? 'full (fp16)' : 'xquant-1.38 layer (2-bit K, 1-bit V, η)', variant, dispatch, layersRotated: layers, bytes, ...t, updateMs: up.ms, GBps: bytes / (t.ms * 1e6), GBps_b2b: bytes / (t.b2bMs * 1e6) };
}

// ---- end to end ---------------------------------------------------------------------------------------------------
async function endToEnd(name, dir, contexts, caches, steps) {
  const maxCtx = Math.max(0, ...contexts);
  const prefills = o.prefill ? o.prefill.split(',').map(Number) : [];
  const cap = Math.max(maxCtx + steps + 8, ...prefills.map((n) => n + 8));
  let t = performance.now();
  const first = cacheSpec('full', null);
  // --tuning V (every cache) or full=V,quantized=V (the best geometry of each kind of cache)
  const tuningFor = (kind) => {
    if (!o.tuning) return undefined;
    if (!o.tuning.includes('=')) return tuningOf(o.tuning);
    const m = Object.fromEntries(o.tuning.split(',').map((p) => p.split('=')));
    return m[kind] ? tuningOf(m[kind]) : undefined;
  };
  const tuning = tuningFor('full');
  const batch = Number(o['prefill-batch']);
  const { decoder, config } = await loadGpuDecoder(dir, device, {
    cache: first,
    capacity: cap,
    prefillBatch: batch,
    prefillAttention: o['prefill-attention'],
    ...(tuning ? { tuning } : {}),
    ...(o.subgroups ? { subgroups: true } : {}),
    ...(o['prefetch-weights'] ? { prefetchWeights: true } : {}),
    ...(o['matvec-split'] === 'off' ? { splitMatvecs: false } : {}),
    ...(o['in-flight'] !== '' ? { inFlight: Number(o['in-flight']) } : {}),
    ...(o['prefill-matrix'] ? { prefillMatrix: o['prefill-matrix'] === 'emulate' ? 'emulate' : true } : {}),
    ...(o['prefill-matrix-min'] !== '' ? { prefillMatrixMinWorkgroups: Number(o['prefill-matrix-min']) } : {}),
  });
  log(`${name}: loaded in ${((performance.now() - t) / 1000).toFixed(1)} s`, JSON.stringify({ layers: config.numLayers, hidden: config.hiddenSize, heads: `${config.numHeads}/${config.numKvHeads}`, vocab: config.vocabSize, matvecSplits: decoder.matvecSplits }));
  const shape = { layers: config.numLayers, kvHeads: config.numKvHeads, headDim: config.headDim };
  for (const cacheName of caches) {
    let spec;
    try {
      spec = cacheSpec(cacheName, shape);
    } catch (e) {
      log(`${name} ${cacheName}: skipped (${e.message})`);
      continue;
    }
    await decoder.replaceCache(spec, cap, tuningFor(spec.kind));
    for (const ctx of contexts) {
      // run 0 is a full-length warm-up (measured: after a cache swap the first one or two 32-token runs stalled on the
      // host at 2-3× the steady time, which a 4-token warm-up and a median of 3 did not absorb)
      const runs = [];
      const hostRuns = [];
      for (let r = 0; r < Number(o.repeats) + 1; r++) {
        decoder.reset();
        await decoder.fillSynthetic(ctx - 1, 11 + r);
        const res = await decoder.generate({ prompt: [config.bosTokenId ?? 1], maxNewTokens: steps, stopTokens: [] });
        if (r > 0) runs.push(res.msPerToken);
        if (r > 0) hostRuns.push(res.hostMsPerToken);
      }
      // GPU time per kind of operation (one timed pass each), at the same context
      decoder.reset();
      await decoder.fillSynthetic(ctx - 1, 99);
      let profile = null;
      try {
        profile = await decoder.profile(3);
      } catch (e) {
        profile = { error: String(e.message) };
      }
      const mem = decoder.memory();
      const kvBytes = mem.cache.usedBytes;
      const readBytes = mem.weightReadBytesPerToken + kvBytes;
      const msPerToken = median(runs);
      const floorMs = results.ceiling ? readBytes / (results.ceiling.GBps * 1e6) : null;
      const row = {
        model: name, context: ctx, cache: cacheName, tuning: tuningFor(spec.kind) ?? 'default', subgroups: decoder.usesSubgroups, prefetchWeights: o['prefetch-weights'], matvecSplits: decoder.matvecSplits, inFlight: o['in-flight'] === '' ? 2 : Number(o['in-flight']), msPerToken, tokensPerSecond: 1000 / msPerToken, runs,
        hostMsPerToken: median(hostRuns), hostRuns,
        kvBytes, kvTrueBits: mem.cache.trueBitsPerElement, weightReadBytes: mem.weightReadBytesPerToken,
        peakGpuBytes: mem.weightBytes + mem.scratchBytes + mem.prefillBytes + mem.cache.allocatedBytes, floorMs, floorFraction: floorMs ? floorMs / msPerToken : null, profile,
      };
      results.endToEnd.push(row);
      save();
      log(`${name} ${cacheName} ctx ${ctx}: ${msPerToken.toFixed(3)} ms/token (${row.tokensPerSecond.toFixed(0)} tok/s; host encode ${row.hostMsPerToken.toFixed(3)} ms/token), KV ${(kvBytes / 2 ** 20).toFixed(1)} MiB (${row.kvTrueBits.toFixed(2)} bits), floor ${floorMs?.toFixed(3)} ms; GPU ${Object.entries(profile ?? {}).map(([k, v]) => `${k} ${typeof v === 'number' ? v.toFixed(3) : v}`).join(' ')}`);
    }
    // prefill: the same prompt in batches and one position at a time, alternated (rounds after a warm-up of each)
    for (const n of prefills) {
      const prompt = Array.from({ length: n }, (_, i) => (i * 37 + 5) % config.vocabSize);
      const ms = { 1: [], [batch]: [] };
      for (let r = 0; r < Number(o.repeats) + 1; r++) {
        for (const b of r % 2 ? [batch, 1] : [1, batch]) {
          decoder.reset();
          const res = await decoder.generate({ prompt, maxNewTokens: 1, stopTokens: [], prefillBatch: b });
          if (r > 0) ms[b].push(res.prefillMs);
        }
      }
      const row = { model: name, cache: cacheName, promptTokens: n, prefillBatch: batch, prefillAttention: cacheName === 'full' ? 'cache' : o['prefill-attention'], prefillMatrixProducts: decoder.prefillMatrixProducts, batchedMs: median(ms[batch]), oneAtATimeMs: median(ms[1]), runs: ms };
      row.tokensPerSecond = ((n - 1) * 1000) / row.batchedMs;
      row.speedup = row.oneAtATimeMs / row.batchedMs;
      // GPU time of the batched prefill by kind of operation (one more run, each operation in a timed pass of its own)
      if (device.features.has('timestamp-query')) {
        decoder.reset();
        row.profile = await decoder.profilePrefill(prompt, { prefillBatch: batch });
      }
      results.prefill.push(row);
      log(`${name} ${cacheName} prefill ${n} tokens: ${row.batchedMs.toFixed(1)} ms in batches of ${batch}${row.prefillMatrixProducts ? ` (${row.prefillMatrixProducts} products on the matrix units)` : ''} (${row.tokensPerSecond.toFixed(0)} tok/s) against ${row.oneAtATimeMs.toFixed(1)} ms one at a time: ${row.speedup.toFixed(2)}×${row.profile ? `; GPU ${Object.entries(row.profile).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(' ')} ms` : ''}`);
      save();
    }
  }
  decoder.dispose();
}

// ---- run ----------------------------------------------------------------------------------------------------------
// The GPU idles at a low clock (the H200 reports 345 MHz idle) and short passes do not bring it up at once: measured the
// same kernel at 0.26 and 0.46 ms in two calls. Keep it busy for a few seconds first, so every row sees the same clocks.
results.ceiling = await readCeiling(Number(o['warmup-s']) * 1000);
log(`WGSL read ceiling: ${results.ceiling.GBps.toFixed(0)} GB/s`);
save();
for (const T of o.attention ? o.attention.split(',').map(Number) : []) {
  for (const [qh, kvh, D] of o['attention-heads'].split(',').flatMap((h) => o.dims.split(',').map((d) => [...h.split('/').map(Number), Number(d)]))) {
    for (const cacheName of o['attention-caches'].split(',')) {
      for (const wg of o.variants.split(',')) {
        if (cacheName === 'full' && (tuningOf(wg).keyDot || tuningOf(wg).valueDot)) continue; // the fp16 kernel has no int8 paths
        try {
          const r = await attentionBench(T, qh, kvh, D, cacheName, wg);
          results.attention.push(r);
          log(`attention T=${T} ${qh}/${kvh} d=${D} ${r.cache} ${wg}: ${r.ms.toFixed(4)} ms (${r.GBps.toFixed(0)} GB/s; b2b ${r.b2bMs.toFixed(4)}), update ${r.updateMs.toFixed(4)} ms${r.check ? `; against the float kernel: relative ${r.check.relative.toExponential(2)}` : ''}`);
        } catch (e) {
          log(`attention T=${T} ${qh}/${kvh} ${cacheName} wg ${wg}: FAILED ${e.message}`);
          results.attention.push({ T, qHeads: qh, kvHeads: kvh, cache: cacheName, workgroup: wg, error: String(e.message) });
        }
        save();
      }
    }
  }
}
const contexts = o.contexts.split(',').filter(Boolean).map(Number);
for (const m of o.models ? o.models.split(',') : []) {
  const [name, dir] = m.split('=');
  try {
    await endToEnd(name, dir, contexts, o.caches.split(','), Number(o.steps));
  } catch (e) {
    log(`${name}: FAILED ${e.stack}`);
    results.endToEnd.push({ model: name, error: String(e.message) });
  }
  save();
}
save();
log('done');
process.exit(0);
