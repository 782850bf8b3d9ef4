/**
 * WGSL of the device cache's per-layer update pass, one dispatch per layer and position: rotary embedding of the
 * query and key (tables from the caller), the new key/value written in place (fp16 rows, or the float32 residual
 * rings of a quantized layer); and of the quantization the schedule owes, run by extra workgroups of the merge pass
 * after this position's attention — a key block of R tokens (per channel, groups along tokens) and one value token
 * (per token, groups along channels), with η or least-squares calibration and cross-layer code sharing. Arithmetic
 * mirrors `@xquant/quant`'s fp16 recipe (`r(x)` = rounding to fp16): `scale = r(r(max − min)·f(1/m))`, `zero = min`,
 * `code = round(r(r(x − min)/scale))`.
 * @internal
 */
import { STEP_FIELDS, denseKeyIndex, keyWordIndex, stepStruct, valueCodeAt, valueMetaIndex, valueQuadIndex, type DeviceOperand } from './attention-wgsl.js';
import type { GpuBits } from '../layout.js';

/** Calibration of the stored scale/zero, computable on the device. @internal */
export type DeviceCalibration = { kind: 'none' } | { kind: 'eta'; eta: number } | { kind: 'least-squares' };

/** How one layer's keys or values are kept and quantized. @internal */
export type DeviceStorage = DeviceOperand & {
  /** Codes are read from another layer (only scale/zero are this layer's). */
  donor?: boolean;
  calibration?: DeviceCalibration;
};

/** Compile-time description of one layer's update kernel. @internal */
export interface UpdateSpec {
  qHeads: number;
  kvHeads: number;
  headDim: number;
  keys: DeviceStorage;
  values: DeviceStorage;
  /** R: keys are quantized in blocks of R tokens. */
  residualLength: number;
  /** u32 offset of the key metadata in the layer's key buffer (packed keys). */
  keyMetaOffset: number;
  /** u32 offset of the value metadata in the layer's value buffer (packed values). */
  valueMetaOffset: number;
  /** f32 offset of the value ring in the layer's ring buffer. */
  valueRingOffset: number;
  /** Apply the rotary tables (false: q and k are copied as they are). */
  rope: boolean;
  /**
   * The batch form: one dispatch takes in the `S.rows` positions of a prefill batch from `S.pos` on, position
   * `S.pos + r` from row r of `qkv`, its rotated queries written to row r of `qout` (`[rows][qHeads·D]`); the dispatch
   * covers `rows · updateRoles(s).total` threads. Residual rings must then hold the whole batch (see
   * {@link quantizeRowsSource}).
   */
  batched?: boolean;
  /**
   * Packed key layout: `'channel'` (default) — one word = 32/bits tokens of one channel; `'quad'` — one word = 4
   * channels (bytes) × 8/bits tokens (bit fields of each byte), read by the int8 dot-product attention kernel. Either
   * way the words (and the scale/zero words) are addressed by `keyWordIndex` (channel-quad-major).
   */
  keyLayout?: 'channel' | 'quad';
  /**
   * Packed value layout: `'block'` (default) — blocks of 8/bits tokens, each 16-channel slice of a block one
   * `vec4<u32>` (`valueCodeAt`); `'quad'` — quad word m of token block b holds byte m of the rows of tokens 4b … 4b+3
   * (one per byte), read by the int8 value mix. Either way the scale/zero words are addressed by `valueMetaIndex`.
   */
  valueLayout?: 'block' | 'quad';
}

/**
 * WGSL helpers of a layer's packed value layout, so the quantizers never spell out addresses: `putValueWord(kv, t, w,
 * word)` stores word w of token t's row of codes (32/bits channels), `donorValueCode(kv, t, c)` reads channel c of
 * token t from the donor's codes. Block layout: see `valueCodeAt` (with 1-bit codes a row word is two 16-bit runs, each
 * sharing its u32 with another token of the block, so a store keeps that token's half). Quad layout: quad word m of
 * token block b holds byte m of the rows of tokens 4b … 4b+3, so a store writes four bytes (only this token's byte of
 * each quad word changes).
 */
function valueLayoutHelpers(s: UpdateSpec): string[] {
  const v = s.values as DeviceStorage & { kind: 'packed' };
  const M = (1 << v.bits) - 1;
  const quad = s.valueLayout === 'quad';
  // channel c of token t in the block layout
  const at = valueCodeAt(s.headDim, v.bits, 'kv', 't', 'c');
  if (!v.donor) {
    return quad
      ? [
          'fn putValueWord(kv: u32, t: u32, w: u32, word: u32) {',
          `  let a = ${valueQuadIndex(s.headDim, v.bits, 'kv', 't', 'w * 4u')};`,
          '  let sh = (t % 4u) * 8u;',
          '  let keep = ~(0xffu << sh);',
          '  for (var i = 0u; i < 4u; i = i + 1u) { V[a + i] = (V[a + i] & keep) | (((word >> (i * 8u)) & 0xffu) << sh); }',
          '}',
        ]
      : v.bits === 1
        ? [
            // a row word (32 channels) is two slices' 16-bit runs, each sharing its u32 with the block's other token
            'fn putValueWord(kv: u32, t: u32, w: u32, word: u32) {',
            '  for (var h = 0u; h < 2u; h = h + 1u) {',
            `    let c = w * 32u + h * 16u;`,
            `    let a = ${at.index};`,
            `    let sh = ${at.shift};`,
            '    V[a] = (V[a] & ~(0xffffu << sh)) | (((word >> (h * 16u)) & 0xffffu) << sh);',
            '  }',
            '}',
          ]
        : ['fn putValueWord(kv: u32, t: u32, w: u32, word: u32) {', `  V[${valueCodeAt(s.headDim, v.bits, 'kv', 't', `w * ${32 / v.bits}u`).index}] = word;`, '}'];
  }
  const bit = `c * ${v.bits}u`;
  return [
    'fn donorValueCode(kv: u32, t: u32, c: u32) -> u32 {',
    quad
      ? `  return (dV[${valueQuadIndex(s.headDim, v.bits, 'kv', 't', `(${bit}) / 8u`)}] >> ((t % 4u) * 8u + (${bit}) % 8u)) & ${M}u;`
      : `  return (dV[${at.index}] >> (${at.shift})) & ${M}u;`,
    '}',
  ];
}

