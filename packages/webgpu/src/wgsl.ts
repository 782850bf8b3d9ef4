/**
 * WGSL generator for the packed-code attention kernels. One source of truth for both targets: raw WebGPU
 * (own bind groups and a `Params` uniform) and tfjs-backend-webgpu programs (tfjs declares `result`, the inputs and
 * `uniforms`). Loops over channels/codes/heads are unrolled here, in TypeScript, so that every accumulator is a named
 * scalar (a register) and every mask and power of two is a literal.
 *
 * Decoding trick: a code at bit position `pos` (< 16) of a 16-bit half is turned into `code·2^pos` exactly with one
 * AND/OR and one subtraction: `bitcast<f32>((half & (m << pos)) | 0x4B000000) − 2^23`. The factor `2^pos` is constant
 * per accumulator (every channel row / token row puts the same token / channel at the same position) and is removed
 * once at the end, so the inner loop has no shifts and no int→float conversions.
 * @internal
 */
import type { GpuBits, MetaFormat } from './layout.js';

/** Bits, group size and metadata format of one operand. @internal */
export interface StageSpec {
  bits: GpuBits;
  meta: MetaFormat;
}

/** Which kernel to generate. @internal */
export type KernelKind = 'keyScores' | 'valueMix' | 'decode';

/** Compile-time shape of a main kernel. @internal */
export interface ShaderSpec {
  kind: KernelKind;
  headDim: number;
  /** Query heads per KV head (GQA group size). */
  rep: number;
  /** Query heads one workgroup handles (≤ rep). */
  headsPerGroup: number;
  keys?: StageSpec;
  values?: StageSpec;
  /** Channels (keys) or tokens (values) whose loads are issued together. */
  unroll: number;
  /** Issue every value load of the chunk up front: decode, before the key reduction and softmax; valueMix, before staging p. */
  prefetch?: boolean;
}

/** Code generation target. @internal */
export type Target = 'raw' | 'tfjs';

/** Tokens per workgroup chunk of the split-K (flash-decoding) kernels; the decode pass writes one partial per chunk and query head. */
export const CHUNK_TOKENS = 512;
/** Threads per workgroup. @internal */
export const WORKGROUP = 256;
const RED = 2176; // floats of the reduction scratch (both stages need exactly 128·17)
const NEG = '-3.0e38';

/** Uniform fields shared by every kernel, in order. `scale` is f32, the rest u32. @internal */
export const PARAM_FIELDS = [
  'n', // tokens attended (decode)
  'tk', // quantized keys
  'tv', // quantized values
  'kws', // key words per channel row (within a block)
  'kgs', // key groups per channel row (within a block)
  'kgsz', // key group size
  'kblk', // tokens per key block (2^30: one block)
  'kbw', // words per key block
  'kbm', // meta groups per key block
  'vhs', // value rows between heads
  'vts', // value rows between tokens
  'vgsz', // value group size
  'vgpr', // value groups per row
  'rkhs', // residual key rows between heads
  'rkts', // residual key rows between tokens
  'rvhs',
  'rvts',
  'nc', // chunks
  'ostride', // row stride of the scores output / of p
  'scale', // softmax scale (f32)
] as const;
/** Values of the uniform fields. @internal */
export type Params = Record<(typeof PARAM_FIELDS)[number], number>;

/** Bytes of workgroup memory a kernel declares. @internal */
export function sharedBytes(spec: Pick<ShaderSpec, 'kind' | 'headDim' | 'headsPerGroup'>): number {
  const hg = spec.headsPerGroup;
  const qs = spec.kind === 'valueMix' ? 0 : hg * spec.headDim;
  const sc = spec.kind === 'keyScores' ? 0 : hg * CHUNK_TOKENS;
  const st = spec.kind === 'decode' ? hg * 16 : 0;
  return 4 * (qs + sc + st + RED);
}

/** Input names in binding order (after tfjs's `result`, or before `out` in raw mode). @internal */
export function inputNames(kind: KernelKind | 'combine'): string[] {
  switch (kind) {
    case 'keyScores':
      return ['qv', 'kc', 'km'];
    case 'valueMix':
      return ['pr', 'vc', 'vm'];
    case 'decode':
      return ['qv', 'kc', 'km', 'vc', 'vm', 'rk', 'rv'];
    case 'combine':
      return ['parts'];
  }
}

