/**
 * WGSL of the device-resident decode attention: one query position, GQA, split-K (flash-decoding) chunks of
 * `16 · workgroup` tokens per workgroup, then a merge pass. One workgroup serves every query head of its KV head
 * (or `headsPerGroup` of them), so each packed word is loaded and unpacked once for all of them.
 *
 * Storage read here (all written by the device cache, see `device/cache.ts`):
 * - packed keys `kc`: u32 words `[kvHeads][headDim/4][capacity·bits/32][4]` (one word = 32/bits tokens of one channel;
 *   four channels are one `vec4<u32>`, and a channel quad's token words follow one another: {@link keyWordIndex}), key
 *   meta `km`: `[kvHeads][headDim/4][capacity/groupSize][4]` u32 = f16 scale | f16 zero << 16;
 * - packed values `vc`: blocks of 8/bits tokens, each 16-channel slice of a block one `vec4<u32>` ({@link valueCodeAt}),
 *   value meta `vm`: blocks of 8 tokens, group-major ({@link valueMetaIndex});
 * - dense (fp16) keys: `[kvHeads][headDim/8][capacity]` vec4s ({@link denseKeyIndex}); dense values: `[kvHeads][capacity][headDim/2]` u32 pairs;
 * - full-precision residual rings `rk`/`rv`: float32 `[kvHeads][ring][headDim]`, token t at slot `t mod ring`.
 *
 * Decoding: 16 codes of one channel (keys) or one token (values) come out of one half-word (1 bit), word (2 bits)
 * or word pair (4 bits) as `code·2^pos` with one AND/OR and one subtraction:
 * `bitcast<f32>((half & (m << pos)) | 0x4B000000) − 2^23`; the constant factor `2^pos` of each accumulator is removed once.
 * @internal
 */
import type { GpuBits } from '../layout.js';

/** Where the keys or values of a layer live. @internal */
export type DeviceOperand = { kind: 'packed'; bits: GpuBits; groupSize: number } | { kind: 'dense' };

/** Compile-time description of one decode-attention kernel. @internal */
export interface DecodeSpec {
  headDim: number;
  /** Query heads per KV head. */
  rep: number;
  /** Query heads one workgroup serves (≤ rep); the grid's z dimension covers the rest. */
  headsPerGroup: number;
  keys: DeviceOperand;
  values: DeviceOperand;
  /** Keys at positions ≥ tk and values at positions ≥ tv are read from float32 rings (quantized layers). */
  residual: boolean;
  /** Threads per workgroup (power of two, 32…256); a chunk is `slot · workgroup` tokens. */
  workgroup: number;
  /** Consecutive tokens whose scores one thread computes over every channel: 4, 8 or 16 (default 16). */
  slot?: number;
  /** Key channel quads whose loads are issued together. */
  unroll: number;
  /** Value tokens whose loads are issued together (default 4). */
  valueUnroll?: number;
  /**
   * Benchmarks only (wrong results): leave out the packed key reduction or the packed value loop to time the rest;
   * `'arith'`: the float packed loops load every word as usual but only XOR them together (their loads without their
   * arithmetic); `'nomerge'`: as `'all'`, and the merge dispatch left out; `'empty'`: a main kernel that returns at once
   * (`'empty-nomerge'`: without the merge dispatch) — the launch and merge costs alone; `'nolanes'`: as `'all'`, and the
   * value lane reduction left out.
   */
  debugSkip?: 'keys' | 'values' | 'both' | 'all' | 'arith' | 'nomerge' | 'empty' | 'empty-nomerge' | 'nolanes';
  /**
   * Float value loops (packed or fp16): issue the first batch of value loads before the softmax's reductions, and
   * each next batch before the current one is mixed (register double-buffering), so their latency overlaps the
   * barriers and the arithmetic.
   */
  prefetch?: boolean;
  /** Channels of a packed value row one thread reads: 8 or 16 (default 16); 8 halves the accumulators. */
  valueSlot?: number;
  /**
   * Packed key scores: `'f32'` (default; channel layout, exact float arithmetic) or `'int8'` (quad layout: the query
   * times each block's key scales rounded to int8 per block and head, scores by `dot4I8Packed`; needs the WGSL
   * language feature packed_4x8_integer_dot_product and `slot · bits ≥ 8`).
   */
  keyDot?: 'f32' | 'int8';
  /**
   * Packed value mix: `'f32'` (default; token-block layout, exact float arithmetic) or `'int8'` (quad layout: one word =
   * one byte of 4 consecutive tokens' rows; per `slot` tokens, value group and head the softmax weight times the
   * token's scale is rounded to int8 with one step, by the thread that computed those exponentials; the codes mixed by
   * `dot4I8Packed`); `'f16'` (token-block layout, needs the WGSL extension f16): each thread accumulates its tokens in
   * `vec2<f16>` pairs of channels (two codes decoded per AND/OR and one half-precision subtraction, two products per
   * half-precision FMA), the weights scaled by K / the chunk's largest |value scale| (K: the largest power of two for
   * which a thread's sum stays under 32768) so that no partial sum can overflow, then carried on in float32
   * (zero-points, residual ring, lane reduction).
   */
  valueDot?: 'f32' | 'int8' | 'f16';
  /**
   * Subgroup size the kernel may assume (every subgroup full, this size: the adapter's minimum and maximum agree), or
   * unset for workgroup-memory reductions only. Set, and where it divides the workgroup, the softmax maxima and sums
   * reduce inside each subgroup first (`subgroupMax` / `subgroupAdd`, one barrier per reduction instead of two, and
   * no barrier between them), and the value lanes reduce by a subgroup reduce-scatter of shuffles before one
   * workgroup-memory sum over subgroups. Not with `valueDot: 'int8'`.
   */
  subgroupSize?: number;
}

/** Fields of the step uniform shared by every device-cache kernel (u32 unless noted). @internal */
export const STEP_FIELDS = [
  'n', // tokens attended (after the append of this position)
  'tk', // positions < tk: packed keys
  'tv', // positions < tv: packed values
  'nc', // chunks
  'pos', // position being appended
  'kflush', // first position of the key block to quantize this step (NONE: none)
  'vquant', // position of the value to quantize this step (NONE: none)
  'kring', // slots of the residual key ring
  'vring', // slots of the residual value ring
  'cap', // token capacity
  'seed', // synthetic fill seed
  'fill', // synthetic fill: positions to fill
  'scale', // f32 softmax scale
  'row', // row of the q/k/v and attention-output buffers this position uses (0 when decoding; its slot in a prefill batch)
  'rows', // positions of the batch begun (1 when decoding)
  'rchunk', // keys per chunk of the batch's causal attention (rows-attention-wgsl.ts)
  'rnc', // chunks of the batch's causal attention
] as const;
/** Value of `kflush` / `vquant` when nothing is due. @internal */
export const NONE = 0xffffffff;

/** The WGSL struct of {@link STEP_FIELDS}. @internal */
export function stepStruct(): string {
  const f = STEP_FIELDS.map((k) => `${k}: ${k === 'scale' ? 'f32' : 'u32'}`);
  while (f.length % 4) f.push(`pad${f.length}: u32`);
  return `struct Step { ${f.join(', ')} };`;
}

/**
 * WGSL u32 index of word `col` (0 … headDim − 1) of row `row` of KV head `kv` in a packed key buffer of `rows` rows per
 * head (a row: one token word of the codes, or one key group of the scale/zero words). Channel-quad-major: the rows of
 * one channel quad are consecutive vec4s, so the threads of a workgroup, which walk consecutive rows of the same quad
 * together, read consecutive addresses (a row-major layout made each thread's vec4 a separate cache line). @internal
 */
export function keyWordIndex(headDim: number, kv: string, rows: string, row: string, col: string): string {
  return `(${keyQuadIndex(headDim, kv, rows, row, `(${col}) / 4u`)}) * 4u + (${col}) % 4u`;
}

/** vec4 index of channel quad `quad` of row `row` in the layout of {@link keyWordIndex}. @internal */
export function keyQuadIndex(headDim: number, kv: string, rows: string, row: string, quad: string): string {
  return `(${kv} * ${headDim / 4}u + ${quad}) * ${rows} + ${row}`;
}

/**
 * WGSL u32 index of the fp16 pair `p` (channels 2p, 2p + 1) of token `t` in a dense (fp16) key buffer: channel-octet-
 * major (`[kvHeads][headDim/8][capacity]` vec4s), so the threads of a workgroup, one token each, read consecutive vec4s
 * of the same channel octet together. @internal
 */
export function denseKeyIndex(headDim: number, kv: string, t: string, p: string): string {
  return `(${denseKeyOctetIndex(headDim, kv, t, `(${p}) / 4u`)}) * 4u + (${p}) % 4u`;
}

/** vec4 index of channel octet `octet` of token `t` in the layout of {@link denseKeyIndex}. @internal */
export function denseKeyOctetIndex(headDim: number, kv: string, t: string, octet: string): string {
  return `(${kv} * ${headDim / 8}u + ${octet}) * S.cap + ${t}`;
}

/** Tokens of a value block: one 16-channel slice of a block is 128 bits (one `vec4<u32>`). @internal */
export function valueBlockTokens(bits: GpuBits): number {
  return 8 / bits;
}

/**
 * Where channel `c` of token `t` (KV head `kv`) lies in a packed value buffer (block layout, `bits` per code): u32 index
 * and bit shift, as WGSL expressions. Tokens come in blocks of {@link valueBlockTokens}; a block is `headDim/16` slices
 * of 16 channels, each one `vec4<u32>` holding its tokens' codes one after the other (token j at bit `j·16·bits`), so a
 * thread that mixes 16 channels reads a whole block of tokens with one 128-bit load. @internal
 */
