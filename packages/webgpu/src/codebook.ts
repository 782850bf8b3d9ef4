import { XqBackendError, XqConfigError, XqShapeError, assertCodebookView, bitsToHalf, type CodebookKvView, type CodebookSegment } from '@xquant/quant';
import { PackedAttentionGpu, dispatchCall, type KernelCall } from './raw.js';

/**
 * A codebook (TurboQuant-style) K or V block resident on the GPU: the rows of a `CodebookKvView` of `@xquant/quant` (token-major
 * bit-stream codes, one scale code per segment slot, a level table per segment). Made by
 * {@link CodebookAttentionGpu.upload}.
 */
export interface GpuCodebookKv {
  /** KV heads. */
  readonly heads: number;
  /** Valid tokens. */
  readonly tokens: number;
  /** Channels per head. */
  readonly headDim: number;
  /** Channel segments (the view's; bit offsets and level tables are compiled into the kernels). */
  readonly segments: readonly CodebookSegment[];
  /** 32-bit words per (token, head) row. */
  readonly rowWords: number;
  /** Scales per row. */
  readonly scalesPerRow: number;
  /** Bits of one stored scale code: 8 (a 256-entry table) or 16 (fp16, decoded in the shader). */
  readonly scaleBits: 8 | 16;
  /** Codes, `[tokens, heads, rowWords]` u32. */
  readonly codes: GPUBuffer;
  /** Scale codes packed 4 (8-bit) or 2 (16-bit) to a u32. */
  readonly scales: GPUBuffer;
  /** float32: every segment's levels in order, then the 256-entry scale table (8-bit scales). */
  readonly tables: GPUBuffer;
  /** Bytes of codes plus scale codes (what the kernels read per pass). */
  readonly packedBytes: number;
}

/** Arguments of {@link CodebookAttentionGpu.keyScores}. */
export interface CodebookScoresArgs {
  /** float32 `[qHeads, headDim]`, in the view's channel order (rotated and permuted as the cache stores keys). */
  q: GPUBuffer;
  qHeads: number;
  keys: GpuCodebookKv;
  /** float32 `[qHeads, keys.tokens]` (row stride `keys.tokens`); allocated when omitted. */
  out?: GPUBuffer;
}

/** Arguments of {@link CodebookAttentionGpu.valueMix}. */
export interface CodebookMixArgs {
  /** float32 `[qHeads, pStride]` weights; the first `values.tokens` of each row are used. */
  p: GPUBuffer;
  qHeads: number;
  values: GpuCodebookKv;
  /** Row stride of `p` (default `values.tokens`). */
  pStride?: number;
  /** float32 `[qHeads, headDim]` in the view's channel order; allocated when omitted. */
  out?: GPUBuffer;
}

/** Arguments of {@link CodebookAttentionGpu.attention}. */
export interface CodebookAttentionArgs {
  /** float32 `[qHeads, headDim]` (one decode position), in the keys' channel order. */
  q: GPUBuffer;
  qHeads: number;
  keys: GpuCodebookKv;
  /** Same tokens and heads as `keys`. */
  values: GpuCodebookKv;
  /** Softmax scale (default 1/√headDim). */
  scale?: number;
  /** float32 `[qHeads, headDim]` in the values' channel order; allocated when omitted. */
  out?: GPUBuffer;
  /**
   * Tokens per workgroup (64, 128, 256 or 512; default: the largest whose workgroup memory stays within 20 KB).
   * Smaller chunks put more workgroups in flight at short contexts and cost a larger merge.
   */
  chunkTokens?: number;
}

/** Tokens a workgroup of the score and value kernels covers. */
export const CODEBOOK_CHUNK_TOKENS = 512;
/** Workgroup memory the fused decode kernel aims to stay within (a larger chunk would lower occupancy). */
const DECODE_SHARED_BYTES = 20480;
const SCORE_THREADS = 128;
/** Tokens whose weights the value kernel stages in workgroup memory at a time. */
const MIX_STAGE = 128;
const UNIFORM = 0x40;
const COPY_DST = 0x08;

/** Compile-time shape of a codebook kernel: everything but the token count and the buffers. @internal */
export interface CodebookSpec {
  heads: number;
  headDim: number;
  rep: number;
  rowWords: number;
  scalesPerRow: number;
  scaleBits: 8 | 16;
  segments: readonly Pick<CodebookSegment, 'start' | 'length' | 'bits' | 'bitOffset' | 'scaleSlot'>[];
}

function levelOffsets(spec: CodebookSpec): { offsets: number[]; total: number } {
  const offsets: number[] = [];
  let total = 0;
  for (const s of spec.segments) {
    offsets.push(total);
    total += 1 << s.bits;
  }
  return { offsets, total };
}

/** Floats of workgroup memory the level and scale tables take. */
function tableFloats(spec: CodebookSpec): number {
  return levelOffsets(spec).total + (spec.scaleBits === 8 ? 256 : 0);
}