function fmt(x: number): string {
  // exact decimal for powers of two and small integers
  const s = String(x);
  return s.includes('.') || s.includes('e') ? s : `${s}.0`;
}

class Gen {
  readonly lines: string[] = [];
  constructor(readonly target: Target) {}
  push(...l: string[]): void {
    this.lines.push(...l);
  }
  p(name: string): string {
    return this.target === 'raw' ? `P.${name}` : `uniforms.${name}`;
  }
  u32(buf: string, idx: string): string {
    return this.target === 'raw' ? `${buf}[${idx}]` : `bitcast<u32>(${buf}[${idx}])`;
  }
  meta(buf: string, idx: string, f: MetaFormat): string {
    return f === 'f16' ? `unpack2x16float(${this.u32(buf, idx)})` : `${buf}[${idx}]`;
  }
  out(idx: string, v: string): string {
    return `${this.target === 'raw' ? 'out' : 'result'}[${idx}] = ${v};`;
  }
}

interface SlotDecode {
  pre: string[];
  /** expression of code j (0..15) times 2^pos(j) as f32 */
  f: string[];
  pos: number[];
}

/** Decode the 16 codes of a slot whose source words are `words` (1 word, or 2 for 4-bit). */
function slot(bits: GpuBits, words: string[], tag: string, shift?: string): SlotDecode {
  const m = (1 << bits) - 1;
  const halves: string[] = [];
  const pre: string[] = [];
  if (bits === 1) {
    pre.push(`let h${tag}_0 = ${words[0]} >> ${shift!};`);
    halves.push(`h${tag}_0`);
  } else {
    words.forEach((w, k) => {
      pre.push(`let h${tag}_${2 * k} = ${w};`, `let h${tag}_${2 * k + 1} = ${w} >> 16u;`);
      halves.push(`h${tag}_${2 * k}`, `h${tag}_${2 * k + 1}`);
    });
  }
  const perHalf = 16 / bits;
  const f: string[] = [];
  const pos: number[] = [];
  for (let j = 0; j < 16; j++) {
    const half = halves[Math.floor(j / perHalf)]!;
    const p = (j % perHalf) * bits;
    const mask = (m << p) >>> 0;
    pre.push(`let f${tag}_${j} = bitcast<f32>((${half} & ${mask}u) | 0x4B000000u) - 8388608.0;`);
    f.push(`f${tag}_${j}`);
    pos.push(p);
  }
  return { pre, f, pos };
}

function positions(bits: GpuBits): number[] {
  const perHalf = 16 / bits;
  return Array.from({ length: 16 }, (_, j) => (j % perHalf) * bits);
}

/** Word offsets (within a row) and optional shift of the slot starting at element `e0` of a row. */
function slotWords(bits: GpuBits, e0: string): { words: string[]; shift?: string } {
  if (bits === 1) return { words: [`(${e0}) >> 5u`], shift: `((${e0}) & 16u)` };
  if (bits === 2) return { words: [`(${e0}) >> 4u`] };
  return { words: [`(${e0}) >> 3u`, `((${e0}) >> 3u) + 1u`] };
}

function header(g: Gen, spec: { kind: KernelKind | 'combine' }, metas: Partial<Record<string, MetaFormat>>): void {
  if (g.target === 'tfjs') return;
  const fields = PARAM_FIELDS.map((f) => `${f}: ${f === 'scale' ? 'f32' : 'u32'}`);
  while (fields.length % 4) fields.push(`pad${fields.length}: u32`);
  g.push(`struct Params { ${fields.join(', ')} };`);
  const names = inputNames(spec.kind);
  names.forEach((name, i) => {
    let ty = 'array<f32>';
    if (name === 'kc' || name === 'vc') ty = 'array<u32>';
    if (name === 'km' || name === 'vm') ty = metas[name] === 'f32' ? 'array<vec2<f32>>' : 'array<u32>';
    g.push(`@group(0) @binding(${i}) var<storage, read> ${name}: ${ty};`);
  });
  g.push(`@group(0) @binding(${names.length}) var<storage, read_write> out: array<f32>;`);
  g.push(`@group(0) @binding(${names.length + 1}) var<uniform> P: Params;`);
}

