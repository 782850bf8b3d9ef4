// Subgroup matrices (Chromium's experimental `chromium-experimental-subgroup-matrix`: tensor cores through WGSL) on
// this adapter: which configurations it offers, whether one multiply-accumulate of each float configuration gives the
// exact product of small exact inputs, and how many products per second a kernel doing nothing else reaches (compare
// with the float32 FMA rate of wgsl-ceilings.bench.mjs). The feature needs Dawn's `allow_unsafe_apis`; adapters
// without it (lavapipe) report that and exit 0. Writes OUT/subgroup-matrix.json and prints a table.
// With the operands loaded inside the loop (rows `loads_const` / `loads_dynamic`), the same multiply-accumulates take their four
// left and right tiles from workgroup memory at constant offsets or at offsets the compiler cannot see (a uniform):
// Tint's robustness transform guards the second kind (Dawn's `disable_robustness` toggle removes it), so the two rates
// differ by what that guard costs.
//   node subgroup-matrix.bench.mjs [--out DIR] [--dawn-flags 'enable-dawn-features=…']
import { mkdirSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { create, globals } from 'webgpu';
import { bitsToHalf, halfToBits } from '@xquant/quant';
import { timePasses } from './time-passes.mjs';

const { values: o } = parseArgs({
  options: {
    out: { type: 'string', default: 'bench-out' },
    // unsafe APIs (the feature), f16 on NVIDIA (hidden there otherwise), the Vulkan memory model (Dawn's own tests of
    // the feature run with it); Dawn ignores toggles it does not know
    'dawn-flags': { type: 'string', default: 'enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia,use_vulkan_memory_model;disable-dawn-features=timestamp_quantization' },
    iters: { type: 'string', default: '4096' },
  },
});
if (!(Number.isInteger(Number(o.iters)) && Number(o.iters) > 0)) throw new Error(`--iters must be a positive integer; got ${o.iters}`);
mkdirSync(o.out, { recursive: true });
Object.assign(globalThis, globals);
const gpu = create(o['dawn-flags'].split(';').filter(Boolean));
const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
if (!adapter) throw new Error('no WebGPU adapter');
const FEATURE = 'chromium-experimental-subgroup-matrix';
const features = [...adapter.features].sort();
const result = { adapter: adapter.info?.description ?? '', dawnFlags: o['dawn-flags'], features, available: adapter.features.has(FEATURE), configs: [], rows: [], errors: [] };
const save = () => writeFileSync(`${o.out}/subgroup-matrix.json`, JSON.stringify(result, null, 1));
if (!result.available || !adapter.features.has('subgroups')) {
  console.log(`${result.adapter}: no ${FEATURE} (or no subgroups); features: ${features.join(' ')}`);
  save();
  process.exit(0);
}
// WebIDL objects: name the fields (spreading one gives {})
result.configs = [...(adapter.info.subgroupMatrixConfigs ?? [])].map((c) => ({ componentType: c.componentType, resultComponentType: c.resultComponentType, M: c.M, N: c.N, K: c.K }));
const sgMax = adapter.info.subgroupMaxSize;
const required = [FEATURE, 'subgroups', 'timestamp-query', 'shader-f16'].filter((f) => adapter.features.has(f));
const device = await adapter.requestDevice({ requiredFeatures: required });
device.addEventListener?.('uncapturederror', (e) => result.errors.push(String(e.error?.message ?? e)));
console.log(`${result.adapter}: subgroups ${adapter.info.subgroupMinSize}–${sgMax}; configs ${JSON.stringify(result.configs)}`);

const BYTES = { f32: 4, f16: 2 };
/** A typed array of `values` in component type `t`, as bytes. */
function encode(values, t) {
  if (t === 'f32') return new Float32Array(values).buffer;
  return new Uint16Array(values.map(halfToBits)).buffer;
}
function decode(buf, t) {
  return t === 'f32' ? [...new Float32Array(buf)] : [...new Uint16Array(buf)].map(bitsToHalf);
}
const header = (c) => [
  'enable chromium_experimental_subgroup_matrix;',
  ...(c.componentType === 'f16' || c.resultComponentType === 'f16' ? ['enable f16;'] : []),
  `alias CT = ${c.componentType};`,
  `alias RT = ${c.resultComponentType};`,
  `const M = ${c.M}u;`,
  `const N = ${c.N}u;`,
  `const K = ${c.K}u;`,
  `alias Left = subgroup_matrix_left<CT, ${c.K}, ${c.M}>;`,
  `alias Right = subgroup_matrix_right<CT, ${c.N}, ${c.K}>;`,
  `alias Result = subgroup_matrix_result<RT, ${c.N}, ${c.M}>;`,
];

async function compile(code) {
  const module = device.createShaderModule({ code });
  const bad = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
  if (bad.length) throw new Error(bad.map((m) => `${m.lineNum}: ${m.message}`).join('; '));
  return device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
}

/** One multiply-accumulate of row-major inputs (A: M×K, B: K×N, C: M×N) against the float64 product. */
async function check(c) {
  const vals = [-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1];
  const A = Array.from({ length: c.M * c.K }, (_, i) => vals[i % 9]);
  const B = Array.from({ length: c.K * c.N }, (_, i) => vals[(i + 1) % 9]);
  const Cin = Array.from({ length: c.M * c.N }, (_, i) => vals[(i + 3) % 9]);
  const code = [
    ...header(c),
    '@group(0) @binding(0) var<storage, read> a: array<CT>;',
    '@group(0) @binding(1) var<storage, read> b: array<CT>;',
    '@group(0) @binding(2) var<storage, read_write> r: array<RT>;',
    `@compute @workgroup_size(${sgMax})`,
    'fn main() {',
    '  let l = subgroupMatrixLoad<Left>(&a, 0, false, K);',
    '  let rr = subgroupMatrixLoad<Right>(&b, 0, false, N);',
    '  var acc = subgroupMatrixLoad<Result>(&r, 0, false, N);',
    '  acc = subgroupMatrixMultiplyAccumulate(l, rr, acc);',
    '  subgroupMatrixStore(&r, 0, acc, false, N);',
    '}',
  ].join('\n');
  const pipe = await compile(code);
  const mk = (data, usage) => {
    const b = device.createBuffer({ size: Math.max(16, data.byteLength), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST | usage });
    device.queue.writeBuffer(b, 0, data);
    return b;
  };
  const [ba, bb, br] = [mk(encode(A, c.componentType), 0), mk(encode(B, c.componentType), 0), mk(encode(Cin, c.resultComponentType), 0)];
  const size = c.M * c.N * BYTES[c.resultComponentType];
  const st = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [ba, bb, br].map((buffer, binding) => ({ binding, resource: { buffer } })) }));
  pass.dispatchWorkgroups(1);
  pass.end();
  enc.copyBufferToBuffer(br, 0, st, 0, size);
  device.queue.submit([enc.finish()]);
  await st.mapAsync(GPUMapMode.READ);
  const got = decode(st.getMappedRange().slice(0), c.resultComponentType);
  for (const b of [ba, bb, br, st]) b.destroy();
  let maxErr = 0;
  for (let i = 0; i < c.M; i++) {
    for (let j = 0; j < c.N; j++) {
      let want = Cin[i * c.N + j];
      for (let k = 0; k < c.K; k++) want += A[i * c.K + k] * B[k * c.N + j];
      maxErr = Math.max(maxErr, Math.abs(got[i * c.N + j] - want));
    }
  }
  return maxErr;
}