/** Bindings 1–3 (or `first`…`first+2`), constants, tables and `scaleAt` of one operand; names prefixed by `pre`. */
function operand(spec: CodebookSpec, pre: string, first: number): string {
  const { total } = levelOffsets(spec);
  const U = pre.toUpperCase();
  const scaleFn =
    spec.scaleBits === 8
      ? `fn ${pre}scaleAt(i: u32) -> f32 { return ${pre}st[(${pre}scales[i >> 2u] >> ((i & 3u) * 8u)) & 255u]; }`
      : `fn ${pre}scaleAt(i: u32) -> f32 { return unpack2x16float(${pre}scales[i >> 1u])[i & 1u]; }`;
  return `@group(0) @binding(${first}) var<storage, read> ${pre}codes: array<u32>;
@group(0) @binding(${first + 1}) var<storage, read> ${pre}scales: array<u32>;
@group(0) @binding(${first + 2}) var<storage, read> ${pre}tables: array<f32>;
const ${U}RW = ${spec.rowWords}u;
const ${U}SPR = ${spec.scalesPerRow}u;
const ${U}LV = ${total}u;
var<workgroup> ${pre}lv: array<f32, ${U}LV>;
${spec.scaleBits === 8 ? `var<workgroup> ${pre}st: array<f32, 256>;` : ''}
${scaleFn}`;
}

/** The uniform, the constants shared by both operands, the query/weight input (binding 4) and the output (5). */
function common(spec: CodebookSpec, q: 'q' | 'p', pre = ''): string {
  return `
struct Params { tokens: u32, ostride: u32, chunks: u32, scale: f32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(4) var<storage, read> ${q}: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
const H = ${spec.heads}u;
const D = ${spec.headDim}u;
const REP = ${spec.rep}u;
${operand(spec, pre, 1)}
`;
}

function loadTables(spec: CodebookSpec, threads: number, pre = ''): string {
  const U = pre.toUpperCase();
  return `  for (var i = li; i < ${U}LV; i += ${threads}u) { ${pre}lv[i] = ${pre}tables[i]; }
${spec.scaleBits === 8 ? `  for (var i = li; i < 256u; i += ${threads}u) { ${pre}st[i] = ${pre}tables[${U}LV + i]; }` : ''}`;
}

/**
 * Scores kernel: one thread per (token, KV head); the row's words are loaded once, every code is decoded once with
 * constant shifts and serves all `rep` query heads of the group (queries in workgroup memory); per segment
 * `Σ q·level` times the segment's scale. @internal
 */
export function codebookScoresSource(spec: CodebookSpec): string {
  const { rep: REP, headDim: D } = spec;
  const per = CODEBOOK_CHUNK_TOKENS / SCORE_THREADS;
  const body = scoreBlock(spec, '      ');
  for (let j = 0; j < REP; j++) body.push(`      out[(h * REP + ${j}u) * P.ostride + t] = a${j};`);
  return `${common(spec, 'q')}
var<workgroup> qs: array<f32, ${REP * D}>;
@compute @workgroup_size(${SCORE_THREADS})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let h = wg.y;
  for (var i = li; i < REP * D; i += ${SCORE_THREADS}u) { qs[i] = q[h * REP * D + i]; }
${loadTables(spec, SCORE_THREADS)}
  workgroupBarrier();
  for (var k = 0u; k < ${per}u; k++) {
    let t = wg.x * ${CODEBOOK_CHUNK_TOKENS}u + k * ${SCORE_THREADS}u + li;
    if (t < P.tokens) {
      let r = t * H + h;
      let b = r * RW;
${body.join('\n')}
    }
  }
}
`;
}

/**
 * WGSL statements computing `a0 … a{rep−1}` = `Σ_c qs[j·D + c]·x̂[c]` for the row `r` whose words start at `b`: the row's
 * words loaded once, every code decoded once with constant shifts and used by every query head, per segment
 * `Σ q·level` times the segment's scale.
 */
function scoreBlock(spec: CodebookSpec, ind: string, pre = ''): string[] {
  const { offsets } = levelOffsets(spec);
  const U = pre.toUpperCase();
  const { rep: REP, headDim: D } = spec;
  const body: string[] = [];
  for (let w = 0; w < spec.rowWords; w++) body.push(`${ind}let w${w} = ${pre}codes[b + ${w}u];`);
  for (let j = 0; j < REP; j++) body.push(`${ind}var a${j} = 0.0;`);
  spec.segments.forEach((s, si) => {
    body.push(`${ind}{`, `${ind}  let sc = ${pre}scaleAt(r * ${U}SPR + ${s.scaleSlot}u);`);
    for (let j = 0; j < REP; j++) body.push(`${ind}  var s${j} = 0.0;`);
    const mask = (1 << s.bits) - 1;
    for (let k = 0; k < s.length; k++) {
      const c = s.start + k;
      const pos = s.bitOffset + k * s.bits;
      const wi = pos >>> 5;
      const sh = pos & 31;
      const code = sh + s.bits > 32 ? `((w${wi} >> ${sh}u) | (w${wi + 1} << ${32 - sh}u)) & ${mask}u` : sh === 0 ? `w${wi} & ${mask}u` : `(w${wi} >> ${sh}u) & ${mask}u`;
      body.push(`${ind}  { let l = ${pre}lv[${offsets[si]}u + (${code})];`);
      for (let j = 0; j < REP; j++) body.push(`${ind}    s${j} = fma(qs[${j * D + c}u], l, s${j});`);
      body.push(`${ind}  }`);
    }
    for (let j = 0; j < REP; j++) body.push(`${ind}  a${j} = fma(sc, s${j}, a${j});`);
    body.push(`${ind}}`);
  });
  return body;
}