function entry(g: Gen): void {
  if (g.target === 'raw') {
    g.push(
      `@compute @workgroup_size(${WORKGROUP})`,
      'fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) { body(wid, lid); }',
    );
  } else {
    g.push(
      'var<workgroup> xqWid: vec3<u32>;',
      'fn main(index: i32) {',
      '  if (localIndex == 0u) { xqWid = workgroupId; }',
      '  let wid = workgroupUniformLoad(&xqWid);',
      '  body(wid, localIndex);',
      '}',
    );
  }
}

/** Key stage: per-thread partial scores of 16 tokens × HG heads over D/8 channels, reduced over the 8 slices. */
function keyStage(g: Gen, s: ShaderSpec): void {
  const ks = s.keys!;
  const D = s.headDim;
  const HG = s.headsPerGroup;
  const CPS = D / 8;
  const U = Math.min(s.unroll, CPS);
  const P = (n: string) => g.p(n);
  const pos = positions(ks.bits);
  g.push('let s = lid & 31u;', 'let cs = lid >> 5u;', 'let t0 = c0 + s * 16u;');
  for (let i = 0; i < HG; i++) {
    g.push(`var b${i} = 0.0;`);
    for (let j = 0; j < 16; j++) g.push(`var a${i}_${j} = 0.0;`);
  }
  g.push(`if (t0 < ${P('tk')}) {`);
  g.push(`let kb = t0 / ${P('kblk')};`, `let tb = t0 - kb * ${P('kblk')};`);
  const sw = slotWords(ks.bits, 'tb');
  sw.words.forEach((w, k) => g.push(`let wo${k} = kb * ${P('kbw')} + (${w});`));
  if (sw.shift) g.push(`let sh = ${sw.shift};`);
  g.push(`let gi = kb * ${P('kbm')} + tb / ${P('kgsz')};`);
  g.push(`for (var dd = 0u; dd < ${CPS}u; dd = dd + ${U}u) {`);
  for (let u = 0; u < U; u++) {
    g.push(`let d${u} = cs * ${CPS}u + dd + ${u}u;`, `let r${u} = kv * ${D}u + d${u};`);
    sw.words.forEach((_, k) => g.push(`let w${u}_${k} = ${g.u32('kc', `r${u} * ${P('kws')} + wo${k}`)};`));
    g.push(`let m${u} = ${g.meta('km', `r${u} * ${P('kgs')} + gi`, ks.meta)};`);
  }
  for (let u = 0; u < U; u++) {
    const dec = slot(ks.bits, sw.words.map((_, k) => `w${u}_${k}`), String(u), sw.shift ? 'sh' : undefined);
    g.push(...dec.pre);
    for (let i = 0; i < HG; i++) {
      g.push(
        `let q${u}_${i} = qs[${i * D}u + d${u}];`,
        `let c${u}_${i} = q${u}_${i} * m${u}.x;`,
        `b${i} = fma(q${u}_${i}, m${u}.y, b${i});`,
      );
      for (let j = 0; j < 16; j++) g.push(`a${i}_${j} = fma(c${u}_${i}, ${dec.f[j]}, a${i}_${j});`);
    }
  }
  g.push('}'); // dd loop
  if (s.kind === 'decode') {
    g.push(`} else if (t0 < ${P('n')}) {`);
    g.push(`for (var dd = 0u; dd < ${CPS}u; dd = dd + 1u) {`, `let d = cs * ${CPS}u + dd;`);
    for (let j = 0; j < 16; j++) {
      g.push(`if (t0 + ${j}u < ${P('n')}) {`, `let kx = rk[(kv * ${P('rkhs')} + (t0 + ${j}u - ${P('tk')}) * ${P('rkts')}) * ${D}u + d];`);
      for (let i = 0; i < HG; i++) g.push(`a${i}_${j} = fma(qs[${i * D}u + d] * ${fmt(2 ** pos[j]!)}, kx, a${i}_${j});`);
      g.push('}');
    }
    g.push('}');
  }
  g.push('}');
}

