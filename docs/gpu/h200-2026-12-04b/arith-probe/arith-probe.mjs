// Arithmetic probe run on the H200 (2026-12-04, eleventh session): adapter features under Dawn toggles, and f32 / f16 decode + FMA rates.
// Ran as: node arith-probe.mjs <path to dawn.node> <out.json> (the committed form of its value-loop cases: packages/webgpu/bench/wgsl-ceilings.bench.mjs).
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
const require = createRequire(import.meta.url);
const dawnPath = process.argv[2];
const outPath = process.argv[3] ?? 'probe.json';
const { create, globals } = require(dawnPath);
Object.assign(globalThis, globals);
const res = { adapters: [], rates: [], errors: [] };
const sets = [[], ['enable-dawn-features=vulkan_enable_f16_on_nvidia'], ['enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia']];
let chosen = null;
const keep = [];
for (const flags of sets) {
  const gpu = create(['disable-dawn-features=timestamp_quantization', ...flags]);
  keep.push(gpu);
  const ad = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  const feats = [...ad.features].sort();
  res.adapters.push({ flags, features: feats, description: ad.info.description, subgroup: [ad.info.subgroupMinSize, ad.info.subgroupMaxSize] });
  console.log(JSON.stringify(flags), feats.includes('shader-f16') ? 'HAS shader-f16' : 'no shader-f16', feats.join(' '));
  if (!chosen && feats.includes('shader-f16')) chosen = ad;
}
const ad = chosen ?? (await keep[0].requestAdapter({ powerPreference: 'high-performance' }));
const f16 = ad.features.has('shader-f16');
const device = await ad.requestDevice({ requiredFeatures: ['timestamp-query', ...(f16 ? ['shader-f16'] : [])] });
device.addEventListener?.('uncapturederror', (e) => res.errors.push(String(e.error?.message ?? e)));

