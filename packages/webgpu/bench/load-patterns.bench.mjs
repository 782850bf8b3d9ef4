// The loads of the decode-attention step's packed loops alone (no arithmetic: every word XOR-folded), with the storage
// layouts the device cache used before and the ones it uses now, side by side in one run: how fast can the kernel's
// threads pull a step's bytes in with each layout? Shape: T tokens, 8 KV heads, head dim 64, 2-bit keys in groups of
// 32 tokens, 1-bit values in groups of 32 channels (xquant-1.38's base layers), one workgroup of 128 threads per
// 2048-token chunk and KV head (the GQA default at 128K). Writes OUT/load-patterns.json and prints a table.
//   node load-patterns.bench.mjs [--out DIR] [--tokens 131072] [--dawn-flags …]
// Layouts (u32 words unless noted):
// - keys, token-major (before): a thread's 16 tokens of all 64 channels are one 256-byte row of vec4s, so a
//   warp's vec4 load touches 32 rows; channel-quad-major (now): the rows of one channel quad follow one another, so
//   a warp's load is 512 consecutive bytes. The same for the key scale/zero words (one row per key group).
// - values, token rows (before): a thread loads one 32-bit code word and one 32-bit scale/zero word per token;
//   token blocks (now): one vec4 of codes per 8 tokens (its 16 channels) and two vec4s of scale/zero words.
// - fp16 keys (the `full` cache), token rows (before) and channel-octet-major (now): 128 bytes per token.
import { mkdirSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { requestNodeDevice } from '@xquant/webgpu';
import { timePasses } from './time-passes.mjs';

const { values: o } = parseArgs({ options: { out: { type: 'string', default: 'bench-out' }, tokens: { type: 'string', default: '131072' }, 'dawn-flags': { type: 'string', default: '' }, repeats: { type: 'string', default: '3' } } });
mkdirSync(o.out, { recursive: true });
const ng = await requestNodeDevice({ flags: ['disable-dawn-features=timestamp_quantization', ...(o['dawn-flags'] ? o['dawn-flags'].split(';') : [])] });
if (!ng) throw new Error('no WebGPU adapter');
const { device, info } = ng;
const errors = [];
device.addEventListener?.('uncapturederror', (e) => errors.push(String(e.error?.message ?? e)));

const T = Number(o.tokens);
const KV = 8;
const D = 64;
const Q4 = D / 4;
const WG = 128;
const C = 2048; // tokens per chunk: 128 threads × 16-token slots
if (!(T >= C && T % C === 0)) throw new Error(`--tokens must be a multiple of ${C}`);
if (!(Number.isInteger(Number(o.repeats)) && Number(o.repeats) > 0)) throw new Error(`--repeats must be a positive integer; got ${o.repeats}`);
const NCH = T / C;
const sizes = { kc: (T * KV * D * 2) / 8, km: (T * KV * D * 4) / 32, vc: (T * KV * D) / 8, vm: T * KV * 2 * 4, fk: T * KV * D * 2 };
const buffers = Object.fromEntries(Object.entries(sizes).map(([k, b]) => [k, device.createBuffer({ size: b, usage: GPUBufferUsage.STORAGE })]));
const out = device.createBuffer({ size: 4 * WG, usage: GPUBufferUsage.STORAGE });
const order = ['kc', 'km', 'vc', 'vm', 'fk'];
const bgl = device.createBindGroupLayout({
  entries: [...order.map((_, binding) => ({ binding, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'read-only-storage' } })), { binding: 5, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'storage' } }],
});
const bg = device.createBindGroup({ layout: bgl, entries: [...order.map((k, binding) => ({ binding, resource: { buffer: buffers[k] } })), { binding: 5, resource: { buffer: out } }] });
const layout = device.createPipelineLayout({ bindGroupLayouts: [bgl] });