/** Reduce the key partials over the 8 channel slices, one head at a time (scores, or scaled masked logits). */
function keyReduce(g: Gen, s: ShaderSpec): void {
  const HG = s.headsPerGroup;
  const P = (n: string) => g.p(n);
  const pos = positions(s.keys!.bits);
  const RS = (CHUNK_TOKENS / 16) * 17;
  for (let i = 0; i < HG; i++) {
    const part = (j: number) => `(a${i}_${j} * ${fmt(2 ** -pos[j]!)} + b${i})`;
    g.push('if (cs >= 4u) {', `let rb = (cs - 4u) * ${RS}u + s * 17u;`);
    for (let j = 0; j < 16; j++) g.push(`red[rb + ${j}u] = ${part(j)};`);
    g.push('}', 'workgroupBarrier();', 'if (cs < 4u) {', `let rb = cs * ${RS}u + s * 17u;`);
    for (let j = 0; j < 16; j++) g.push(`red[rb + ${j}u] = red[rb + ${j}u] + ${part(j)};`);
    g.push('}', 'workgroupBarrier();');
    for (let k = 0; k < CHUNK_TOKENS / WORKGROUP; k++) {
      const tok = `(lid + ${k * WORKGROUP}u)`;
      g.push(
        `let pp${i}_${k} = ${tok} + (${tok} >> 4u);`,
        `let v${i}_${k} = red[pp${i}_${k}] + red[${RS}u + pp${i}_${k}] + red[${2 * RS}u + pp${i}_${k}] + red[${3 * RS}u + pp${i}_${k}];`,
      );
      if (s.kind === 'keyScores') {
        g.push(
          `if (hg * ${HG}u + ${i}u < ${s.rep}u && c0 + ${tok} < ${P('tk')}) {`,
          g.out(`(kv * ${s.rep}u + hg * ${HG}u + ${i}u) * ${P('ostride')} + c0 + ${tok}`, `v${i}_${k}`),
          '}',
        );
      } else {
        g.push(`let sv${i}_${k} = select(${NEG}, v${i}_${k} * ${P('scale')}, c0 + ${tok} < ${P('n')});`);
      }
    }
    g.push('workgroupBarrier();');
  }
}

/** Chunk softmax statistics: max per head, p = exp(s − max) into `sc`, partial sums into `st`. */
function softmaxStage(g: Gen, s: ShaderSpec): void {
  const HG = s.headsPerGroup;
  const K = CHUNK_TOKENS / WORKGROUP;
  const maxOf = (i: number) => Array.from({ length: K }, (_, k) => `sv${i}_${k}`).reduce((a, b) => `max(${a}, ${b})`);
  for (let i = 0; i < HG; i++) g.push(`red[${i * WORKGROUP}u + lid] = ${maxOf(i)};`);
  g.push(
    'workgroupBarrier();',
    `if (lid < ${HG * 8}u) {`,
    'let rb = (lid >> 3u) * 256u + (lid & 7u) * 32u;',
    'var mx = red[rb];',
    'for (var e = 1u; e < 32u; e = e + 1u) { mx = max(mx, red[rb + e]); }',
    'st[lid] = mx;',
    '}',
    'workgroupBarrier();',
  );
  for (let i = 0; i < HG; i++) {
    const terms = Array.from({ length: 8 }, (_, e) => `st[${i * 8 + e}u]`).reduce((a, b) => `max(${a}, ${b})`);
    g.push(`let mx${i} = ${terms};`);
    const ps: string[] = [];
    for (let k = 0; k < K; k++) {
      g.push(`let p${i}_${k} = exp(sv${i}_${k} - mx${i});`, `sc[${i * CHUNK_TOKENS}u + lid + ${k * WORKGROUP}u] = p${i}_${k};`);
      ps.push(`p${i}_${k}`);
    }
    g.push(`red[${i * WORKGROUP}u + lid] = ${ps.join(' + ')};`);
  }
  g.push(
    'workgroupBarrier();',
    `if (lid < ${HG * 8}u) {`,
    'let rb = (lid >> 3u) * 256u + (lid & 7u) * 32u;',
    'var sm = 0.0;',
    'for (var e = 0u; e < 32u; e = e + 1u) { sm = sm + red[rb + e]; }',
    `st[${HG * 8}u + lid] = sm;`,
    '}',
  );
}

interface ValueGeom {
  SPR: number;
  TGN: number;
  TPT: number;
  VWPR: number;
  words: string[];
  shift?: string;
}