/**
 * `r16(x)`: x rounded to the nearest fp16 value, ties to even, as a float32 (±Infinity above 65504 + half an ulp).
 * Written out because `pack2x16float`'s rounding is implementation-defined (lavapipe truncates).
 */
const R16 = [
  'fn r16(x: f32) -> f32 {',
  '  let b = bitcast<u32>(x);',
  '  let sign = b & 0x80000000u;',
  '  let a = b & 0x7fffffffu;',
  '  if (a > 0x7f800000u) { return x; }',
  '  if (a >= 0x477ff000u) { return bitcast<f32>(sign | 0x7f800000u); }',
  '  if (a < 0x38800000u) { return bitcast<f32>(sign | bitcast<u32>(round(abs(x) * 16777216.0) / 16777216.0)); }',
  '  return bitcast<f32>(sign | ((a + 0xfffu + ((a >> 13u) & 1u)) & 0xffffe000u));',
  '}',
];

/**
 * `scaleOf(mn, mx, m)`: the group scale of `@xquant/quant`'s fp16 recipe including its guards (`statsOfRounded` /
 * `boundScale`): a range wider than fp16 is taken exactly, and a scale whose top reconstruction `r(r(m·s) + z)` would
 * overflow is lowered to the largest fp16 scale that keeps it finite (binary search over the fp16 bit patterns).
 * `diff(x, mn)`: `r(x − mn)`, exact where that overflows.
 */
const SCALE_OF = [
  'fn topFinite(m: f32, s: f32, z: f32) -> bool {',
  '  let p = m * s;',
  '  var v = 0.0;',
  '  if (p >= 65520.0) { v = r16(p + z); } else { v = r16(r16(p) + z); }',
  '  return abs(v) <= 65504.0;',
  '}',
  'fn scaleOf(mn: f32, mx: f32, m: f32, invM: f32) -> f32 {',
  '  var range = r16(mx - mn);',
  '  if (range > 65504.0) { range = mx - mn; }',
  '  var s = r16(range * invM);',
  '  if (!(mn + m * s < 65376.0)) {',
  '    s = min(s, 65504.0);',
  '    if (!topFinite(m, s, mn)) {',
  '      var lo = 0u;',
  '      var hi = pack2x16float(vec2<f32>(s, 0.0)) & 0xffffu;',
  '      while (hi - lo > 1u) {',
  '        let mid = lo + (hi - lo) / 2u;',
  '        if (topFinite(m, unpack2x16float(mid).x, mn)) { lo = mid; } else { hi = mid; }',
  '      }',
  '      s = unpack2x16float(lo).x;',
  '    }',
  '  }',
  '  return s;',
  '}',
  'fn diff(x: f32, mn: f32) -> f32 {',
  '  let u = r16(x - mn);',
  '  return select(u, x - mn, u > 65504.0);',
  '}',
];

/** Threads per workgroup of the update pass. @internal */
export const UPDATE_WORKGROUP = 64;
/** Threads per workgroup of the merge pass, whose extra workgroups run the quantization roles. @internal */
export const MERGE_WORKGROUP = 256;

const fl = (x: number): string => {
  const s = Math.fround(x).toPrecision(9);
  return s.includes('.') || s.includes('e') ? s : `${s}.0`;
};

/**
 * Whether a layer's value groups are quantized cooperatively (one thread per element, workgroup reductions): value
 * groups of a power of two that tiles the merge pass's workgroup. Other widths keep one thread per group.
 * @internal
 */
export function cooperativeValues(s: Pick<UpdateSpec, 'values'>): boolean {
  if (s.values.kind !== 'packed') return false;
  const n = s.values.groupSize;
  const W = MERGE_WORKGROUP;
  return (n & (n - 1)) === 0 && (n * s.values.bits) % 32 === 0 && (n <= W ? W % n === 0 : n % W === 0);
}

/**
 * Whether a layer's key blocks are flushed cooperatively (one thread per element, workgroup reductions): the channel
 * layout, key groups of a power of two that tile the merge pass's workgroup and fill whole words. Others keep one
 * thread per channel and group.
 * @internal
 */
export function cooperativeKeys(s: Pick<UpdateSpec, 'keys' | 'keyLayout'>): boolean {
  if (s.keys.kind !== 'packed') return false;
  const n = s.keys.groupSize;
  // quad layout: a word holds 4 channels, so a workgroup's channels must come in whole quads
  const quadOk = s.keyLayout !== 'quad' || ((MERGE_WORKGROUP / n) % 4 === 0 && (n * s.keys.bits) % 8 === 0);
  return (n & (n - 1)) === 0 && n <= MERGE_WORKGROUP && (n * s.keys.bits) % 32 === 0 && quadOk;
}

/** Thread counts of the update pass's roles, in order: q, k, v; `total` = every thread dispatched (whole workgroups). @internal */
export function updateRoles(s: UpdateSpec): { q: number; k: number; v: number; total: number } {
  const q = (s.qHeads * s.headDim) / 4;
  const k = (s.kvHeads * s.headDim) / 4;
  const v = k;
  return { q, k, v, total: Math.ceil((q + k + v) / UPDATE_WORKGROUP) * UPDATE_WORKGROUP };
}

/**
 * Workgroups of the quantization roles (extra workgroups of the merge pass, {@link MERGE_WORKGROUP} threads each), in
 * order: the cooperative key flush (`keyWorkgroups`), or `kf` threads of the per-thread one; then the value token from
 * workgroup `valueWorkgroup` (after those). `workgroups` = every workgroup they need (0: nothing packed).
 * @internal
 */