export function valueCodeAt(headDim: number, bits: GpuBits, kv: string, t: string, c: string): { index: string; shift: string } {
  const B = valueBlockTokens(bits);
  const bit = `((${t}) % ${B}u) * ${16 * bits}u + ((${c}) % 16u) * ${bits}u`;
  return { index: `((${kv} * (S.cap / ${B}u) + (${t}) / ${B}u) * ${headDim / 16}u + (${c}) / 16u) * 4u + (${bit}) / 32u`, shift: `(${bit}) % 32u` };
}

/**
 * u32 index of quad word `m` of the 4-token block holding token `t` (KV head `kv`) in the int8 value mix's quad layout:
 * quad word m holds byte m of the rows of the block's 4 tokens, token t's byte at bit `(t % 4) · 8`; a row is
 * `headDim · bits / 8` bytes, so a block is that many words. @internal
 */
export function valueQuadIndex(headDim: number, bits: GpuBits, kv: string, t: string, m: string): string {
  return `(${kv} * (S.cap / 4u) + (${t}) / 4u) * ${(headDim * bits) / 8}u + ${m}`;
}

/** Tokens of a value metadata block. @internal */
export const VALUE_META_BLOCK = 8;

/**
 * u32 index of the scale/zero word of value group `g` of token `t` (KV head `kv`, `groups` groups per row): blocks of
 * {@link VALUE_META_BLOCK} tokens, group-major inside a block, so the metadata of a thread's block of tokens is
 * consecutive words. @internal
 */
export function valueMetaIndex(groups: number, kv: string, t: string, g: string): string {
  const B = VALUE_META_BLOCK;
  return `((${kv} * (S.cap / ${B}u) + (${t}) / ${B}u) * ${groups}u + ${g}) * ${B}u + (${t}) % ${B}u`;
}

/** WGSL read of scale/zero word `index` from the value metadata `vm` (declared as vec4s). @internal */
export function metaAt(index: string): string {
  return `vm[(${index}) / 4u][(${index}) % 4u]`;
}

/** Bytes of the step uniform. @internal */
export const STEP_BYTES = Math.ceil(STEP_FIELDS.length / 4) * 16;

/** Tokens per chunk of a spec. @internal */
export function chunkTokens(spec: Pick<DecodeSpec, 'workgroup' | 'slot'>): number {
  return (spec.slot ?? 16) * spec.workgroup;
}

/** Bytes of workgroup memory a decode kernel declares. @internal */
export function decodeSharedBytes(
  spec: Pick<DecodeSpec, 'workgroup' | 'slot' | 'headsPerGroup' | 'headDim' | 'keyDot' | 'valueDot'> & { valueGroup?: number },
): number {
  const hg = spec.headsPerGroup;
  // int8 values: int8 weights (one word per 4 tokens) and their step per slot, group and head; the zero-point
  // partials (one reduction row per group and head) and their sums
  const groups = spec.headDim / (spec.valueGroup ?? spec.headDim);
  const C = chunkTokens(spec);
  const weights = spec.valueDot === 'int8' ? hg * groups * (C / 4 + C / (spec.slot ?? 16) + 1) : 0;
  return 4 * (hg * spec.headDim + scratchFloats(spec) + reductionRows(spec, groups) * spec.workgroup + weights);
}

/** Rows of `workgroup` floats in the reduction array `red`: one per head, and with int8 values one per head and value group. */
function reductionRows(spec: Pick<DecodeSpec, 'headsPerGroup' | 'valueDot'>, valueGroups: number): number {
  // f16 values: one more row for the chunk's largest value scale (reduced with the score maxima)
  return spec.headsPerGroup * (spec.valueDot === 'int8' ? 1 + valueGroups : 1) + (spec.valueDot === 'f16' ? 1 : 0);
}

/**
 * Floats of the score / reduction scratch `sc`: the chunk's scores of every head, or the token lanes of one head's
 * value accumulators (`workgroup · channels` floats; the lane reduction runs in rounds of {@link reduceHeads} heads),
 * plus one padding float per 32 (see `px`). `channels`: value channels per thread (at most 16).
 */
function scratchFloats(spec: Pick<DecodeSpec, 'workgroup' | 'slot' | 'headsPerGroup'>, channels = 16): number {
  const n = scratchUnpadded(spec, channels);
  return n + Math.ceil(n / 32);
}

/** Floats of the scratch before padding: every head's chunk scores, or one head's value lanes. */
function scratchUnpadded(spec: Pick<DecodeSpec, 'workgroup' | 'slot' | 'headsPerGroup'>, channels: number): number {
  return Math.max(spec.headsPerGroup * chunkTokens(spec), spec.workgroup * channels);
}

/** Value channels one thread accumulates in the main kernel of a spec. */
function scChannels(s: DecodeSpec): number {
  if (s.values.kind !== 'packed') return 8;
  if (s.valueDot !== 'int8') return s.valueSlot ?? 16;
  const RB = (s.headDim * s.values.bits) / 8;
  return (8 / s.values.bits) * Math.max(1, RB / s.workgroup);
}

/** Heads whose value lanes the scratch holds at once. */
function reduceHeads(spec: Pick<DecodeSpec, 'workgroup' | 'slot' | 'headsPerGroup'>, channels: number): number {
  return Math.max(1, Math.min(spec.headsPerGroup, Math.floor(scratchUnpadded(spec, channels) / (spec.workgroup * channels))));
}

/** The largest count from 1 to `want` that divides `n`: an unrolled step never runs past the end of its loop. */
function divisorAtMost(n: number, want: number): number {
  let u = Math.max(1, Math.min(want, n));
  while (n % u !== 0) u--;
  return u;
}

const f = (x: number): string => {
  const s = String(x);
  return s.includes('.') || s.includes('e') ? s : `${s}.0`;
};

/**
 * WGSL packing `round(x · k)` (vec4 x, |x · k| ≤ 127) as four int8 bytes without float-to-int conversions: adding
 * 1.5·2^23 in one fused multiply-add rounds to the nearest integer (ties to even, as `round`), whose two's-complement
 * low byte is then the low byte of the float's bits, the byte `pack4xI8` keeps. (`vec4<i32>(round(…))` costs a
 * rounding and a saturating conversion per component, both slow-rate instructions on NVIDIA GPUs.)
 */
function packRounded(x: string, k: string): string {
  return `pack4xI8(bitcast<vec4<i32>>(fma(${x}, vec4<f32>(${k}), vec4<f32>(12582912.0))))`;
}

/** Bit positions (within its 16-bit half) of each of the first `n` codes of a run. */
function positions(bits: GpuBits, n = 16): number[] {
  return Array.from({ length: n }, (_, j) => (j * bits) % 16);
}

/**
 * Lines decoding the first `n` codes of a run held in `halves` (u32 expressions whose low 16 bits hold 16/bits codes
 * each, code j in half ⌊j·bits/16⌋) into f32 values `${tag}_j` = code_j · 2^pos_j.
 */
function decodeN(bits: GpuBits, halves: string[], tag: string, n = 16): string[] {
  const m = (1 << bits) - 1;
  const out: string[] = [];
  for (let j = 0; j < n; j++) {
    const half = halves[Math.floor((j * bits) / 16)]!;
    const p = (j * bits) % 16;
    out.push(`let ${tag}_${j} = bitcast<f32>((${half} & ${(m << p) >>> 0}u) | 0x4B000000u) - 8388608.0;`);
  }
  return out;
}


/**
 * Pairs of a thread's packed value codes for half-precision arithmetic. The thread's `vbits` bits (code j at bit j·bits;
 * `xs`: one word shifted so they start at bit 0, or the thread's one or two whole words) are regrouped into u32 words
 * `z` whose two 16-bit lanes each hold a run of 8 (or 4) bits; then `(z & mask) | 0x64006400` read as `vec2<f16>`
 * minus 1024 is (code·2^p, code'·2^p) for the codes at lane position p, exact since code·2^p < 256 < 1024.
 * Returns the lines defining the z words (`${tag}z{k}`) and, per pair, its z word, position and the two channels.
 */
function f16Pairs(bits: GpuBits, vbits: number, xs: string[], tag: string): { lines: string[]; pairs: { z: string; p: number; lo: number; hi: number }[] } {
  const lines: string[] = [];
  const zs: { name: string; lo: number; hi: number; width: number }[] = [];
  const add = (expr: string, lo: number, hi: number, width: number) => {
    const name = `${tag}z${zs.length}`;
    lines.push(`let ${name} = ${expr};`);
    zs.push({ name, lo, hi, width });
  };
  if (vbits === 8) add(`(${xs[0]} & 0xFu) | ((${xs[0]} & 0xF0u) << 12u)`, 0, 4, 4);
  else if (vbits === 16) add(`(${xs[0]} & 0xFFu) | ((${xs[0]} & 0xFF00u) << 8u)`, 0, 8, 8);
  else {
    xs.forEach((x, k) => {
      add(`${x} & 0x00FF00FFu`, 32 * k, 32 * k + 16, 8);
      add(`(${x} >> 8u) & 0x00FF00FFu`, 32 * k + 8, 32 * k + 24, 8);
    });
  }
  const pairs: { z: string; p: number; lo: number; hi: number }[] = [];
  for (const z of zs) for (let p = 0; p + bits <= z.width; p += bits) pairs.push({ z: z.name, p, lo: (z.lo + p) / bits, hi: (z.hi + p) / bits });
  return { lines, pairs };
}