function valueGeom(s: ShaderSpec): ValueGeom {
  const D = s.headDim;
  const SPR = D / 16;
  const TGN = WORKGROUP / SPR;
  const sw = slotWords(s.values!.bits, 'j * 16u');
  return { SPR, TGN, TPT: CHUNK_TOKENS / TGN, VWPR: (D * s.values!.bits) / 32, words: sw.words, shift: sw.shift };
}

/** Thread geometry of the value stage and, with `prefetch`, every quantized value load of the chunk. */
function valuePrologue(g: Gen, s: ShaderSpec): void {
  const vg = valueGeom(s);
  const P = (n: string) => g.p(n);
  const log2 = (x: number) => Math.round(Math.log2(x));
  g.push(`let j = lid & ${vg.SPR - 1}u;`, `let tg = lid >> ${log2(vg.SPR)}u;`);
  vg.words.forEach((w, k) => g.push(`let vo${k} = ${w};`));
  if (vg.shift) g.push(`let vsh = ${vg.shift};`);
  g.push(`let vg = (j * 16u) / ${P('vgsz')};`);
  g.push(`let vrow0 = kv * ${P('vhs')};`, `let tvl = select(0u, ${P('tv')} - 1u, ${P('tv')} > 0u);`);
  if (s.prefetch) for (let u = 0; u < vg.TPT; u++) valueLoads(g, s, `p${u}`, `${u * vg.TGN}u`);
}

function valueLoads(g: Gen, s: ShaderSpec, tag: string, offset: string): void {
  const vg = valueGeom(s);
  const P = (n: string) => g.p(n);
  g.push(`let tl${tag} = tg + ${offset};`, `let ok${tag} = c0 + tl${tag} < ${P('tv')};`, `let row${tag} = vrow0 + min(c0 + tl${tag}, tvl) * ${P('vts')};`);
  vg.words.forEach((_, k) => g.push(`let x${tag}_${k} = ${g.u32('vc', `row${tag} * ${vg.VWPR}u + vo${k}`)};`));
  g.push(`let n${tag} = ${g.meta('vm', `row${tag} * ${P('vgpr')} + vg`, s.values!.meta)};`);
}