export function quantizeRoles(s: UpdateSpec): { keyWorkgroups: number; kf: number; valueWorkgroup: number; workgroups: number } {
  const W = MERGE_WORKGROUP;
  // cooperative key flush: the first workgroups, W / groupSize groups (channels) each; the other roles follow them
  const kg = s.keys.kind === 'packed' ? s.keys.groupSize : 1;
  const keyWorkgroups = cooperativeKeys(s) ? Math.ceil((s.kvHeads * s.headDim * s.residualLength) / kg / (W / kg)) : 0;
  // own codes in the quad layout: one thread per 4 channels (a word holds 4 channels)
  const channelsPerThread = s.keys.kind === 'packed' && s.keyLayout === 'quad' && !s.keys.donor ? 4 : 1;
  const kf = s.keys.kind === 'packed' && keyWorkgroups === 0 ? (s.kvHeads * s.headDim * s.residualLength) / s.keys.groupSize / channelsPerThread : 0;
  const valueWorkgroup = Math.ceil(kf / W);
  if (s.values.kind !== 'packed') return { keyWorkgroups, kf, valueWorkgroup, workgroups: keyWorkgroups + valueWorkgroup };
  // value groups divide a power-of-two head dim of at most 256 and hold whole words (the cache checks both)
  if (!cooperativeValues(s)) throw new Error(`internal: value groups of ${s.values.groupSize} channels (${s.values.bits}-bit) do not tile the ${W}-thread workgroup`);
  const perThread = Math.max(1, s.values.groupSize / W);
  const vw = Math.ceil((s.kvHeads * s.headDim) / (W * perThread));
  return { keyWorkgroups, kf, valueWorkgroup, workgroups: keyWorkgroups + valueWorkgroup + vw };
}

/**
 * The key block owed (`kflush`), quantized by whole workgroups: thread (channel `lid % CH`, token `lid / CH`) of
 * `CH = W / groupSize` channels per workgroup, min/max by tree reduction over the group's tokens in workgroup memory, one
 * packed word per `32 / bits` tokens of a channel (quad layout: per 4 channels × `8 / bits` tokens), calibration (η,
 * least squares in the serial kernel's order) by the group's first thread — the same codes and metadata as
 * {@link quantGroup}.
 */
function cooperativeKeyRole(s: UpdateSpec): string[] {
  const k = s.keys as DeviceStorage & { kind: 'packed' };
  const D = s.headDim;
  const W = MERGE_WORKGROUP;
  const { n, bits, M, CPW } = groupCodes(k);
  const CH = W / n;
  const NG = s.residualLength / n;
  const total = s.kvHeads * D * NG;
  const L: string[] = [
    `var<workgroup> kx: array<f32, ${W}>;`,
    `var<workgroup> kcode: array<u32, ${W}>;`,
    `var<workgroup> kmin: array<f32, ${W}>;`,
    `var<workgroup> kmax: array<f32, ${W}>;`,
    'fn flushKeyBlock(kw: u32, lid: u32, kflush: u32) {',
    '  if (kflush == 0xffffffffu) { return; }',
    `  let dl = lid % ${CH}u;`,
    `  let j = lid / ${CH}u;`,
    // group (kv, g, d), channel fastest; threads past the last group take part in the barriers only
    `  let gi = kw * ${CH}u + dl;`,
    `  let live = gi < ${total}u;`,
    `  let d = gi % ${D}u;`,
    `  let g = (gi / ${D}u) % ${NG}u;`,
    `  let kv = min(gi / ${D * NG}u, ${s.kvHeads - 1}u);`,
    `  let tb = kflush + g * ${n}u;`,
    `  var x = 0.0;`,
    `  if (live) { x = r16(ring[(kv * S.kring + (tb + j) % S.kring) * ${D}u + d]); }`,
    '  kx[lid] = x;',
    '  kmin[lid] = x;',
    '  kmax[lid] = x;',
    '  workgroupBarrier();',
  ];
  for (let stride = n / 2; stride >= 1; stride /= 2) {
    L.push(`  if (j < ${stride}u) { kmin[lid] = min(kmin[lid], kmin[lid + ${stride * CH}u]); kmax[lid] = max(kmax[lid], kmax[lid + ${stride * CH}u]); }`, '  workgroupBarrier();');
  }
  L.push('  let mn = kmin[dl];', `  var sc = scaleOf(mn, kmax[dl], ${M}.0, ${fl(1 / M)});`, '  var z = mn;');
  const nw = `(S.cap / ${CPW}u)`;
  const quad = s.keyLayout === 'quad';
  const TPB = 8 / bits; // quad layout: tokens per byte
  if (k.donor && quad) {
    L.push(`  kcode[lid] = (dK[${keyWordIndex(D, 'kv', nw, `(tb + j) / ${CPW}u`, `(d & ~3u) + ((tb + j) / ${TPB}u) % 4u`)}] >> ((d % 4u) * 8u + ((tb + j) % ${TPB}u) * ${bits}u)) & ${M}u;`);
  } else if (k.donor) {
    L.push(`  kcode[lid] = (dK[${keyWordIndex(D, 'kv', nw, `(tb + j) / ${CPW}u`, 'd')}] >> (((tb + j) % ${CPW}u) * ${bits}u)) & ${M}u;`);
  } else {
    L.push(`  kcode[lid] = u32(select(0.0, clamp(round(r16(diff(x, mn) / sc)), 0.0, ${M}.0), sc > 0.0));`);
  }
  L.push('  workgroupBarrier();', '  if (!live) { return; }');
  if (!k.donor && quad) {
    // one word per 4 channels × TPB tokens (byte e = channel 4q + e, bit field t = token), by its first thread
    L.push(
      `  if (d % 4u == 0u && j % ${TPB}u == 0u) {`,
      '    var word = 0u;',
      `    for (var e = 0u; e < 4u; e = e + 1u) { for (var t = 0u; t < ${TPB}u; t = t + 1u) { word = word | (kcode[(j + t) * ${CH}u + dl + e] << (e * 8u + t * ${bits}u)); } }`,
      '    let tok = tb + j;',
      `    K[${keyWordIndex(D, 'kv', nw, `tok / ${CPW}u`, `d + (tok / ${TPB}u) % 4u`)}] = word;`,
      '  }',
    );
  } else if (!k.donor) {
    // one word per CPW tokens of the channel, by the word's first thread
    L.push(
      `  if (j % ${CPW}u == 0u) {`,
      '    var word = 0u;',
      `    for (var i = 0u; i < ${CPW}u; i = i + 1u) { word = word | (kcode[(j + i) * ${CH}u + dl] << (i * ${bits}u)); }`,
      `    K[${keyWordIndex(D, 'kv', nw, `(tb + j) / ${CPW}u`, 'd')}] = word;`,
      '  }',
    );
  }
  L.push('  if (j != 0u) { return; }');
  L.push(...calibrationLines(k.calibration, M, n, 'sc', (jj) => `kx[${jj} * ${CH}u + dl]`, (jj) => `kcode[${jj} * ${CH}u + dl]`).map((l) => `  ${l}`));
  L.push(`  K[${s.keyMetaOffset}u + ${keyWordIndex(D, 'kv', `(S.cap / ${n}u)`, `tb / ${n}u`, 'd')}] = pack2x16float(vec2<f32>(sc, z));`, '}');
  return L;
}