/** Threads of the value kernel: channels × token lanes. */
function mixLanes(D: number): number {
  return Math.max(1, Math.floor(256 / D));
}

/**
 * Value kernel, split along tokens: a workgroup takes {@link CODEBOOK_CHUNK_TOKENS} tokens of one KV head, one thread
 * per (channel, token lane); each code is decoded once (its word, shift, level table and scale slot fixed per thread)
 * and mixed into the `rep` query heads' sums (weights staged in workgroup memory); lanes are summed in workgroup
 * memory and each chunk writes a partial row, summed by {@link codebookCombineSource}. @internal
 */
export function codebookMixSource(spec: CodebookSpec): string {
  const { rep: REP, headDim: D } = spec;
  const lanes = mixLanes(D);
  const threads = D * lanes;
  const CH = CODEBOOK_CHUNK_TOKENS;
  const SUB = MIX_STAGE;
  return `${common(spec, 'p')}
var<workgroup> ps: array<f32, ${REP * SUB}>;
var<workgroup> vw: array<f32, ${spec.scalesPerRow * SUB}>;
var<workgroup> red: array<f32, ${threads}>;
@compute @workgroup_size(${threads})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let h = wg.y;
  let t0 = wg.x * ${CH}u;
${loadTables(spec, threads)}
${valueThread(spec)}
  let n = min(${CH}u, P.tokens - t0);
  for (var s0 = 0u; s0 < ${CH}u; s0 += ${SUB}u) {
    workgroupBarrier();
    for (var i = li; i < REP * ${SUB}u; i += ${threads}u) {
      let j = i / ${SUB}u;
      let t = t0 + s0 + i % ${SUB}u;
      ps[i] = select(0.0, p[(h * REP + j) * P.ostride + min(t, P.tokens - 1u)], t < P.tokens);
    }
${stageScales(spec, 's0 + ', SUB, threads)}
    workgroupBarrier();
    let m = min(${SUB}u, n - min(n, s0));
${valueLoop(spec, 's0 + ', SUB, 'm', '    ')}
  }
${laneSums(spec, (j) => `out[((wg.x * H + h) * REP + ${j}u) * D + c] = s;`)}
}
`;
}

/**
 * Per-thread setup of the value loops: the thread's channel `c` and token lane, and its channel's segment — word,
 * shift, mask, level table and scale slot — fixed for the whole loop; accumulators `a0 … a{rep−1}` zeroed.
 */
function valueThread(spec: CodebookSpec): string {
  const { offsets } = levelOffsets(spec);
  const seg = spec.segments.map((s, si) => {
    const cond = si === spec.segments.length - 1 ? '' : `if (c < ${s.start + s.length}u) `;
    return `  ${si > 0 ? 'else ' : ''}${cond}{ bits = ${s.bits}u; pos = ${s.bitOffset}u + (c - ${s.start}u) * ${s.bits}u; lo = ${offsets[si]}u; slot = ${s.scaleSlot}u; }`;
  });
  return `  let c = li % D;
  let lane = li / D;
  var bits = 0u;
  var pos = 0u;
  var lo = 0u;
  var slot = 0u;
${seg.join('\n')}
  let wi = pos >> 5u;
  let sh = pos & 31u;
  let mask = (1u << bits) - 1u;
  let straddles = sh + bits > 32u;
${Array.from({ length: spec.rep }, (_, j) => `  var a${j} = 0.0;`).join('\n')}`;
}

/**
 * The token loop of a value pass: `a_j += ps[j·stride + tt]·level(code)·vw[slot·stride + tt]` for the thread's lane of
 * `tt < count` (`vw`: the row scales staged per token and slot), four tokens per iteration so that their loads are
 * independent.
 */
function valueLoop(spec: CodebookSpec, off: string, stride: number, count: string, ind: string, pre = ''): string {
  const U = pre.toUpperCase();
  const lanes = mixLanes(spec.headDim);
  const one = (k: number) => {
    const tt = k === 0 ? 'tt' : `tt + ${k * lanes}u`;
    return `${ind}  let b${k} = ((t0 + ${off}${tt}) * H + h) * ${U}RW + wi;
${ind}  var u${k} = ${pre}codes[b${k}] >> sh;
${ind}  if (straddles) { u${k} |= ${pre}codes[b${k} + 1u] << (32u - sh); }`;
  };
  const use = (k: number) => {
    const tt = k === 0 ? 'tt' : `tt + ${k * lanes}u`;
    const mix = Array.from({ length: spec.rep }, (_, j) => `${ind}  a${j} = fma(ps[${j * stride}u + ${tt}], v${k}, a${j});`).join('\n');
    return `${ind}  let v${k} = ${pre}lv[lo + (u${k} & mask)] * vw[slot * ${stride}u + ${tt}];
${mix}`;
  };
  return `${ind}var tt = lane;
${ind}for (; tt + ${3 * lanes}u < ${count}; tt += ${4 * lanes}u) {
${[0, 1, 2, 3].map(one).join('\n')}
${[0, 1, 2, 3].map(use).join('\n')}
${ind}}
${ind}for (; tt < ${count}; tt += ${lanes}u) {
${one(0)}
${use(0)}
${ind}}`;
}