/** Value stage: Σ_t p[h,t]·v̂[t, 16 channels] per thread, reduced over token groups, written as chunk partials. */
function valueStage(g: Gen, s: ShaderSpec): void {
  const vs = s.values!;
  const D = s.headDim;
  const HG = s.headsPerGroup;
  const { TGN, TPT, words, shift } = valueGeom(s);
  const UV = Math.min(s.unroll, TPT);
  const P = (n: string) => g.p(n);
  const pos = positions(vs.bits);
  for (let i = 0; i < HG; i++) {
    g.push(`var vb${i} = 0.0;`);
    for (let jj = 0; jj < 16; jj++) g.push(`var va${i}_${jj} = 0.0;`);
  }
  const tokenMath = (tag: string) => {
    const dec = slot(vs.bits, words.map((_, k) => `x${tag}_${k}`), `v${tag}`, shift ? 'vsh' : undefined);
    g.push(...dec.pre);
    for (let i = 0; i < HG; i++) {
      g.push(
        `let vp${tag}_${i} = select(0.0, sc[${i * CHUNK_TOKENS}u + tl${tag}], ok${tag});`,
        `let cc${tag}_${i} = vp${tag}_${i} * n${tag}.x;`,
        `vb${i} = fma(vp${tag}_${i}, n${tag}.y, vb${i});`,
      );
      for (let jj = 0; jj < 16; jj++) g.push(`va${i}_${jj} = fma(cc${tag}_${i}, ${dec.f[jj]}, va${i}_${jj});`);
    }
  };
  // quantized tokens: batched loads; rows past tv are clamped and weighted 0
  if (s.prefetch) {
    for (let u = 0; u < TPT; u++) tokenMath(`p${u}`);
  } else {
    g.push(`for (var ii = 0u; ii < ${TPT}u; ii = ii + ${UV}u) {`);
    for (let u = 0; u < UV; u++) valueLoads(g, s, String(u), `(ii + ${u}u) * ${TGN}u`);
    for (let u = 0; u < UV; u++) tokenMath(String(u));
    g.push('}');
  }
  if (s.kind === 'decode') {
    // full-precision residual values of this chunk
    g.push(`if (c0 + ${CHUNK_TOKENS}u > ${P('tv')}) {`);
    g.push(`for (var ii = 0u; ii < ${TPT}u; ii = ii + 1u) {`, `let tl = tg + ii * ${TGN}u;`, 'let t = c0 + tl;');
    g.push(`if (t >= ${P('tv')} && t < ${P('n')}) {`, `let rr = (kv * ${P('rvhs')} + (t - ${P('tv')}) * ${P('rvts')}) * ${D}u + j * 16u;`);
    for (let jj = 0; jj < 16; jj++) {
      g.push(`let vx${jj} = rv[rr + ${jj}u];`);
      for (let i = 0; i < HG; i++) {
        g.push(`va${i}_${jj} = fma(sc[${i * CHUNK_TOKENS}u + tl] * ${fmt(2 ** pos[jj]!)}, vx${jj}, va${i}_${jj});`);
      }
    }
    g.push('}', '}', '}');
  }
  // reduce over token groups, one head at a time
  const TGH = TGN / 2;
  const RSV = (D / 16) * 17;
  const PS = D + 2;
  for (let i = 0; i < HG; i++) {
    const part = (jj: number) => `(va${i}_${jj} * ${fmt(2 ** -pos[jj]!)} + vb${i})`;
    g.push('workgroupBarrier();', `if (tg >= ${TGH}u) {`, `let rb = (tg - ${TGH}u) * ${RSV}u + j * 17u;`);
    for (let jj = 0; jj < 16; jj++) g.push(`red[rb + ${jj}u] = ${part(jj)};`);
    g.push('}', 'workgroupBarrier();', `if (tg < ${TGH}u) {`, `let rb = tg * ${RSV}u + j * 17u;`);
    for (let jj = 0; jj < 16; jj++) g.push(`red[rb + ${jj}u] = red[rb + ${jj}u] + ${part(jj)};`);
    g.push('}', 'workgroupBarrier();');
    g.push(
      `if (lid < ${D}u && hg * ${HG}u + ${i}u < ${s.rep}u) {`,
      'var o = 0.0;',
      `for (var r = 0u; r < ${TGH}u; r = r + 1u) { o = o + red[r * ${RSV}u + lid + (lid >> 4u)]; }`,
      `let ob = ((kv * ${s.rep}u + hg * ${HG}u + ${i}u) * ${P('nc')} + chunk) * ${PS}u;`,
      g.out('ob + lid', 'o'),
    );
    if (s.kind === 'decode') {
      const l = Array.from({ length: 8 }, (_, e) => `st[${HG * 8 + i * 8 + e}u]`).join(' + ');
      g.push('if (lid == 0u) {', g.out(`ob + ${D}u`, `mx${i}`), g.out(`ob + ${D + 1}u`, l), '}');
    }
    g.push('}');
  }
}

/** Generate the WGSL of a main kernel (`keyScores`, `valueMix` or the fused `decode` chunk pass). @internal */
export function mainKernelSource(spec: ShaderSpec, target: Target): string {
  const g = new Gen(target);
  const D = spec.headDim;
  const HG = spec.headsPerGroup;
  header(g, spec, { km: spec.keys?.meta, vm: spec.values?.meta });
  if (spec.kind !== 'valueMix') g.push(`var<workgroup> qs: array<f32, ${HG * D}>;`);
  if (spec.kind !== 'keyScores') g.push(`var<workgroup> sc: array<f32, ${HG * CHUNK_TOKENS}>;`);
  if (spec.kind === 'decode') g.push(`var<workgroup> st: array<f32, ${HG * 16}>;`);
  g.push(`var<workgroup> red: array<f32, ${RED}>;`);
  g.push('fn body(wid: vec3<u32>, lid: u32) {');
  g.push('let chunk = wid.x;', 'let kv = wid.y;', 'let hg = wid.z;', `let c0 = chunk * ${CHUNK_TOKENS}u;`);
  if (spec.kind !== 'valueMix') {
    g.push(
      `for (var e = lid; e < ${HG * D}u; e = e + ${WORKGROUP}u) {`,
      `let h = kv * ${spec.rep}u + min(hg * ${HG}u + e / ${D}u, ${spec.rep - 1}u);`,
      `qs[e] = qv[h * ${D}u + e % ${D}u];`,
      '}',
      'workgroupBarrier();',
    );
    keyStage(g, spec);
    if (spec.kind === 'decode') valuePrologue(g, spec);
    keyReduce(g, spec);
  }
  if (spec.kind === 'decode') softmaxStage(g, spec);
  if (spec.kind === 'valueMix') {
    if (spec.prefetch) valuePrologue(g, spec); // value loads in flight while p is staged
    g.push(
      `for (var e = lid; e < ${HG * CHUNK_TOKENS}u; e = e + ${WORKGROUP}u) {`,
      `let hl = e / ${CHUNK_TOKENS}u;`,
      `let t = c0 + e % ${CHUNK_TOKENS}u;`,
      'var pv = 0.0;',
      `if (t < ${g.p('tv')} && hg * ${HG}u + hl < ${spec.rep}u) { pv = pr[(kv * ${spec.rep}u + hg * ${HG}u + hl) * ${g.p('ostride')} + t]; }`,
      'sc[e] = pv;',
      '}',
      'workgroupBarrier();',
    );
    if (!spec.prefetch) valuePrologue(g, spec);
  }
  if (spec.kind !== 'keyScores') valueStage(g, spec);
  g.push('}');
  entry(g);
  return g.lines.join('\n');
}

