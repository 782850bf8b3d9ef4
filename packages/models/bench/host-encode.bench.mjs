// Where the host's time goes while the GPU decoder decodes: every WebGPU call the decoder makes per position (pass calls,
// command encoding, submit, writeBuffer, mapAsync) timed and counted by wrapping the prototypes, garbage-collection
// pauses from `perf_hooks`, and the wall and host times `generate` reports. Writes OUT/host-encode.json and prints a
// table (ms per generated token).
//   node host-encode.bench.mjs --models name=dir[,name=dir…] [--caches full,xquant-1.38] [--contexts 4096] [--steps 64]
//        [--out DIR] [--dawn-flags 'enable-dawn-features=…']
// On the GPU machine (no node there) it is bundled by scripts/gpu-carry.sh and run by scripts/gpu-run.sh (HOST_ENCODE=1).
import { mkdirSync, writeFileSync } from 'node:fs';
import { PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { requestNodeDevice } from '@xquant/webgpu';
import { loadGpuDecoder } from '@xquant/models/gpu';
import { resolveCacheConfig } from '@xquant/tfjs';

const { values: o } = parseArgs({
  options: {
    out: { type: 'string', default: 'bench-results' },
    models: { type: 'string', default: '' },
    caches: { type: 'string', default: 'full,xquant-1.38' },
    contexts: { type: 'string', default: '4096' },
    steps: { type: 'string', default: '64' },
    'dawn-flags': { type: 'string', default: '' },
  },
});
const steps = Number(o.steps);
if (!Number.isInteger(steps) || steps < 2) throw new Error(`--steps must be an integer ≥ 2; got ${o.steps}`);
const contexts = o.contexts.split(',').filter(Boolean).map(Number);
if (contexts.some((c) => !Number.isInteger(c) || c < 1)) throw new Error(`--contexts must be positive integers; got ${o.contexts}`);
const models = o.models.split(',').filter(Boolean).map((m) => m.split('='));
if (models.length === 0 || models.some((m) => m.length !== 2)) throw new Error('--models name=dir[,name=dir…] is required');
mkdirSync(o.out, { recursive: true });

const ng = await requestNodeDevice({ flags: o['dawn-flags'] ? o['dawn-flags'].split(';') : [] });
if (!ng) {
  console.log('no WebGPU adapter');
  process.exit(2);
}
const { device, info } = ng;

// every call below, counted and timed while `armed`
const calls = {};
let armed = false;
const wrap = (proto, name) => {
  const f = proto[name];
  calls[name] = { n: 0, ms: 0 };
  proto[name] = function (...a) {
    if (!armed) return f.apply(this, a);
    const t = performance.now();
    const r = f.apply(this, a);
    calls[name].ms += performance.now() - t;
    calls[name].n++;
    return r;
  };
};
for (const n of ['setPipeline', 'setBindGroup', 'dispatchWorkgroups', 'end']) wrap(globalThis.GPUComputePassEncoder.prototype, n);
for (const n of ['beginComputePass', 'copyBufferToBuffer', 'finish']) wrap(globalThis.GPUCommandEncoder.prototype, n);
for (const n of ['submit', 'writeBuffer']) wrap(globalThis.GPUQueue.prototype, n);
wrap(globalThis.GPUDevice.prototype, 'createCommandEncoder');
wrap(globalThis.GPUBuffer.prototype, 'mapAsync');
let gc = { n: 0, ms: 0 };
new PerformanceObserver((list) => {
  if (!armed) return;
  for (const e of list.getEntries()) {
    gc.n++;
    gc.ms += e.duration;
  }
}).observe({ entryTypes: ['gc'] });

const rows = [];
const save = () => writeFileSync(`${o.out}/host-encode.json`, JSON.stringify({ device: info, dawnFlags: o['dawn-flags'], node: process.version, date: new Date().toISOString(), steps, rows }, null, 1));
for (const [name, dir] of models) {
  const cap = Math.max(...contexts) + steps + 8;
  const { decoder, config } = await loadGpuDecoder(dir, device, { cache: { kind: 'full' }, capacity: cap });
  const shape = { layers: config.numLayers, kvHeads: config.numKvHeads, headDim: config.headDim };
  for (const cache of o.caches.split(',').filter(Boolean)) {
    const spec = cache === 'full' ? { kind: 'full' } : { kind: 'quantized', config: resolveCacheConfig(cache, shape, { residualLength: 32 }) };
    await decoder.replaceCache(spec, cap);
    for (const ctx of contexts) {
      // a warm-up, then the timed generation from the same state
      for (const timed of [false, true]) {
        decoder.reset();
        await decoder.fillSynthetic(ctx - 1, 3);
        for (const k of Object.keys(calls)) calls[k] = { n: 0, ms: 0 };
        gc = { n: 0, ms: 0 };
        armed = timed;
        const out = await decoder.generate({ prompt: [config.bosTokenId ?? 1], maxNewTokens: steps, stopTokens: [] });
        // (the GC observer reports asynchronously: let its entries arrive before disarming)
        await new Promise((r) => setTimeout(r, 50));
        armed = false;
        if (!timed) continue;
        const per = Object.fromEntries(Object.entries(calls).map(([k, v]) => [k, { callsPerToken: v.n / steps, msPerToken: v.ms / steps }]));
        const row = { model: name, layers: config.numLayers, cache, context: ctx, msPerToken: out.msPerToken, hostMsPerToken: out.hostMsPerToken, gcPerToken: { count: gc.n / steps, ms: gc.ms / steps }, calls: per };
        rows.push(row);
        save();
        const passCalls = ['setPipeline', 'setBindGroup', 'dispatchWorkgroups'].reduce((a, k) => a + per[k].msPerToken, 0);
        console.log(`${name} ${cache} ctx ${ctx}: wall ${out.msPerToken.toFixed(3)} ms/token, host ${out.hostMsPerToken.toFixed(3)} (pass calls ${passCalls.toFixed(3)} in ${['setPipeline', 'setBindGroup', 'dispatchWorkgroups'].reduce((a, k) => a + per[k].callsPerToken, 0).toFixed(0)} calls, beginComputePass ${per.beginComputePass.msPerToken.toFixed(3)}, submit ${per.submit.msPerToken.toFixed(3)}, writeBuffer ${per.writeBuffer.msPerToken.toFixed(3)}), GC ${row.gcPerToken.ms.toFixed(3)} ms/token in ${row.gcPerToken.count.toFixed(2)} pauses`);
      }
    }
  }
  decoder.dispose();
}
const f = (x) => x.toFixed(3);
console.log('\n| model | cache | context | wall | host | setPipeline | setBindGroup | dispatch | beginComputePass | submit | writeBuffer | mapAsync | GC |');
console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  const c = (k) => f(r.calls[k].msPerToken);
  console.log(`| ${r.model} | ${r.cache} | ${r.context} | ${f(r.msPerToken)} | ${f(r.hostMsPerToken)} | ${c('setPipeline')} | ${c('setBindGroup')} | ${c('dispatchWorkgroups')} | ${c('beginComputePass')} | ${c('submit')} | ${c('writeBuffer')} | ${c('mapAsync')} | ${f(r.gcPerToken.ms)} |`);
}
console.log('(ms per generated token)');
process.exit(0);
