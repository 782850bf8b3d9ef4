/**
 * WGSL of the decode attention on matrix units (tensor cores), for layers whose keys and values are both packed codes
 * and whose query heads per KV head number at most 8. Chromium's experimental subgroup matrices
 * (`chromium_experimental_subgroup_matrix`) with f16 operands and f32 results, M = 16, N = 8, K = 16.
 *
 * Why: with GQA the float kernel decodes every code and multiplies it by each query head of the group on the CUDA cores;
 * on an H200 it runs at 6–10 % of the read ceiling, bound by that arithmetic (docs/gpu/README.md). Here the codes are
 * decoded once into f16 tiles in workgroup memory and the products run as matrix multiplications:
 * - scores of 16 tokens × the group's heads = codes (16 tokens × 16 channels) × Q′ (16 channels × 8 heads), where
 *   Q′ = q ⊙ key scale of the token's key group (f16; head columns past `rep` zero), plus q · key zero-point (f32);
 * - values: O (16 channels × 8 heads) += codes (16 channels × 16 tokens) × P′ (16 tokens × 8 heads), where
 *   P′ = softmax weight × the token's value scale ÷ the chunk's largest value scale (f16, |P′| ≤ 1), plus Σ weight ×
 *   zero-point (f32).
 * Codes are decoded two at a time: `(word & mask) | 0x64006400` read as `vec2<f16>` minus 1024 is the pair of codes at
 * bit p and 16 + p times 2^p (exact while code · 2^p < 1024; higher positions are shifted down by 6 first); the factor
 * is a token's (keys) or a channel's (values) and is divided out of the scores or outputs.
 *
 * One workgroup per chunk of {@link MATRIX_CHUNK} tokens and KV head, `headDim / 16` subgroups (at most 4); the chunk is walked in
 * sub-blocks of 16 tokens per subgroup (decode → barrier → one 16-token tile per subgroup → barrier). The residual
 * rings (float32) and the softmax run on ordinary threads. Writes the same partials as the float kernel, so the merge
 * pass is shared. With `stageMeta` (the cache's choice where it fits the device's workgroup memory) the chunk's key and
 * value scale/zero words are loaded into workgroup memory once, when the workgroup starts.
 *
 * `emulate`: the matrix products written as ordinary loops over the same workgroup-memory tiles (each lane computes
 * 128 / subgroup size of a tile's 16 × 8 results), so the decode, tiling, softmax and bookkeeping can be tested where
 * the adapter has no subgroup matrices (lavapipe); the only lines that differ are those of {@link mmaLines} and the
 * bounds of the per-thread loops (hidden from the compiler there, so lavapipe's LLVM does not unroll them).
 * @internal
 */
import type { GpuBits } from '../layout.js';
import { keyQuadIndex, metaAt, stepStruct, valueBlockTokens, valueMetaIndex } from './attention-wgsl.js';

/** Tokens per workgroup (chunk) of the matrix kernel. @internal */
export const MATRIX_CHUNK = 256;

/** WGSL feature name of subgroup matrices in Dawn. @internal */
export const SUBGROUP_MATRIX_FEATURE = 'chromium-experimental-subgroup-matrix';

/** Compile-time description of one matrix decode-attention kernel. @internal */
export interface MatrixDecodeSpec {
  headDim: number;
  /** Query heads per KV head (1 … 8). */
  rep: number;
  keys: { bits: GpuBits; groupSize: number };
  values: { bits: GpuBits; groupSize: number };
  /** The device's (fixed) subgroup size. */
  subgroupSize: number;
  /** Matrix products as ordinary loops (tests on adapters without subgroup matrices). */
  emulate?: boolean;
  /**
   * Stage the chunk's key and value scale/zero words in workgroup memory when the workgroup starts (NGC·D + C·NGV u32),
   * so the sub-blocks' Q′, q · zero-point and P′ and the softmax's value scales read them there instead of from global
   * memory inside their loops (two dependent global round trips per 64-token sub-block without it).
   */
  stageMeta?: boolean;
  /**
   * Load the chunk's key and value words into registers when the workgroup starts, before the first sub-block, instead
   * of each sub-block's words at that sub-block: one memory latency per workgroup instead of one per sub-block and
   * phase, and the value words' latency hidden behind the scores.
   */
  prefetch?: boolean;
}