interface QuantGroup {
  /** number of elements of the group */
  n: number;
  bits: GpuBits;
  /** expression of element j's source value (j is a u32 loop variable) */
  value: (j: string) => string;
  /** own codes: write packed word k (u32 expression `word`) */
  writeWord?: (k: string, word: string) => string;
  /** donor codes: expression of code j */
  donorCode?: (j: string) => string;
  /** statement keeping code j (`cs[j]`) for the caller to pack (instead of `writeWord`) */
  codesOut?: (j: string) => string;
  calibration: DeviceCalibration;
  /** statement storing the packed meta `m` */
  writeMeta: (m: string) => string;
}

/** Groups up to this many elements are quantized by straight-line code (see {@link quantGroup}). */
const UNROLL_GROUP = 64;

/**
 * Quantize one group: statistics, codes (own or donor), calibration, metadata. Groups of up to {@link UNROLL_GROUP}
 * elements are written out element by element with constant indices: every load is issued before the first is used and
 * the arrays stay in registers (as loops, a key flush of 32 tokens took 16 µs per layer on an H200, 8 KV heads).
 */
function quantGroup(q: QuantGroup): string[] {
  const { M, CPW } = groupCodes({ groupSize: q.n, bits: q.bits });
  const unrolled = q.n <= UNROLL_GROUP;
  // one statement per element: written out with constant indices, or as a loop over j
  const each = (body: (j: string) => string): string[] =>
    unrolled ? Array.from({ length: q.n }, (_, j) => body(`${j}u`)) : [`for (var j = 0u; j < ${q.n}u; j = j + 1u) { ${body('j')} }`];
  const L: string[] = [`var xs: array<f32, ${q.n}>;`, `var cs: array<u32, ${q.n}>;`, 'var mn = 3.0e38;', 'var mx = -3.0e38;'];
  // every load first, then the statistics (unrolled: the loads are all in flight before the first is used)
  L.push(...each((j) => `xs[${j}] = r16(${q.value(j)});`), ...each((j) => `mn = min(mn, xs[${j}]); mx = max(mx, xs[${j}]);`));
  L.push(`var s = scaleOf(mn, mx, ${M}.0, ${fl(1 / M)});`, 'var z = mn;');
  if (q.donorCode) {
    L.push(...each((j) => `cs[${j}] = ${q.donorCode!(j)};`));
  } else {
    L.push(...each((j) => `cs[${j}] = u32(select(0.0, clamp(round(r16(diff(xs[${j}], mn) / s)), 0.0, ${M}.0), s > 0.0));`));
    if (q.writeWord && unrolled) {
      for (let k = 0; k < q.n / CPW; k++) {
        const word = Array.from({ length: CPW }, (_, i) => `(cs[${k * CPW + i}u] << ${i * q.bits}u)`).join(' | ');
        L.push(q.writeWord(`${k}u`, word));
      }
    } else if (q.writeWord) {
      L.push(
        `for (var k = 0u; k < ${q.n / CPW}u; k = k + 1u) {`,
        '  var word = 0u;',
        `  for (var i = 0u; i < ${CPW}u; i = i + 1u) { word = word | (cs[k * ${CPW}u + i] << (i * ${q.bits}u)); }`,
        `  ${q.writeWord('k', 'word')}`,
        '}',
      );
    }
  }
  if (q.codesOut) L.push(...each(q.codesOut));
  L.push(...calibrationLines(q.calibration, M, q.n, 's', (j) => `xs[${j}]`, (j) => `cs[${j}]`));
  L.push(q.writeMeta('pack2x16float(vec2<f32>(s, z))'));
  return L;
}

/** A packed operand's group size `n`, bits, largest code `M` and codes per 32-bit word `CPW`. */
function groupCodes(op: { groupSize: number; bits: GpuBits }): { n: number; bits: GpuBits; M: number; CPW: number } {
  return { n: op.groupSize, bits: op.bits, M: (1 << op.bits) - 1, CPW: 32 / op.bits };
}

/**
 * Lines calibrating the scale `sv` and zero `z` of a group of `n` elements with `m = 2^bits − 1` levels: η pulls the
 * levels inward (`z += r(r(sv·m)·η)`, `sv = r(sv·(1 − 2η))`); least squares refits them from the elements `x(j)` and
 * codes `code(j)`; none leaves them.
 */
function calibrationLines(cal: DeviceCalibration | undefined, M: number, n: number, sv: string, x: (j: string) => string, code: (j: string) => string): string[] {
  if (cal?.kind === 'eta' && cal.eta !== 0) return [`let t1 = r16(${sv} * ${M}.0);`, `let t2 = r16(t1 * ${fl(cal.eta)});`, 'z = r16(z + t2);', `${sv} = r16(${sv} * ${fl(1 - 2 * cal.eta)});`];
  if (cal?.kind === 'least-squares') return leastSquares(n, x, code, sv);
  return [];
}