/** Stage the row scales of tokens `t0 + off … t0 + off + stride − 1` (every slot) into `vw[slot·stride + tt]` (0 past the end). */
function stageScales(spec: CodebookSpec, off: string, stride: number, threads: number, pre = ''): string {
  const U = pre.toUpperCase();
  return `  for (var i = li; i < ${U}SPR * ${stride}u; i += ${threads}u) {
    let t = t0 + ${off}(i % ${stride}u);
    vw[i] = select(0.0, ${pre}scaleAt((min(t, P.tokens - 1u) * H + h) * ${U}SPR + i / ${stride}u), t < P.tokens);
  }`;
}

/** Sum each accumulator over the token lanes in workgroup memory (`red`); lane 0 runs `write(j)` with the sum in `s`. */
function laneSums(spec: CodebookSpec, write: (j: number) => string): string {
  const lanes = mixLanes(spec.headDim);
  return Array.from({ length: spec.rep }, (_, j) => `  red[li] = a${j};
  workgroupBarrier();
  if (lane == 0u) {
    var s = 0.0;
    for (var k = 0u; k < ${lanes}u; k++) { s += red[k * D + c]; }
    ${write(j)}
  }
  workgroupBarrier();`).join('\n');
}

/** Tokens per workgroup of the fused decode kernel: the largest of 512 … 64 whose workgroup memory fits `bytes`. @internal */
export function codebookDecodeChunk(keys: CodebookSpec, values: CodebookSpec, bytes: number): number {
  for (const ch of [512, 256, 128, 64]) if (decodeSharedFloats(keys, values, ch) * 4 <= bytes) return ch;
  return 0;
}

function decodeSharedFloats(keys: CodebookSpec, values: CodebookSpec, ch: number): number {
  return keys.rep * keys.headDim + (keys.rep + values.scalesPerRow) * ch + keys.rep * keys.headDim * mixLanes(keys.headDim) + 2 * keys.rep + tableFloats(keys) + tableFloats(values);
}

/**
 * Fused decode attention over one chunk of `ch` tokens of one KV head (flash decoding): the scores of every query head
 * of the group (one thread per token, {@link scoreBlock}) into workgroup memory, the chunk's max and Σexp per head, then
 * the value pass over the exponentials; writes per (chunk, query head) the unnormalised row, its max and its Σexp
 * (`D + 2` floats), merged by {@link codebookMergeSource}. @internal
 */
export function codebookDecodeSource(spec: CodebookSpec, values: CodebookSpec, ch: number): string {
  const { rep: REP, headDim: D } = spec;
  const threads = D * mixLanes(D);
  let p2 = 1;
  while (p2 < threads) p2 *= 2;
  const J = Array.from({ length: REP }, (_, j) => j);
  // every head's max, then every head's Σexp, reduced together (one tree, REP values per step)
  const tree = (op: (x: string, y: string) => string) => `  for (var k = ${p2 / 2}u; k > 0u; k >>= 1u) {
    if (li < k && li + k < ${threads}u) {
${J.map((j) => `      red[${j * threads}u + li] = ${op(`red[${j * threads}u + li]`, `red[${j * threads}u + li + k]`)};`).join('\n')}
    }
    workgroupBarrier();
  }`;
  const stats = `${J.map((j) => `  var m${j} = -3.0e38;`).join('\n')}
  for (var tt = li; tt < ${ch}u; tt += ${threads}u) {
${J.map((j) => `    m${j} = max(m${j}, ps[${j * ch}u + tt]);`).join('\n')}
  }
${J.map((j) => `  red[${j * threads}u + li] = m${j};`).join('\n')}
  workgroupBarrier();
${tree((x, y) => `max(${x}, ${y})`)}
${J.map((j) => `  m${j} = red[${j * threads}u];`).join('\n')}
  workgroupBarrier();
${J.map((j) => `  var z${j} = 0.0;`).join('\n')}
  for (var tt = li; tt < ${ch}u; tt += ${threads}u) {
${J.map((j) => `    { let e = exp(ps[${j * ch}u + tt] - m${j}); ps[${j * ch}u + tt] = e; z${j} += e; }`).join('\n')}
  }
${J.map((j) => `  red[${j * threads}u + li] = z${j};`).join('\n')}
${stageScales(values, '', ch, threads, 'v')}
  workgroupBarrier();
${tree((x, y) => `${x} + ${y}`)}
  if (li == 0u) {
${J.map((j) => `    stat[${2 * j}u] = m${j};
    stat[${2 * j + 1}u] = red[${j * threads}u];`).join('\n')}
  }
  workgroupBarrier();`;
  const store = Array.from({ length: REP }, (_, j) => `        ps[${j * ch}u + tt] = a${j} * P.scale;`).join('\n');
  const masked = Array.from({ length: REP }, (_, j) => `        ps[${j * ch}u + tt] = -3.0e38;`).join('\n');
  const ROW = D + 2;
  return `${common(spec, 'q', 'k')}
${operand(values, 'v', 6)}
var<workgroup> qs: array<f32, ${REP * D}>;
var<workgroup> ps: array<f32, ${REP * ch}>;
var<workgroup> vw: array<f32, ${values.scalesPerRow * ch}>;
var<workgroup> red: array<f32, ${REP * threads}>;
var<workgroup> stat: array<f32, ${2 * REP}>;
@compute @workgroup_size(${threads})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let h = wg.y;
  let t0 = wg.x * ${ch}u;
  for (var i = li; i < REP * D; i += ${threads}u) { qs[i] = q[h * REP * D + i]; }
${loadTables(spec, threads, 'k')}
${loadTables(values, threads, 'v')}
  workgroupBarrier();
  for (var tt = li; tt < ${ch}u; tt += ${threads}u) {
    let t = t0 + tt;
    if (t < P.tokens) {
      let r = t * H + h;
      let b = r * KRW;
${scoreBlock(spec, '      ', 'k').join('\n')}
${store}
    } else {
${masked}
    }
  }
  workgroupBarrier();
${stats}
${valueThread(values)}
  let n = min(${ch}u, P.tokens - t0);
${valueLoop(values, '', ch, 'n', '  ', 'v')}
${laneSums(spec, (j) => `out[((wg.x * H + h) * REP + ${j}u) * ${ROW}u + c] = s;`)}
  if (li < REP) {
    let o = ((wg.x * H + h) * REP + li) * ${ROW}u + D;
    out[o] = stat[2u * li];
    out[o + 1u] = stat[2u * li + 1u];
  }
}
`;
}