/** Subgroups per workgroup: one 16-token tile each per sub-block, and a whole number of 16-channel tiles each. @internal */
export function matrixSubgroups(headDim: number): number {
  return Math.max(1, Math.min(4, headDim / 16));
}

/** Threads per workgroup of a spec. @internal */
export function matrixWorkgroup(spec: Pick<MatrixDecodeSpec, 'headDim' | 'subgroupSize'>): number {
  return matrixSubgroups(spec.headDim) * spec.subgroupSize;
}

/** Why a layer cannot run on the matrix kernel, or null. @internal */
export function matrixUnsupported(spec: Omit<MatrixDecodeSpec, 'subgroupSize'> & { subgroupSize?: number }): string | null {
  const D = spec.headDim;
  if (spec.rep < 1 || spec.rep > 8 || !Number.isInteger(spec.rep)) return `${spec.rep} query heads per KV head (the matrix kernel serves 1 to 8)`;
  if (D < 16 || D % 16 !== 0 || D > 256) return `head dim ${D} (the matrix kernel needs a multiple of 16 up to 256)`;
  const NSG = matrixSubgroups(D);
  const SB = 16 * NSG;
  const G = spec.keys.groupSize;
  if (G % 16 !== 0 || MATRIX_CHUNK % G !== 0 || (G < SB ? SB % G !== 0 : G % SB !== 0)) return `key group ${G} (the matrix kernel needs a divisor of ${MATRIX_CHUNK} that nests with ${SB}-token sub-blocks)`;
  if (32 / spec.keys.bits > SB) return `${spec.keys.bits}-bit keys with head dim ${D} (a key word of ${32 / spec.keys.bits} tokens is longer than a ${SB}-token sub-block)`;
  const GV = spec.values.groupSize;
  if (GV % 16 !== 0 || D % GV !== 0) return `value group ${GV} (the matrix kernel needs a multiple of 16 dividing the head dim)`;
  if (spec.subgroupSize !== undefined && (spec.subgroupSize < 4 || spec.subgroupSize > 128 || (spec.subgroupSize & (spec.subgroupSize - 1)) !== 0 || (!spec.emulate && spec.subgroupSize !== 32))) {
    return `subgroup size ${spec.subgroupSize} (the matrix kernel needs 32-wide subgroups${spec.emulate ? '' : ', the size of the 16 × 8 tiles it assumes'})`;
  }
  return null;
}

/** Bytes of workgroup memory the kernel declares. @internal */
export function matrixSharedBytes(spec: Pick<MatrixDecodeSpec, 'headDim' | 'keys' | 'values' | 'stageMeta'>): number {
  const D = spec.headDim;
  const NSG = matrixSubgroups(D);
  const SB = 16 * NSG;
  const NGS = spec.keys.groupSize < SB ? SB / spec.keys.groupSize : 1;
  const NGV = D / spec.values.groupSize;
  const NGC = MATRIX_CHUNK / Math.min(spec.keys.groupSize, MATRIX_CHUNK);
  // (the chunk's key and value scale/zero words, staged: NGC·D + C·NGV u32)
  const floats = 8 * D + MATRIX_CHUNK * 8 + D * 8 + NGC * 8 + NSG * (8 + NGV + 8 + 8 * NGV) + (spec.stageMeta ? NGC * D + MATRIX_CHUNK * NGV : 0);
  const halves = SB * D + NGS * D * 8 + NGV * SB * 8;
  return 4 * floats + 2 * halves;
}

/** A pair of codes decoded at once: the word shifted right by `shift`, masked at `pos` and `pos + 16`; `bit` = the lower code's first bit in the word. */
interface CodePair {
  shift: number;
  pos: number;
  bit: number;
}

/** The pairs that decode every code of a word of `bits`-bit codes (a code's factor is 2^pos). */
function codePairs(bits: GpuBits): CodePair[] {
  const out: CodePair[] = [];
  for (let p = 0; p + bits <= 16; p += bits) {
    const shift = p + bits > 10 ? 6 : 0;
    out.push({ shift, pos: p - shift, bit: p });
  }
  return out;
}

/** WGSL f32 expression 2^-pos of a code whose bit inside its 16-bit lane is `lanePos` (an expression), for `bits`-bit codes. */
function inverseFactor(bits: GpuBits, lanePos: string): string {
  // pos = lanePos, or lanePos − 6 where lanePos + bits > 10 (codePairs); 2^-pos built from its exponent bits
  return `bitcast<f32>((127u - select(${lanePos}, ${lanePos} - 6u, ${lanePos} + ${bits}u > 10u)) << 23u)`;
}