/**
 * Least-squares refit of scale/zero for the codes (kept when its error is not larger): sums in element order.
 * `x(j)`/`code(j)` give element j's value and code; `sv` names the scale variable, `z` the zero.
 */
function leastSquares(n: number, x: (j: string) => string, code: (j: string) => string, sv: string): string[] {
  return [
    'var cm = 0.0;',
    'var xm = 0.0;',
    `for (var j = 0u; j < ${n}u; j = j + 1u) { cm = cm + f32(${code('j')}); xm = xm + ${x('j')}; }`,
    `cm = cm / ${n}.0;`,
    `xm = xm / ${n}.0;`,
    'var scc = 0.0;',
    'var scx = 0.0;',
    `for (var j = 0u; j < ${n}u; j = j + 1u) { let dc = f32(${code('j')}) - cm; scc = scc + dc * dc; scx = scx + dc * (${x('j')} - xm); }`,
    'if (scc > 0.0) {',
    '  let s2 = r16(scx / scc);',
    '  let z2 = r16(xm - (scx / scc) * cm);',
    '  if (abs(s2) <= 65504.0 && abs(z2) <= 65504.0) {',
    '    var e1 = 0.0;',
    '    var e2 = 0.0;',
    `    for (var j = 0u; j < ${n}u; j = j + 1u) {`,
    `      let a = ${x('j')} - (f32(${code('j')}) * ${sv} + z);`,
    `      let b = ${x('j')} - (f32(${code('j')}) * s2 + z2);`,
    '      e1 = e1 + a * a;',
    '      e2 = e2 + b * b;',
    '    }',
    `    if (e2 <= e1) { ${sv} = s2; z = z2; }`,
    '  }',
    '}',
  ];
}

/**
 * The value token owed by the previous position, quantized by whole workgroups: one thread per element (or
 * `groupSize/64` of them), min/max by tree reduction in workgroup memory, one packed word per thread, least squares
 * summed by the group's first thread in the serial kernel's order — the same codes and metadata as {@link quantGroup}.
 */
function cooperativeValueRole(s: UpdateSpec): string[] {
  const v = s.values as DeviceStorage & { kind: 'packed' };
  const D = s.headDim;
  const W = MERGE_WORKGROUP;
  const { n, bits, M, CPW } = groupCodes(v);
  const EPT = Math.max(1, n / W);
  const T = Math.min(n, W);
  const E = s.kvHeads * D;
  const G = D / n;
  const wpg = (n * bits) / 32;
  const NW = Math.ceil(E / (W * EPT));
  const L: string[] = [
    `var<workgroup> vx: array<f32, ${W * EPT}>;`,
    `var<workgroup> vcode: array<u32, ${W * EPT}>;`,
    `var<workgroup> vmin: array<f32, ${W}>;`,
    `var<workgroup> vmax: array<f32, ${W}>;`,
    'fn quantizeValueToken(vw: u32, lid: u32, vquant: u32) {',
    `  if (vw >= ${NW}u || vquant == 0xffffffffu) { return; }`,
    '  let t = vquant;',
    `  let base = vw * ${W * EPT}u;`,
    '  var mn = 3.0e38;',
    '  var mx = -3.0e38;',
    `  for (var i = 0u; i < ${EPT}u; i = i + 1u) {`,
    `    let idx = lid + ${W}u * i;`,
    '    let e = base + idx;',
    `    if (e < ${E}u) {`,
    `      let kv = e / ${D}u;`,
    `      let x = r16(ring[${s.valueRingOffset}u + (kv * S.vring + t % S.vring) * ${D}u + e % ${D}u]);`,
    '      vx[idx] = x;',
    '      mn = min(mn, x);',
    '      mx = max(mx, x);',
    '    }',
    '  }',
    '  vmin[lid] = mn;',
    '  vmax[lid] = mx;',
    '  workgroupBarrier();',
  ];
  for (let stride = T / 2; stride >= 1; stride /= 2) {
    L.push(
      `  if (lid % ${T}u < ${stride}u) { vmin[lid] = min(vmin[lid], vmin[lid + ${stride}u]); vmax[lid] = max(vmax[lid], vmax[lid + ${stride}u]); }`,
      '  workgroupBarrier();',
    );
  }
  L.push(
    `  let seg = lid - lid % ${T}u;`,
    '  let gmin = vmin[seg];',
    `  var sc = scaleOf(gmin, vmax[seg], ${M}.0, ${fl(1 / M)});`,
    '  var z = gmin;',
    // the group of this thread's segment: first element, head, group index, cache row
    `  let ge = base + (seg / ${T}u) * ${n}u;`,
    `  let kv = ge / ${D}u;`,
    `  let g = (ge % ${D}u) / ${n}u;`,
    `  for (var i = 0u; i < ${EPT}u; i = i + 1u) {`,
    `    let idx = lid + ${W}u * i;`,
    `    if (base + idx < ${E}u) {`,
  );
  if (v.donor) {
    L.push(`      vcode[idx] = donorValueCode(kv, t, g * ${n}u + idx % ${n}u);`);
  } else {
    L.push('      var c = 0.0;', `      if (sc > 0.0) { c = clamp(round(r16(diff(vx[idx], gmin) / sc)), 0.0, ${M}.0); }`, '      vcode[idx] = u32(c);');
  }
  L.push('    }', '  }', '  workgroupBarrier();', `  if (ge >= ${E}u) { return; }`, `  let tj = lid % ${T}u;`, `  let gb = (seg / ${T}u) * ${n}u;`);
  if (!v.donor) {
    L.push(
      `  for (var k = tj; k < ${wpg}u; k = k + ${T}u) {`,
      '    var word = 0u;',
      `    for (var i = 0u; i < ${CPW}u; i = i + 1u) { word = word | (vcode[gb + k * ${CPW}u + i] << (i * ${bits}u)); }`,
      `    putValueWord(kv, t, g * ${wpg}u + k, word);`,
      '  }',
    );
  }
  L.push('  if (tj != 0u) { return; }');
  L.push(...calibrationLines(v.calibration, M, n, 'sc', (j) => `vx[gb + ${j}]`, (j) => `vcode[gb + ${j}]`).map((l) => `  ${l}`));
  L.push(`  V[${s.valueMetaOffset}u + ${valueMetaIndex(G, 'kv', 't', 'g')}] = pack2x16float(vec2<f32>(sc, z));`, '}');
  return L;
}