/**
 * Products per second of 4 independent accumulators per subgroup. `loads`: undefined = operands loaded once from
 * workgroup memory; 'const' / 'dynamic' = four left and four right tiles loaded every iteration (after a barrier, so no
 * load leaves the loop) at constant offsets or at offsets from a uniform that is zero at run time.
 */
async function rate(c, loads) {
  const SG = 4; // subgroups per workgroup
  const groups = 132 * 16;
  const iters = loads ? Math.max(1, Math.floor(Number(o.iters) / 8)) : Number(o.iters);
  const T = loads ? 4 : 1; // tiles of each operand in workgroup memory
  const off = (k, size) => (loads === 'dynamic' ? `(u.x + ${k}u) * ${size}` : `${k}u * ${size}`);
  const code = [
    ...header(c),
    '@group(0) @binding(0) var<storage, read_write> r: array<RT>;',
    '@group(0) @binding(1) var<uniform> u: vec4<u32>;',
    `var<workgroup> ta: array<CT, M * K * ${T}u>;`,
    `var<workgroup> tb: array<CT, K * N * ${T}u>;`,
    `@compute @workgroup_size(${sgMax * SG})`,
    'fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {',
    `  for (var i = lid; i < M * K * ${T}u; i = i + ${sgMax * SG}u) { ta[i] = CT(f32(i % 7u) * 0.125); }`,
    `  for (var i = lid; i < K * N * ${T}u; i = i + ${sgMax * SG}u) { tb[i] = CT(f32(i % 5u) * 0.0625); }`,
    '  workgroupBarrier();',
    ...[0, 1, 2, 3].map((k) => `  var a${k} = Result();`),
    ...(loads
      ? [
          `  for (var i = 0u; i < ${iters}u; i = i + 1u) {`,
          '    workgroupBarrier();',
          ...[0, 1, 2, 3].map((k) => `    a${k} = subgroupMatrixMultiplyAccumulate(subgroupMatrixLoad<Left>(&ta, ${off(k, 'M * K')}, false, K), subgroupMatrixLoad<Right>(&tb, ${off(k, 'K * N')}, false, N), a${k});`),
          '  }',
        ]
      : [
          '  let l = subgroupMatrixLoad<Left>(&ta, 0, false, K);',
          '  let rr = subgroupMatrixLoad<Right>(&tb, 0, false, N);',
          `  for (var i = 0u; i < ${iters}u; i = i + 1u) {`,
          ...[0, 1, 2, 3].map((k) => `    a${k} = subgroupMatrixMultiplyAccumulate(l, rr, a${k});`),
          '  }',
        ]),
    ...[0, 1, 2, 3].map((k) => `  subgroupMatrixStore(&r, (wid.x * 4u + ${k}u) * M * N, a${k}, false, N);`),
    '}',
  ].join('\n');
  const pipe = await compile(code);
  const out = device.createBuffer({ size: groups * 4 * c.M * c.N * BYTES[c.resultComponentType], usage: GPUBufferUsage.STORAGE });
  const uni = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(uni, 0, new Uint32Array(4));
  // 'auto' layouts drop bindings a shader does not use: bind the uniform only where it is read
  const entries = [{ binding: 0, resource: { buffer: out } }, ...(loads === 'dynamic' ? [{ binding: 1, resource: { buffer: uni } }] : [])];
  const bg = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
  const { ms } = await timePasses(device, (p) => {
    p.setPipeline(pipe);
    p.setBindGroup(0, bg);
    p.dispatchWorkgroups(groups);
  }, 8);
  out.destroy();
  uni.destroy();
  const products = groups * SG * iters * 4 * c.M * c.N * c.K;
  return { ms, productsPerSecond: products / (ms / 1e3) };
}

