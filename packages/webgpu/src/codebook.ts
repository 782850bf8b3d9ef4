import { XqBackendError, XqShapeError, assertCodebookView, type CodebookKvView, type CodebookSegment } from '@xquant/quant';
import { PackedAttentionGpu, type KernelCall } from './raw.js';

/**
 * A codebook (TurboQuant-style) K or V block resident on the GPU: the rows of a {@link CodebookKvView} (token-major
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
}

/** Tokens a workgroup of the score and value kernels covers. */
export const CODEBOOK_CHUNK_TOKENS = 512;
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

function common(spec: CodebookSpec, q: 'q' | 'p'): string {
  const { total } = levelOffsets(spec);
  const scaleFn =
    spec.scaleBits === 8
      ? `fn scaleAt(i: u32) -> f32 { return st[(scales[i >> 2u] >> ((i & 3u) * 8u)) & 255u]; }`
      : `fn scaleAt(i: u32) -> f32 { return unpack2x16float(scales[i >> 1u])[i & 1u]; }`;
  return `
struct Params { tokens: u32, ostride: u32, chunks: u32, scale: f32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> tables: array<f32>;
@group(0) @binding(4) var<storage, read> ${q}: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
const H = ${spec.heads}u;
const D = ${spec.headDim}u;
const REP = ${spec.rep}u;
const RW = ${spec.rowWords}u;
const SPR = ${spec.scalesPerRow}u;
const LV = ${total}u;
var<workgroup> lv: array<f32, LV>;
${spec.scaleBits === 8 ? 'var<workgroup> st: array<f32, 256>;' : ''}
${scaleFn}
`;
}

function loadTables(spec: CodebookSpec, threads: number): string {
  return `  for (var i = li; i < LV; i += ${threads}u) { lv[i] = tables[i]; }
${spec.scaleBits === 8 ? `  for (var i = li; i < 256u; i += ${threads}u) { st[i] = tables[LV + i]; }` : ''}`;
}

/**
 * Scores kernel: one thread per (token, KV head); the row's words are loaded once, every code is decoded once with
 * constant shifts and serves all `rep` query heads of the group (queries in workgroup memory); per segment
 * `Σ q·level` times the segment's scale. @internal
 */