/** One decoded pair as `vec2<f16>` (codes · 2^pos) from the u32 expression `w`. */
function pairExpr(bits: GpuBits, w: string, pr: CodePair): string {
  const m = (1 << bits) - 1;
  const mask = ((m << pr.pos) | (m << (pr.pos + 16))) >>> 0;
  const src = pr.shift ? `(${w} >> ${pr.shift}u)` : w;
  return `(bitcast<vec2<f16>>((${src} & ${mask}u) | 0x64006400u) - vec2<f16>(1024.0))`;
}

/**
 * Lines accumulating `acc` += Σ_j left_j × right_j for j < `count` (left_j: 16 × 16 f16 row-major at `lBase + j·lStep`,
 * stride `lStride`, in `left`; right_j: 16 × 8 f16 row-major at `rBase + j·rStep` in `right`), or (`store`) writing `acc`
 * as 16 × 8 f32 row-major at `off` of `dst`.
 */
function mmaLines(
  s: MatrixDecodeSpec,
  op: { acc: string; left: string; lBase: string; lStep: number; lStride: number; right: string; rBase: string; rStep: number; count: number } | { store: string; acc: string; dst: string; off: string },
): string[] {
  const SG = s.subgroupSize;
  const EPL = 128 / SG; // result elements per lane (emulated)
  // (emulated: runtime loops whose bounds the compiler cannot see, so it does not unroll them: lavapipe compiles a kernel
  // when it first runs it, and the unrolled emulation took LLVM minutes; S.cap ≥ 256 always)
  const opaque = (n: number) => `min(${n}u, S.cap)`;
  if ('store' in op) {
    if (!s.emulate) return [`subgroupMatrixStore(&${op.dst}, ${op.off}, ${op.acc}, false, 8u);`];
    return [`for (var i = 0u; i < ${opaque(EPL)}; i = i + 1u) { ${op.dst}[${op.off} + sgi + i * ${SG}u] = ${op.acc}[i]; }`];
  }
  if (!s.emulate) {
    return Array.from(
      { length: op.count },
      (_, j) =>
        `${op.acc} = subgroupMatrixMultiplyAccumulate(subgroupMatrixLoad<ML>(&${op.left}, ${op.lBase} + ${j * op.lStep}u, false, ${op.lStride}u), subgroupMatrixLoad<MR>(&${op.right}, ${op.rBase} + ${j * op.rStep}u, false, 8u), ${op.acc});`,
    );
  }
  return [
    `for (var j = 0u; j < ${opaque(op.count)}; j = j + 1u) {`,
    `  let lo = ${op.lBase} + j * ${op.lStep}u;`,
    `  let ro = ${op.rBase} + j * ${op.rStep}u;`,
    `  for (var i = 0u; i < ${opaque(EPL)}; i = i + 1u) {`,
    `    let x = sgi + i * ${SG}u;`,
    '    var a = 0.0;',
    `    for (var k = 0u; k < ${opaque(16)}; k = k + 1u) { a = a + f32(${op.left}[lo + (x / 8u) * ${op.lStride}u + k]) * f32(${op.right}[ro + k * 8u + x % 8u]); }`,
    `    ${op.acc}[i] = ${op.acc}[i] + a;`,
    '  }',
    '}',
  ];
}

/** A zero accumulator declaration. */
function accDecl(s: MatrixDecodeSpec, name: string): string {
  return s.emulate ? `var ${name} = array<f32, ${128 / s.subgroupSize}>();` : `var ${name} = MA();`;
}