/** Generate the WGSL of the pass that merges chunk partials: flash-decoding softmax merge, or a plain sum. @internal */
export function combineKernelSource(headDim: number, mode: 'softmax' | 'sum', target: Target): string {
  const g = new Gen(target);
  const D = headDim;
  const D4 = D / 4;
  const CK = WORKGROUP / D4;
  const PS = D + 2;
  const P = (n: string) => g.p(n);
  const pt = (idx: string) => `parts[${idx}]`;
  header(g, { kind: 'combine' }, {});
  g.push(
    'var<workgroup> cm: array<f32, 256>;',
    'var<workgroup> cl: array<f32, 256>;',
    'var<workgroup> co: array<vec4<f32>, 256>;',
    'fn body(wid: vec3<u32>, lid: u32) {',
    'let h = wid.x;',
    `let d4 = lid % ${D4}u;`,
    `let ck = lid / ${D4}u;`,
    `var M = ${NEG};`,
    'var L = 0.0;',
    'var O = vec4<f32>(0.0);',
    `for (var c = ck; c < ${P('nc')}; c = c + ${CK}u) {`,
    `let rb = (h * ${P('nc')} + c) * ${PS}u;`,
    `let ob = rb + d4 * 4u;`,
    `let o = vec4<f32>(${pt('ob')}, ${pt('ob + 1u')}, ${pt('ob + 2u')}, ${pt('ob + 3u')});`,
  );
  if (mode === 'softmax') {
    g.push(
      `let mc = ${pt(`rb + ${D}u`)};`,
      `let lc = ${pt(`rb + ${D + 1}u`)};`,
      'let Mn = max(M, mc);',
      'let ea = exp(M - Mn);',
      'let eb = exp(mc - Mn);',
      'L = L * ea + lc * eb;',
      'O = O * ea + o * eb;',
      'M = Mn;',
    );
  } else {
    g.push('O = O + o;');
  }
  g.push('}', 'cm[lid] = M;', 'cl[lid] = L;', 'co[lid] = O;', 'workgroupBarrier();', 'if (ck == 0u) {');
  g.push(`for (var k = 1u; k < ${CK}u; k = k + 1u) {`, `let x = k * ${D4}u + d4;`);
  if (mode === 'softmax') {
    g.push(
      'let Mn = max(M, cm[x]);',
      'let ea = exp(M - Mn);',
      'let eb = exp(cm[x] - Mn);',
      'L = L * ea + cl[x] * eb;',
      'O = O * ea + co[x] * eb;',
      'M = Mn;',
    );
  } else {
    g.push('O = O + co[x];');
  }
  g.push('}');
  g.push(mode === 'softmax' ? 'let r = O / L;' : 'let r = O;');
  for (let e = 0; e < 4; e++) g.push(g.out(`h * ${D}u + d4 * 4u + ${e}u`, `r[${e}]`));
  g.push('}', '}');
  entry(g);
  return g.lines.join('\n');
}