export function codebookScoresSource(spec: CodebookSpec): string {
  const { offsets } = levelOffsets(spec);
  const { rep: REP, headDim: D } = spec;
  const per = CODEBOOK_CHUNK_TOKENS / SCORE_THREADS;
  const body: string[] = [];
  for (let w = 0; w < spec.rowWords; w++) body.push(`      let w${w} = codes[b + ${w}u];`);
  for (let j = 0; j < REP; j++) body.push(`      var a${j} = 0.0;`);
  spec.segments.forEach((s, si) => {
    body.push(`      {`, `        let sc = scaleAt(r * SPR + ${s.scaleSlot}u);`);
    for (let j = 0; j < REP; j++) body.push(`        var s${j} = 0.0;`);
    const mask = (1 << s.bits) - 1;
    for (let k = 0; k < s.length; k++) {
      const c = s.start + k;
      const pos = s.bitOffset + k * s.bits;
      const wi = pos >>> 5;
      const sh = pos & 31;
      const code = sh + s.bits > 32 ? `((w${wi} >> ${sh}u) | (w${wi + 1} << ${32 - sh}u)) & ${mask}u` : sh === 0 ? `w${wi} & ${mask}u` : `(w${wi} >> ${sh}u) & ${mask}u`;
      body.push(`        { let l = lv[${offsets[si]}u + (${code})];`);
      for (let j = 0; j < REP; j++) body.push(`          s${j} = fma(qs[${j * D + c}u], l, s${j});`);
      body.push(`        }`);
    }
    for (let j = 0; j < REP; j++) body.push(`        a${j} = fma(sc, s${j}, a${j});`);
    body.push(`      }`);
  });
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
  const { offsets } = levelOffsets(spec);
  const { rep: REP, headDim: D } = spec;
  const lanes = mixLanes(D);
  const threads = D * lanes;
  const CH = CODEBOOK_CHUNK_TOKENS;
  // per-thread constants: the channel's segment
  const seg: string[] = [];
  spec.segments.forEach((s, si) => {
    const cond = si === spec.segments.length - 1 ? '' : `if (c < ${s.start + s.length}u) `;
    seg.push(`  ${si > 0 ? 'else ' : ''}${cond}{ bits = ${s.bits}u; pos = ${s.bitOffset}u + (c - ${s.start}u) * ${s.bits}u; lo = ${offsets[si]}u; slot = ${s.scaleSlot}u; }`);
  });
  const accs = Array.from({ length: REP }, (_, j) => `  var a${j} = 0.0;`).join('\n');
  const SUB = MIX_STAGE;
  const mix = Array.from({ length: REP }, (_, j) => `        a${j} = fma(ps[${j * SUB}u + tt], v, a${j});`).join('\n');
  const reduce = Array.from({ length: REP }, (_, j) => `  red[li] = a${j};
  workgroupBarrier();
  if (lane == 0u) {
    var s = 0.0;
    for (var k = 0u; k < ${lanes}u; k++) { s += red[k * D + c]; }
    out[((wg.x * H + h) * REP + ${j}u) * D + c] = s;
  }
  workgroupBarrier();`).join('\n');
  return `${common(spec, 'p')}
var<workgroup> ps: array<f32, ${REP * SUB}>;
var<workgroup> red: array<f32, ${threads}>;
@compute @workgroup_size(${threads})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let h = wg.y;
  let t0 = wg.x * ${CH}u;
${loadTables(spec, threads)}
  let c = li % D;
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
  let n = min(${CH}u, P.tokens - t0);
${accs}
  for (var s0 = 0u; s0 < ${CH}u; s0 += ${SUB}u) {
    workgroupBarrier();
    for (var i = li; i < REP * ${SUB}u; i += ${threads}u) {
      let j = i / ${SUB}u;
      let t = t0 + s0 + i % ${SUB}u;
      ps[i] = select(0.0, p[(h * REP + j) * P.ostride + min(t, P.tokens - 1u)], t < P.tokens);
    }
    workgroupBarrier();
    let m = min(${SUB}u, n - min(n, s0));
    for (var tt = lane; tt < m; tt += ${lanes}u) {
      let r = (t0 + s0 + tt) * H + h;
      let b = r * RW + wi;
      var word = codes[b] >> sh;
      if (straddles) { word |= codes[b + 1u] << (32u - sh); }
      let v = lv[lo + (word & mask)] * scaleAt(r * SPR + slot);
${mix}
    }
  }
${reduce}
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

/** Softmax over each query head's scores row in place (`P.tokens` valid, row stride `P.ostride`, times `P.scale`). @internal */
export function codebookSoftmaxSource(): string {
  return `
struct Params { tokens: u32, ostride: u32, chunks: u32, scale: f32 }
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> s: array<f32>;
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let o = wg.x * P.ostride;
  var m = -3.0e38;
  for (var t = li; t < P.tokens; t += 256u) { m = max(m, s[o + t] * P.scale); }
  red[li] = m;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k >>= 1u) {
    if (li < k) { red[li] = max(red[li], red[li + k]); }
    workgroupBarrier();
  }
  m = red[0];
  workgroupBarrier();
  var z = 0.0;
  for (var t = li; t < P.tokens; t += 256u) {
    let e = exp(s[o + t] * P.scale - m);
    s[o + t] = e;
    z += e;
  }
  red[li] = z;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k >>= 1u) {
    if (li < k) { red[li] += red[li + k]; }
    workgroupBarrier();
  }
  let inv = 1.0 / red[0];
  for (var t = li; t < P.tokens; t += 256u) { s[o + t] *= inv; }
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
export class CodebookAttentionGpu {
  private readonly pipelines = new Map<string, Promise<GPUComputePipeline>>();
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
    assertCodebookView(view);
    const rows = view.tokens * view.heads;
    if (rows === 0) throw new XqShapeError('codebook upload: the view holds no tokens');
    const scaleBits = view.scales instanceof Uint8Array ? 8 : 16;
    if (scaleBits === 8 && view.scaleTable.length < 256) throw new XqShapeError(`codebook upload: an 8-bit scale table needs 256 entries; got ${view.scaleTable.length}`);
    const codes = view.packed.subarray(0, rows * view.rowWords);
    const n = rows * view.scalesPerRow;
    const perWord = scaleBits === 8 ? 4 : 2;
    const scaleWords = new Uint32Array(Math.ceil(n / perWord));
    for (let i = 0; i < n; i++) scaleWords[(i / perWord) | 0] = (scaleWords[(i / perWord) | 0]! | (view.scales[i]! << ((i % perWord) * scaleBits))) >>> 0;
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
    return {
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
      packedBytes: codes.byteLength + n * (scaleBits / 8),
    };
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

  private checkSize(buf: GPUBuffer, floats: number, what: string): void {
    if (buf.size < floats * 4) throw new XqShapeError(`${what}: buffer of ${buf.size} bytes is smaller than the ${floats} float32 it must hold`);
  }