/** Scores of a thread's `slot` tokens past the packed keys: float32 ring keys, −∞ past n (inside `else` of t0 < tk). */
function ringScores(s: DecodeSpec): string[] {
  const HG = s.headsPerGroup;
  const Q4 = s.headDim / 4;
  const SL = s.slot ?? 16;
  const C = chunkTokens(s);
  const L = [`for (var j = 0u; j < ${SL}u; j = j + 1u) {`, 'let t = t0 + j;'];
  for (let i = 0; i < HG; i++) L.push(`var r${i} = -3.0e38;`);
  if (s.residual) {
    L.push('if (t < S.n) {', `let rb = (kv * S.kring + t % S.kring) * ${Q4}u;`);
    for (let i = 0; i < HG; i++) L.push(`r${i} = 0.0;`);
    L.push(`for (var qd = 0u; qd < ${Q4}u; qd = qd + 1u) {`, 'let x = rk[rb + qd];');
    for (let i = 0; i < HG; i++) L.push(`r${i} = r${i} + dot(qs[${i * Q4}u + qd], x);`);
    L.push('}');
    for (let i = 0; i < HG; i++) L.push(`r${i} = r${i} * S.scale;`);
    L.push('}');
  }
  for (let i = 0; i < HG; i++) L.push(`sc[px(${i * C}u + lid * ${SL}u + j)] = r${i};`, `lm${i} = max(lm${i}, r${i});`);
  L.push('}');
  return L;
}

/**
 * Packed key scores with the 4×8-bit integer dot product (keys in the quad layout: one word = 4 channels × 8/bits
 * tokens). Each thread prepares the query of its own key group itself: a first pass over the group's scale/zero gives,
 * per head, the step `α = max|q ⊙ scale|/127` and the offset `β = q · zero`; the score loop then rounds `q ⊙ scale`
 * to int8 one channel quad at a time and accumulates `dot4I8Packed(codes, u8)`, where `(word >> k·bits) & mask`
 * spreads token k's 4 channel codes into bytes; score = (α · Σ + β) · softmax scale. (A separate preparation pass per
 * layer, or a workgroup-wide one, measured slower on an H200: docs/gpu/README.md.)
 */
function int8KeyScores(s: DecodeSpec, kp: { bits: GpuBits; groupSize: number }): string[] {
  const D = s.headDim;
  const Q4 = D / 4;
  const HG = s.headsPerGroup;
  const SL = s.slot ?? 16;
  const C = chunkTokens(s);
  const G = kp.groupSize;
  const b = kp.bits;
  const TPB = 8 / b; // tokens per byte
  const TPW = 32 / b; // tokens per word run (4 words × TPB)
  const NW = (SL * b) / 8; // words of one channel quad per thread
  if (!Number.isInteger(NW) || NW < 1) throw new Error(`int8 key scores need slot · bits ≥ 8; got slot ${SL}, ${b} bits`);
  if (G % SL !== 0 && SL % G !== 0) throw new Error(`int8 key scores: key group ${G} and slot ${SL} must nest`);
  if (SL > G) throw new Error(`int8 key scores: slot ${SL} is longer than the key group ${G}`);
  const mask = ((0x01010101 * ((1 << b) - 1)) >>> 0).toString();
  const L: string[] = [];
  L.push(`let t0 = c0 + lid * ${SL}u;`, 'if (t0 < S.tk) {', `let tg0 = t0 / ${TPB}u;`, `let kgr = S.cap / ${G}u;`, `let kgi = t0 / ${G}u;`);
  // ---- α and β of this thread's key group, per head (Q4 is a multiple of 4: four quads' loads issued together) ----
  for (let i = 0; i < HG; i++) L.push(`var mx${i} = 0.0;`, `var be${i} = 0.0;`);
  L.push(`for (var qd = 0u; qd < ${Q4}u; qd = qd + 4u) {`);
  for (let e = 0; e < 4; e++) L.push(`let m${e} = km[${keyQuadIndex(D, 'kv', 'kgr', 'kgi', `qd + ${e}u`)}];`);
  for (let e = 0; e < 4; e++) {
    L.push(`let sz${e} = mat4x2<f32>(unpack2x16float(m${e}.x), unpack2x16float(m${e}.y), unpack2x16float(m${e}.z), unpack2x16float(m${e}.w));`);
    for (let i = 0; i < HG; i++) {
      L.push(
        `{ let q = qs[${i * Q4}u + qd + ${e}u]; let u = abs(q * vec4<f32>(sz${e}[0].x, sz${e}[1].x, sz${e}[2].x, sz${e}[3].x)); ` +
          `mx${i} = max(mx${i}, max(max(u.x, u.y), max(u.z, u.w))); be${i} = be${i} + dot(q, vec4<f32>(sz${e}[0].y, sz${e}[1].y, sz${e}[2].y, sz${e}[3].y)); }`,
      );
    }
  }
  L.push('}');
  for (let i = 0; i < HG; i++) L.push(`let inv${i} = select(0.0, 127.0 / mx${i}, mx${i} > 0.0);`);
  // ---- integer scores of this thread's SL tokens ----
  for (let i = 0; i < HG; i++) for (let j = 0; j < SL; j++) L.push(`var a${i}_${j} = 0i;`);
  const U = divisorAtMost(Q4, s.unroll);
  if (s.debugSkip !== 'keys' && s.debugSkip !== 'both' && s.debugSkip !== 'all') {
    // word w of the thread = token group tg0 + w: vec4 (kv·cap/TPW + (tg0 + w)/4)·Q4 + quad, component (tg0 + w) % 4
    L.push(`let kr = S.cap / ${TPW}u;`);
    if (NW < 4) L.push('let wc = tg0 % 4u;');
    L.push(`for (var qd = 0u; qd < ${Q4}u; qd = qd + ${U}u) {`);
    for (let u = 0; u < U; u++) {
      if (NW >= 4) {
        for (let v = 0; v < NW / 4; v++) L.push(`let y${u}_${v} = kc[${keyQuadIndex(D, 'kv', 'kr', `tg0 / 4u + ${v}u`, `qd + ${u}u`)}];`);
      } else {
        L.push(`let y${u}_0 = kc[${keyQuadIndex(D, 'kv', 'kr', 'tg0 / 4u', `qd + ${u}u`)}];`);
      }
      L.push(`let ks${u} = km[${keyQuadIndex(D, 'kv', 'kgr', 'kgi', `qd + ${u}u`)}];`);
    }
    for (let u = 0; u < U; u++) {
      for (let w = 0; w < NW; w++) {
        const word = NW >= 4 ? `y${u}_${w >> 2}.${'xyzw'[w & 3]}` : `y${u}_0[wc + ${w}u]`;
        for (let k = 0; k < TPB; k++) L.push(`let s${u}_${w * TPB + k} = (${word} >> ${k * b}u) & ${mask}u;`);
      }
      L.push(`let kq${u} = vec4<f32>(unpack2x16float(ks${u}.x).x, unpack2x16float(ks${u}.y).x, unpack2x16float(ks${u}.z).x, unpack2x16float(ks${u}.w).x);`);
      for (let i = 0; i < HG; i++) {
        L.push(`let p${u}_${i} = ${packRounded(`qs[${i * Q4}u + qd + ${u}u] * kq${u}`, `inv${i}`)};`);
        for (let j = 0; j < SL; j++) L.push(`a${i}_${j} = a${i}_${j} + dot4I8Packed(s${u}_${j}, p${u}_${i});`);
      }
    }
    L.push('}');
  }
  for (let i = 0; i < HG; i++) {
    L.push(`let al${i} = mx${i} / 127.0 * S.scale;`, `let bs${i} = be${i} * S.scale;`);
    for (let j = 0; j < SL; j++) L.push(`{ let v = fma(al${i}, f32(a${i}_${j}), bs${i}); sc[px(${i * C}u + lid * ${SL}u + ${j}u)] = v; lm${i} = max(lm${i}, v); }`);
  }
  L.push('} else {', ...ringScores(s), '}');
  return L;
}

/** Whether the int8 value mix tiles a geometry: a row's bytes and the workgroup divide one another, a thread's channels inside one group. @internal */
export function int8ValueGeometryOk(headDim: number, bits: number, workgroup: number, groupSize: number): boolean {
  const RB = (headDim * bits) / 8;
  const MW = Math.max(1, RB / workgroup);
  const tiles = RB <= workgroup ? workgroup % RB === 0 : RB % workgroup === 0;
  return Number.isInteger(RB) && tiles && groupSize % ((MW * 8) / bits) === 0;
}

/**
 * The int8 weights of the value mix, prepared inside the softmax's exponential pass (lines run per head `i` once the
 * thread's `slot` exponentials `ev{i}_{j}` of tokens `c0 + lid·slot + j` are known, zero past tv): per value group,
 * `w_j = e_j · scale_j` rounded to int8 with one step `α = max|w|/127` (signed: least squares can fit a negative scale;
 * 4 tokens per word), and the zero-point partial `Σ e_j · zero_j` into the reduction row of head i and group g. The
 * thread computed those exponentials itself, so this needs no pass over the chunk and no barrier of its own.
 */