/**
 * The update kernel of one layer: rotary embedding of q and k, the new key and value stored (fp16 rows or the rings).
 * The quantization the schedule owes runs in the merge pass ({@link quantizeSource}). @internal
 */
export function updateKernelSource(s: UpdateSpec): string {
  const D = s.headDim;
  const Q4 = D / 4;
  const H2 = D / 2;
  const r = updateRoles(s);
  const L: string[] = [];
  const push = (...l: string[]) => L.push(...l);
  void STEP_FIELDS;
  push(stepStruct());
  push('@group(0) @binding(0) var<storage, read> qkv: array<f32>;');
  push('@group(0) @binding(1) var<storage, read> rope: array<f32>;');
  push('@group(0) @binding(2) var<storage, read_write> qout: array<f32>;');
  push('@group(0) @binding(3) var<storage, read_write> K: array<u32>;');
  push('@group(0) @binding(4) var<storage, read_write> V: array<u32>;');
  push('@group(0) @binding(5) var<storage, read_write> ring: array<f32>;');
  push('@group(0) @binding(6) var<uniform> S: Step;');
  push(...R16);
  // rotate channels (c, c+1) and (c + D/2, c + 1 + D/2) of the head starting at `base`
  push(
    'fn rot(base: u32, e: u32, pos: u32) -> array<f32, 4> {',
    '  let c = 2u * e;',
    `  let a0 = qkv[base + c]; let a1 = qkv[base + c + 1u]; let b0 = qkv[base + c + ${H2}u]; let b1 = qkv[base + c + 1u + ${H2}u];`,
  );
  if (s.rope) {
    push(
      `  let rb = pos * ${D}u + c;`,
      `  let c0 = rope[rb]; let c1 = rope[rb + 1u]; let s0 = rope[rb + ${H2}u]; let s1 = rope[rb + 1u + ${H2}u];`,
      '  return array<f32, 4>(a0 * c0 - b0 * s0, a1 * c1 - b1 * s1, b0 * c0 + a0 * s0, b1 * c1 + a1 * s1);',
    );
  } else {
    push('  return array<f32, 4>(a0, a1, b0, b1);');
  }
  push('}');
  // store channels (2e, 2e+1, 2e + D/2, 2e + 1 + D/2) of the new token of head kv
  const store = (buf: 'K' | 'V', op: DeviceStorage, ringBase: string, ringLen: string) => {
    if (op.kind === 'dense' && buf === 'K') {
      push(
        `K[${denseKeyIndex(D, 'kv', 'pos', 'e')}] = pack2x16float(vec2<f32>(r16(x[0]), r16(x[1])));`,
        `K[${denseKeyIndex(D, 'kv', 'pos', `e + ${D / 4}u`)}] = pack2x16float(vec2<f32>(r16(x[2]), r16(x[3])));`,
      );
    } else if (op.kind === 'dense') {
      push(
        `let row = (kv * S.cap + pos) * ${H2}u;`,
        `${buf}[row + e] = pack2x16float(vec2<f32>(r16(x[0]), r16(x[1])));`,
        `${buf}[row + e + ${D / 4}u] = pack2x16float(vec2<f32>(r16(x[2]), r16(x[3])));`,
      );
    } else {
      push(
        `let rr = ${ringBase} + (kv * ${ringLen} + pos % ${ringLen}) * ${D}u + 2u * e;`,
        'ring[rr] = x[0];',
        'ring[rr + 1u] = x[1];',
        `ring[rr + ${H2}u] = x[2];`,
        `ring[rr + ${H2 + 1}u] = x[3];`,
      );
    }
  };
  push(`@compute @workgroup_size(${UPDATE_WORKGROUP})`);
  push(
    'fn main(@builtin(global_invocation_id) gid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {',
  );
  const stride = (s.qHeads + 2 * s.kvHeads) * D;
  if (s.batched) {
    // thread gid of row rr: position S.pos + rr, row rr of qkv and of qout
    push(`let flat = gid3.x + gid3.y * nwg.x * ${UPDATE_WORKGROUP}u;`, `let rr = flat / ${r.total}u;`, `let gid = flat % ${r.total}u;`);
    push('if (rr >= S.rows) { return; }', 'let pos = S.pos + rr;', `let qb = rr * ${stride}u;`, `let qo = rr * ${s.qHeads * D}u;`);
  } else {
    push(`let gid = gid3.x + gid3.y * nwg.x * ${UPDATE_WORKGROUP}u;`);
    // this position's q, k, v: row S.row of the qkv buffer
    push('let pos = S.pos;', `let qb = S.row * ${stride}u;`, 'let qo = 0u;');
  }
  let at = 0;
  // queries
  push(`if (gid < ${r.q}u) {`, `let h = gid / ${Q4}u;`, `let e = gid % ${Q4}u;`, `let x = rot(qb + h * ${D}u, e, pos);`);
  push(`let ob = qo + h * ${D}u + 2u * e;`, 'qout[ob] = x[0];', 'qout[ob + 1u] = x[1];', `qout[ob + ${H2}u] = x[2];`, `qout[ob + ${H2 + 1}u] = x[3];`, 'return;', '}');
  at += r.q;
  // keys
  const kOff = s.qHeads * D;
  const vOff = kOff + s.kvHeads * D;
  push(`if (gid < ${at + r.k}u) {`, `let i = gid - ${at}u;`, `let kv = i / ${Q4}u;`, `let e = i % ${Q4}u;`, `let x = rot(qb + ${kOff}u + kv * ${D}u, e, pos);`);
  store('K', s.keys, '0u', 'S.kring');
  push('return;', '}');
  at += r.k;
  // values (no rotation)
  push(`if (gid < ${at + r.v}u) {`, `let i = gid - ${at}u;`, `let kv = i / ${Q4}u;`, `let e = i % ${Q4}u;`, `let vb = qb + ${vOff}u + kv * ${D}u + 2u * e;`);
  push(`let x = array<f32, 4>(qkv[vb], qkv[vb + 1u], qkv[vb + ${H2}u], qkv[vb + ${H2 + 1}u]);`);
  store('V', s.values, `${s.valueRingOffset}u`, 'S.vring');
  push('return;', '}');
  push('}');
  return L.join('\n');
}