/**
 * Merges the fused kernel's chunks for one query head per workgroup: M = max of the chunk maxima, then
 * `out[c] = Σ_k w_k·row_k[c] / Σ_k w_k·z_k` with `w_k = exp(m_k − M)`. @internal
 */
export function codebookMergeSource(headDim: number): string {
  const D = headDim;
  const lanes = mixLanes(D);
  const threads = D * lanes;
  let p2 = 1;
  while (p2 < threads) p2 *= 2;
  const ROW = D + 2;
  return `
struct Params { tokens: u32, ostride: u32, chunks: u32, scale: f32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
const D = ${D}u;
var<workgroup> red: array<f32, ${threads}>;
@compute @workgroup_size(${threads})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let i = wg.x;
  let qh = P.ostride;
  var m = -3.0e38;
  for (var k = li; k < P.chunks; k += ${threads}u) { m = max(m, part[(k * qh + i) * ${ROW}u + D]); }
  red[li] = m;
  workgroupBarrier();
  for (var s = ${p2 / 2}u; s > 0u; s >>= 1u) {
    if (li < s && li + s < ${threads}u) { red[li] = max(red[li], red[li + s]); }
    workgroupBarrier();
  }
  m = red[0];
  workgroupBarrier();
  var z = 0.0;
  for (var k = li; k < P.chunks; k += ${threads}u) {
    let e = exp(part[(k * qh + i) * ${ROW}u + D] - m);
    z += e * part[(k * qh + i) * ${ROW}u + D + 1u];
  }
  red[li] = z;
  workgroupBarrier();
  for (var s = ${p2 / 2}u; s > 0u; s >>= 1u) {
    if (li < s && li + s < ${threads}u) { red[li] += red[li + s]; }
    workgroupBarrier();
  }
  let inv = 1.0 / red[0];
  workgroupBarrier();
  let c = li % D;
  let lane = li / D;
  var a = 0.0;
  for (var k = lane; k < P.chunks; k += ${lanes}u) {
    let o = (k * qh + i) * ${ROW}u;
    a = fma(exp(part[o + D] - m), part[o + c], a);
  }
  red[li] = a;
  workgroupBarrier();
  if (lane == 0u) {
    var s = 0.0;
    for (var k = 0u; k < ${lanes}u; k++) { s += red[k * D + c]; }
    out[i * D + c] = s * inv;
  }
}
`;
}

/** Sums the chunks' partial rows: `out[i] = Σ_chunk partial[chunk·size + i]`. @internal */
export function codebookCombineSource(): string {
  return `
struct Params { tokens: u32, ostride: u32, chunks: u32, scale: f32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i >= P.ostride) { return; }
  var s = 0.0;
  for (var k = 0u; k < P.chunks; k++) { s += partial[k * P.ostride + i]; }
  out[i] = s;
}
`;
}

/**
 * WGSL kernels for the codebook layout of `@xquant/quant` (the `turboquant` cache's storage): scores
 * `q·k̂ᵀ` over codebook-coded keys, the weighted sum over codebook-coded values, and a decode-attention step made of
 * both (scores → softmax → values), GQA-aware (each code is decoded once per KV head and serves every query head of
 * its group) and never dequantizing a row. The same contract as `codebookKeyScores` / `codebookValueMix`: queries and
 * outputs are in the view's channel order (apply the cache's rotation and channel permutation outside).
 */
/** Tokens a resident copy has room for: what both its code and its scale buffers hold. */
function capacityOf(kv: GpuCodebookKv): number {
  const perWord = kv.scaleBits === 8 ? 4 : 2;
  return Math.min(Math.floor(kv.codes.size / (kv.heads * kv.rowWords * 4)), Math.floor((kv.scales.size / 4) * perWord / (kv.heads * kv.scalesPerRow)));
}

/** Free the buffers of a resident codebook copy. @internal */
export function releaseCodebookKv(kv: GpuCodebookKv): void {
  kv.codes.destroy();
  kv.scales.destroy();
  kv.tables.destroy();
}

/** The scale table a resident copy was checked against. */
const tableOf = new WeakMap<GpuCodebookKv, Float32Array>();

/**
 * Scale codes `from … to−1` of a view packed 4 (8-bit) or 2 (16-bit) to a u32 (`from` a multiple of that), each
 * checked: the shader decodes 16-bit codes as fp16 and 8-bit codes through the table, both must give a finite scale.
 */
