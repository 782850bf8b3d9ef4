// GPU benchmark of the packed-code attention kernels next to float32 tfjs-webgpu attention, same GPU, same run.
// Usage: node packages/webgpu/bench/gpu-bench.mjs [--out DIR] [--tokens 4096,32768,131072] [--quick]
// On a machine without node, run the bundle made by bench/pack-carry.sh (see docs/gpu/README.md).
import { mkdirSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { createPackedAttention, requestNodeDevice, packedBytes } from '@xquant/webgpu';
import { halfToBits, packedKeyScores, packedValueMix, quantizeKeys, quantizeValues, unpackKv } from '@xquant/quant';

const { values: opt } = parseArgs({
  options: {
    out: { type: 'string', default: 'bench-results' },
    tokens: { type: 'string', default: '4096,32768,131072' },
    quick: { type: 'boolean', default: false },
    'no-tfjs': { type: 'boolean', default: false },
  },
});
process.env.XDG_RUNTIME_DIR ??= '/tmp';
const TOKENS = opt.tokens.split(',').map(Number);
const D = 128;
const RESIDUAL = 128;
const HEADS = [
  { qHeads: 32, kvHeads: 32 },
  { qHeads: 32, kvHeads: 8 },
];
const ITERS = opt.quick ? 8 : 60;
const WARM = opt.quick ? 2 : 10;
const WARM_MS = opt.quick ? 10 : 250;
const ROTATE_BYTES = opt.quick ? 8 << 20 : 384 << 20; // rotate inputs so one pass never finds them in the 50 MB L2
const t00 = performance.now();
const log = (...a) => console.log(`[${((performance.now() - t00) / 1000).toFixed(1)}s]`, ...a);
mkdirSync(opt.out, { recursive: true });

// ---------------------------------------------------------------------------------------------------------------
const ng = await requestNodeDevice({ flags: ['disable-dawn-features=timestamp_quantization'] });
if (!ng) {
  console.log('no WebGPU adapter');
  process.exit(2);
}
const { device, info } = ng;
device.addEventListener?.('uncapturederror', (e) => console.log('WebGPU error:', e.error?.message));
log('adapter', JSON.stringify(info), 'timestamps', ng.timestamps, 'maxStorageBinding', device.limits.maxStorageBufferBindingSize, 'wgMem', device.limits.maxComputeWorkgroupStorageSize);
const K = createPackedAttention(device);
const results = { device: info, date: new Date().toISOString(), node: process.version, checks: [], ceiling: null, kernels: [], fused: [], tfjs: [], notes: [] };
const save = () => writeFileSync(`${opt.out}/gpu-bench.json`, JSON.stringify(results, null, 1));

// ---------------------------------------------------------------------------------------------------------------
// random data helpers
let seed = 0x9e3779b9;
const xr = () => ((seed ^= seed << 13), (seed ^= seed >>> 17), (seed ^= seed << 5), seed >>> 0);
const randWords = (n) => {
  const a = new Uint32Array(n);
  for (let i = 0; i < n; i++) a[i] = xr();
  return a;
};
const META_TABLE = Uint32Array.from({ length: 4096 }, () => (halfToBits(0.02 + (xr() % 1000) / 20000) | (halfToBits(-1 + (xr() % 2000) / 1000) << 16)) >>> 0);
const randMeta = (n) => {
  const a = new Uint32Array(n);
  for (let i = 0; i < n; i += 4096) a.set(META_TABLE.subarray(0, Math.min(4096, n - i)), i);
  return a;
};
const gauss = (n, s = 1) => Float32Array.from({ length: n }, () => s * Math.sqrt(-2 * Math.log(1 - (xr() + 1) / 4294967298)) * Math.cos((2 * Math.PI * xr()) / 4294967296));
const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

function randomKv(axis, heads, tokens, bits, groupSize = 32) {
  const elems = heads * tokens * D;
  const layout = {
    axis,
    heads,
    tokens,
    capacity: tokens,
    headDim: D,
    bits,
    groupSize,
    metaFormat: 'f16',
    codes: randWords((elems * bits) / 32),
    meta: randMeta(elems / groupSize),
  };
  return K.uploadKv(layout);
}

// ---------------------------------------------------------------------------------------------------------------
// timing: isolated (one pass per call, timestamps around it), back-to-back (many calls in one pass), wall
async function timeCalls(calls, { iters = ITERS, warm = WARM, readback = true, warmMs = WARM_MS } = {}) {
  // keep the GPU busy for WARM_MS first: clocks ramp up under sustained load (first run: 32K looked slower than 128K)
  const w0 = performance.now();
  let batches = 0;
  do {
    const enc0 = device.createCommandEncoder();
    const p0 = enc0.beginComputePass();
    for (let i = 0; i < Math.max(warm, calls.length); i++) calls[i % calls.length].encode(p0);
    p0.end();
    device.queue.submit([enc0.finish()]);
    if (++batches % 4 === 0) await device.queue.onSubmittedWorkDone();
  } while (performance.now() - w0 < warmMs);
  await device.queue.onSubmittedWorkDone();
  const out = {};
  if (ng.timestamps) {
    const n = Math.min(iters, 2000);
    const qs = device.createQuerySet({ type: 'timestamp', count: 2 * n + 2 });
    const resolve = device.createBuffer({ size: 8 * (2 * n + 2), usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    const staging = device.createBuffer({ size: 8 * (2 * n + 2), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = device.createCommandEncoder();
    for (let i = 0; i < n; i++) {
      const pass = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
      calls[i % calls.length].encode(pass);
      pass.end();
    }
    const pass = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * n, endOfPassWriteIndex: 2 * n + 1 } });
    for (let i = 0; i < n; i++) calls[i % calls.length].encode(pass);
    pass.end();
    enc.resolveQuerySet(qs, 0, 2 * n + 2, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, staging, 0, 8 * (2 * n + 2));
    const w0 = performance.now();
    device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const wall = performance.now() - w0;
    const ts = new BigUint64Array(staging.getMappedRange().slice(0));
    staging.unmap();
    const ks = [];
    for (let i = 0; i < n; i++) ks.push(Number(ts[2 * i + 1] - ts[2 * i]) / 1e6);
    out.kernelMs = median(ks);
    out.kernelMinMs = Math.min(...ks);
    out.backToBackMs = Number(ts[2 * n + 1] - ts[2 * n]) / 1e6 / n;
    out.submitWallMs = wall / (2 * n);
    // timestamp granularity: smallest nonzero gap between distinct raw durations
    const ds = [...new Set(ks.map((x) => Math.round(x * 1e6)))].sort((a, b) => a - b);
    let q = Infinity;
    for (let i = 1; i < ds.length; i++) q = Math.min(q, ds[i] - ds[i - 1]);
    out.minTickNs = q;
    out.kernelP10Ms = [...ks].sort((a, b) => a - b)[Math.floor(n / 10)];
    out.kernelP90Ms = [...ks].sort((a, b) => a - b)[Math.floor((9 * n) / 10)];
    qs.destroy();
    resolve.destroy();
    staging.destroy();
  }
  // wall time of one call + read back of its output, as a decode step would (median)
  if (readback) {
    const c = calls[0];
    const bytes = Math.max(4, c.outLength * 4);
    const staging = device.createBuffer({ size: Math.ceil(bytes / 4) * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const walls = [];
    for (let i = 0; i < Math.min(iters, 30); i++) {
      const w0 = performance.now();
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      calls[i % calls.length].encode(pass);
      pass.end();
      enc.copyBufferToBuffer(calls[i % calls.length].out, 0, staging, 0, c.outLength * 4);
      device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      staging.unmap();
      walls.push(performance.now() - w0);
    }
    out.stepWallMs = median(walls);
    staging.destroy();
  }
  return out;
}

function exact(block) {
  const codes = unpackKv(block);
  const { heads, tokens: T, headDim, groupSize: gs } = block;
  const out = new Float64Array(heads * T * headDim);
  for (let h = 0; h < heads; h++)
    for (let t = 0; t < T; t++)
      for (let d = 0; d < headDim; d++) {
        const [ci, gi] = block.axis === 'channel' ? [(h * headDim + d) * T + t, (h * headDim + d) * (T / gs) + Math.floor(t / gs)] : [(h * T + t) * headDim + d, (h * T + t) * (headDim / gs) + Math.floor(d / gs)];
        out[(h * T + t) * headDim + d] = codes[ci] * block.scale[gi] + block.zero[gi];
      }
  return out;
}
function f64Scores(q, keys, qHeads) {
  const x = exact(keys);
  const { heads, tokens: T } = keys;
  const out = new Float64Array(qHeads * T);
  for (let h = 0; h < qHeads; h++) {
    const kv = Math.floor((h * heads) / qHeads);
    for (let t = 0; t < T; t++) {
      let a = 0;
      for (let d = 0; d < D; d++) a += q[h * D + d] * x[(kv * T + t) * D + d];
      out[h * T + t] = a;
    }
  }
  return out;
}
function f64Mix(p, values, qHeads) {
  const x = exact(values);
  const { heads, tokens: T } = values;
  const out = new Float64Array(qHeads * D);
  for (let h = 0; h < qHeads; h++) {
    const kv = Math.floor((h * heads) / qHeads);
    for (let t = 0; t < T; t++) for (let d = 0; d < D; d++) out[h * D + d] += p[h * T + t] * x[(kv * T + t) * D + d];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// 1. correctness on this GPU, production tunings, against @xquant/quant's CPU kernels
async function checks() {
  const maxRel = (a, b) => {
    let e = 0;
    let m = 0;
    for (let i = 0; i < b.length; i++) {
      e = Math.max(e, Math.abs(a[i] - b[i]));
      m = Math.max(m, Math.abs(b[i]));
    }
    return e / m;
  };
  const T = 2048 + 64;
  for (const { qHeads, kvHeads } of [
    { qHeads: 8, kvHeads: 8 },
    { qHeads: 16, kvHeads: 4 },
  ]) {
    const shape = { heads: kvHeads, tokens: T, headDim: D };
    for (const bits of [1, 2, 4]) {
      const x = gauss(kvHeads * T * D);
      const keys = quantizeKeys(x, shape, { bits, groupSize: 32 });
      const values = quantizeValues(x, shape, { bits, groupSize: 32 });
      const q = gauss(qHeads * D);
      const p = Float32Array.from({ length: qHeads * T }, () => xr() / 4294967296);
      const gk = K.uploadKv(keys);
      const gv = K.uploadKv(values);
      const s = await K.runAndRead(await K.keyScores({ q: K.createBuffer(q), qHeads, keys: gk }));
      const o = await K.runAndRead(await K.valueMix({ p: K.createBuffer(p), qHeads, values: gv }));
      const r1 = maxRel(s, packedKeyScores(q, keys));
      const r2 = maxRel(o, packedValueMix(p, values));
      // and against float64 on the exact dequantization (code·scale + zero)
      const [e1, c1] = [maxRel(s, f64Scores(q, keys, qHeads)), maxRel(packedKeyScores(q, keys), f64Scores(q, keys, qHeads))];
      const [e2, c2] = [maxRel(o, f64Mix(p, values, qHeads)), maxRel(packedValueMix(p, values), f64Mix(p, values, qHeads))];
      results.checks.push({ kernel: 'keyScores', bits, qHeads, kvHeads, tokens: T, maxRelErr: r1, gpuVsF64: e1, cpuVsF64: c1 });
      results.checks.push({ kernel: 'valueMix', bits, qHeads, kvHeads, tokens: T, maxRelErr: r2, gpuVsF64: e2, cpuVsF64: c2 });
      log(`  vs float64: keyScores gpu ${e1.toExponential(2)} cpu ${c1.toExponential(2)}; valueMix gpu ${e2.toExponential(2)} cpu ${c2.toExponential(2)}`);
      // fused step on the same data (no residual): softmax(q·Kᵀ/√d)·V from the CPU kernels
      const sc = packedKeyScores(q, keys);
      const pr = new Float32Array(sc.length);
      for (let h = 0; h < qHeads; h++) {
        let mx = -Infinity;
        for (let t = 0; t < T; t++) mx = Math.max(mx, sc[h * T + t] / Math.sqrt(D));
        let l = 0;
        for (let t = 0; t < T; t++) l += pr[h * T + t] = Math.exp(sc[h * T + t] / Math.sqrt(D) - mx);
        for (let t = 0; t < T; t++) pr[h * T + t] /= l;
      }
      const ref = packedValueMix(pr, values);
      const f = await K.runAndRead(await K.decodeAttention({ q: K.createBuffer(q), qHeads, keys: gk, values: gv }));
      const r3 = maxRel(f, ref);
      results.checks.push({ kernel: 'decodeAttention', bits, qHeads, kvHeads, tokens: T, maxRelErr: r3 });
      log(`check ${qHeads}/${kvHeads} ${bits}-bit: keyScores ${r1.toExponential(2)} valueMix ${r2.toExponential(2)} decode ${r3.toExponential(2)}`);
    }
  }
  const worst = Math.max(...results.checks.map((c) => Math.min(c.maxRelErr, c.gpuVsF64 ?? Infinity)));
  if (!(worst < 1e-3)) {
    log('CORRECTNESS CHECK FAILED', worst);
    results.notes.push(`correctness check failed: worst max relative error ${worst}`);
    save();
    process.exit(3);
  }
}

// 2. read-bandwidth ceiling of a plain WGSL kernel (vec4<u32> loads, grid-stride)
async function ceiling() {
  const bytes = opt.quick ? 64 << 20 : 1 << 30;
  const buf = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  const sink = device.createBuffer({ size: 4 * 65536 * 4, usage: GPUBufferUsage.STORAGE });
  const code = `
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<u32>;
@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let stride = nw.x * 256u;
  var acc = vec4<u32>(0u);
  for (var i = gid.x; i < arrayLength(&src); i = i + stride) { acc = acc ^ src[i]; }
  if (acc.x == 0x12345678u && acc.y == 7u) { sink[gid.x] = acc.z; }
}`;
  const pipe = await device.createComputePipelineAsync({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
  const bg = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: buf } }, { binding: 1, resource: { buffer: sink } }] });
  const call = {
    out: sink,
    outLength: 1,
    encode(pass) {
      pass.setPipeline(pipe);
      pass.setBindGroup(0, bg);
      pass.dispatchWorkgroups(132 * 16);
    },
  };
  const t = await timeCalls([call], { iters: 20, readback: false, warmMs: 1500 });
  results.ceiling = { bytes, ...t, GBps: bytes / (t.kernelMs * 1e6) };
  log(`read ceiling: ${(bytes / 2 ** 20).toFixed(0)} MiB in ${t.kernelMs?.toFixed(3)} ms = ${results.ceiling.GBps.toFixed(0)} GB/s (timestamp tick ${t.minTickNs} ns)`);
  buf.destroy();
  sink.destroy();
}

// 3. packed kernels alone (keys: scores, values: weighted sum) and the fused step
async function kernels() {
  for (const T of TOKENS) {
    for (const { qHeads, kvHeads } of HEADS) {
      const rep = qHeads / kvHeads;
      const variantsOf = (kind) =>
        opt.quick
          ? [{ unroll: 4 }]
          : kind === 'keys'
            ? [{ unroll: 4 }, { unroll: 16 }, ...(rep > 1 ? [{ unroll: 4, headsPerGroup: 2 }] : [])]
            : [{ unroll: 4 }, { unroll: 4, prefetch: true }, { unroll: 8 }, ...(rep > 1 ? [{ unroll: 4, headsPerGroup: 2, prefetch: true }] : [])];
      for (const kind of ['keys', 'values']) {
        for (const bits of [1, 2]) try {
          const one = (kind === 'keys' ? 1 : 1) * packedBytes({ heads: kvHeads, tokens: T, headDim: D, bits, groupSize: 32, metaFormat: 'f16' });
          const copies = Math.max(2, Math.min(48, Math.ceil(ROTATE_BYTES / one)));
          const kvs = Array.from({ length: copies }, () => randomKv(kind === 'keys' ? 'channel' : 'token', kvHeads, T, bits));
          const q = K.createBuffer(gauss(qHeads * D));
          const p = kind === 'values' ? K.createBuffer(Float32Array.from({ length: qHeads * T }, () => xr() / 4294967296 / T)) : null;
          let best = null;
          const variants = variantsOf(kind);
          for (const v of variants) {
            const calls = [];
            for (const kv of kvs) calls.push(kind === 'keys' ? await K.keyScores({ q, qHeads, keys: kv, ...v }) : await K.valueMix({ p, qHeads, values: kv, ...v }));
            const t = await timeCalls(calls);
            const row = { kind, bits, tokens: T, qHeads, kvHeads, tuning: v, packedBytes: one, extraBytes: qHeads * T * 4 /* p read (values) or scores written (keys) */, copies, ...t, GBps: one / (t.kernelMs * 1e6) };
            results.kernels.push(row);
            if (!best || t.kernelMs < best.kernelMs) best = row;
            if (T === 32768 && bits === 2 && v === variants[0] && calls.length > 2) {
              const t2 = await timeCalls(calls.slice(0, 2), { readback: false });
              results.kernels.push({ ...row, ...t2, tuning: { ...v, rotation: 2 }, copies: 2, GBps: one / (t2.kernelMs * 1e6), diagnostic: true });
              log(`  same with 2 rotating copies: kernel ${t2.kernelMs?.toFixed(4)} ms b2b ${t2.backToBackMs?.toFixed(4)}`);
            }
            for (const c of calls) c.destroy();
            log(`${kind} ${bits}b T=${T} ${qHeads}/${kvHeads} ${JSON.stringify(v)}: kernel ${t.kernelMs?.toFixed(4)} ms (${row.GBps.toFixed(0)} GB/s) b2b ${t.backToBackMs?.toFixed(4)} step+read ${t.stepWallMs?.toFixed(3)} ms`);
          }
          if (best) best.best = true;
          for (const kv of kvs) {
            kv.codes.destroy();
            kv.meta.destroy();
          }
          q.destroy();
          p?.destroy();
          save();
        } catch (e) {
          log(`${kind} ${bits}b T=${T} ${qHeads}/${kvHeads} FAILED: ${e?.stack ?? e}`);
          results.notes.push(`${kind} ${bits}-bit T=${T} ${qHeads}/${kvHeads} failed: ${String(e)}`);
        }
      }
      try {
      // fused xquant-1.38 decode step: keys 2-bit, values 1-bit, 128-token full-precision residual
      const tq = T - RESIDUAL;
      const one =
        packedBytes({ heads: kvHeads, tokens: tq, headDim: D, bits: 2, groupSize: 32, metaFormat: 'f16' }) +
        packedBytes({ heads: kvHeads, tokens: tq, headDim: D, bits: 1, groupSize: 32, metaFormat: 'f16' });
      const resBytes = 2 * kvHeads * RESIDUAL * D * 4;
      const copies = Math.max(2, Math.min(48, Math.ceil(ROTATE_BYTES / one)));
      const sets = Array.from({ length: copies }, () => ({
        keys: randomKv('channel', kvHeads, tq, 2),
        values: randomKv('token', kvHeads, tq, 1),
        rk: K.createBuffer(gauss(kvHeads * RESIDUAL * D)),
        rv: K.createBuffer(gauss(kvHeads * RESIDUAL * D)),
      }));
      const q = K.createBuffer(gauss(qHeads * D, 0.3));
      const fvariants = !opt.quick
        ? [{ unroll: 4, prefetch: false }, { unroll: 4 }, { unroll: 2 }, ...(rep > 1 ? [{ unroll: 4, headsPerGroup: 2 }] : [])]
        : [{ unroll: 4 }];
      for (const v of fvariants) {
        const calls = [];
        for (const s of sets) {
          calls.push(
            await K.decodeAttention({
              q,
              qHeads,
              keys: s.keys,
              values: s.values,
              residualKeys: { buffer: s.rk, tokens: RESIDUAL, capacity: RESIDUAL },
              residualValues: { buffer: s.rv, tokens: RESIDUAL, capacity: RESIDUAL },
              ...v,
            }),
          );
        }
        const t = await timeCalls(calls);
        const row = { kind: 'fused', keyBits: 2, valueBits: 1, tokens: T, residual: RESIDUAL, qHeads, kvHeads, tuning: v, packedBytes: one, residualBytes: resBytes, copies, ...t, GBps: (one + resBytes) / (t.kernelMs * 1e6) };
        results.fused.push(row);
        for (const c of calls) c.destroy();
        log(`fused 2b/1b T=${T} ${qHeads}/${kvHeads} ${JSON.stringify(v)}: kernel ${t.kernelMs?.toFixed(4)} ms (${row.GBps.toFixed(0)} GB/s) b2b ${t.backToBackMs?.toFixed(4)} step+read ${t.stepWallMs?.toFixed(3)} ms`);
      }
      for (const s of sets) for (const b of [s.keys.codes, s.keys.meta, s.values.codes, s.values.meta, s.rk, s.rv]) b.destroy();
      q.destroy();
      save();
      } catch (e) {
        log(`fused T=${T} ${qHeads}/${kvHeads} FAILED: ${e?.stack ?? e}`);
        results.notes.push(`fused T=${T} ${qHeads}/${kvHeads} failed: ${String(e)}`);
      }
    }
  }
}

// 4. float32 tfjs-webgpu attention: q·Kᵀ → softmax → ·V with tfjs ops
async function tfjsBaseline() {
  globalThis.navigator = { gpu: ng.gpu };
  const tf = await import('@tensorflow/tfjs-core');
  await import('@tensorflow/tfjs-backend-webgpu');
  if (!(await tf.setBackend('webgpu'))) {
    results.notes.push('tfjs webgpu backend failed');
    return;
  }
  for (const T of TOKENS) {
    for (const { qHeads, kvHeads } of HEADS) try {
      const rep = qHeads / kvHeads;
      const base = Math.min(T, 4096);
      // one K or V tensor must fit one storage binding; split the heads when it does not (same ops per part)
      const parts = Math.ceil((kvHeads * T * D * 4) / (0.9 * device.limits.maxStorageBufferBindingSize));
      const hp = kvHeads / parts;
      const mk = () => tf.tidy(() => tf.tile(tf.tensor3d(gauss(hp * base * D), [hp, base, D]), [1, T / base, 1]));
      const Ks = Array.from({ length: parts }, mk);
      const Vs = Array.from({ length: parts }, mk);
      const qs = Array.from({ length: parts }, () => tf.tensor3d(gauss(hp * rep * D, 0.3), [hp, rep, D]));
      const scale = 1 / Math.sqrt(D);
      const one = (i) => tf.matMul(tf.softmax(tf.mul(tf.matMul(qs[i], Ks[i], false, true), scale)), Vs[i]);
      const attn = () => tf.tidy(() => (parts === 1 ? one(0) : tf.concat(Ks.map((_, i) => one(i)), 0)));
      const tw = performance.now();
      for (let i = 0; i < 3 || performance.now() - tw < WARM_MS; i++) {
        const o = attn();
        await o.data();
        o.dispose();
      }
      const walls = [];
      for (let i = 0; i < (opt.quick ? 3 : 20); i++) {
        const w0 = performance.now();
        const o = attn();
        await o.data();
        walls.push(performance.now() - w0);
        o.dispose();
      }
      const kms = [];
      let profile = '';
      for (let i = 0; i < (opt.quick ? 2 : 10); i++) {
        const info = await tf.time(() => attn().dispose());
        kms.push(info.kernelMs);
        profile = info.getExtraProfileInfo?.() ?? '';
      }
      const n = opt.quick ? 3 : 20;
      const w0 = performance.now();
      const outs = [];
      for (let i = 0; i < n; i++) outs.push(attn());
      await outs[outs.length - 1].data();
      const pipelined = (performance.now() - w0) / n;
      for (const o of outs) o.dispose();
      const bytes = 2 * kvHeads * T * D * 4;
      const row = { tokens: T, qHeads, kvHeads, headParts: parts, kernels: profile, stepWallMs: median(walls), kernelMs: median(kms), pipelinedWallMs: pipelined, bytes, GBps: bytes / (median(kms) * 1e6) };
      results.tfjs.push(row);
      log(`tfjs f32 T=${T} ${qHeads}/${kvHeads}: kernel ${row.kernelMs.toFixed(3)} ms step+read ${row.stepWallMs.toFixed(3)} ms pipelined ${pipelined.toFixed(3)} ms`);
      tf.dispose([...Ks, ...Vs, ...qs]);
      save();
    } catch (e) {
      log(`tfjs T=${T} ${qHeads}/${kvHeads} FAILED: ${e?.stack ?? e}`);
      results.notes.push(`tfjs T=${T} ${qHeads}/${kvHeads} failed: ${String(e)}`);
    }
  }
}

function markdown() {
  const f = (x, d = 3) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(d));
  const L = [];
  L.push(`# Packed-code attention on ${info.device || info.description} (${info.vendor})`, '');
  L.push(`${results.date}, Node ${results.node}, webgpu (Dawn) + tfjs-backend-webgpu 4.22.0, d = ${D}, group size 32, fp16 scale/zero as u32 pairs.`);
  if (results.ceiling) L.push(`Plain WGSL read ceiling: ${f(results.ceiling.GBps, 0)} GB/s (1 GiB, vec4<u32> loads). Timestamp tick: ${results.ceiling.minTickNs} ns.`);
  L.push('', 'kernel = median GPU time of one call in its own pass (timestamp queries); b2b = per call when many run back to back in one pass; step+read = wall time of one call plus reading its output back. GB/s = packed codes + scale/zero bytes / kernel time. Best tuning per row.', '');
  L.push('| kernel | bits | T | q/kv heads | kernel ms | GB/s (packed) | b2b ms | step+read ms | tuning |', '|---|---|---|---|---|---|---|---|---|');
  for (const r of results.kernels.filter((r) => r.best && !r.diagnostic)) {
    L.push(`| ${r.kind} | ${r.bits} | ${r.tokens} | ${r.qHeads}/${r.kvHeads} | ${f(r.kernelMs, 4)} | ${f(r.GBps, 0)} | ${f(r.backToBackMs, 4)} | ${f(r.stepWallMs)} | ${JSON.stringify(r.tuning)} |`);
  }
  L.push('', '## Fused xquant-1.38 decode step (keys 2-bit, values 1-bit, 128-token fp32 residual) vs float32 tfjs-webgpu attention', '');
  L.push('| T | q/kv heads | fused kernel ms | fused GB/s | fused step+read ms | tfjs f32 kernel ms | tfjs f32 step+read ms | tfjs pipelined ms | speedup kernel | speedup step+read |', '|---|---|---|---|---|---|---|---|---|---|');
  for (const T of TOKENS) {
    for (const { qHeads, kvHeads } of HEADS) {
      const fr = results.fused.filter((r) => r.tokens === T && r.qHeads === qHeads && r.kvHeads === kvHeads).sort((a, b) => a.kernelMs - b.kernelMs)[0];
      const tr = results.tfjs.find((r) => r.tokens === T && r.qHeads === qHeads && r.kvHeads === kvHeads);
      if (!fr) continue;
      L.push(
        `| ${T} | ${qHeads}/${kvHeads} | ${f(fr.kernelMs, 4)} | ${f(fr.GBps, 0)} | ${f(fr.stepWallMs)} | ${f(tr?.kernelMs)} | ${f(tr?.stepWallMs)} | ${f(tr?.pipelinedWallMs)} | ${tr ? f(tr.kernelMs / fr.kernelMs, 1) + '×' : '–'} | ${tr ? f(tr.stepWallMs / fr.stepWallMs, 1) + '×' : '–'} |`,
      );
    }
  }
  const w = (k) => Math.max(...results.checks.map((c) => c[k] ?? 0)).toExponential(2);
  L.push('', `Correctness on this GPU, production tunings, T = 2112, 8/8 and 16/4 heads, 1/2/4 bits (max |err| / max |ref|): GPU vs @xquant/quant CPU kernels ${w('maxRelErr')}; GPU vs float64 ${w('gpuVsF64')}; CPU kernels vs float64 ${w('cpuVsF64')}.`);
  for (const n of results.notes) L.push('', `Note: ${n}`);
  return L.join('\n');
}

await checks();
save();
await ceiling();
save();
await kernels();
if (!opt['no-tfjs']) await tfjsBaseline();
const md = markdown();
writeFileSync(`${opt.out}/gpu-bench.md`, md + '\n');
save();
console.log(md);
delete globalThis.navigator;
process.exit(0);