const HEAD = [
  '@group(0) @binding(0) var<storage, read> kc: array<vec4<u32>>;',
  '@group(0) @binding(1) var<storage, read> km: array<vec4<u32>>;',
  '@group(0) @binding(2) var<storage, read> vc: array<vec4<u32>>;',
  '@group(0) @binding(3) var<storage, read> vm: array<vec4<u32>>;',
  '@group(0) @binding(4) var<storage, read> fk: array<vec4<u32>>;',
  '@group(0) @binding(5) var<storage, read_write> out: array<u32>;',
  `@compute @workgroup_size(${WG})`,
  'fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {',
  `let c0 = wid.x * ${C}u;`,
  'let kv = wid.y;',
  'var x = vec4<u32>(0u);',
];
const TAIL = ['let y = x.x ^ x.y ^ x.z ^ x.w;', 'if (y == 0x12345678u) { out[lid] = y; }', '}'];
const ROWS = T / 16; // key token words per KV head (2-bit: 16 tokens per word)
const GROWS = T / 32; // key groups per KV head

/** Key codes and scale/zero of a thread's 16 tokens, 8 channel quads per batch. */
function keys(quadMajor) {
  const L = ['{', `let r = c0 / 16u + lid;`, 'let g = r / 2u;', `for (var qd = 0u; qd < ${Q4}u; qd = qd + 8u) {`];
  for (let u = 0; u < 8; u++) {
    const q = `qd + ${u}u`;
    L.push(quadMajor ? `let w${u} = kc[(kv * ${Q4}u + ${q}) * ${ROWS}u + r]; let m${u} = km[(kv * ${Q4}u + ${q}) * ${GROWS}u + g];` : `let w${u} = kc[(kv * ${ROWS}u + r) * ${Q4}u + ${q}]; let m${u} = km[(kv * ${GROWS}u + g) * ${Q4}u + ${q}];`);
  }
  for (let u = 0; u < 8; u++) L.push(`x = x ^ w${u} ^ m${u};`);
  L.push('}', '}');
  return L;
}

/** Value codes and scale/zero of the chunk: 4 threads per row (16 channels each), 32 token lanes. */
function values(blocks) {
  const L = ['{', 'let cs = lid % 4u;', 'let tg = lid / 4u;'];
  if (blocks) {
    // 8-token blocks: one vec4 of codes per 16-channel slice, the 8 tokens' scale/zero of the thread's group in two vec4s
    L.push(`for (var it = 0u; it < ${C / 8 / 32}u; it = it + 1u) {`, `let b = kv * ${T / 8}u + c0 / 8u + tg + it * 32u;`);
    L.push('let a = vc[b * 4u + cs];', 'let mb = (b * 2u + cs / 2u) * 2u;', 'x = x ^ a ^ vm[mb] ^ vm[mb + 1u];', '}');
  } else {
    // token rows: the thread's 16 channels are half of a row's two words, its group's scale/zero one word
    L.push(`for (var it = 0u; it < ${C / 32}u; it = it + 8u) {`);
    for (let u = 0; u < 8; u++) L.push(`let r${u} = kv * ${T}u + c0 + tg + (it + ${u}u) * 32u;`, `let a${u} = vc[(r${u} * 2u + cs / 2u) / 4u][(r${u} * 2u + cs / 2u) % 4u]; let m${u} = vm[(r${u} * 2u + cs / 2u) / 4u][(r${u} * 2u + cs / 2u) % 4u];`);
    for (let u = 0; u < 8; u++) L.push(`x.x = x.x ^ a${u} ^ m${u};`);
    L.push('}');
  }
  L.push('}');
  return L;
}

/** fp16 keys of the chunk: one token per thread and pass, its row of 8 vec4s (head dim 64). */
function fp16Keys(octetMajor) {
  const L = ['{', `for (var j = 0u; j < ${C / WG}u; j = j + 1u) {`, `let t = c0 + j * ${WG}u + lid;`];
  for (let o2 = 0; o2 < 8; o2++) L.push(octetMajor ? `x = x ^ fk[(kv * 8u + ${o2}u) * ${T}u + t];` : `x = x ^ fk[(kv * ${T}u + t) * 8u + ${o2}u];`);
  L.push('}', '}');
  return L;
}