function packScaleCodes(view: CodebookKvView, from: number, to: number, scaleBits: 8 | 16): Uint32Array {
  const perWord = scaleBits === 8 ? 4 : 2;
  const out = new Uint32Array(Math.ceil((to - from) / perWord));
  for (let i = from; i < to; i++) {
    const code = view.scales[i]!;
    const value = view.scaleTable[code];
    if (value === undefined || !Number.isFinite(value) || (scaleBits === 16 && value !== bitsToHalf(code))) {
      throw new XqShapeError(`codebook upload: scale ${i} (code ${code}) decodes to ${String(value)}; ${scaleBits === 16 ? '16-bit scales must be finite fp16 with the fp16 table' : 'scales must be finite'}`);
    }
    const w = ((i - from) / perWord) | 0;
    out[w] = (out[w]! | (code << (((i - from) % perWord) * scaleBits))) >>> 0;
  }
  return out;
}

export class CodebookAttentionGpu {
  /** The packed-attention helper whose buffers, `run` and `read` these kernels share. */
  readonly base: PackedAttentionGpu;
  private constructor(readonly device: GPUDevice) {
    this.base = PackedAttentionGpu.create(device);
  }

  /** Wrap a device. */
  static create(device: GPUDevice): CodebookAttentionGpu {
    return new CodebookAttentionGpu(device);
  }

  /** Upload a codebook view (checked by `assertCodebookView`); only its first `tokens` rows are copied. */
  upload(view: CodebookKvView): GpuCodebookKv {
    return this.uploadWithCapacity(view, view.tokens);
  }

  /**
   * Bring a resident copy up to date with `view`, which holds the same rows as `kv` (same layout) plus newer ones:
   * only the new rows' codes and scale codes are written, into room reserved ahead (capacity doubles when full, which
   * copies everything once). Returns the copy to use from now on (`kv` itself is released when it was replaced).
   * Anything else — fewer rows, another layout or scale table — uploads the view anew. @internal
   */
  extend(kv: GpuCodebookKv, view: CodebookKvView): GpuCodebookKv {
    assertCodebookView(view);
    const cap = capacityOf(kv);
    const same =
      tableOf.has(kv) &&
      view.tokens >= kv.tokens &&
      view.heads === kv.heads &&
      view.segments === kv.segments &&
      view.rowWords === kv.rowWords &&
      view.scalesPerRow === kv.scalesPerRow &&
      (view.scales instanceof Uint8Array ? 8 : 16) === kv.scaleBits &&
      tableOf.get(kv) === view.scaleTable;
    if (!same || view.tokens > cap) {
      const next = this.uploadWithCapacity(view, same ? Math.max(view.tokens, 2 * cap) : view.tokens);
      this.release(kv);
      return next;
    }
    if (view.tokens === kv.tokens) return kv;
    const { heads: H, rowWords: RW, scalesPerRow: SPR } = view;
    const q = this.device.queue;
    // scale codes from the start of the word that holds the first new one (earlier codes of that word rewritten as they
    // are), checked before anything is written
    const perWord = kv.scaleBits === 8 ? 4 : 2;
    const firstWord = Math.floor((kv.tokens * H * SPR) / perWord);
    const words = packScaleCodes(view, firstWord * perWord, view.tokens * H * SPR, kv.scaleBits);
    const codes = view.packed.subarray(kv.tokens * H * RW, view.tokens * H * RW);
    q.writeBuffer(kv.codes, kv.tokens * H * RW * 4, codes.buffer, codes.byteOffset, codes.byteLength);
    q.writeBuffer(kv.scales, firstWord * 4, words.buffer, words.byteOffset, words.byteLength);
    const next: GpuCodebookKv = { ...kv, tokens: view.tokens, packedBytes: view.tokens * H * (RW * 4 + SPR * (kv.scaleBits / 8)) };
    tableOf.set(next, view.scaleTable);
    return next;
  }

  private uploadWithCapacity(view: CodebookKvView, capacity: number): GpuCodebookKv {
    assertCodebookView(view);
    const rows = view.tokens * view.heads;
    if (rows === 0) throw new XqShapeError('codebook upload: the view holds no tokens');
    const scaleBits = view.scales instanceof Uint8Array ? 8 : 16;
    if (scaleBits === 8 && view.scaleTable.length < 256) throw new XqShapeError(`codebook upload: an 8-bit scale table needs 256 entries; got ${view.scaleTable.length}`);
    const n = rows * view.scalesPerRow;
    const perWord = scaleBits === 8 ? 4 : 2;
    const capRows = capacity * view.heads;
    const codes = new Uint32Array(capRows * view.rowWords);
    codes.set(view.packed.subarray(0, rows * view.rowWords));
    const scaleWords = new Uint32Array(Math.ceil((capRows * view.scalesPerRow) / perWord));
    scaleWords.set(packScaleCodes(view, 0, n, scaleBits));
    for (const sg of view.segments) if (!sg.levels.every(Number.isFinite)) throw new XqShapeError(`codebook upload: segment at channel ${sg.start} has a non-finite level`);
    const levels = view.segments.reduce((a, s) => a + s.levels.length, 0);
    const tables = new Float32Array(levels + (scaleBits === 8 ? 256 : 0));
    let o = 0;
    for (const s of view.segments) {
      tables.set(s.levels, o);
      o += s.levels.length;
    }
    if (scaleBits === 8) tables.set(view.scaleTable.subarray(0, 256), levels);
    const max = this.device.limits.maxStorageBufferBindingSize;
    if (codes.byteLength > max) throw new XqBackendError('E_BACKEND_UNAVAILABLE', `codebook codes: ${codes.byteLength} bytes exceed this device's maxStorageBufferBindingSize (${max})`);
    const kv: GpuCodebookKv = {
      heads: view.heads,
      tokens: view.tokens,
      headDim: view.headDim,
      segments: view.segments,
      rowWords: view.rowWords,
      scalesPerRow: view.scalesPerRow,
      scaleBits,
      codes: this.base.createBuffer(codes, 0, 'codebook codes'),
      scales: this.base.createBuffer(scaleWords, 0, 'codebook scales'),
      tables: this.base.createBuffer(tables, 0, 'codebook tables'),
      packedBytes: rows * view.rowWords * 4 + n * (scaleBits / 8),
    };
    tableOf.set(kv, view.scaleTable);
    return kv;
  }