async function timeKernel(code, groups, buffers, n = 12) {
  const module = device.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  const bad = info.messages.filter((m) => m.type === 'error');
  if (bad.length) throw new Error(bad.map((m) => `${m.lineNum}: ${m.message}`).join('; '));
  const pipe = await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const bg = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  const qs = device.createQuerySet({ type: 'timestamp', count: 2 * n });
  const rb = device.createBuffer({ size: 16 * n, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const st = device.createBuffer({ size: 16 * n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  for (let i = 0; i < n; i++) {
    const p = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
    p.setPipeline(pipe);
    p.setBindGroup(0, bg);
    p.dispatchWorkgroups(...groups);
    p.end();
  }
  enc.resolveQuerySet(qs, 0, 2 * n, rb, 0);
  enc.copyBufferToBuffer(rb, 0, st, 0, 16 * n);
  device.queue.submit([enc.finish()]);
  await st.mapAsync(GPUMapMode.READ);
  const t = new BigUint64Array(st.getMappedRange().slice(0));
  st.destroy(); rb.destroy(); qs.destroy();
  const each = Array.from({ length: n }, (_, i) => Number(t[2 * i + 1] - t[2 * i]) / 1e6).slice(3).sort((a, b) => a - b);
  return each[each.length >> 1];
}

const GROUPS = process.env.QUICK ? 4 : 132 * 16;
const ITERS = process.env.QUICK ? 16 : 1024;
const out = device.createBuffer({ size: 1 << 20, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
const head = (en = '') => [en, '@group(0) @binding(0) var<storage, read_write> out: array<u32>;', '@compute @workgroup_size(256)', 'fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {'];
const sink = (e) => `if (${e} == 1.2345678) { out[lid] = 1u; }`;

function fma32(n) {
  const L = head();
  L.push('let x = f32(lid) * 1e-7 + 0.999;', 'let y = f32(wid.x) * 1e-9;');
  for (let k = 0; k < n; k++) L.push(`var a${k} = f32(lid + ${k}u);`);
  L.push(`for (var i = 0u; i < ${ITERS}u; i = i + 1u) {`);
  for (let r = 0; r < 8; r++) for (let k = 0; k < n; k++) L.push(`a${k} = fma(a${k}, x, y);`);
  L.push('}', sink(Array.from({ length: n }, (_, k) => `a${k}`).join(' + ')), '}');
  return { code: L.join('\n'), products: GROUPS * 256 * ITERS * 8 * n };
}
function fma16x2(n) {
  const L = head('enable f16;');
  L.push('let x = vec2<f16>(f16(f32(lid) * 1e-4 + 0.5));', 'let y = vec2<f16>(f16(f32(wid.x) * 1e-5));');
  for (let k = 0; k < n; k++) L.push(`var a${k} = vec2<f16>(f16(f32(lid % 7u + ${k}u)));`);
  L.push(`for (var i = 0u; i < ${ITERS}u; i = i + 1u) {`);
  for (let r = 0; r < 8; r++) for (let k = 0; k < n; k++) L.push(`a${k} = fma(a${k}, x, y);`);
  L.push('}', sink(Array.from({ length: n }, (_, k) => `f32(a${k}.x + a${k}.y)`).join(' + ')), '}');
  return { code: L.join('\n'), products: GROUPS * 256 * ITERS * 8 * n * 2 };
}
// decode 16 2-bit codes of one word, 4 heads × 16 FMAs (f32), p from workgroup memory
function dec32(heads) {
  const L = ['var<workgroup> sw: array<f32, 1024>;', ...head()];
  L.push('var w = lid * 2654435761u + wid.x;', 'sw[lid] = f32(lid) * 1e-3; sw[lid + 256u] = 0.5; sw[lid + 512u] = 0.25; sw[lid + 768u] = 0.125;', 'workgroupBarrier();');
  for (let h = 0; h < heads; h++) for (let j = 0; j < 16; j++) L.push(`var v${h}_${j} = 0.0;`);
  L.push(`for (var i = 0u; i < ${ITERS * 4}u; i = i + 1u) {`, 'w = w * 1664525u + 1013904223u;');
  for (let j = 0; j < 16; j++) {
    const p = (j * 2) % 16;
    L.push(`let d${j} = bitcast<f32>((${j < 8 ? 'w' : '(w >> 16u)'} & ${(3 << p) >>> 0}u) | 0x4B000000u) - 8388608.0;`);
  }
  for (let h = 0; h < heads; h++) {
    L.push(`let p${h} = sw[(i * 4u + ${h}u + lid / 8u) & 1023u];`);
    for (let j = 0; j < 16; j++) L.push(`v${h}_${j} = fma(p${h}, d${j}, v${h}_${j});`);
  }
  L.push('}');
  const all = [];
  for (let h = 0; h < heads; h++) for (let j = 0; j < 16; j++) all.push(`v${h}_${j}`);
  L.push(sink(all.join(' + ')), '}');
  return { code: L.join('\n'), products: GROUPS * 256 * ITERS * 4 * heads * 16 };
}
// same with f16 pairs: lanes = (low half, high half) of the word, codes at positions 0,2,…,14 of each half;
// positions ≤ 8 decode by mask|0x6400 − 1024·2^0… (exact: code·2^p < 1024), positions 10…14 after a shift by 8
function dec16(heads) {
  const L = ['enable f16;', 'var<workgroup> sw: array<f32, 1024>;', ...head().slice(1)];
  L.push('var w = lid * 2654435761u + wid.x;', 'sw[lid] = f32(lid) * 1e-3; sw[lid + 256u] = 0.5; sw[lid + 512u] = 0.25; sw[lid + 768u] = 0.125;', 'workgroupBarrier();');
  for (let h = 0; h < heads; h++) for (let j = 0; j < 8; j++) L.push(`var v${h}_${j} = vec2<f16>(0.0);`);
  L.push(`for (var i = 0u; i < ${ITERS * 4}u; i = i + 1u) {`, 'w = w * 1664525u + 1013904223u;', 'let w8 = w >> 8u;');
  for (let j = 0; j < 8; j++) {
    const p = j * 2;
    const [src, q] = p <= 8 ? ['w', p] : ['w8', p - 8];
    const m = ((3 << q) | (3 << (q + 16))) >>> 0;
    L.push(`let d${j} = bitcast<vec2<f16>>((${src} & ${m}u) | 0x64006400u) - vec2<f16>(1024.0);`);
  }
  for (let h = 0; h < heads; h++) {
    L.push(`let p${h} = vec2<f16>(f16(sw[(i * 4u + ${h}u + lid / 8u) & 1023u]));`);
    for (let j = 0; j < 8; j++) L.push(`v${h}_${j} = fma(p${h}, d${j}, v${h}_${j});`);
  }
  L.push('}');
  const all = [];
  for (let h = 0; h < heads; h++) for (let j = 0; j < 8; j++) all.push(`f32(v${h}_${j}.x + v${h}_${j}.y)`);
  L.push(sink(all.join(' + ')), '}');
  return { code: L.join('\n'), products: GROUPS * 256 * ITERS * 4 * heads * 16 };
}
// f16 pairs accumulated for 4 codes, then added to f32 accumulators (precision-safe hybrid)
function dec16h(heads) {
  const L = ['enable f16;', 'var<workgroup> sw: array<f32, 1024>;', ...head().slice(1)];
  L.push('var w = lid * 2654435761u + wid.x;', 'sw[lid] = f32(lid) * 1e-3; sw[lid + 256u] = 0.5; sw[lid + 512u] = 0.25; sw[lid + 768u] = 0.125;', 'workgroupBarrier();');
  for (let h = 0; h < heads; h++) for (let j = 0; j < 8; j++) L.push(`var v${h}_${j} = vec2<f32>(0.0);`);
  L.push(`for (var i = 0u; i < ${ITERS}u; i = i + 1u) {`);
  for (let h = 0; h < heads; h++) for (let j = 0; j < 8; j++) L.push(`var t${h}_${j} = vec2<f16>(0.0);`);
  L.push('for (var r = 0u; r < 4u; r = r + 1u) {', 'w = w * 1664525u + 1013904223u;', 'let w8 = w >> 8u;');
  for (let j = 0; j < 8; j++) {
    const p = j * 2;
    const [src, q] = p <= 8 ? ['w', p] : ['w8', p - 8];
    const m = ((3 << q) | (3 << (q + 16))) >>> 0;
    L.push(`let d${j} = bitcast<vec2<f16>>((${src} & ${m}u) | 0x64006400u) - vec2<f16>(1024.0);`);
  }
  for (let h = 0; h < heads; h++) {
    L.push(`let p${h} = vec2<f16>(f16(sw[(i * 4u + r + ${h}u + lid / 8u) & 1023u]));`);
    for (let j = 0; j < 8; j++) L.push(`t${h}_${j} = fma(p${h}, d${j}, t${h}_${j});`);
  }
  L.push('}');
  for (let h = 0; h < heads; h++) for (let j = 0; j < 8; j++) L.push(`v${h}_${j} = v${h}_${j} + vec2<f32>(t${h}_${j});`);
  L.push('}');
  const all = [];
  for (let h = 0; h < heads; h++) for (let j = 0; j < 8; j++) all.push(`v${h}_${j}.x + v${h}_${j}.y`);
  L.push(sink(all.join(' + ')), '}');
  return { code: L.join('\n'), products: GROUPS * 256 * ITERS * 4 * heads * 16 };
}


function decVar(heads, form) {
  const L = ['var<workgroup> sw: array<f32, 1024>;', ...head()];
  L.push('var w = lid * 2654435761u + wid.x;', 'sw[lid] = f32(lid) * 1e-3; sw[lid + 256u] = 0.5; sw[lid + 512u] = 0.25; sw[lid + 768u] = 0.125;', 'workgroupBarrier();');
  for (let h = 0; h < heads; h++) for (let j = 0; j < 16; j++) L.push(`var v${h}_${j} = 0.0;`);
  L.push(`for (var i = 0u; i < ${ITERS * 4}u; i = i + 1u) {`, 'w = w * 1664525u + 1013904223u;', 'let wh = w >> 16u;');
  for (let j = 0; j < 16; j++) {
    const p = (j * 2) % 16;
    const src = j < 8 ? 'w' : 'wh';
    if (form === 'one') L.push(`let d${j} = bitcast<f32>((${src} & ${(3 << p) >>> 0}u) | 0x3F800000u) - 1.0;`);
    else if (form === 'cvt') L.push(`let d${j} = f32((${src} >> ${p}u) & 3u);`);
    else if (form === 'sub23') L.push(`let d${j} = bitcast<f32>((${src} & ${(3 << p) >>> 0}u) | 0x4B000000u) - 8388608.0;`);
    else if (form === 'mix') L.push(`let d${j} = bitcast<f32>((${src} & ${(3 << p) >>> 0}u) ^ 0x4B000000u) + bitcast<f32>(0xCB000000u ^ (i & 0x80000000u));`);
  }
  for (let h = 0; h < heads; h++) {
    L.push(`let p${h} = sw[(i * 4u + ${h}u + lid / 8u) & 1023u];`);
    for (let j = 0; j < 16; j++) L.push(`v${h}_${j} = fma(p${h}, d${j}, v${h}_${j});`);
  }
  L.push('}');
  const all = [];
  for (let h = 0; h < heads; h++) for (let j = 0; j < 16; j++) all.push(`v${h}_${j}`);
  L.push(sink(all.join(' + ')), '}');
  return { code: L.join('\n'), products: GROUPS * 256 * ITERS * 4 * heads * 16 };
}
function dec16p(heads) {
  const L = ['enable f16;', 'var<workgroup> sw: array<vec2<f16>, 1024>;', ...head().slice(1)];
  L.push('var w = lid * 2654435761u + wid.x;', 'sw[lid] = vec2<f16>(f16(f32(lid) * 1e-3)); sw[lid + 256u] = vec2<f16>(0.5); sw[lid + 512u] = vec2<f16>(0.25); sw[lid + 768u] = vec2<f16>(0.125);', 'workgroupBarrier();');
  for (let h = 0; h < heads; h++) for (let j = 0; j < 8; j++) L.push(`var v${h}_${j} = vec2<f16>(0.0);`);
  L.push(`for (var i = 0u; i < ${ITERS * 4}u; i = i + 1u) {`, 'w = w * 1664525u + 1013904223u;', 'let w8 = w >> 8u;');
  for (let j = 0; j < 8; j++) {
    const p = j * 2;
    const [src, q] = p <= 8 ? ['w', p] : ['w8', p - 8];
    const m = ((3 << q) | (3 << (q + 16))) >>> 0;
    L.push(`let d${j} = bitcast<vec2<f16>>((${src} & ${m}u) | 0x64006400u) - vec2<f16>(1024.0);`);
  }
  for (let h = 0; h < heads; h++) {
    L.push(`let p${h} = sw[(i * 4u + ${h}u + lid / 8u) & 1023u];`);
    for (let j = 0; j < 8; j++) L.push(`v${h}_${j} = fma(p${h}, d${j}, v${h}_${j});`);
  }
  L.push('}');
  const all = [];
  for (let h = 0; h < heads; h++) for (let j = 0; j < 8; j++) all.push(`f32(v${h}_${j}.x + v${h}_${j}.y)`);
  L.push(sink(all.join(' + ')), '}');
  return { code: L.join('\n'), products: GROUPS * 256 * ITERS * 4 * heads * 16 };
}

// the 1-bit value loop's arithmetic per token: 16 channels per thread, HG heads (p, scale, zero as in the kernel)
function val1(heads, mode) {
  const f16 = mode !== 'f32';
  const L = [f16 ? 'enable f16;' : '', 'var<workgroup> sw: array<f32, 1024>;', ...head().slice(1)];
  L.push('var w = lid * 2654435761u + wid.x;', 'sw[lid] = f32(lid) * 1e-3; sw[lid + 256u] = 0.5; sw[lid + 512u] = 0.25; sw[lid + 768u] = 0.125;', 'workgroupBarrier();');
  for (let h = 0; h < heads; h++) L.push(`var vb${h} = 0.0;`);
  if (f16) for (let h = 0; h < heads; h++) for (let j = 0; j < 8; j++) L.push(`var v${h}_${j} = vec2<f16>(0.0);`);
  else for (let h = 0; h < heads; h++) for (let j = 0; j < 16; j++) L.push(`var v${h}_${j} = 0.0;`);
  L.push(`for (var i = 0u; i < ${ITERS * 4}u; i = i + 1u) {`, 'w = w * 1664525u + 1013904223u;', 'let nz = unpack2x16float(w ^ 0x3c003c00u);', 'let x = w >> (i & 15u);');
  if (f16) {
    L.push('let z = (x & 0xFFu) | ((x & 0xFF00u) << 8u);');
    for (let j = 0; j < 8; j++) L.push(`let d${j} = bitcast<vec2<f16>>((z & ${((1 << j) | (1 << (j + 16))) >>> 0}u) | 0x64006400u) - vec2<f16>(1024.0);`);
  } else {
    for (let j = 0; j < 16; j++) L.push(`let d${j} = bitcast<f32>((x & ${(1 << j) >>> 0}u) | 0x4B000000u) - 8388608.0;`);
  }
  for (let h = 0; h < heads; h++) {
    L.push(`let p${h} = select(0.0, sw[(i * 4u + ${h}u + lid / 8u) & 1023u], i < 100000u);`, `let wf${h} = p${h} * nz.x;`, `vb${h} = fma(p${h}, nz.y, vb${h});`);
    if (f16) {
      L.push(`let wh${h} = vec2<f16>(f16(wf${h}));`);
      for (let j = 0; j < 8; j++) L.push(`v${h}_${j} = fma(wh${h}, d${j}, v${h}_${j});`);
    } else {
      for (let j = 0; j < 16; j++) L.push(`v${h}_${j} = fma(wf${h}, d${j}, v${h}_${j});`);
    }
  }
  L.push('}');
  const all = [];
  for (let h = 0; h < heads; h++) { all.push(`vb${h}`); if (f16) for (let j = 0; j < 8; j++) all.push(`f32(v${h}_${j}.x + v${h}_${j}.y)`); else for (let j = 0; j < 16; j++) all.push(`v${h}_${j}`); }
  L.push(sink(all.join(' + ')), '}');
  return { code: L.join('\n'), products: GROUPS * 256 * ITERS * 4 * heads * 16 };
}

const cases = [['fma32 x16', fma32(16)], ['val1 f32 2 heads', val1(2, 'f32')], ['val1 f32 4 heads', val1(4, 'f32')], ['val1 f32 1 head', val1(1, 'f32')], ['decode2 f32 4 heads', dec32(4)], ['sub23 4 heads', decVar(4, 'sub23')], ['magic 1.0 4 heads', decVar(4, 'one')], ['cvt 4 heads', decVar(4, 'cvt')], ['xor-magic 4 heads', decVar(4, 'mix')], ['sub23 1 head', decVar(1, 'sub23')], ['magic 1.0 1 head', decVar(1, 'one')], ['cvt 1 head', decVar(1, 'cvt')]];
if (f16) cases.push(['val1 f16 2 heads', val1(2, 'f16')], ['val1 f16 4 heads', val1(4, 'f16')], ['val1 f16 1 head', val1(1, 'f16')], ['fma f16x2 x16', fma16x2(16)], ['decode2 f16x2 4 heads, p f16 shared', dec16p(4)], ['decode2 f16x2 4 heads', dec16(4)], ['decode2 f16x2 4 heads, f32 every 4 words', dec16h(4)]);
// warm clocks
for (const t0 = performance.now(); performance.now() - t0 < (process.env.QUICK ? 0 : 4000); ) await timeKernel(cases[0][1].code, [GROUPS], [out], 4);
for (const [name, k] of cases) {
  try {
    const ms = await timeKernel(k.code, [GROUPS], [out]);
    res.rates.push({ name, ms, Tproducts: k.products / (ms * 1e9) });
  } catch (e) {
    res.rates.push({ name, error: String(e.message ?? e) });
  }
  console.log(JSON.stringify(res.rates.at(-1)));
}
// f16 correctness: Σ_i (i % 5) · 0.25 over 64 terms, in f16 pairs
if (f16) {
  const code = ['enable f16;', '@group(0) @binding(0) var<storage, read_write> out: array<f32>;', '@compute @workgroup_size(1)', 'fn main() {', 'var a = vec2<f16>(0.0);',
    'for (var i = 0u; i < 64u; i = i + 1u) { let d = bitcast<vec2<f16>>(((i % 4u) | ((i % 3u) << 16u)) | 0x64006400u) - vec2<f16>(1024.0); a = fma(vec2<f16>(0.25), d, a); }',
    'out[0] = f32(a.x); out[1] = f32(a.y);', '}'].join('\n');
  const b = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const r = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
  const enc = device.createCommandEncoder();
  const p = enc.beginComputePass();
  p.setPipeline(pipe); p.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: b } }] })); p.dispatchWorkgroups(1); p.end();
  enc.copyBufferToBuffer(b, 0, r, 0, 16);
  device.queue.submit([enc.finish()]);
  await r.mapAsync(GPUMapMode.READ);
  const v = [...new Float32Array(r.getMappedRange().slice(0))];
  let ex = 0, ey = 0;
  for (let i = 0; i < 64; i++) { ex += 0.25 * (i % 4); ey += 0.25 * (i % 3); }
  res.f16Check = { got: v.slice(0, 2), expected: [ex, ey] };
  console.log('f16 check', JSON.stringify(res.f16Check));
}
writeFileSync(outPath, JSON.stringify(res, null, 1));
process.exit(0);