function int8ValueWeights(s: DecodeSpec, vp: { bits: GpuBits; groupSize: number }, i: number): string[] {
  const SL = s.slot ?? 16;
  const G = s.headDim / vp.groupSize;
  const WG = s.workgroup;
  const L: string[] = [];
  for (let g = 0; g < G; g++) {
    L.push('{', 'var mx = 0.0;', 'var zs = 0.0;');
    for (let j = 0; j < SL; j++) L.push(`let w${j} = ev${i}_${j} * vz${j}_${g}.x;`, `zs = fma(ev${i}_${j}, vz${j}_${g}.y, zs);`, `mx = max(mx, abs(w${j}));`);
    L.push('let inv = select(0.0, 127.0 / mx, mx > 0.0);', `let o = ${(i * G + g) * WG}u + lid;`);
    for (let q = 0; q < SL / 4; q++) {
      const w = [0, 1, 2, 3].map((k) => `w${4 * q + k}`).join(', ');
      L.push(`wq[o * ${SL / 4}u + ${q}u] = ${packRounded(`vec4<f32>(${w})`, 'inv')};`);
    }
    L.push('wa[o] = mx / 127.0;', `red[${(s.headsPerGroup + i * G + g) * WG}u + lid] = zs;`, '}');
  }
  return L;
}

/**
 * Packed values mixed with the 4×8-bit integer dot product (values in the quad layout: quad word m of token block
 * b = byte m of the rows of tokens 4b … 4b+3, one per byte), from the int8 weights of {@link int8ValueWeights}: a
 * thread owning quad words m… of the rows mixes `(word >> j·bits) & mask` (channel j of 4 tokens, codes ≤ 15 read
 * as int8) with `dot4I8Packed` and adds `α · Σ` per slot in float. Tokens past tv have weight 0 (the ring has its own
 * float loop). Declares the per-thread accumulators `v{i}_{j}`; returns the thread's channel count, token lanes and
 * first channel.
 */
function int8ValueMix(s: DecodeSpec, vp: { bits: GpuBits; groupSize: number }): { lines: string[]; channels: number; lanes: number; first: string } {
  const D = s.headDim;
  const Q4 = D / 4;
  const HG = s.headsPerGroup;
  const WG = s.workgroup;
  const C = chunkTokens(s);
  const b = vp.bits;
  const CPT = 8 / b; // channels per byte
  const RB = (D * b) / 8; // bytes of a row = quad words of a 4-token block
  const MW = Math.max(1, RB / WG); // quad words per thread
  const TLN = Math.max(1, WG / RB); // token lanes
  const CH = MW * CPT; // channels per thread (≤ 8, inside one value group)
  const G = D / vp.groupSize;
  const NSB = WG; // weight blocks of the chunk: one per thread's slot
  if (!int8ValueGeometryOk(D, b, WG, vp.groupSize)) throw new Error(`int8 value mix: unsupported geometry (chunk ${C}, ${b}-bit, head dim ${D})`);
  const mask = ((0x01010101 * ((1 << b) - 1)) >>> 0).toString();
  const BW = (s.slot ?? 16) / 4; // weight words per block
  const L: string[] = [];
  // ---- mix: thread (token lane tg, quad words m0 … m0 + MW − 1) ----
  L.push(TLN > 1 ? `let tg = lid / ${RB}u;` : 'let tg = 0u;', TLN > 1 ? `let m0 = lid % ${RB}u;` : `let m0 = lid * ${MW}u;`);
  L.push(`let vg = (m0 * ${CPT}u) / ${vp.groupSize}u;`, `let qrow = ${valueQuadIndex(D, b, 'kv', 'c0', 'm0')};`);
  for (let i = 0; i < HG; i++) for (let j = 0; j < CH; j++) L.push(`var v${i}_${j} = 0.0;`);
  if (s.debugSkip !== 'values' && s.debugSkip !== 'both' && s.debugSkip !== 'all') {
    // (thread slot sb holds tokens c0 + 4·BW·sb …: BW blocks of RB words each, consecutive)
    L.push(`for (var sb = tg; sb < ${NSB}u; sb = sb + ${TLN}u) {`, `let qa = qrow + sb * ${BW * RB}u;`);
    for (let q = 0; q < BW; q++) for (let w = 0; w < MW; w++) L.push(`let x${q}_${w} = vc[qa + ${q * RB + w}u];`);
    for (let i = 0; i < HG; i++) {
      L.push(`let wi${i} = (${i * G}u + vg) * ${NSB}u + sb;`, `let al${i} = wa[wi${i}];`);
      for (let q = 0; q < BW; q++) L.push(`let u${i}_${q} = wq[wi${i} * ${BW}u + ${q}u];`);
    }
    for (let j = 0; j < CH; j++) {
      const w = Math.floor(j / CPT);
      const jj = j % CPT;
      for (let q = 0; q < BW; q++) L.push(`let c${j}_${q} = (x${q}_${w} >> ${jj * b}u) & ${mask}u;`);
      for (let i = 0; i < HG; i++) {
        const dots = Array.from({ length: BW }, (_, q) => `dot4I8Packed(c${j}_${q}, u${i}_${q})`).join(' + ');
        L.push(`v${i}_${j} = fma(al${i}, f32(${dots}), v${i}_${j});`);
      }
    }
    L.push('}');
    if (s.residual) {
      // float32 rows of the ring (positions tv … n−1 that fall in this chunk)
      L.push(`for (var t = max(c0, S.tv) + tg; t < min(c0 + ${C}u, S.n); t = t + ${TLN}u) {`, `let rb = (kv * S.vring + t % S.vring) * ${Q4}u;`);
      for (let j = 0; j < CH; j++) L.push(`let y${j} = rv[rb + (m0 * ${CPT}u + ${j}u) / 4u][(m0 * ${CPT}u + ${j}u) % 4u];`);
      for (let i = 0; i < HG; i++) {
        L.push(`let pr${i} = sc[px(${i * C}u + t - c0)];`);
        for (let j = 0; j < CH; j++) L.push(`v${i}_${j} = fma(pr${i}, y${j}, v${i}_${j});`);
      }
      L.push('}');
    }
  }
  return { lines: L, channels: CH, lanes: TLN, first: `m0 * ${CPT}u` };
}