  private spec(kv: GpuCodebookKv, qHeads: number, what: string): CodebookSpec {
    if (!Number.isInteger(qHeads) || qHeads <= 0) throw new XqShapeError(`${what}: qHeads must be a positive integer; got ${String(qHeads)}`);
    if (qHeads % kv.heads !== 0) throw new XqShapeError(`${what}: ${qHeads} query heads is not a multiple of ${kv.heads} KV heads (GQA)`);
    return { heads: kv.heads, headDim: kv.headDim, rep: qHeads / kv.heads, rowWords: kv.rowWords, scalesPerRow: kv.scalesPerRow, scaleBits: kv.scaleBits, segments: kv.segments };
  }

  private checkShared(floats: number, what: string): void {
    const limit = this.device.limits.maxComputeWorkgroupStorageSize;
    if (floats * 4 > limit) throw new XqBackendError('E_BACKEND_UNAVAILABLE', `${what}: the kernel needs ${floats * 4} bytes of workgroup memory; the device allows ${limit}`);
  }

  private params(tokens: number, ostride: number, chunks: number, scale = 1): GPUBuffer {
    const buf = this.device.createBuffer({ size: 16, usage: UNIFORM | COPY_DST, mappedAtCreation: true, label: 'codebook params' });
    const u = new Uint32Array(buf.getMappedRange());
    u[0] = tokens;
    u[1] = ostride;
    u[2] = chunks;
    new Float32Array(u.buffer)[3] = scale;
    buf.unmap();
    return buf;
  }

  /** Scores `q·k̂ᵀ` (no softmax scale) of every query head over codebook keys, GQA: `[qHeads, keys.tokens]`. */
  async keyScores(args: CodebookScoresArgs): Promise<KernelCall> {
    const spec = this.checkScores(args);
    return this.scoresCall(args, await this.base.pipeline(codebookScoresSource(spec), 'xquant codebook keyScores'));
  }

  /** {@link keyScores} with its pipeline compiled synchronously (for a caller that cannot await). @internal */
  keyScoresNow(args: CodebookScoresArgs): KernelCall {
    const spec = this.checkScores(args);
    return this.scoresCall(args, this.base.pipelineNow(codebookScoresSource(spec), 'xquant codebook keyScores'));
  }

  private checkScores(args: CodebookScoresArgs): CodebookSpec {
    const { keys, qHeads } = args;
    const spec = this.spec(keys, qHeads, 'codebook keyScores');
    this.base.checkSize(args.q, qHeads * keys.headDim, 'q');
    this.checkShared(spec.rep * spec.headDim + tableFloats(spec), 'codebook keyScores');
    return spec;
  }

  private scoresCall(args: CodebookScoresArgs, pipe: GPUComputePipeline): KernelCall {
    const { keys, qHeads } = args;
    const outLength = qHeads * keys.tokens;
    const own = !args.out;
    const out = args.out ?? this.base.createOutput(outLength, 'codebook scores');
    this.base.checkSize(out, outLength, 'out');
    const params = this.params(keys.tokens, keys.tokens, 0);
    const bg = this.base.bind(pipe, [params, keys.codes, keys.scales, keys.tables, args.q, out]);
    const grid: [number, number] = [Math.ceil(keys.tokens / CODEBOOK_CHUNK_TOKENS), keys.heads];
    return dispatchCall([{ pipe, bg, grid }], { out, outLength, packedBytes: keys.packedBytes, temps: [params], own });
  }

  /** `Σ_t p[j, t]·v̂[t]` for every query head over codebook values, GQA: `[qHeads, headDim]` (two dispatches). */
  async valueMix(args: CodebookMixArgs): Promise<KernelCall> {
    const spec = this.checkMix(args);
    const [pipe, comb] = await Promise.all([this.base.pipeline(codebookMixSource(spec), 'xquant codebook valueMix'), this.base.pipeline(codebookCombineSource(), 'xquant codebook combine')]);
    return this.mixCall(args, pipe, comb);
  }

  /** {@link valueMix} with its pipelines compiled synchronously. @internal */
  valueMixNow(args: CodebookMixArgs): KernelCall {
    const spec = this.checkMix(args);
    return this.mixCall(args, this.base.pipelineNow(codebookMixSource(spec), 'xquant codebook valueMix'), this.base.pipelineNow(codebookCombineSource(), 'xquant codebook combine'));
  }