/** The same bytes as `what` read in the simplest coalesced way (each thread a strided run of vec4s): the ceiling. */
function flat(names) {
  const L = ['{', `let i0 = (kv * ${NCH}u + wid.x) * ${WG}u + lid;`, `let stride = ${NCH * KV * WG}u;`];
  for (const n of names) {
    const per = sizes[n] / 16 / (NCH * KV * WG);
    L.push(`for (var i = 0u; i < ${per}u; i = i + 1u) { x = x ^ ${n}[i0 + i * stride]; }`);
  }
  L.push('}');
  return L;
}

const bytesOf = (names) => names.reduce((a, n) => a + sizes[n], 0);
const cases = [
  { name: 'packed keys', layout: 'token-major (before)', body: keys(false), bytes: bytesOf(['kc', 'km']) },
  { name: 'packed keys', layout: 'channel-quad-major (now)', body: keys(true), bytes: bytesOf(['kc', 'km']) },
  { name: 'packed keys', layout: 'flat (ceiling)', body: flat(['kc', 'km']), bytes: bytesOf(['kc', 'km']) },
  { name: 'packed values', layout: 'token rows (before)', body: values(false), bytes: bytesOf(['vc', 'vm']) },
  { name: 'packed values', layout: 'token blocks (now)', body: values(true), bytes: bytesOf(['vc', 'vm']) },
  { name: 'packed values', layout: 'flat (ceiling)', body: flat(['vc', 'vm']), bytes: bytesOf(['vc', 'vm']) },
  { name: 'packed keys + values', layout: 'before', body: [...keys(false), ...values(false)], bytes: bytesOf(['kc', 'km', 'vc', 'vm']) },
  { name: 'packed keys + values', layout: 'now', body: [...keys(true), ...values(true)], bytes: bytesOf(['kc', 'km', 'vc', 'vm']) },
  { name: 'fp16 keys', layout: 'token rows (before)', body: fp16Keys(false), bytes: bytesOf(['fk']) },
  { name: 'fp16 keys', layout: 'channel-octet-major (now)', body: fp16Keys(true), bytes: bytesOf(['fk']) },
];

/** Median GPU ms of one dispatch over the chunks × KV heads, n passes (time-passes.mjs). */
async function time(code, n = 20) {
  const module = device.createShaderModule({ code });
  const bad = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
  if (bad.length) throw new Error(bad.map((m) => `${m.lineNum}: ${m.message}`).join('; '));
  const pipe = await device.createComputePipelineAsync({ layout, compute: { module, entryPoint: 'main' } });
  const { ms } = await timePasses(device, (p) => { p.setPipeline(pipe); p.setBindGroup(0, bg); p.dispatchWorkgroups(NCH, KV); }, n);
  return ms;
}

const rows = [];
for (let round = 0; round < Number(o.repeats); round++) {
  // rounds alternate the cases' order, so clock drift does not favour one layout
  for (const c of round % 2 ? [...cases].reverse() : cases) {
    const ms = await time([...HEAD, ...c.body, ...TAIL].join('\n'));
    rows.push({ name: c.name, layout: c.layout, round, ms, GBps: c.bytes / ms / 1e6 });
  }
}
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const table = cases.map((c) => {
  const mine = rows.filter((r) => r.name === c.name && r.layout === c.layout).map((r) => r.ms);
  const ms = median(mine);
  const before = median(rows.filter((r) => r.name === c.name && /before/.test(r.layout)).map((r) => r.ms));
  return { name: c.name, layout: c.layout, MB: c.bytes / 1e6, ms, GBps: c.bytes / ms / 1e6, beforeOverThis: before / ms };
});
writeFileSync(`${o.out}/load-patterns.json`, JSON.stringify({ device: info, tokens: T, kvHeads: KV, headDim: D, rows, table, errors }, null, 1));
console.log(`loads only, ${T} tokens, ${KV} KV heads, head dim ${D} (median of ${o.repeats} rounds)`);
console.log('| loads | layout | MB | ms | GB/s | before ÷ this |\n|---|---|---:|---:|---:|---:|');
for (const r of table) console.log(`| ${r.name} | ${r.layout} | ${r.MB.toFixed(1)} | ${r.ms.toFixed(4)} | ${r.GBps.toFixed(0)} | ${r.beforeOverThis.toFixed(2)}× |`);
if (errors.length) console.log('WebGPU errors:', errors.slice(0, 3));
process.exit(errors.length ? 1 : 0);