/** Main chunk kernel of a {@link DecodeSpec}. @internal */
export function decodeKernelSource(spec: DecodeSpec): string {
  // 'nomerge' differs from 'all' only in the dispatches the cache encodes; 'nolanes' also leaves out the lane reduction
  const s: DecodeSpec = spec.debugSkip === 'nomerge' || spec.debugSkip === 'nolanes' ? { ...spec, debugSkip: 'all' } : spec;
  const skipLanes = spec.debugSkip === 'nolanes';
  const D = s.headDim;
  const HG = s.headsPerGroup;
  const WG = s.workgroup;
  const C = chunkTokens(s);
  const SL = s.slot ?? 16;
  if (![4, 8, 16].includes(SL)) throw new Error(`slot must be 4, 8 or 16; got ${SL}`);
  const Q4 = D / 4;
  const L: string[] = [];
  const push = (...l: string[]) => L.push(...l);
  const kp = s.keys.kind === 'packed' ? s.keys : null;
  const vp = s.values.kind === 'packed' ? s.values : null;
  const int8Values = vp !== null && s.valueDot === 'int8';
  const f16Values = vp !== null && s.valueDot === 'f16';
  const SGS = s.subgroupSize;
  if (SGS !== undefined && (!Number.isInteger(SGS) || SGS < 4 || SGS > 128 || (SGS & (SGS - 1)) !== 0)) throw new Error(`subgroupSize must be a power of two from 4 to 128; got ${SGS}`);
  if (SGS !== undefined && int8Values) throw new Error('subgroup reductions are not built for the int8 value mix');
  // subgroup reductions where the subgroups tile the workgroup (a 32-thread geometry with 64-wide subgroups keeps the old ones)
  const useSg = SGS !== undefined && WG % SGS === 0;
  const NS = useSg ? WG / SGS : 0; // subgroups per workgroup
  if (f16Values) push('enable f16;');
  if (useSg) push('enable subgroups;', 'requires subgroup_id;');
  // the int8 paths name the language feature, so a WGSL without it fails compilation saying so
  if ((kp && s.keyDot === 'int8') || int8Values) push('requires packed_4x8_integer_dot_product;');
  push(stepStruct());
  // scratch index with one padding float per 32: a thread's run of consecutive scores (or value channels) starts in
  // another bank than its neighbour's, so the score writes, the exp pass and the lane reduction are conflict-free
  push('fn px(x: u32) -> u32 { return x + (x >> 5u); }');
  push('@group(0) @binding(0) var<storage, read> qv: array<vec4<f32>>;');
  push(`@group(0) @binding(1) var<storage, read> kc: array<vec4<u32>>;`);
  push('@group(0) @binding(2) var<storage, read> km: array<vec4<u32>>;');
  push(`@group(0) @binding(3) var<storage, read> vc: array<${int8Values ? 'u32' : 'vec4<u32>'}>;`);
  push('@group(0) @binding(4) var<storage, read> vm: array<vec4<u32>>;');
  push('@group(0) @binding(5) var<storage, read> rk: array<vec4<f32>>;');
  push('@group(0) @binding(6) var<storage, read> rv: array<vec4<f32>>;');
  push('@group(0) @binding(7) var<storage, read_write> parts: array<f32>;');
  push('@group(0) @binding(8) var<uniform> S: Step;');
  push(`var<workgroup> qs: array<vec4<f32>, ${HG * Q4}>;`);
  push(`var<workgroup> sc: array<f32, ${scratchFloats(s, scChannels(s))}>;`);
  const VG = vp ? D / vp.groupSize : 1; // value groups per row
  const RR = reductionRows(s, VG);
  push(`var<workgroup> red: array<f32, ${RR * WG}>;`);
  if (int8Values) {
    const n = HG * VG;
    push(`var<workgroup> wq: array<u32, ${(n * C) / 4}>;`, `var<workgroup> wa: array<f32, ${n * WG}>;`, `var<workgroup> wzs: array<f32, ${n}>;`);
  }
  push(`@compute @workgroup_size(${WG})`);
  if (useSg) {
    // the thread index from the subgroup's: a subgroup's lanes are consecutive threads whatever order the device
    // numbers them in, so a shuffle over lane offsets reaches the threads the reductions below expect
    push('fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) sgid: u32, @builtin(subgroup_invocation_id) sgi: u32) {');
    push(`let lid = sgid * ${SGS}u + sgi;`);
  } else {
    push('fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {');
  }
  if (s.debugSkip === 'empty' || s.debugSkip === 'empty-nomerge') return [...L, '}'].join('\n');
  // the head groups of one chunk are neighbours in x, so they run together and share the chunk's codes in L2
  const NHG = Math.ceil(s.rep / HG);
  push(`let chunk = wid.x / ${NHG}u;`, `let hgi = wid.x % ${NHG}u;`, 'let kv = wid.y;', `let h0 = kv * ${s.rep}u + hgi * ${HG}u;`, `let c0 = chunk * ${C}u;`);
  // queries of the group into workgroup memory (heads past rep repeat the last one; their results are not written)
  push(
    `for (var e = lid; e < ${HG * Q4}u; e = e + ${WG}u) {`,
    `  let i = min(e / ${Q4}u + hgi * ${HG}u, ${s.rep - 1}u);`,
    `  qs[e] = qv[(kv * ${s.rep}u + i) * ${Q4}u + e % ${Q4}u];`,
    '}',
    'workgroupBarrier();',
  );
  for (let i = 0; i < HG; i++) push(`var lm${i} = -3.0e38;`);
  // ---- scores -------------------------------------------------------------------------------------------------
  if (kp && s.keyDot === 'int8') {
    push(...int8KeyScores(s, kp));
  } else if (kp) {
    const pos = positions(kp.bits, SL);
    const TPW = 32 / kp.bits; // tokens per word
    const sb = SL * kp.bits; // bits of one channel's slot: 4…64
    push(`let t0 = c0 + lid * ${SL}u;`);
    push(`if (t0 < S.tk) {`);
    for (let i = 0; i < HG; i++) {
      push(`var b${i} = 0.0;`);
      for (let j = 0; j < SL; j++) push(`var a${i}_${j} = 0.0;`);
    }
    const nWords = sb === 64 ? 2 : 1;
    push(`let kr = S.cap / ${TPW}u;`, `let kw0 = t0 / ${TPW}u;`);
    if (nWords === 2) push('let kw1 = kw0 + 1u;');
    if (sb < 32) push(`let ksh = (t0 * ${kp.bits}u) % 32u;`);
    push(`let kgr = S.cap / ${kp.groupSize}u;`, `let kgi = t0 / ${kp.groupSize}u;`);
    const U = divisorAtMost(Q4, s.unroll);
    if (s.debugSkip !== 'keys' && s.debugSkip !== 'both' && s.debugSkip !== 'all') {
      const arith = s.debugSkip === 'arith';
      if (arith) push('var ka = 0u;');
      push(`for (var qd = 0u; qd < ${Q4}u; qd = qd + ${U}u) {`);
      for (let u = 0; u < U; u++) {
        for (let k = 0; k < nWords; k++) push(`let w${u}_${k} = kc[${keyQuadIndex(D, 'kv', 'kr', `kw${k}`, `qd + ${u}u`)}];`);
        push(`let m${u} = km[${keyQuadIndex(D, 'kv', 'kgr', 'kgi', `qd + ${u}u`)}];`);
      }
      for (let u = 0; arith && u < U; u++) {
        const ws = [...Array.from({ length: nWords }, (_, k) => `w${u}_${k}`), `m${u}`];
        push(`ka = ka ^ ${ws.map((w) => `${w}.x ^ ${w}.y ^ ${w}.z ^ ${w}.w`).join(' ^ ')};`);
      }
      for (let u = 0; !arith && u < U; u++) {
        for (let e = 0; e < 4; e++) {
          const comp = 'xyzw'[e]!;
          push(`let sz${u}_${e} = unpack2x16float(m${u}.${comp});`);
          const w = (k: number) => `w${u}_${k}.${comp}`;
          const halves = sb < 32 ? [`(${w(0)} >> ksh)`] : Array.from({ length: nWords }, (_, k) => [w(k), `(${w(k)} >> 16u)`]).flat();
          push(...decodeN(kp.bits, halves, `k${u}_${e}`, SL));
          for (let i = 0; i < HG; i++) {
            push(`let q${u}_${e}_${i} = qs[${i * Q4}u + qd + ${u}u].${comp};`);
            push(`let c${u}_${e}_${i} = q${u}_${e}_${i} * sz${u}_${e}.x;`, `b${i} = fma(q${u}_${e}_${i}, sz${u}_${e}.y, b${i});`);
            for (let j = 0; j < SL; j++) push(`a${i}_${j} = fma(c${u}_${e}_${i}, k${u}_${e}_${j}, a${i}_${j});`);
          }
        }
      }
      push('}');
      if (arith) push('a0_0 = a0_0 + f32(ka & 1u) * 1e-30;');
    }
    for (let i = 0; i < HG; i++) {
      for (let j = 0; j < SL; j++) {
        push(`{ let v = (a${i}_${j} * ${f(2 ** -pos[j]!)} + b${i}) * S.scale; sc[px(${i * C}u + lid * ${SL}u + ${j}u)] = v; lm${i} = max(lm${i}, v); }`);
      }
    }
    push('} else {', ...ringScores(s), '}');
  } else {
    // dense fp16 keys: token c0 + j·WG + lid, one row of D/8 vec4<u32> per token
    const O = D / 8;
    push(`for (var j = 0u; j < ${SL}u; j = j + 1u) {`, `let t = c0 + j * ${WG}u + lid;`);
    // every load of the row first (clamped to a valid row; channel octets apart, see denseKeyIndex), then the dot products
    push(`let rt = min(t, S.n - 1u);`);
    for (let o2 = 0; o2 < O; o2++) push(`let w${o2} = kc[${denseKeyOctetIndex(D, 'kv', 'rt', `${o2}u`)}];`);
    for (let i = 0; i < HG; i++) push(`var r${i} = 0.0;`);
    for (let o2 = 0; o2 < O; o2++) {
      push(`let x${o2}a = vec4<f32>(unpack2x16float(w${o2}.x), unpack2x16float(w${o2}.y));`, `let x${o2}b = vec4<f32>(unpack2x16float(w${o2}.z), unpack2x16float(w${o2}.w));`);
      for (let i = 0; i < HG; i++) push(`r${i} = r${i} + dot(qs[${i * Q4 + 2 * o2}u], x${o2}a) + dot(qs[${i * Q4 + 2 * o2 + 1}u], x${o2}b);`);
    }
    for (let i = 0; i < HG; i++) push(`r${i} = select(-3.0e38, r${i} * S.scale, t < S.n);`);
    for (let i = 0; i < HG; i++) push(`sc[px(${i * C}u + j * ${WG}u + lid)] = r${i};`, `lm${i} = max(lm${i}, r${i});`);
    push('}');
  }
  // index (within the chunk) of score j of this thread
  // (the int8 value weights need each thread's exponentials of consecutive tokens)
  const tl = (j: number) => (kp || int8Values ? `lid * ${SL}u + ${j}u` : `${j * WG}u + lid`);
  // ---- chunk softmax: scores to workgroup memory, max and sums over the chunk (few barriers, little live state) ----
  if (!useSg) for (let i = 0; i < HG; i++) push(`red[${i * WG}u + lid] = lm${i};`);
  // two-level reductions over the workgroup (two barriers, not log2(WG)): the first 16 threads each fold WG/16
  // values (stride 16, so their reads hit distinct banks) back into red[0…15]; the caller folds those 16
  const RL = WG / 16;
  const tree = (op: (a: string, b: string) => string, rows = HG) => {
    if (s.debugSkip === 'all') return push('workgroupBarrier();');
    push('workgroupBarrier();', 'if (lid < 16u) {');
    for (let i = 0; i < rows; i++) {
      const terms = Array.from({ length: RL }, (_, k) => `red[${i * WG + k * 16}u + lid]`);
      push(`red[${i * WG}u + lid] = ${terms.reduce((a, b) => op(a, b))};`);
    }
    push('}', 'workgroupBarrier();');
  };
  // with subgroups: each subgroup reduces its lanes' values, its first lane writes them, one barrier; the maxima (region
  // 0: the heads and the f16 scale row) and the sums (region 1) use separate parts of red, so no barrier between them
  const sgRegion = (region: number) => region * (HG + 1) * NS;
  const sgReduce = (fn: 'subgroupMax' | 'subgroupAdd', rows: string[], region: number) => {
    if (s.debugSkip === 'all') return push('workgroupBarrier();');
    rows.forEach((e, i) => push(`let sr${region}_${i} = ${fn}(${e});`));
    push('if (sgi == 0u) {', ...rows.map((_, i) => `red[${sgRegion(region) + i * NS}u + sgid] = sr${region}_${i};`), '}', 'workgroupBarrier();');
  };
  /** The fold of the 16 partials of head i (after `tree`), or of its subgroups' (after `sgReduce` into `region`). */
  const folded = (i: number, op: (a: string, b: string) => string, region = 0) =>
    useSg
      ? Array.from({ length: NS }, (_, k) => `red[${sgRegion(region) + i * NS + k}u]`).reduce((a, b) => op(a, b))
      : Array.from({ length: 16 }, (_, k) => `red[${i * WG + k}u]`).reduce((a, b) => op(a, b));
  // ---- float value loops: geometry, and with `prefetch` the first batch of loads issued before the trees ----------
  const VS = s.valueSlot ?? 16;
  if (VS !== 8 && VS !== 16) throw new Error(`valueSlot must be 8 or 16; got ${VS}`);
  const skipValues = s.debugSkip === 'values' || s.debugSkip === 'both' || s.debugSkip === 'all';
  // (the int8 mix has its own, see int8ValueMix)
  const int8v = vp && int8Values ? int8ValueMix(s, vp) : null;
  const SLOT = int8v ? int8v.channels : vp ? VS : 8; // channels per thread
  if (SLOT !== scChannels(s)) throw new Error(`internal: ${SLOT} value channels per thread, scratch sized for ${scChannels(s)}`);
  const CSV = D / SLOT; // threads per row
  const TLN = int8v ? int8v.lanes : WG / CSV; // token lanes
  const ITER = C / TLN;
  const UV = divisorAtMost(ITER, s.valueUnroll ?? 4);
  const GV = vp ? D / vp.groupSize : 0; // value groups of a row
  const vbits = VS * (vp?.bits ?? 0); // bits of one thread's channels in a packed row: 8…64
  // packed values (block layout, see valueCodeAt): a thread walks blocks of B tokens, one vec4 of codes and the
  // blocks' scale/zero words (B/4 vec4s, or half of one) per block; UB blocks per batch
  const B = vp ? valueBlockTokens(vp.bits) : 1;
  // (a chunk is slot·workgroup tokens, slot ≥ 4, and 1-bit codes need a head dim of at least 32: the lanes' blocks tile it)
  if (vp && !int8v && C % (B * TLN) !== 0) throw new Error(`internal: ${TLN} lanes × ${B}-token value blocks do not tile a ${C}-token chunk`);
  const ITB = vp ? C / (B * TLN) : 0;
  const UB = divisorAtMost(ITB, Math.max(1, Math.round((s.valueUnroll ?? 4) / B)));
  const NM = Math.max(1, B / 4); // metadata vec4s per block
  /** Code words (expressions in the block's vec4 `x`) holding token j's bits of this thread: one, with a shift, or whole words. */
  const tokenWords = (x: string, j: number): string[] => {
    const start = j * 16 * vp!.bits; // the token's first bit in the slice; the thread's channels start vso bits later
    if (vbits < 32) return [`(${x}[${Math.floor(start / 32)}u] >> (${start % 32}u${VS === 8 ? ' + vso' : ''}))`];
    if (vbits === 32) return [VS === 8 ? `${x}[${start / 32}u + cs % 2u]` : `${x}[${start / 32}u]`];
    return [`${x}[${start / 32}u]`, `${x}[${start / 32 + 1}u]`];
  };
  /** Token j's scale/zero word from the metadata vec4s `m…` of block `blk` (a 2-token block is half a vec4: which half by its parity). */
  const metaWord = (m: string, j: number, blk: string): string => (B >= 4 ? `${m}_${j >> 2}[${j & 3}u]` : `${m}_0[(${blk} % 2u) * 2u + ${j}u]`);
  const pf = s.prefetch === true && !int8v && (vp === null || !skipValues);
  /**
   * Loads of the value batch starting at iteration `it`: per packed block its codes `x{u}` and scale/zero vec4s
   * `m{u}_{k}`, or per fp16 row its words `w{u}` — as `let`s of this batch (`'now'`), or into the prefetch registers
   * (`xp…`, `mp…`, `wp…`) declared (`'first'`) or reassigned (`'next'`).
   */
  const loadBatch = (it: string, mode: 'now' | 'first' | 'next'): string[] => {
    const out: string[] = [];
    const [decl, px_, sfx] = mode === 'now' ? ['let ', '', ''] : mode === 'first' ? ['var ', 'p', 'p'] : ['', 'p', 'n'];
    for (let u = 0; u < (vp ? UB : UV); u++) {
      if (vp) {
        // first token of the block (clamped to the last block holding a packed token; its weights past tv are 0): its
        // slice is one vec4 of codes, its group's scale/zero words start a vec4 (valueCodeAt, valueMetaIndex)
        const tb = `tb${u}${sfx}`;
        out.push(`let ${tb} = min(c0 / ${B}u + tg + (${it} + ${u}u) * ${TLN}u, tvb) * ${B}u;`);
        out.push(`${decl}x${px_}${u} = vc[(${valueCodeAt(D, vp.bits, 'kv', tb, 'vsl * 16u').index}) / 4u];`);
        out.push(`let mb${u}${sfx} = (${valueMetaIndex(GV, 'kv', tb, 'vg')}) / 4u;`);
        for (let k = 0; k < NM; k++) out.push(`${decl}m${px_}${u}_${k} = vm[mb${u}${sfx} + ${k}u];`);
      } else {
        const t = `c0 + tg + (${it} + ${u}u) * ${TLN}u`;
        out.push(`${decl}w${px_}${u} = vc[(kv * S.cap + min(${t}, S.n - 1u)) * ${CSV}u + cs];`);
      }
    }
    return out;
  };
  if (!int8v) {
    push(`let cs = lid % ${CSV}u;`, `let tg = lid / ${CSV}u;`);
    if (vp) {
      push(`let vsl = (cs * ${VS}u) / 16u;`);
      if (VS === 8 && vbits < 32) push(`let vso = (cs % 2u) * ${vbits}u;`);
      push(`let vg = (cs * ${VS}u) / ${vp.groupSize}u;`, 'let tvl = select(0u, S.tv - 1u, S.tv > 0u);', `let tvb = tvl / ${B}u;`);
    }
    if (pf) push(...loadBatch('0u', 'first'));
  }
  if (f16Values) {
    // the chunk's largest |value scale| (reduced with the score maxima): the f16 weights are scaled by K / it (below), so
    // no thread's partial sum can overflow
    push('var smx = 0.0;');
    for (let j = 0; j < SL; j++) {
      for (let g = 0; g < GV; g++) push(`smx = max(smx, abs(unpack2x16float(${metaAt(valueMetaIndex(GV, 'kv', `min(c0 + ${tl(j)}, tvl)`, `${g}u`))}).x));`);
    }
    if (!useSg) push(`red[${HG * WG}u + lid] = smx;`);
  }
  if (useSg) sgReduce('subgroupMax', [...Array.from({ length: HG }, (_, i) => `lm${i}`), ...(f16Values ? ['smx'] : [])], 0);
  else tree((a, b) => `max(${a}, ${b})`, HG + (f16Values ? 1 : 0));
  for (let i = 0; i < HG; i++) push(`let mx${i} = ${folded(i, (a, b) => `max(${a}, ${b})`)};`);
  if (f16Values) {
    // a thread sums at most ITER products of |p·s/smc · code·2^p| < 256·K: K = the largest power of two keeping that
    // under 32768 (half the f16 range), so small weights stay as far from the f16 subnormals as the sums allow
    const K = 2 ** Math.floor(Math.log2(32768 / (256 * ITER)));
    push(`let smc = max(${folded(HG, (a, b) => `max(${a}, ${b})`)}, 1e-30);`, `let vsc = ${f(K)} / smc;`, `let vun = smc * ${f(1 / K)};`);
  }
  // (the sums reuse red's rows: every thread must have read the maxima first; the subgroup regions do not overlap)
  if (!useSg) push('workgroupBarrier();');
  if (int8Values) {
    // the scale/zero of this thread's tokens, every value group (clamped to a packed row; weight 0 past tv)
    push('let tvq = select(0u, S.tv - 1u, S.tv > 0u);', `let tq = c0 + lid * ${SL}u;`);
    for (let j = 0; j < SL; j++) for (let g = 0; g < VG; g++) push(`let vz${j}_${g} = unpack2x16float(${metaAt(valueMetaIndex(VG, 'kv', `min(tq + ${j}u, tvq)`, `${g}u`))});`);
  }
  for (let i = 0; i < HG; i++) {
    push(`var ls${i} = 0.0;`);
    for (let j = 0; j < SL; j++) {
      push(`let e${i}_${j} = exp(sc[px(${i * C}u + ${tl(j)})] - mx${i});`, `sc[px(${i * C}u + ${tl(j)})] = e${i}_${j};`, `ls${i} = ls${i} + e${i}_${j};`);
      if (int8Values) push(`let ev${i}_${j} = select(0.0, e${i}_${j}, tq + ${j}u < S.tv);`);
    }
    if (!useSg) push(`red[${i * WG}u + lid] = ls${i};`);
    if (int8Values) push(...int8ValueWeights(s, vp!, i));
  }
  if (useSg) sgReduce('subgroupAdd', Array.from({ length: HG }, (_, i) => `ls${i}`), 1);
  else tree((a, b) => `${a} + ${b}`, RR);
  // the chunk sums (and with int8 values the zero-point sums per head and group), before the lane reduction reuses red
  for (let i = 0; i < HG; i++) push(`let lsum${i} = ${folded(i, (a, b) => `${a} + ${b}`, 1)};`);
  if (int8Values) push(`if (lid < ${HG * VG}u) { wzs[lid] = ${Array.from({ length: 16 }, (_, k) => `red[(${HG}u + lid) * ${WG}u + ${k}u]`).join(' + ')}; }`);
  // ---- values -------------------------------------------------------------------------------------------------
  const first = int8v ? int8v.first : `cs * ${SLOT}u`; // first channel of the thread
  if (!int8v) {
    for (let i = 0; i < HG; i++) {
      if (vp) push(`var vb${i} = 0.0;`);
      for (let j = 0; j < SLOT; j++) push(`var v${i}_${j} = 0.0;`);
    }
  }
  if (int8v) {
    push(...int8v.lines);
  } else if (vp) {
    const pos = positions(vp.bits, VS);
    // f16 values: the accumulator pairs of each head (see f16Pairs), their layout from a dry run of the decode
    const pairLayout = f16Values ? f16Pairs(vp.bits, vbits, tokenWords('x', 0), '').pairs : [];
    if (f16Values && !skipValues) for (let i = 0; i < HG; i++) pairLayout.forEach((_, k) => push(`var g${i}_${k} = vec2<f16>(0.0);`));
    if (!skipValues) {
      // packed blocks of the chunk, branch-free: a token past tv has weight 0
      if (s.debugSkip === 'arith') push('var va = 0u;');
      push(`for (var it = 0u; it < ${ITB}u; it = it + ${UB}u) {`);
      if (pf) {
        // this batch from the registers loaded one batch earlier; the next batch's loads issued now (the last
        // iteration reloads its own batch)
        for (let u = 0; u < UB; u++) {
          push(`let x${u} = xp${u};`);
          for (let k = 0; k < NM; k++) push(`let m${u}_${k} = mp${u}_${k};`);
        }
        push(...loadBatch(`min(it + ${UB}u, ${ITB - UB}u)`, 'next'));
      } else {
        push(...loadBatch('it', 'now'));
      }
      const arith = s.debugSkip === 'arith';
      // (every component, so no load is narrowed away)
      const fold = (v: string) => `${v}.x ^ ${v}.y ^ ${v}.z ^ ${v}.w`;
      if (arith) push(`va = va ^ ${Array.from({ length: UB }, (_, u) => [fold(`x${u}`), ...Array.from({ length: NM }, (_, k) => fold(`m${u}_${k}`))].join(' ^ ')).join(' ^ ')};`);
      const m = (1 << vp.bits) - 1;
      for (let u = 0; !arith && u < UB; u++) {
        push(`let bl${u} = tg + (it + ${u}u) * ${TLN}u;`);
        for (let j = 0; j < B; j++) {
          const tag = `${u}_${j}`;
          push(`let tl${tag} = bl${u} * ${B}u + ${j}u;`, `let ok${tag} = c0 + tl${tag} < S.tv;`);
          push(`let nz${tag} = unpack2x16float(${metaWord(`m${u}`, j, `bl${u}`)});`);
          if (f16Values) {
            const { lines, pairs } = f16Pairs(vp.bits, vbits, tokenWords(`x${u}`, j), `h${tag}`);
            push(...lines);
            pairs.forEach((pr, k) => push(`let e${tag}_${k} = bitcast<vec2<f16>>((${pr.z} & ${((m << pr.p) | (m << (pr.p + 16))) >>> 0}u) | 0x64006400u) - vec2<f16>(1024.0);`));
            for (let i = 0; i < HG; i++) {
              push(`let p${tag}_${i} = sc[px(${i * C}u + tl${tag})];`);
              push(`let w${tag}_${i} = vec2<f16>(f16(select(0.0, p${tag}_${i} * nz${tag}.x * vsc, ok${tag})));`, `vb${i} = vb${i} + select(0.0, p${tag}_${i} * nz${tag}.y, ok${tag});`);
              pairs.forEach((_, k) => push(`g${i}_${k} = fma(w${tag}_${i}, e${tag}_${k}, g${i}_${k});`));
            }
          } else {
            const xs = tokenWords(`x${u}`, j);
            push(...decodeN(vp.bits, vbits < 32 ? xs : xs.flatMap((x) => [x, `(${x} >> 16u)`]), `d${tag}`, VS));
            for (let i = 0; i < HG; i++) {
              push(`let p${tag}_${i} = sc[px(${i * C}u + tl${tag})];`);
              push(`let w${tag}_${i} = select(0.0, p${tag}_${i} * nz${tag}.x, ok${tag});`, `vb${i} = vb${i} + select(0.0, p${tag}_${i} * nz${tag}.y, ok${tag});`);
              for (let jj = 0; jj < VS; jj++) push(`v${i}_${jj} = fma(w${tag}_${i}, d${tag}_${jj}, v${i}_${jj});`);
            }
          }
        }
      }
      push('}');
      if (arith) push('v0_0 = v0_0 + f32(va & 1u) * 1e-30;');
      // f16 pairs back to the float32 accumulators, in their convention (channel j carries the factor 2^pos_j)
      for (let i = 0; f16Values && i < HG; i++) {
        pairLayout.forEach((pr, k) => {
          push(`v${i}_${pr.lo} = f32(g${i}_${k}.x) * (vun * ${f(2 ** (pos[pr.lo]! - pr.p))});`, `v${i}_${pr.hi} = f32(g${i}_${k}.y) * (vun * ${f(2 ** (pos[pr.hi]! - pr.p))});`);
        });
      }
      if (s.residual) {
        // full-precision rows of the ring (positions tv … n−1 that fall in this chunk), one token per lane at a time
        push(`for (var t = max(c0, S.tv) + tg; t < min(c0 + ${C}u, S.n); t = t + ${TLN}u) {`, `let rb = (kv * S.vring + t % S.vring) * ${Q4}u + cs * ${VS / 4}u;`);
        for (let k = 0; k < VS / 4; k++) push(`let y${k} = rv[rb + ${k}u];`);
        for (let i = 0; i < HG; i++) {
          push(`let pr${i} = sc[px(${i * C}u + t - c0)];`);
          for (let j = 0; j < VS; j++) push(`v${i}_${j} = fma(pr${i} * ${f(2 ** pos[j]!)}, y${j >> 2}.${'xyzw'[j & 3]}, v${i}_${j});`);
        }
        push('}');
      }
    }
    for (let i = 0; i < HG; i++) for (let j = 0; j < VS; j++) push(`v${i}_${j} = v${i}_${j} * ${f(2 ** -pos[j]!)} + vb${i};`);
  } else {
    push(`for (var it = 0u; it < ${ITER}u; it = it + ${UV}u) {`);
    if (pf) {
      for (let u = 0; u < UV; u++) push(`let w${u} = wp${u};`);
      push(...loadBatch(`min(it + ${UV}u, ${ITER - UV}u)`, 'next'));
    } else {
      push(...loadBatch('it', 'now'));
    }
    for (let u = 0; u < UV; u++) push(`let tl${u} = tg + (it + ${u}u) * ${TLN}u;`, `let t${u} = c0 + tl${u};`);
    for (let u = 0; u < UV; u++) {
      push(`if (t${u} < S.n) {`);
      push(`let y0 = vec4<f32>(unpack2x16float(w${u}.x), unpack2x16float(w${u}.y));`, `let y1 = vec4<f32>(unpack2x16float(w${u}.z), unpack2x16float(w${u}.w));`);
      for (let i = 0; i < HG; i++) {
        push(`let p${i} = sc[px(${i * C}u + tl${u})];`);
        for (let j = 0; j < 8; j++) push(`v${i}_${j} = fma(p${i}, y${j >> 2}.${'xyzw'[j & 3]}, v${i}_${j});`);
      }
      push('}');
    }
    push('}');
  }
  // ---- reduce over token lanes, write the chunk partial [o (D), max, sum] ---------------------------------------
  // the scratch holds the lanes of `hpr` heads at a time (it is sized for the chunk's scores, not HG · WG · SLOT)
  // with subgroup lanes (below) a head needs only its subgroups' partial rows (NS · D floats), so more heads fit a round
  const TS = useSg && !int8v && SGS! >= CSV ? SGS! / CSV : 0; // token lanes of one channel slice inside a subgroup
  const hprSg = TS ? Math.max(1, Math.min(HG, Math.floor(scratchUnpadded(s, SLOT) / (NS * D)))) : 0;
  const roundsFit = (per: number) => Array.from({ length: Math.ceil(HG / per) }, (_, r) => Math.min(per, HG - r * per)).every((nh) => (nh * SLOT) % TS === 0);
  const sgLanes = TS > 0 && roundsFit(hprSg);
  const hpr = sgLanes ? hprSg : reduceHeads(s, SLOT);
  if (skipLanes) {
    // benchmark-only: each thread's own accumulators stand for the reduced row (lanes tg = 0 write them)
    for (let i = 0; i < HG; i++) {
      push(`if (tg == 0u && hgi * ${HG}u + ${i}u < ${s.rep}u) {`, `let pb = ((h0 + ${i}u) * S.nc + chunk) * ${D + 2}u;`);
      for (let j = 0; j < SLOT; j++) push(`parts[pb + ${first} + ${j}u] = v${i}_${j};`);
      push('}');
    }
  }
  for (let h0r = 0; !skipLanes && h0r < HG; h0r += hpr) {
    const nh = Math.min(hpr, HG - h0r);
    const O = nh * D; // outputs of this round
    const write = (o: string) => [
      ...(int8v && vp ? [`${o} = ${o} + wzs[i * ${D / vp.groupSize}u + d / ${vp.groupSize}u];`] : []),
      `if (hgi * ${HG}u + i < ${s.rep}u) {`,
      `let pb = ((h0 + i) * S.nc + chunk) * ${D + 2}u;`,
      `parts[pb + d] = ${o};`,
      '}',
    ];
    // with subgroups: the TS token lanes of each channel slice inside a subgroup reduce-scatter their N accumulators
    // with shuffles (each step a lane keeps half its values, adds its partner's copy of that half, and hands over the
    // other half), so each ends with N/TS sums over the subgroup; one workgroup-memory sum over subgroups follows
    const N = nh * SLOT;
    if (sgLanes) {
      let cur = Array.from({ length: N }, (_, k) => `v${h0r + Math.floor(k / SLOT)}_${k % SLOT}`);
      const steps = Math.log2(TS);
      for (let st = 0; st < steps; st++) {
        const off = CSV << st; // flips bit st of the lane's token index sgi / CSV, keeps its channel slice
        const hi = `rb${h0r}_${st}`;
        push(`let ${hi} = (sgi & ${off}u) != 0u;`);
        const half = cur.length / 2;
        const next: string[] = [];
        for (let k = 0; k < half; k++) {
          const nm = `rr${h0r}_${st}_${k}`;
          push(`let ${nm} = select(${cur[k]}, ${cur[k + half]}, ${hi}) + subgroupShuffleXor(select(${cur[k + half]}, ${cur[k]}, ${hi}), ${off}u);`);
          next.push(nm);
        }
        cur = next;
      }
      // the lane kept the values from (its token index with its `steps` bits reversed) · N/TS on
      push(steps > 0 ? `let ko${h0r} = (reverseBits(sgi / ${CSV}u) >> ${32 - steps}u) * ${cur.length}u;` : `let ko${h0r} = 0u;`);
      // (every thread has read the chunk's weights from sc, or the previous round's sums)
      push('workgroupBarrier();');
      cur.forEach((nm, r) => push(`{ let k = ko${h0r} + ${r}u; sc[px((sgid * ${nh}u + k / ${SLOT}u) * ${D}u + ${first} + k % ${SLOT}u)] = ${nm}; }`));
      push('workgroupBarrier();');
      push(
        `for (var e = lid; e < ${O}u; e = e + ${WG}u) {`,
        `let ir = e / ${D}u;`,
        `let i = ir + ${h0r}u;`,
        `let d = e % ${D}u;`,
        `let o = ${Array.from({ length: NS }, (_, g) => `sc[px((${g * nh}u + ir) * ${D}u + d)]`).join(' + ')};`,
        ...write('o'),
        '}',
      );
      continue;
    }
    push('workgroupBarrier();');
    for (let i = h0r; i < h0r + nh; i++) for (let j = 0; j < SLOT; j++) push(`sc[px((${(i - h0r) * TLN}u + tg) * ${D}u + ${first} + ${j}u)] = v${i}_${j};`);
    push('workgroupBarrier();');
    // P threads per output, each summing TLN/P lanes (a shorter serial chain), then one thread folds the P partials
    const P = Math.min(TLN, 2 ** Math.floor(Math.log2(Math.max(1, WG / O))));
    if (P === 1) {
      push(
        `for (var e = lid; e < ${O}u; e = e + ${WG}u) {`,
        `let ir = e / ${D}u;`,
        `let i = ir + ${h0r}u;`,
        `let d = e % ${D}u;`,
        'var o = 0.0;',
        `for (var r = 0u; r < ${TLN}u; r = r + 1u) { o = o + sc[px((ir * ${TLN}u + r) * ${D}u + d)]; }`,
        ...write('o'),
        '}',
      );
    } else {
      const LP = TLN / P;
      push(
        `if (lid < ${P * O}u) {`,
        `let e = lid % ${O}u;`,
        `let r0 = (lid / ${O}u) * ${LP}u;`,
        `let ir = e / ${D}u;`,
        `let d = e % ${D}u;`,
        'var o = 0.0;',
        `for (var r = r0; r < r0 + ${LP}u; r = r + 1u) { o = o + sc[px((ir * ${TLN}u + r) * ${D}u + d)]; }`,
        'red[lid] = o;',
        '}',
        'workgroupBarrier();',
        `if (lid < ${O}u) {`,
        `let ir = lid / ${D}u;`,
        `let i = ir + ${h0r}u;`,
        `let d = lid % ${D}u;`,
        `var o = ${Array.from({ length: P }, (_, k) => `red[lid + ${k * O}u]`).join(' + ')};`,
        ...write('o'),
        '}',
      );
    }
  }
  push('if (lid == 0u) {');
  for (let i = 0; i < HG; i++) {
    push(`if (hgi * ${HG}u + ${i}u < ${s.rep}u) {`, `let pb = ((h0 + ${i}u) * S.nc + chunk) * ${D + 2}u;`);
    push(`parts[pb + ${D}u] = mx${i};`, `parts[pb + ${D + 1}u] = lsum${i};`, '}');
  }
  push('}');
  push('}');
  return L.join('\n');
}