  private checkMix(args: CodebookMixArgs): CodebookSpec {
    const { values, qHeads } = args;
    const spec = this.spec(values, qHeads, 'codebook valueMix');
    const pStride = args.pStride ?? values.tokens;
    if (!Number.isInteger(pStride) || pStride < values.tokens) throw new XqShapeError(`codebook valueMix: pStride ${String(pStride)} < tokens ${values.tokens}`);
    this.base.checkSize(args.p, (qHeads - 1) * pStride + values.tokens, 'p');
    this.checkShared((spec.rep + spec.scalesPerRow) * MIX_STAGE + spec.headDim * mixLanes(spec.headDim) + tableFloats(spec), 'codebook valueMix');
    return spec;
  }

  private mixCall(args: CodebookMixArgs, pipe: GPUComputePipeline, comb: GPUComputePipeline): KernelCall {
    const { values, qHeads } = args;
    const pStride = args.pStride ?? values.tokens;
    const outLength = qHeads * values.headDim;
    const own = !args.out;
    const out = args.out ?? this.base.createOutput(outLength, 'codebook mix');
    this.base.checkSize(out, outLength, 'out');
    const chunks = Math.ceil(values.tokens / CODEBOOK_CHUNK_TOKENS);
    const partial = this.base.createOutput(chunks * outLength, 'codebook mix partials');
    const params = this.params(values.tokens, pStride, chunks);
    const params2 = this.params(values.tokens, outLength, chunks);
    const bg = this.base.bind(pipe, [params, values.codes, values.scales, values.tables, args.p, partial]);
    const bg2 = this.base.bind(comb, [params2, partial, out]);
    const steps = [
      { pipe, bg, grid: [chunks, values.heads] as [number, number] },
      { pipe: comb, bg: bg2, grid: [Math.ceil(outLength / 64)] as [number] },
    ];
    return dispatchCall(steps, { out, outLength, packedBytes: values.packedBytes, temps: [params, params2, partial], own });
  }

  /**
   * One decode-attention step over codebook keys and values (flash decoding, two dispatches): per chunk of tokens and
   * KV head, the scores of the group's query heads, their softmax statistics and the weighted values in one kernel;
   * then one merge per query head. Output `[qHeads, headDim]` in the values' channel order.
   */
  async attention(args: CodebookAttentionArgs): Promise<KernelCall> {
    const { keys, values, qHeads } = args;
    if (keys.tokens !== values.tokens || keys.heads !== values.heads || keys.headDim !== values.headDim) {
      throw new XqShapeError(`codebook attention: keys hold ${keys.tokens} tokens × ${keys.heads} heads × ${keys.headDim}, values ${values.tokens} × ${values.heads} × ${values.headDim}`);
    }
    const ks = this.spec(keys, qHeads, 'codebook attention');
    const vs = this.spec(values, qHeads, 'codebook attention');
    this.base.checkSize(args.q, qHeads * keys.headDim, 'q');
    const limit = Math.min(this.device.limits.maxComputeWorkgroupStorageSize, DECODE_SHARED_BYTES);
    const ch = args.chunkTokens ?? (codebookDecodeChunk(ks, vs, limit) || codebookDecodeChunk(ks, vs, this.device.limits.maxComputeWorkgroupStorageSize) || 64);
    if (![64, 128, 256, 512].includes(ch)) throw new XqConfigError('E_CONFIG', `codebook attention: chunkTokens must be 64, 128, 256 or 512; got ${String(ch)}`);
    this.checkShared(decodeSharedFloats(ks, vs, ch), 'codebook attention');
    const chunks = Math.ceil(keys.tokens / ch);
    const D = keys.headDim;
    const [pipe, merge] = await Promise.all([this.base.pipeline(codebookDecodeSource(ks, vs, ch), 'xquant codebook decode'), this.base.pipeline(codebookMergeSource(D), 'xquant codebook merge')]);
    const outLength = qHeads * D;
    const own = !args.out;
    const out = args.out ?? this.base.createOutput(outLength, 'codebook attention');
    this.base.checkSize(out, outLength, 'out');
    const partial = this.base.createOutput(chunks * qHeads * (D + 2), 'codebook attention partials');
    const params = this.params(keys.tokens, 0, chunks, args.scale ?? 1 / Math.sqrt(D));
    const params2 = this.params(keys.tokens, qHeads, chunks);
    const bg = this.base.bind(pipe, [params, keys.codes, keys.scales, keys.tables, args.q, partial, values.codes, values.scales, values.tables]);
    const bg2 = this.base.bind(merge, [params2, partial, out]);
    const steps = [
      { pipe, bg, grid: [chunks, keys.heads] as [number, number] },
      { pipe: merge, bg: bg2, grid: [qHeads] as [number] },
    ];
    return dispatchCall(steps, { out, outLength, packedBytes: keys.packedBytes + values.packedBytes, temps: [params, params2, partial], own });
  }

  /** Free a block's buffers. */
  release(kv: GpuCodebookKv): void {
    releaseCodebookKv(kv);
  }
}

/** Wrap a `GPUDevice` in the codebook kernels. */
export function createCodebookAttention(device: GPUDevice): CodebookAttentionGpu {
  return CodebookAttentionGpu.create(device);
}
