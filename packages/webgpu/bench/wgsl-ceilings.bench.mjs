// WGSL ceilings of the GPU the decode kernels run on: how many float32 FMAs per second a WGSL kernel reaches (scalar
// fma(), a*b+c, vec4), the same with the packed-code decode of the attention value loop (3 integer/float ops per code,
// shared by the heads of a KV-head group), with the weights read from workgroup memory as the attention kernel does, and
// the packed 4×8-bit integer dot product on byte-spread 2-bit codes (4 products per instruction where the GPU has it).
// These are the numbers a packed decode-attention kernel is compared with: the bytes it reads ÷ the read ceiling, and the
// code·head products it computes ÷ the FMA ceiling. Writes OUT/wgsl-ceilings.json and prints a table.
//   node wgsl-ceilings.bench.mjs [--out DIR] [--quick]
import { mkdirSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DeviceKvCache, requestNodeDevice } from '@xquant/webgpu';
import { resolveCacheConfig } from '@xquant/tfjs';

const { values: o } = parseArgs({ options: { out: { type: 'string', default: 'bench-out' }, quick: { type: 'boolean', default: false }, parts: { type: 'string', default: '131072' }, 'dawn-flags': { type: 'string', default: '' } } });
mkdirSync(o.out, { recursive: true });
// --dawn-flags 'enable-dawn-features=vulkan_enable_f16_on_nvidia' exposes shader-f16 on NVIDIA (Dawn blocks it there)
const ng = await requestNodeDevice({ flags: ['disable-dawn-features=timestamp_quantization', ...(o['dawn-flags'] ? o['dawn-flags'].split(';') : [])] });
if (!ng) throw new Error('no WebGPU adapter');
const { device } = ng;
const errors = [];
device.addEventListener?.('uncapturederror', (e) => errors.push(String(e.error?.message ?? e)));

/** Median GPU ms of a kernel whose only binding is a scratch output buffer, dispatched over `groups` workgroups. */
async function time(code, groups, n = 10) {
  const out = device.createBuffer({ size: 1 << 20, usage: GPUBufferUsage.STORAGE });
  try {
    return await timeBuffers(code, [groups], [out], n);
  } finally {
    out.destroy();
  }
}