for (const c of result.configs) {
  const row = { ...c };
  if (!(c.componentType in BYTES) || !(c.resultComponentType in BYTES)) {
    row.skipped = 'integer configuration (the probe checks float ones)';
  } else {
    try {
      row.maxError = await check(c);
      Object.assign(row, await rate(c));
      for (const loads of ['const', 'dynamic']) {
        const r = await rate(c, loads);
        row[`loads_${loads}`] = { ms: r.ms, productsPerSecond: r.productsPerSecond };
      }
    } catch (e) {
      row.error = String(e.message ?? e);
    }
  }
  result.rows.push(row);
  save();
  console.log(JSON.stringify(row));
}
const tera = (x) => (x ? (x / 1e12).toFixed(1) + ' T' : '–');
console.log('| A, B → C | M×N×K | max error of one MMA | products/s | loads at constant offsets | at uniform offsets |\n|---|---|---:|---:|---:|---:|');
for (const r of result.rows) {
  console.log(`| ${r.componentType} → ${r.resultComponentType} | ${r.M}×${r.N}×${r.K} | ${r.maxError ?? r.skipped ?? r.error} | ${tera(r.productsPerSecond)} | ${tera(r.loads_const?.productsPerSecond)} | ${tera(r.loads_dynamic?.productsPerSecond)} |`);
}
if (result.errors.length) console.log('WebGPU errors:', result.errors.slice(0, 3));
save();
process.exit(0);