/** Main chunk kernel of a {@link MatrixDecodeSpec}. @internal */
export function matrixDecodeSource(s: MatrixDecodeSpec): string {
  const why = matrixUnsupported(s);
  if (why) throw new Error(`matrix decode attention: ${why}`);
  const D = s.headDim;
  const Q4 = D / 4;
  const rep = s.rep;
  const SG = s.subgroupSize;
  const NSG = matrixSubgroups(D);
  const WG = NSG * SG;
  const SB = 16 * NSG; // tokens per sub-block
  const C = MATRIX_CHUNK;
  const kb = s.keys.bits;
  const vb = s.values.bits;
  const G = s.keys.groupSize;
  const GV = s.values.groupSize;
  const NGV = D / GV; // value groups of a row
  const NGS = G < SB ? SB / G : 1; // key groups of a sub-block
  const NGC = C / Math.min(G, C); // key groups of a chunk
  const TPW = 32 / kb; // key tokens per word
  const NR = SB / TPW; // key words per channel and sub-block
  const B = valueBlockTokens(vb); // value tokens per block
  const NSL = D / 16; // 16-channel value slices
  const CT = NSL / NSG; // 16-channel output tiles per subgroup
  const P = Math.min(SG, WG / (NGS * 8)); // lanes per (key group, head) pair of the bias sums
  const L: string[] = [];
  const push = (...l: string[]) => L.push(...l);
  push('enable f16;', 'enable subgroups;');
  if (!s.emulate) push('enable chromium_experimental_subgroup_matrix;');
  push('requires subgroup_id;');
  if (!s.emulate) push('alias ML = subgroup_matrix_left<f16, 16, 16>;', 'alias MR = subgroup_matrix_right<f16, 8, 16>;', 'alias MA = subgroup_matrix_result<f32, 8, 16>;');
  push(stepStruct());
  push('@group(0) @binding(0) var<storage, read> qv: array<vec4<f32>>;');
  push('@group(0) @binding(1) var<storage, read> kc: array<vec4<u32>>;');
  push('@group(0) @binding(2) var<storage, read> km: array<vec4<u32>>;');
  push('@group(0) @binding(3) var<storage, read> vc: array<vec4<u32>>;');
  push('@group(0) @binding(4) var<storage, read> vm: array<vec4<u32>>;');
  push('@group(0) @binding(5) var<storage, read> rk: array<vec4<f32>>;');
  push('@group(0) @binding(6) var<storage, read> rv: array<vec4<f32>>;');
  push('@group(0) @binding(7) var<storage, read_write> parts: array<f32>;');
  push('@group(0) @binding(8) var<uniform> S: Step;');
  push(`var<workgroup> qs: array<vec4<f32>, ${8 * Q4}>;`); // 8 head rows, zero past rep
  push(`var<workgroup> tile: array<f16, ${SB * D}>;`); // keys [token][channel], values [channel][token]
  push(`var<workgroup> qk: array<f16, ${NGS * D * 8}>;`); // Q′ per key group of the sub-block: [group][channel][head]
  push(`var<workgroup> sc: array<f32, ${C * 8}>;`); // [token][head]: raw products, then scores, then weights
  push(`var<workgroup> pw: array<f16, ${NGV * SB * 8}>;`); // P′ per value group of the sub-block: [group][token][head]
  push(`var<workgroup> ot: array<f32, ${D * 8}>;`); // O [channel][head]
  push(`var<workgroup> kbias: array<f32, ${NGC * 8}>;`); // q · key zero-point per key group of the chunk and head
  const stage = s.stageMeta === true;
  if (stage) {
    push(`var<workgroup> kms: array<u32, ${NGC * D}>;`); // the chunk's key scale/zero words [group][channel]
    push(`var<workgroup> vms: array<u32, ${C * NGV}>;`); // the chunk's value scale/zero words [token][group]
  }
  /** Key scale/zero word of key group `g` (absolute) and channel `c`. */
  const keyMeta = (g: string, c: string) => (stage ? `kms[(${g} - c0 / ${G}u) * ${D}u + ${c}]` : `km[${keyQuadIndex(D, 'kv', 'kgr', g, `${c} / 4u`)}][${c} % 4u]`);
  /** Value scale/zero word of group `g` of the chunk's token `tl` (absolute token `t`). */
  const valueMeta = (tl: string, t: string, g: string) => (stage ? `vms[(${tl}) * ${NGV}u + ${g}]` : metaAt(valueMetaIndex(NGV, 'kv', `min(${t}, tvl)`, g)));
  push(`var<workgroup> rmax: array<f32, ${NSG * 8}>;`, `var<workgroup> rsm: array<f32, ${NSG * NGV}>;`, `var<workgroup> rsum: array<f32, ${NSG * 8}>;`, `var<workgroup> rz: array<f32, ${NSG * 8 * NGV}>;`);
  push(`@compute @workgroup_size(${WG})`);
  push('fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) sgid: u32, @builtin(subgroup_invocation_id) sgi: u32) {');
  push(`let lid = sgid * ${SG}u + sgi;`, 'let chunk = wid.x;', 'let kv = wid.y;', `let h0 = kv * ${rep}u;`, `let c0 = chunk * ${C}u;`);
  push(`let kr = S.cap / ${TPW}u;`, `let kgr = S.cap / ${G}u;`);
  // a thread's items of a sub-block: key words (word row, channel), value words (slice, block, component)
  const NK = NR * D;
  const NB = SB / B;
  const NV = NSL * NB * 4;
  const IK = Math.ceil(NK / WG);
  const IV = Math.ceil(NV / WG);
  const NSB = C / SB;
  const keyWord = `kc[${keyQuadIndex(D, 'kv', 'kr', `tb / ${TPW}u + e / ${D}u`, `(e % ${D}u) / 4u`)}][e % 4u]`;
  const valueWord = `vc[(kv * (S.cap / ${B}u) + tb / ${B}u + (e / 4u) % ${NB}u) * ${NSL}u + e / ${NB * 4}u][e % 4u]`;
  if (s.prefetch) {
    // every word of the chunk this thread decodes later, loaded now (their latency overlaps the queries' loads and, for
    // the values, the whole score phase)
    push(`var kw: array<u32, ${NSB * IK}>;`, `var vw: array<u32, ${NSB * IV}>;`);
    push(`for (var sb = 0u; sb < ${NSB}u; sb = sb + 1u) {`, `let tb = c0 + sb * ${SB}u;`);
    push(`for (var i = 0u; i < ${IK}u; i = i + 1u) { let e = lid + i * ${WG}u; if (tb < S.tk && e < ${NK}u) { kw[sb * ${IK}u + i] = ${keyWord}; } }`);
    push(`for (var i = 0u; i < ${IV}u; i = i + 1u) { let e = lid + i * ${WG}u; if (tb < S.tv && e < ${NV}u) { vw[sb * ${IV}u + i] = ${valueWord}; } }`);
    push('}');
  }
  // the chunk's scale/zero words into workgroup memory once (the sub-blocks' Q′, q · zero, P′ and the softmax's value
  // scales read them there instead of from global memory inside their loops; 0 past the buffers)
  push('let tvl = select(0u, S.tv - 1u, S.tv > 0u);');
  if (stage) {
    push(`for (var e = lid; e < ${NGC * D}u; e = e + ${WG}u) {`, `  let g = c0 / ${G}u + e / ${D}u;`, `  let c = e % ${D}u;`);
    push(`  kms[e] = select(0u, km[${keyQuadIndex(D, 'kv', 'kgr', 'min(g, kgr - 1u)', 'c / 4u')}][c % 4u], g < kgr);`, '}');
    push(`for (var e = lid; e < ${C * NGV}u; e = e + ${WG}u) {`, `  let t = c0 + e / ${NGV}u;`);
    push(`  vms[e] = ${metaAt(valueMetaIndex(NGV, 'kv', 'min(t, tvl)', `e % ${NGV}u`))};`, '}');
  }
  push(`for (var e = lid; e < ${8 * Q4}u; e = e + ${WG}u) {`, `  let h = e / ${Q4}u;`, `  qs[e] = select(vec4<f32>(0.0), qv[(h0 + min(h, ${rep - 1}u)) * ${Q4}u + e % ${Q4}u], h < ${rep}u);`, '}');
  push('workgroupBarrier();');
  // ---- scores, one sub-block at a time ----
  push(`for (var sb = 0u; sb < ${C / SB}u; sb = sb + 1u) {`, `let tb = c0 + sb * ${SB}u;`);
  push('if (tb < S.tk) {');
  // key codes → tile[token][channel]: item = (word row r, channel quad, component), component fastest, so a subgroup's
  // stores of one pair fall on consecutive channels of one token
  push(`for (var i = 0u; i < ${IK}u; i = i + 1u) {`, `let e = lid + i * ${WG}u;`, `if (e < ${NK}u) {`);
  push(`  let r = e / ${D}u;`, `  let c = e % ${D}u;`);
  push(`  let w = ${s.prefetch ? `kw[sb * ${IK}u + i]` : keyWord};`);
  for (const pr of codePairs(kb)) {
    push(`  { let h2 = ${pairExpr(kb, 'w', pr)};`, `    tile[(r * ${TPW}u + ${pr.bit / kb}u) * ${D}u + c] = h2.x;`, `    tile[(r * ${TPW}u + ${(pr.bit + 16) / kb}u) * ${D}u + c] = h2.y; }`);
  }
  push('}', '}');
  // Q′ of the sub-block's key groups: [group][channel][head]
  push(`for (var e = lid; e < ${NGS * D * 8}u; e = e + ${WG}u) {`);
  push(`  let g = tb / ${G}u + e / ${D * 8}u;`, `  let c = (e / 8u) % ${D}u;`, '  let h = e % 8u;');
  push(`  let sz = unpack2x16float(${keyMeta('g', 'c')});`);
  push(`  qk[e] = f16(qs[h * ${Q4}u + c / 4u][c % 4u] * sz.x);`, '}');
  // q · zero-point of each (key group, head) of the sub-block: P lanes each, then a shuffle sum (every thread takes part)
  push('{', `let pr = min(lid / ${P}u, ${NGS * 8 - 1}u);`, `let part = lid % ${P}u;`, 'let h = pr % 8u;', `let g = tb / ${G}u + pr / 8u;`, 'var bz = 0.0;');
  push(`for (var i = 0u; i < ${D / P}u; i = i + 1u) {`, `  let c = part * ${D / P}u + i;`, `  bz = bz + qs[h * ${Q4}u + c / 4u][c % 4u] * unpack2x16float(${keyMeta('g', 'c')}).y;`, '}');
  for (let st = 1; st < P; st *= 2) push(`bz = bz + subgroupShuffleXor(bz, ${st}u);`);
  push(`if (part == 0u && lid / ${P}u < ${NGS * 8}u) { kbias[(g - c0 / ${G}u) * 8u + h] = bz; }`, '}');
  push('}', 'workgroupBarrier();');
  // one 16-token tile per subgroup: raw products Σ codes·2^pos · Q′ into sc[token][head]
  push('if (tb < S.tk) {', `let tt = sgid * 16u;`, `let gl = ${NGS > 1 ? `tt / ${G}u` : '0u'};`, accDecl(s, 'acc'));
  push(...mmaLines(s, { acc: 'acc', left: 'tile', lBase: `tt * ${D}u`, lStep: 16, lStride: D, right: 'qk', rBase: `gl * ${D * 8}u`, rStep: 128, count: D / 16 }));
  push(...mmaLines(s, { store: 'sc', acc: 'acc', dst: 'sc', off: `(sb * ${SB}u + tt) * 8u` }));
  push('}', 'workgroupBarrier();', '}');
  // ---- scores of this thread's tokens (packed, ring or none), maxima, value-scale maxima ----
  const TPT = C / WG; // tokens per thread
  for (let h = 0; h < rep; h++) push(`var lm${h} = -3.0e38;`);
  for (let g = 0; g < NGV; g++) push(`var sm${g} = 0.0;`);
  // (runtime loops over a thread's tokens and outputs: few iterations on a GPU; unrolled, the emulation's many took
  // LLVM minutes to compile)
  const bound = (n: number) => (s.emulate ? `min(${n}u, S.cap)` : `${n}u`);
  {
    push(`for (var k = 0u; k < ${bound(TPT)}; k = k + 1u) {`, `let tl = lid + k * ${WG}u;`, 'let t = c0 + tl;');
    push(`let kf = ${inverseFactor(kb, `((tl % ${TPW}u) * ${kb}u) % 16u`)};`);
    push('if (t < S.tk) {');
    for (let h = 0; h < rep; h++) push(`{ let v = (sc[tl * 8u + ${h}u] * kf + kbias[(tl / ${Math.min(G, C)}u) * 8u + ${h}u]) * S.scale; sc[tl * 8u + ${h}u] = v; lm${h} = max(lm${h}, v); }`);
    push('} else if (t < S.n) {', `let rb = (kv * S.kring + t % S.kring) * ${Q4}u;`);
    for (let h = 0; h < rep; h++) push(`var r${h} = 0.0;`);
    push(`for (var qd = 0u; qd < ${Q4}u; qd = qd + 1u) {`, 'let x = rk[rb + qd];');
    for (let h = 0; h < rep; h++) push(`r${h} = r${h} + dot(qs[${h * Q4}u + qd], x);`);
    push('}');
    for (let h = 0; h < rep; h++) push(`{ let v = r${h} * S.scale; sc[tl * 8u + ${h}u] = v; lm${h} = max(lm${h}, v); }`);
    push('} else {');
    for (let h = 0; h < rep; h++) push(`sc[tl * 8u + ${h}u] = -3.0e38;`);
    push('}');
    for (let g = 0; g < NGV; g++) push(`sm${g} = max(sm${g}, select(0.0, abs(unpack2x16float(${valueMeta('tl', 't', `${g}u`)}).x), t < S.tv));`);
    push('}');
  }
  for (let h = 0; h < rep; h++) push(`let xm${h} = subgroupMax(lm${h});`);
  for (let g = 0; g < NGV; g++) push(`let xs${g} = subgroupMax(sm${g});`);
  push('if (sgi == 0u) {', ...Array.from({ length: rep }, (_, h) => `rmax[sgid * 8u + ${h}u] = xm${h};`), ...Array.from({ length: NGV }, (_, g) => `rsm[sgid * ${NGV}u + ${g}u] = xs${g};`), '}');
  push('workgroupBarrier();');
  const fold = (terms: string[], op: (a: string, b: string) => string) => terms.reduce((a, b) => op(a, b));
  for (let h = 0; h < rep; h++) push(`let mx${h} = ${fold(Array.from({ length: NSG }, (_, q) => `rmax[${q * 8 + h}u]`), (a, b) => `max(${a}, ${b})`)};`);
  /** The chunk's largest value scale of group `g` (an expression). */
  const smOf = (g: string) => fold(Array.from({ length: NSG }, (_, q) => `rsm[${q * NGV}u + ${g}]`), (a, b) => `max(${a}, ${b})`);
  // ---- weights, their sums, and the zero-point sums Σ weight · zero per head and value group ----
  for (let h = 0; h < rep; h++) {
    push(`var ls${h} = 0.0;`);
    for (let g = 0; g < NGV; g++) push(`var lz${h}_${g} = 0.0;`);
  }
  {
    push(`for (var k = 0u; k < ${bound(TPT)}; k = k + 1u) {`, `let tl = lid + k * ${WG}u;`, 'let t = c0 + tl;');
    for (let g = 0; g < NGV; g++) push(`let z${g} = select(0.0, unpack2x16float(${valueMeta('tl', 't', `${g}u`)}).y, t < S.tv);`);
    for (let h = 0; h < rep; h++) {
      push(`{ let p = exp(sc[tl * 8u + ${h}u] - mx${h}); sc[tl * 8u + ${h}u] = p; ls${h} = ls${h} + p;`);
      for (let g = 0; g < NGV; g++) push(`lz${h}_${g} = fma(p, z${g}, lz${h}_${g});`);
      push('}');
    }
    push('}');
  }
  for (let h = 0; h < rep; h++) {
    push(`let ys${h} = subgroupAdd(ls${h});`);
    for (let g = 0; g < NGV; g++) push(`let yz${h}_${g} = subgroupAdd(lz${h}_${g});`);
  }
  push('if (sgi == 0u) {');
  for (let h = 0; h < rep; h++) {
    push(`rsum[sgid * 8u + ${h}u] = ys${h};`);
    for (let g = 0; g < NGV; g++) push(`rz[(sgid * 8u + ${h}u) * ${NGV}u + ${g}u] = yz${h}_${g};`);
  }
  push('}', 'workgroupBarrier();');
  // ---- values, one sub-block at a time: O[channel][head] += codes[channel][token] · P′[token][head] ----
  for (let t = 0; t < CT; t++) push(accDecl(s, `oa${t}`));
  push(`for (var sb = 0u; sb < ${C / SB}u; sb = sb + 1u) {`, `let tb = c0 + sb * ${SB}u;`, 'if (tb < S.tv) {');
  // value codes → tile[channel][token]: item = (slice, block, component), component fastest then block, so a
  // subgroup's stores of one pair fall on distinct tokens
  push(`for (var i = 0u; i < ${IV}u; i = i + 1u) {`, `let e = lid + i * ${WG}u;`, `if (e < ${NV}u) {`);
  push(`  let sl = e / ${NB * 4}u;`, `  let blk = (e / 4u) % ${NB}u;`, '  let comp = e % 4u;');
  push(`  let w = ${s.prefetch ? `vw[sb * ${IV}u + i]` : valueWord};`);
  for (const pr of codePairs(vb)) {
    push(`  { let h2 = ${pairExpr(vb, 'w', pr)};`);
    for (const [lane, comp] of [[0, 'x'], [1, 'y']] as const) {
      // the code's bit in the slice's 128 bits: token = bit / (16·bits), channel = (bit mod 16·bits) / bits
      push(`    { let bit = comp * 32u + ${lane * 16 + pr.bit}u; tile[(sl * 16u + (bit % ${16 * vb}u) / ${vb}u) * ${SB}u + blk * ${B}u + bit / ${16 * vb}u] = h2.${comp}; }`);
    }
    push('  }');
  }
  push('}', '}');
  // P′[group][token][head] = weight · scale / (the chunk's largest scale of the group); 0 past tv and past rep
  push(`for (var e = lid; e < ${NGV * SB * 8}u; e = e + ${WG}u) {`);
  push(`  let g = e / ${SB * 8}u;`, `  let tl = (e / 8u) % ${SB}u;`, '  let h = e % 8u;', '  let t = tb + tl;');
  push(`  let sm = ${smOf('g')};`);
  push(`  let sz = unpack2x16float(${valueMeta(`sb * ${SB}u + tl`, 't', 'g')}).x;`);
  push(`  pw[e] = f16(select(0.0, sc[(sb * ${SB}u + tl) * 8u + h] * sz / sm, t < S.tv && h < ${rep}u && sm > 0.0));`, '}');
  push('}', 'workgroupBarrier();');
  push('if (tb < S.tv) {');
  for (let t = 0; t < CT; t++) {
    push('{', `let ct = sgid * ${CT}u + ${t}u;`, `let g = (ct * 16u) / ${GV}u;`);
    push(...mmaLines(s, { acc: `oa${t}`, left: 'tile', lBase: `ct * ${16 * SB}u`, lStep: 16, lStride: SB, right: 'pw', rBase: `g * ${SB * 8}u`, rStep: 128, count: SB / 16 }));
    push('}');
  }
  push('}', 'workgroupBarrier();', '}');
  // ---- outputs [head][channel]: O · 2^-pos · the group's largest scale + zero-point sums + the ring's rows (positions
  // tv … n − 1 of the chunk) ----
  for (let t = 0; t < CT; t++) push(...mmaLines(s, { store: 'ot', acc: `oa${t}`, dst: 'ot', off: `(sgid * ${CT}u + ${t}u) * 128u` }));
  push('workgroupBarrier();');
  push(`for (var k = 0u; k < ${bound((8 * D) / WG)}; k = k + 1u) {`, `let e = lid + k * ${WG}u;`, `let h = e / ${D}u;`, `let c = e % ${D}u;`, `if (h < ${rep}u) {`, `let g = c / ${GV}u;`);
  push('var ra = 0.0;', `for (var t = max(c0, S.tv); t < min(c0 + ${C}u, S.n); t = t + 1u) {`, `  ra = fma(sc[(t - c0) * 8u + h], rv[(kv * S.vring + t % S.vring) * ${Q4}u + c / 4u][c % 4u], ra);`, '}');
  push(`let vf = ${inverseFactor(vb, `((c % 16u) * ${vb}u) % 16u`)};`);
  push(`let zs = ${fold(Array.from({ length: NSG }, (_, q) => `rz[(${q * 8}u + h) * ${NGV}u + g]`), (a, b) => `${a} + ${b}`)};`);
  push(`parts[((h0 + h) * S.nc + chunk) * ${D + 2}u + c] = ot[c * 8u + h] * vf * ${smOf('g')} + zs + ra;`, '}', '}');
  push(`if (lid < ${rep}u) {`, `let pb = ((h0 + lid) * S.nc + chunk) * ${D + 2}u;`);
  push(`var m = mx0;`, ...Array.from({ length: rep - 1 }, (_, h) => `if (lid == ${h + 1}u) { m = mx${h + 1}; }`));
  push(`parts[pb + ${D}u] = m;`, `parts[pb + ${D + 1}u] = ${fold(Array.from({ length: NSG }, (_, q) => `rsum[${q * 8}u + lid]`), (a, b) => `${a} + ${b}`)};`, '}');
  push('}');
  return L.join('\n');
}