/** Median GPU ms of `encode(pass, i)` in its own pass, n times. */
async function timeEncode(encode, n = 30) {
  const qs = device.createQuerySet({ type: 'timestamp', count: 2 * n });
  const res = device.createBuffer({ size: 16 * n, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const st = device.createBuffer({ size: 16 * n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  for (let i = 0; i < n; i++) {
    const p = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
    encode(p, i);
    p.end();
  }
  enc.resolveQuerySet(qs, 0, 2 * n, res, 0);
  enc.copyBufferToBuffer(res, 0, st, 0, 16 * n);
  device.queue.submit([enc.finish()]);
  await st.mapAsync(GPUMapMode.READ);
  const t = new BigUint64Array(st.getMappedRange().slice(0));
  st.destroy();
  res.destroy();
  qs.destroy();
  const each = Array.from({ length: n }, (_, i) => Number(t[2 * i + 1] - t[2 * i]) / 1e6).slice(Math.min(3, n - 1)).sort((a, b) => a - b);
  return each[each.length >> 1];
}

const WG = 256;
const T_VAL = o.quick ? 8192 : 131072;
const GROUPS = o.quick ? 64 : 132 * 16;
const ITERS = o.quick ? 64 : 1024;
const sink = (expr) => [`if (${expr} == 1.2345678) { out[lid] = 1u; }`];
const head = (wg = WG) => ['@group(0) @binding(0) var<storage, read_write> out: array<u32>;', `@compute @workgroup_size(${wg})`, 'fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {'];

/**
 * n independent FMA chains of `type`: 'f32' (`form` = fma | muladd), 'vec4' (vec4<f32>) or 'f16x2' (vec2<f16>, needs
 * shader-f16); `fmas` counts products (4 per vec4 FMA, 2 per vec2<f16> FMA).
 */
function fmaKernel(n, form, type = 'f32') {
  const T = { f32: 'f32', vec4: 'vec4<f32>', f16x2: 'vec2<f16>' }[type];
  const lanes = { f32: 1, vec4: 4, f16x2: 2 }[type];
  const L = [...(type === 'f16x2' ? ['enable f16;'] : []), ...head()];
  if (type === 'f16x2') L.push('let x = vec2<f16>(f16(f32(lid) * 1e-4 + 0.5));', 'let y = vec2<f16>(f16(f32(wid.x) * 1e-5));');
  else L.push(`let x = ${T}(f32(lid) * 1e-7 + 0.999);`, `let y = ${T}(f32(wid.x) * 1e-9);`);
  // (f16 chains start small: f16 holds integers exactly only to 2048)
  for (let k = 0; k < n; k++) L.push(type === 'f16x2' ? `var a${k} = vec2<f16>(f16(f32(lid % 7u + ${k}u)));` : `var a${k} = ${T}(f32(lid + ${k}u));`);
  L.push(`for (var i = 0u; i < ${ITERS}u; i = i + 1u) {`);
  for (let r = 0; r < 8; r++) for (let k = 0; k < n; k++) L.push(form === 'muladd' ? `a${k} = a${k} * x + y;` : `a${k} = fma(a${k}, x, y);`);
  L.push('}');
  const total = (k) => (type === 'f32' ? `a${k}` : type === 'vec4' ? `dot(a${k}, vec4<f32>(1.0))` : `f32(a${k}.x + a${k}.y)`);
  L.push(...sink(Array.from({ length: n }, (_, k) => total(k)).join(' + ')), '}');
  return { code: L.join('\n'), fmas: GROUPS * WG * ITERS * 8 * n * lanes };
}

/**
 * The value loop's arithmetic without its loads: per step one packed word (2-bit codes, 16 channels), decoded once,
 * then heads × 16 FMAs. `pSource` = 'reg' (weights in registers) or 'shared' (read from workgroup memory per step,
 * as the attention kernel reads the softmax weights).
 */
function decodeKernel(heads, pSource, bits = 2, form = 'magic23') {
  const L = ['var<workgroup> sw: array<f32, 1024>;', ...head()];
  L.push('var w = lid * 2654435761u + wid.x;');
  L.push('sw[lid] = f32(lid) * 1e-3; sw[lid + 256u] = 0.5; sw[lid + 512u] = 0.25; sw[lid + 768u] = 0.125;', 'workgroupBarrier();');
  for (let h = 0; h < heads; h++) for (let j = 0; j < 16; j++) L.push(`var v${h}_${j} = 0.0;`);
  for (let h = 0; h < heads; h++) L.push(`let pr${h} = f32(lid + ${h}u) * 1e-6;`);
  const m = (1 << bits) - 1;
  L.push(`for (var i = 0u; i < ${ITERS * 4}u; i = i + 1u) {`);
  L.push('w = w * 1664525u + 1013904223u;');
  for (let j = 0; j < 16; j++) {
    const p = (j * bits) % 16;
    const half = bits * j < 16 ? 'w' : '(w >> 16u)';
    const mask = `${(m << p) >>> 0}u`;
    // the decode forms: 2^23 magic (the kernels'), 1.0 magic (code·2^(p−23)), the 2^23 magic behind a constant the
    // compiler cannot see (is the magic form recognised and turned into a conversion?), an explicit conversion
    if (form === 'magic23') L.push(`let d${j} = bitcast<f32>((${half} & ${mask}) | 0x4B000000u) - 8388608.0;`);
    else if (form === 'magic1') L.push(`let d${j} = bitcast<f32>((${half} & ${mask}) | 0x3F800000u) - 1.0;`);
    else if (form === 'hidden') L.push(`let d${j} = bitcast<f32>((${half} & ${mask}) ^ 0x4B000000u) + bitcast<f32>(0xCB000000u ^ (i & 0x80000000u));`);
    else L.push(`let d${j} = f32((${half} >> ${p}u) & ${m}u);`);
  }
  for (let h = 0; h < heads; h++) {
    L.push(pSource === 'shared' ? `let p${h} = sw[(i * 4u + ${h}u + lid / 8u) & 1023u];` : `let p${h} = pr${h} + f32(i);`);
    for (let j = 0; j < 16; j++) L.push(`v${h}_${j} = fma(p${h}, d${j}, v${h}_${j});`);
  }
  L.push('}');
  const all = [];
  for (let h = 0; h < heads; h++) for (let j = 0; j < 16; j++) all.push(`v${h}_${j}`);
  L.push(...sink(all.join(' + ')), '}');
  return { code: L.join('\n'), fmas: GROUPS * WG * ITERS * 4 * heads * 16 };
}

/**
 * The key-score arithmetic with WGSL's packed 4×8-bit integer dot product (`dot4I8Packed`, the language feature
 * packed_4x8_integer_dot_product): one word holds 2-bit codes of 4 channels (bytes) × 4 tokens (bit pairs), so
 * `(w >> 2k) & 0x03030303` yields token k's 4 channel codes as bytes and one dot4 per head multiplies them by the
 * head's int8 query quad. 16 code·head products per word and head, as in `decodeKernel`. `qSource` as `pSource`.
 */
function dot4Kernel(heads, qSource) {
  const L = ['var<workgroup> sq: array<u32, 1024>;', ...head()];
  L.push('var w = lid * 2654435761u + wid.x;');
  L.push('sq[lid] = lid * 16843009u; sq[lid + 256u] = 0x7f01fe02u; sq[lid + 512u] = 0x01020304u; sq[lid + 768u] = lid;', 'workgroupBarrier();');
  for (let h = 0; h < heads; h++) for (let k = 0; k < 4; k++) L.push(`var a${h}_${k} = 0i;`);
  for (let h = 0; h < heads; h++) L.push(`let qr${h} = (lid + ${h}u) * 16843009u;`);
  L.push(`for (var i = 0u; i < ${ITERS * 4}u; i = i + 1u) {`);
  L.push('w = w * 1664525u + 1013904223u;');
  for (let k = 0; k < 4; k++) L.push(`let b${k} = (w >> ${2 * k}u) & 0x03030303u;`);
  for (let h = 0; h < heads; h++) {
    L.push(qSource === 'shared' ? `let q${h} = sq[(i * 4u + ${h}u + lid / 8u) & 1023u];` : `let q${h} = qr${h} ^ i;`);
    for (let k = 0; k < 4; k++) L.push(`a${h}_${k} = a${h}_${k} + dot4I8Packed(b${k}, q${h});`);
  }
  L.push('}');
  const all = [];
  for (let h = 0; h < heads; h++) for (let k = 0; k < 4; k++) all.push(`f32(a${h}_${k})`);
  L.push(...sink(all.join(' + ')), '}');
  return { code: L.join('\n'), fmas: GROUPS * WG * ITERS * 4 * heads * 16 };
}

/**
 * The packed value loop's arithmetic per token without its loads, as the decode kernel does it: 1-bit codes, 16
 * channels per thread, `heads` query heads (softmax weight from workgroup memory, times the token's scale, zero-point
 * term in float32). `'f32'`: one decode (AND/OR, subtraction) and one FMA per code and head; `'f16'`: the
 * `valueDot: 'f16'` form, channel pairs in `vec2<f16>` (one AND/OR and one half-precision subtraction per two codes,
 * one half-precision FMA per two products, the weight converted to f16 per head).
 */
function valueArith(heads, mode) {
  const f16 = mode === 'f16';
  const L = [...(f16 ? ['enable f16;'] : []), 'var<workgroup> sw: array<f32, 1024>;', ...head()];
  L.push('var w = lid * 2654435761u + wid.x;', 'sw[lid] = f32(lid) * 1e-3; sw[lid + 256u] = 0.5; sw[lid + 512u] = 0.25; sw[lid + 768u] = 0.125;', 'workgroupBarrier();');
  for (let h = 0; h < heads; h++) L.push(`var vb${h} = 0.0;`);
  for (let h = 0; h < heads; h++) for (let j = 0; j < (f16 ? 8 : 16); j++) L.push(f16 ? `var v${h}_${j} = vec2<f16>(0.0);` : `var v${h}_${j} = 0.0;`);
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
  for (let h = 0; h < heads; h++) {
    all.push(`vb${h}`);
    for (let j = 0; j < (f16 ? 8 : 16); j++) all.push(f16 ? `f32(v${h}_${j}.x + v${h}_${j}.y)` : `v${h}_${j}`);
  }
  L.push(...sink(all.join(' + ')), '}');
  return { code: L.join('\n'), fmas: GROUPS * WG * ITERS * 4 * heads * 16 };
}

/**
 * The value loop of the decode-attention kernel alone, over real packed rows in memory (1-bit codes, D = 128, fp16
 * scale|zero per 32 channels): one workgroup per (chunk, KV head), `CSV = D / VS` threads per row, the softmax weights
 * of `HG` heads in workgroup memory. Variants isolate the per-token overhead, the loads and the head sharing.
 */
function valueLoop({ WG = 256, VS = 16, HG = 2, UV = 8, C = 2048, bits = 1, meta = true, pShared = true, vec = false }) {
  const D = 128;
  const CSV = D / VS;
  const TLN = WG / CSV;
  const ITER = C / TLN;
  const WV = (D * bits) / 32;
  const GV = D / 32;
  const vbits = VS * bits;
  const L = ['@group(0) @binding(0) var<storage, read_write> out: array<u32>;', '@group(0) @binding(1) var<storage, read> vc: array<u32>;', '@group(0) @binding(2) var<storage, read> vm: array<u32>;'];
  L.push(`var<workgroup> sc: array<f32, ${HG * C}>;`, `@compute @workgroup_size(${WG})`, 'fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {');
  L.push('let chunk = wid.x;', 'let kv = wid.y;', `let c0 = chunk * ${C}u;`, `let cap = ${T_VAL}u;`);
  L.push(`for (var e = lid; e < ${HG * C}u; e = e + ${WG}u) { sc[e] = f32(e) * 1e-6; }`, 'workgroupBarrier();');
  L.push(`let cs = lid % ${CSV}u;`, `let tg = lid / ${CSV}u;`, 'let vmz = vec2<f32>(f32(vm[kv] >> 31u) * 1e-30);');
  for (let i = 0; i < HG; i++) for (let j = 0; j < VS; j++) L.push(`var v${i}_${j} = 0.0;`);
  for (let i = 0; i < HG; i++) L.push(`var vb${i} = 0.0;`);
  const nw = Math.max(1, vbits / 32);
  if (vbits < 32) L.push(`let vsh = (cs * ${vbits}u) % 32u;`);
  L.push(`let vg = (cs * ${VS}u) / 32u;`);
  L.push(`for (var it = 0u; it < ${ITER}u; it = it + ${UV}u) {`);
  for (let u = 0; u < UV; u++) {
    L.push(`let tl${u} = tg + (it + ${u}u) * ${TLN}u;`, `let row${u} = kv * cap + c0 + tl${u};`);
    for (let k = 0; k < nw; k++) L.push(`let x${u}_${k} = vc[row${u} * ${WV}u + (cs * ${vbits}u) / 32u + ${k}u];`);
    L.push(meta ? `let nz${u} = unpack2x16float(vm[row${u} * ${GV}u + vg]);` : `let nz${u} = vec2<f32>(0.5, 0.25) + vmz;`);
  }
  for (let u = 0; u < UV; u++) {
    for (let i = 0; i < HG; i++) L.push(pShared ? `let p${u}_${i} = sc[${i * C}u + tl${u}];` : `let p${u}_${i} = f32(tl${u} + ${i}u) * 1e-6;`);
    for (let j = 0; j < VS; j++) {
      const b = j * bits;
      const word = Math.floor(b / 32);
      const src = vbits < 32 ? `(x${u}_0 >> vsh)` : `x${u}_${word}`;
      const p = b % 32 < 16 ? (b % 32) : (b % 32) - 16;
      const half = b % 32 < 16 ? src : `(${src} >> 16u)`;
      L.push(`let d${u}_${j} = bitcast<f32>((${half} & ${(((1 << bits) - 1) << p) >>> 0}u) | 0x4B000000u) - 8388608.0;`);
    }
    for (let i = 0; i < HG; i++) {
      L.push(`let w${u}_${i} = p${u}_${i} * nz${u}.x;`, `vb${i} = fma(p${u}_${i}, nz${u}.y, vb${i});`);
      for (let j = 0; j < VS; j++) L.push(`v${i}_${j} = fma(w${u}_${i}, d${u}_${j}, v${i}_${j});`);
    }
  }
  L.push('}');
  const all = [];
  for (let i = 0; i < HG; i++) { all.push(`vb${i}`); for (let j = 0; j < VS; j++) all.push(`v${i}_${j}`); }
  L.push(...sink(all.join(' + ')), '}');
  return { code: L.join('\n'), groups: [T_VAL / C, 8], fmas: T_VAL * 8 * HG * D, bytes: T_VAL * 8 * (WV * 4 + GV * 4) };
}

async function timeBuffers(code, groups, buffers, n = 12) {
  const module = device.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  const bad = info.messages.filter((m) => m.type === 'error');
  if (bad.length) throw new Error(bad.map((m) => `${m.lineNum}: ${m.message}`).join('; '));
  const pipe = await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const bg = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  return timeEncode((p) => { p.setPipeline(pipe); p.setBindGroup(0, bg); p.dispatchWorkgroups(...groups); }, n);
}

const cases = [
  ['fma x8', fmaKernel(8, 'fma')],
  ['fma x16', fmaKernel(16, 'fma')],
  ['fma x32', fmaKernel(32, 'fma')],
  ['a*b+c x16', fmaKernel(16, 'muladd')],
  ['vec4 fma x4', fmaKernel(4, 'fma', 'vec4')],
  ['vec4 fma x8', fmaKernel(8, 'fma', 'vec4')],
  ['decode2+fma 1 head', decodeKernel(1, 'reg')],
  ['decode2+fma 2 heads', decodeKernel(2, 'reg')],
  ['decode2+fma 4 heads', decodeKernel(4, 'reg')],
  ['decode2+fma 4 heads, p shared', decodeKernel(4, 'shared')],
  ['decode1+fma 4 heads, p shared', decodeKernel(4, 'shared', 1)],
  ['decode2+fma 4 heads, p shared, magic 1.0', decodeKernel(4, 'shared', 2, 'magic1')],
  ['decode2+fma 4 heads, p shared, hidden magic', decodeKernel(4, 'shared', 2, 'hidden')],
  ['decode2+fma 4 heads, p shared, conversion', decodeKernel(4, 'shared', 2, 'convert')],
  ['dot4I8 2-bit 1 head', dot4Kernel(1, 'reg')],
  ['dot4I8 2-bit 4 heads', dot4Kernel(4, 'reg')],
  ['dot4I8 2-bit 4 heads, q shared', dot4Kernel(4, 'shared')],
  ['value loop f32, 1-bit, 1 head', valueArith(1, 'f32')],
  ['value loop f32, 1-bit, 2 heads', valueArith(2, 'f32')],
  ['value loop f32, 1-bit, 4 heads', valueArith(4, 'f32')],
  // the half-precision forms where the device has shader-f16 (products counted, two per vec2 FMA)
  ...(device.features.has('shader-f16')
    ? [
        ['vec2<f16> fma x16', fmaKernel(16, 'fma', 'f16x2')],
        ['value loop f16 pairs, 1-bit, 1 head', valueArith(1, 'f16')],
        ['value loop f16 pairs, 1-bit, 2 heads', valueArith(2, 'f16')],
        ['value loop f16 pairs, 1-bit, 4 heads', valueArith(4, 'f16')],
      ]
    : []),
];
const rows = [];
// warm the clocks first (the GPU idles at a low clock): the first FMA case repeated for a few seconds
{
  const t0 = performance.now();
  while (performance.now() - t0 < (o.quick ? 0 : 5000)) await time(cases[1][1].code, GROUPS, 4);
}
for (const [name, k] of cases) {
  try {
    const ms = await time(k.code, GROUPS);
    rows.push({ name, ms, fmas: k.fmas, TFMAps: k.fmas / (ms * 1e9) });
  } catch (e) {
    rows.push({ name, error: String(e.message ?? e) });
  }
  console.log(JSON.stringify(rows.at(-1)));
}
// ---- the value loop alone over real rows ---------------------------------------------------------------------------
const valueRows = [];
{
  const vcBuf = device.createBuffer({ size: T_VAL * 8 * 16 * 4, usage: GPUBufferUsage.STORAGE });
  const vmBuf = device.createBuffer({ size: T_VAL * 8 * 4 * 4, usage: GPUBufferUsage.STORAGE });
  const sinkBuf = device.createBuffer({ size: 1 << 16, usage: GPUBufferUsage.STORAGE });
  const variants = {
    'current (256, VS16, HG2, UV8, C2048)': {},
    'HG4': { HG: 4 },
    'HG1': { HG: 1 },
    'VS32 (one word)': { VS: 32 },
    'VS32 HG4': { VS: 32, HG: 4 },
    'VS8': { VS: 8 },
    'UV1': { UV: 1 },
    'UV4': { UV: 4 },
    'UV16': { UV: 16 },
    'WG128 C1024': { WG: 128, C: 1024 },
    'WG64 C512': { WG: 64, C: 512 },
    'C4096': { C: 4096 },
    'C512': { C: 512 },
    'no meta': { meta: false },
    'p in registers': { pShared: false },
    'no meta, p in registers': { meta: false, pShared: false },
    '2-bit': { bits: 2 },
    '2-bit HG4': { bits: 2, HG: 4 },
  };
  for (const [name, v] of Object.entries(variants)) {
    try {
      const k = valueLoop(v);
      const ms = await timeBuffers(k.code, k.groups, [sinkBuf, vcBuf, vmBuf]);
      valueRows.push({ name, ...v, ms, TFMAps: k.fmas / (ms * 1e9), GBps: k.bytes / (ms * 1e6) });
    } catch (e) {
      valueRows.push({ name, error: String(e.message ?? e) });
    }
    console.log(JSON.stringify(valueRows.at(-1)));
  }
  vcBuf.destroy();
  vmBuf.destroy();
  sinkBuf.destroy();
}

// ---- the decode-attention pass split into its dispatches (rotating layers so nothing is in L2) ----------------------
const parts = [];
for (const T of o.parts ? o.parts.split(',').map(Number) : []) {
  for (const [qHeads, kvHeads] of [[32, 8], [32, 32]]) {
    for (const cacheName of ['xquant', 'full']) {
      const D = 128;
      const layers = 6;
      const spec = cacheName === 'full' ? { kind: 'full' } : { kind: 'quantized', config: resolveCacheConfig('xquant-noshare', { layers, kvHeads, headDim: D }, { residualLength: 32 }) };
      const c = await DeviceKvCache.create(device, { layers, qHeads, kvHeads, headDim: D }, spec, { capacity: T + 1 });
      const mk = (n) => device.createBuffer({ size: 4 * n, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
      const io = { qkv: mk((qHeads + 2 * kvHeads) * D), rope: mk(c.capacity * D), out: mk(qHeads * D) };
      c.attach(io);
      await c.fillSynthetic(T - 1, 7);
      c.beginPosition();
      const rep = qHeads / kvHeads;
      const L = c.layers;
      const decode = (p, i) => {
        const l = L[i % layers];
        p.setPipeline(l.decodePipe);
        p.setBindGroup(0, l.decodeBG);
        p.dispatchWorkgroups(c.nc * Math.ceil(rep / l.decode.headsPerGroup), kvHeads);
      };
      const merge = (p, i) => {
        const l = L[i % layers];
        p.setPipeline(c.combinePipe);
        p.setBindGroup(0, l.combineBG);
        p.dispatchWorkgroups(qHeads);
      };
      const row = { T, qHeads, kvHeads, cache: cacheName, chunks: c.nc, small: c.useSmall, decode: L[0].decode, bytes: c.attentionBytes(0) };
      row.attentionMs = await timeEncode((p, i) => c.encodeAttention(p, i % layers));
      row.decodeMs = await timeEncode(decode);
      row.mergeMs = await timeEncode(merge);
      row.decodeTwiceMs = await timeEncode((p, i) => { decode(p, i); decode(p, i + 1); });
      row.GBps = row.bytes / (row.decodeMs * 1e6);
      row.TFMAps = (2 * qHeads * T * D) / (row.decodeMs * 1e9);
      parts.push(row);
      console.log(JSON.stringify({ ...row, decode: undefined }));
      c.dispose();
      for (const b of Object.values(io)) b.destroy();
    }
  }
}
// a short FMA kernel (≈ the length of one attention pass): does the clock keep up with short passes?
const short = fmaKernel(16, 'fma');
const shortGroups = 132 * 2;
const shortMs = await time(short.code, shortGroups, 40);
rows.push({ name: 'fma x16, short pass', ms: shortMs, fmas: (short.fmas / GROUPS) * shortGroups, TFMAps: ((short.fmas / GROUPS) * shortGroups) / (shortMs * 1e9) });
console.log(JSON.stringify(rows.at(-1)));

const result = { device: ng.info, features: [...device.features].sort(), parts, valueRows, date: new Date().toISOString(), groups: GROUPS, workgroup: WG, rows, errors };
writeFileSync(`${o.out}/wgsl-ceilings.json`, JSON.stringify(result, null, 1));
console.log('\n| kernel | ms | T FMA/s |\n|---|---:|---:|');
for (const r of rows) console.log(r.error ? `| ${r.name} | error: ${r.error} | |` : `| ${r.name} | ${r.ms.toFixed(3)} | ${r.TFMAps.toFixed(2)} |`);
process.exit(0);