/**
 * The quantization a layer's schedule owes (the key block `kflush` and the value token `vquant`, read from the
 * rings), as extra workgroups of the merge pass ({@link MERGE_WORKGROUP} threads): `declarations` (bindings 3–7: K, V
 * read-write, ring, donor keys, donor values read-only; helpers; and `fn quantize(qw, lid, kflush, vquant)`, run by
 * quantization workgroup `qw` with thread `lid`, workgroup-uniform on entry, returning), `workgroups` it needs. Null
 * when nothing of the layer is packed.
 * @internal
 */
export function quantizeSource(s: UpdateSpec): { declarations: string[]; workgroups: number } | null {
  if (s.keys.kind !== 'packed' && s.values.kind !== 'packed') return null;
  const D = s.headDim;
  const r = quantizeRoles(s);
  const declarations: string[] = [
    '@group(0) @binding(3) var<storage, read_write> K: array<u32>;',
    '@group(0) @binding(4) var<storage, read_write> V: array<u32>;',
    '@group(0) @binding(5) var<storage, read> ring: array<f32>;',
    '@group(0) @binding(6) var<storage, read> dK: array<u32>;',
    '@group(0) @binding(7) var<storage, read> dV: array<u32>;',
    ...R16,
    ...SCALE_OF,
  ];
  // (quantizeRoles has checked that packed values take the cooperative role)
  if (s.values.kind === 'packed') declarations.push(...valueLayoutHelpers(s), ...cooperativeValueRole(s));
  if (r.keyWorkgroups > 0) declarations.push(...cooperativeKeyRole(s));
  const L: string[] = [];
  const push = (...l: string[]) => L.push(...l);
  // workgroup-uniform branches first: the cooperative roles synchronise their workgroups
  if (r.keyWorkgroups > 0) push(`if (qw < ${r.keyWorkgroups}u) { flushKeyBlock(qw, lid, kflush); return; }`, `let qv = qw - ${r.keyWorkgroups}u;`);
  else push('let qv = qw;');
  if (s.values.kind === 'packed') push(`if (qv >= ${r.valueWorkgroup}u) { quantizeValueToken(qv - ${r.valueWorkgroup}u, lid, vquant); return; }`);
  push(`let gid = qv * ${MERGE_WORKGROUP}u + lid;`);
  // the key block owed, one thread per (kv, d, g) where the cooperative flush does not tile the group
  if (s.keys.kind === 'packed' && r.keyWorkgroups === 0) {
    const k = s.keys;
    const gs = k.groupSize;
    const CPW = 32 / k.bits;
    const NG = s.residualLength / gs;
    const nw = `(S.cap / ${CPW}u)`;
    const M = (1 << k.bits) - 1;
    const quad = s.keyLayout === 'quad';
    const TPB = 8 / k.bits; // quad layout: tokens per byte
    const meta = (d: string) => `K[${s.keyMetaOffset}u + ${keyWordIndex(D, 'kv', `(S.cap / ${gs}u)`, `tb / ${gs}u`, d)}] = `;
    push(`if (gid < ${r.kf}u) {`, 'if (kflush == 0xffffffffu) { return; }', 'let i = gid;');
    if (quad && !k.donor) {
      // thread (kv, channel quad, g): the 4 channels' groups one after the other, then whole words
      push(`let dq = i % ${D / 4}u;`, `let kv = (i / ${D / 4}u) / ${NG}u;`, `let g = (i / ${D / 4}u) % ${NG}u;`, `let tb = kflush + g * ${gs}u;`);
      push(`var qc: array<u32, ${4 * gs}>;`);
      push('for (var e = 0u; e < 4u; e = e + 1u) {', 'let d = dq * 4u + e;');
      push(
        ...quantGroup({
          n: gs,
          bits: k.bits,
          value: (j) => `ring[(kv * S.kring + (tb + ${j}) % S.kring) * ${D}u + d]`,
          codesOut: (j) => `qc[e * ${gs}u + ${j}] = cs[${j}];`,
          calibration: k.calibration ?? { kind: 'none' },
          writeMeta: (m) => `${meta('d')}${m};`,
        }),
      );
      push('}');
      push(
        `for (var w = 0u; w < ${gs / TPB}u; w = w + 1u) {`,
        '  var word = 0u;',
        `  for (var e = 0u; e < 4u; e = e + 1u) { for (var j = 0u; j < ${TPB}u; j = j + 1u) { word = word | (qc[e * ${gs}u + w * ${TPB}u + j] << (e * 8u + j * ${k.bits}u)); } }`,
        `  let tok = tb + w * ${TPB}u;`,
        `  K[${keyWordIndex(D, 'kv', nw, `tok / ${CPW}u`, `dq * 4u + (tok / ${TPB}u) % 4u`)}] = word;`,
        '}',
      );
    } else {
      push(`let d = i % ${D}u;`, `let kv = (i / ${D}u) / ${NG}u;`, `let g = (i / ${D}u) % ${NG}u;`, `let tb = kflush + g * ${gs}u;`);
      const donorCode = quad
        ? (j: string) => `(dK[${keyWordIndex(D, 'kv', nw, `(tb + ${j}) / ${CPW}u`, `(d & ~3u) + ((tb + ${j}) / ${TPB}u) % 4u`)}] >> ((d % 4u) * 8u + ((tb + ${j}) % ${TPB}u) * ${k.bits}u)) & ${M}u`
        : (j: string) => `(dK[${keyWordIndex(D, 'kv', nw, `(tb + ${j}) / ${CPW}u`, 'd')}] >> (((tb + ${j}) % ${CPW}u) * ${k.bits}u)) & ${M}u`;
      push(
        ...quantGroup({
          n: gs,
          bits: k.bits,
          value: (j) => `ring[(kv * S.kring + (tb + ${j}) % S.kring) * ${D}u + d]`,
          ...(k.donor ? { donorCode } : { writeWord: (kk: string, w: string) => `K[${keyWordIndex(D, 'kv', nw, `tb / ${CPW}u + ${kk}`, 'd')}] = ${w};` }),
          calibration: k.calibration ?? { kind: 'none' },
          writeMeta: (m) => `${meta('d')}${m};`,
        }),
      );
    }
    push('return;', '}');
  }
  push('return;');
  return { declarations: [...declarations, 'fn quantize(qw: u32, lid: u32, kflush: u32, vquant: u32) {', ...L, '}'], workgroups: r.workgroups };
}