  private pipeline(code: string, label: string): Promise<GPUComputePipeline> {
    let p = this.pipelines.get(code);
    if (!p) {
      const module = this.device.createShaderModule({ code, label });
      p = this.device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' }, label }).catch((e: unknown) => {
        throw new XqBackendError('E_KERNEL_MISSING', `WGSL pipeline ${label} failed to compile: ${String(e)}`, { cause: e });
      });
      this.pipelines.set(code, p);
    }
    return p;
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

  private bind(pipe: GPUComputePipeline, buffers: GPUBuffer[]): GPUBindGroup {
    return this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  }

  /** Scores `q·k̂ᵀ` (no softmax scale) of every query head over codebook keys, GQA: `[qHeads, keys.tokens]`. */
  async keyScores(args: CodebookScoresArgs): Promise<KernelCall> {
    const { keys, qHeads } = args;
    const spec = this.spec(keys, qHeads, 'codebook keyScores');
    this.checkSize(args.q, qHeads * keys.headDim, 'q');
    this.checkShared(spec.rep * spec.headDim + tableFloats(spec), 'codebook keyScores');
    const pipe = await this.pipeline(codebookScoresSource(spec), 'xquant codebook keyScores');
    const outLength = qHeads * keys.tokens;
    const own = !args.out;
    const out = args.out ?? this.base.createOutput(outLength, 'codebook scores');
    this.checkSize(out, outLength, 'out');
    const params = this.params(keys.tokens, keys.tokens, 0);
    const bg = this.bind(pipe, [params, keys.codes, keys.scales, keys.tables, args.q, out]);
    const grid: [number, number] = [Math.ceil(keys.tokens / CODEBOOK_CHUNK_TOKENS), keys.heads];
    return {
      out,
      outLength,
      packedBytes: keys.packedBytes,
      dispatches: 1,
      encode(pass) {
        pass.setPipeline(pipe);
        pass.setBindGroup(0, bg);
        pass.dispatchWorkgroups(...grid);
      },
      destroy() {
        params.destroy();
        if (own) out.destroy();
      },
    };
  }

  /** `Σ_t p[j, t]·v̂[t]` for every query head over codebook values, GQA: `[qHeads, headDim]` (two dispatches). */
  async valueMix(args: CodebookMixArgs): Promise<KernelCall> {
    const { values, qHeads } = args;
    const spec = this.spec(values, qHeads, 'codebook valueMix');
    const pStride = args.pStride ?? values.tokens;
    if (!Number.isInteger(pStride) || pStride < values.tokens) throw new XqShapeError(`codebook valueMix: pStride ${String(pStride)} < tokens ${values.tokens}`);
    this.checkSize(args.p, (qHeads - 1) * pStride + values.tokens, 'p');
    this.checkShared(spec.rep * MIX_STAGE + spec.headDim * mixLanes(spec.headDim) + tableFloats(spec), 'codebook valueMix');
    const [pipe, comb] = await Promise.all([this.pipeline(codebookMixSource(spec), 'xquant codebook valueMix'), this.pipeline(codebookCombineSource(), 'xquant codebook combine')]);
    const outLength = qHeads * values.headDim;
    const own = !args.out;
    const out = args.out ?? this.base.createOutput(outLength, 'codebook mix');
    this.checkSize(out, outLength, 'out');
    const chunks = Math.ceil(values.tokens / CODEBOOK_CHUNK_TOKENS);
    const partial = this.base.createOutput(chunks * outLength, 'codebook mix partials');
    const params = this.params(values.tokens, pStride, chunks);
    const params2 = this.params(values.tokens, outLength, chunks);
    const bg = this.bind(pipe, [params, values.codes, values.scales, values.tables, args.p, partial]);
    const bg2 = this.bind(comb, [params2, partial, out]);
    return {
      out,
      outLength,
      packedBytes: values.packedBytes,
      dispatches: 2,
      encode(pass) {
        pass.setPipeline(pipe);
        pass.setBindGroup(0, bg);
        pass.dispatchWorkgroups(chunks, values.heads);
        pass.setPipeline(comb);
        pass.setBindGroup(0, bg2);
        pass.dispatchWorkgroups(Math.ceil(outLength / 64));
      },
      destroy() {
        params.destroy();
        params2.destroy();
        partial.destroy();
        if (own) out.destroy();
      },
    };
  }

  /**
   * One decode-attention step over codebook keys and values: scores, softmax (times `scale`), weighted values
   * (four dispatches; the scores row stays on the GPU).
   */
  async attention(args: CodebookAttentionArgs): Promise<KernelCall> {
    const { keys, values, qHeads } = args;
    if (keys.tokens !== values.tokens || keys.heads !== values.heads) {
      throw new XqShapeError(`codebook attention: keys hold ${keys.tokens} tokens × ${keys.heads} heads, values ${values.tokens} × ${values.heads}`);
    }
    const scores = await this.keyScores({ q: args.q, qHeads, keys });
    const soft = await this.pipeline(codebookSoftmaxSource(), 'xquant codebook softmax');
    const params = this.params(keys.tokens, keys.tokens, 0, args.scale ?? 1 / Math.sqrt(keys.headDim));
    const bg = this.bind(soft, [params, scores.out]);
    const mix = await this.valueMix({ p: scores.out, qHeads, values, ...(args.out ? { out: args.out } : {}) });
    return {
      out: mix.out,
      outLength: mix.outLength,
      packedBytes: keys.packedBytes + values.packedBytes,
      dispatches: 4,
      encode(pass) {
        scores.encode(pass);
        pass.setPipeline(soft);
        pass.setBindGroup(0, bg);
        pass.dispatchWorkgroups(qHeads);
        mix.encode(pass);
      },
      destroy() {
        scores.destroy();
        params.destroy();
        mix.destroy();
      },
    };
  }

  /** Free a block's buffers. */
  release(kv: GpuCodebookKv): void {
    kv.codes.destroy();
    kv.scales.destroy();
    kv.tables.destroy();
  }
}

/** Wrap a `GPUDevice` in the codebook kernels. */
export function createCodebookAttention(device: GPUDevice): CodebookAttentionGpu {
  return CodebookAttentionGpu.create(device);
}