/**
 * Merge pass: `out[h, d] = Σ_c e^{m_c − M}·o_c[d] / Σ_c e^{m_c − M}·l_c`, one workgroup of 256 threads per query head:
 * the maximum over chunks first (every thread a share of the chunks, then a two-level fold), then the chunks split among
 * `256/D` groups of threads whose loads are independent (no serial chain through memory), then a sum over groups.
 * The output is row `S.row` of `out` (`qHeads · D` floats per row). With `quantize` (a quantized layer), workgroups from `qHeads` on run the quantization the schedule owes
 * (`quantizeSource` of update-wgsl.ts): they overlap the merge instead of lengthening the update pass.
 * @internal
 */
export function combineSource(headDim: number, qHeads: number, quantize?: { declarations: string[] }, form: 'position' | 'rows' = 'position'): string {
  const D = headDim;
  const G = Math.floor(256 / D);
  const PS = D + 2;
  // the rows form merges a prefill batch's causal attention (rows-attention-wgsl.ts): workgroup x = row · qHeads + head,
  // S.rnc chunks each, output row-major from row 0
  const nc = form === 'rows' ? 'S.rnc' : 'S.nc';
  const outAt = form === 'rows' ? `h * ${D}u + lid` : `S.row * ${qHeads * D}u + h * ${D}u + lid`;
  if (form === 'rows' && quantize) throw new Error('the rows merge has no quantization workgroups');
  return [
    stepStruct(),
    '@group(0) @binding(0) var<storage, read> parts: array<f32>;',
    '@group(0) @binding(1) var<storage, read_write> out: array<f32>;',
    '@group(0) @binding(2) var<uniform> S: Step;',
    ...(quantize?.declarations ?? []),
    'var<workgroup> red: array<f32, 256>;',
    'var<workgroup> ro: array<f32, 256>;',
    `var<workgroup> rl: array<f32, ${G}>;`,
    '@compute @workgroup_size(256)',
    'fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {',
    // workgroups past the query heads quantize what the layer's schedule owes (workgroup-uniform branch)
    // (in a function of its own: its early returns leave the merge's barriers in uniform control flow)
    ...(quantize ? [`if (wid.x >= ${qHeads}u) { quantize(wid.x - ${qHeads}u, lid, S.kflush, S.vquant); return; }`] : []),
    'let h = wid.x;',
    `let hb = h * ${nc};`,
    'var m = -3.0e38;',
    `for (var c = lid; c < ${nc}; c = c + 256u) { m = max(m, parts[(hb + c) * ${PS}u + ${D}u]); }`,
    'red[lid] = m;',
    'workgroupBarrier();',
    // two-level fold (two barriers, not eight): 16 threads fold 16 values each (stride 16: distinct banks), then every
    // thread the 16 partials
    `if (lid < 16u) { red[lid] = ${Array.from({ length: 16 }, (_, k) => `red[lid + ${16 * k}u]`).reduce((a, b) => `max(${a}, ${b})`)}; }`,
    'workgroupBarrier();',
    `let M = ${Array.from({ length: 16 }, (_, k) => `red[${k}u]`).reduce((a, b) => `max(${a}, ${b})`)};`,
    `let d = lid % ${D}u;`,
    `let cg = lid / ${D}u;`,
    // eight chunks per round, their loads independent of each other (no chain through memory per chunk)
    ...Array.from({ length: 8 }, (_, u) => `var o${u} = 0.0; var l${u} = 0.0;`),
    `for (var c0 = select(cg, ${nc}, cg >= ${G}u); c0 < ${nc}; c0 = c0 + ${8 * G}u) {`,
    ...Array.from({ length: 8 }, (_, u) => [
      `  let c${u} = min(c0 + ${u * G}u, ${nc} - 1u);`,
      `  let pb${u} = (hb + c${u}) * ${PS}u;`,
      `  let m${u} = parts[pb${u} + ${D}u];`,
      `  let x${u} = parts[pb${u} + d];`,
      `  let s${u} = parts[pb${u} + ${D + 1}u];`,
    ]).flat(),
    ...Array.from({ length: 8 }, (_, u) => [
      `  let w${u} = select(0.0, exp(m${u} - M), c0 + ${u * G}u < ${nc});`,
      `  o${u} = fma(w${u}, x${u}, o${u});`,
      `  l${u} = fma(w${u}, s${u}, l${u});`,
    ]).flat(),
    '}',
    `let o = ${Array.from({ length: 8 }, (_, u) => `o${u}`).join(' + ')};`,
    `let l = ${Array.from({ length: 8 }, (_, u) => `l${u}`).join(' + ')};`,
    'ro[lid] = o;',
    `if (d == 0u && cg < ${G}u) { rl[cg] = l; }`,
    'workgroupBarrier();',
    `if (lid < ${D}u) {`,
    '  var so = 0.0;',
    '  var sl = 0.0;',
    `  for (var g = 0u; g < ${G}u; g = g + 1u) { so = so + ro[g * ${D}u + lid]; sl = sl + rl[g]; }`,
    `  out[${outAt}] = so / sl;`,
    '}',
    '}',
  ].join('\n');
}