/** Consecutive positions one workgroup of {@link quantizeRowsSource} takes in order: no packed value word spans two such groups. @internal */
export const QUANTIZE_ROWS_GROUP = 8;

/**
 * The quantization a prefill batch owes, in one dispatch after its batched update pass (the rings then hold every
 * position of the batch, so they need `R + rows` key slots and `R + rows + 1` value slots): workgroup (x, y) runs
 * quantization workgroup x of {@link quantizeSource} for the positions of group y — the aligned groups of
 * {@link QUANTIZE_ROWS_GROUP} positions that meet `[S.pos, S.pos + S.rows)`, the first of them group 0 — one position
 * after the other, each with the key block and value token its position owes (as `beginPositions` computes them).
 * Tokens that share a packed value word (1-bit rows, the quad layout) fall in one group, so their read-modify-writes
 * are ordered. `q`: the layer's {@link quantizeSource}. Bindings as the merge's with quantization (`parts`, `out` unused).
 * @internal
 */
export function quantizeRowsSource(s: UpdateSpec, q: { declarations: string[] }): string {
  const R = s.residualLength;
  const G = QUANTIZE_ROWS_GROUP;
  // (the device cache's residual length is a multiple of 16: position groups and value token groups align)
  if (R % G !== 0) throw new Error(`quantizeRowsSource: the residual length ${R} is not a multiple of ${G}`);
  return [
    stepStruct(),
    '@group(0) @binding(2) var<uniform> S: Step;',
    ...q.declarations,
    `@compute @workgroup_size(${MERGE_WORKGROUP})`,
    'fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {',
    `  let first = (S.pos / ${G}u + wid.y) * ${G}u;`,
    `  for (var i = 0u; i < ${G}u; i = i + 1u) {`,
    '    let p = first + i;',
    '    if (p < S.pos || p >= S.pos + S.rows) { continue; }',
    '    let n = p + 1u;',
    `    let kflush = select(0xffffffffu, n - ${R}u, n % ${R}u == 0u);`,
    `    let vquant = select(0xffffffffu, p - ${R}u, p >= ${R}u);`,
    '    quantize(wid.x, lid, kflush, vquant);',
    // this position's words and workgroup memory before the next position's
    '    storageBarrier();',
    '    workgroupBarrier();',
    '  }',
    '}',
  ].join('\n');
}

/** Aligned groups of {@link QUANTIZE_ROWS_GROUP} positions a batch of `rows` positions from `pos` meets (dispatch y of {@link quantizeRowsSource}). @internal */
export function quantizeRowsGroups(pos: number, rows: number): number {
  const G = QUANTIZE_ROWS_GROUP;
  return Math.floor((pos + rows - 1) / G) - Math.floor(pos / G) + 1;
}

/** Kinds of synthetic data {@link fillSource} writes. @internal */
export type FillKind = 'words' | 'f16' | 'meta' | 'f32';

/**
 * Synthetic fill (benchmarks): `count` u32/f32 elements from `offset` with hashed pseudo-random data — random words
 * (codes), fp16 pairs in [−1, 1), packed fp16 (scale ∈ [0.02, 0.07), zero ∈ [−1, 1)) or float32 in [−1, 1).
 * @internal
 */
export function fillSource(kind: FillKind): string {
  const ty = kind === 'f32' ? 'f32' : 'u32';
  const val: Record<FillKind, string> = {
    words: 'h',
    f16: 'pack2x16float(vec2<f32>(u01(h) * 2.0 - 1.0, u01(hash(h)) * 2.0 - 1.0))',
    meta: 'pack2x16float(vec2<f32>(0.02 + 0.05 * u01(h), u01(hash(h)) * 2.0 - 1.0))',
    f32: 'u01(h) * 2.0 - 1.0',
  };
  return [
    'struct Fill { offset: u32, count: u32, seed: u32, pad: u32 };',
    `@group(0) @binding(0) var<storage, read_write> buf: array<${ty}>;`,
    '@group(0) @binding(1) var<uniform> F: Fill;',
    'fn hash(x: u32) -> u32 { var v = x * 747796405u + 2891336453u; v = ((v >> ((v >> 28u) + 4u)) ^ v) * 277803737u; return (v >> 22u) ^ v; }',
    'fn u01(h: u32) -> f32 { return f32(h >> 8u) / 16777216.0; }',
    '@compute @workgroup_size(256)',
    'fn main(@builtin(global_invocation_id) gid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {',
    '  let i = gid3.x + gid3.y * nwg.x * 256u;',
    '  if (i >= F.count) { return; }',
    '  let h = hash(i ^ hash(F.seed));',
    `  buf[F.offset + i] = ${val[kind]};`,
    '}',
  ].join('\n');
}
