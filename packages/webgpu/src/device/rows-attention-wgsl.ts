/**
 * WGSL of the causal attention of a prefill batch over fp16 (dense) keys and values: the `S.rows` positions from
 * `S.pos` on attend in one dispatch per layer instead of one per position. Split-K as the decode kernel: workgroup
 * (chunk, KV head, query tile) scores one chunk of `S.rchunk` keys for {@link ROWS_QUERIES} queries — (row, head)
 * pairs of that KV head, one per thread — so every key and value row is loaded once per tile into workgroup memory and
 * read by all of them. Row r attends keys ≤ `S.pos + r`. Partials as the decode kernel's (unnormalized sum, max, sum of
 * weights), `[rows · qHeads][S.rnc][D + 2]`, merged by `combineSource(…, 'rows')`.
 * @internal
 */
import { denseKeyOctetIndex, stepStruct } from './attention-wgsl.js';

/** Threads of a workgroup of the batch attention: one query (row, head) each. @internal */
export const ROWS_QUERIES = 64;
/** Most chunks the batch attention splits the keys into (the partials buffer holds this many per query). @internal */
export const ROWS_MAX_CHUNKS = 64;
/** Fewest keys of a chunk. @internal */
export const ROWS_MIN_CHUNK = 64;

/** Keys staged in workgroup memory at a time: 8 KB of float32 keys and as many of values per workgroup (8 … 32 keys). @internal */
export function rowsKeyTile(headDim: number): number {
  return Math.max(8, Math.min(32, 2048 / headDim));
}

/**
 * Keys per chunk and chunks of a batch ending at position `end` (exclusive): at most `maxChunks` chunks (the partials
 * buffer's), each a whole number of key tiles and at least {@link ROWS_MIN_CHUNK} keys. @internal
 */
export function rowsChunking(end: number, headDim: number, maxChunks: number): { chunk: number; chunks: number } {
  const kt = rowsKeyTile(headDim);
  const chunk = Math.max(ROWS_MIN_CHUNK, Math.ceil(Math.ceil(end / maxChunks) / kt) * kt);
  return { chunk, chunks: Math.ceil(end / chunk) };
}

/** Bytes of one chunk's partials for every query of a batch of `rows` positions. @internal */
export function rowsChunkBytes(rows: number, qHeads: number, headDim: number): number {
  return rows * qHeads * (headDim + 2) * 4;
}

/**
 * The batch attention kernel for `rep` query heads per KV head of `qHeads`; dispatch (`S.rnc`, kvHeads,
 * ⌈rows · rep / {@link ROWS_QUERIES}⌉). Bindings: rotated queries `[rows][qHeads][D]` float32, dense keys and values
 * (the device cache's layouts), partials, the step uniform. Queries are scaled by `S.scale` here.
 * @internal
 */
export function rowsAttentionSource(headDim: number, qHeads: number, rep: number): string {
  const D = headDim;
  const D4 = D / 4;
  const D8 = D / 8;
  const KT = rowsKeyTile(D);
  const Q = ROWS_QUERIES;
  const PS = D + 2;
  return [
    stepStruct(),
    '@group(0) @binding(0) var<storage, read> qr: array<vec4<f32>>;',
    '@group(0) @binding(1) var<storage, read> K: array<vec4<u32>>;',
    '@group(0) @binding(2) var<storage, read> V: array<vec4<u32>>;',
    '@group(0) @binding(3) var<storage, read_write> parts: array<f32>;',
    '@group(0) @binding(4) var<uniform> S: Step;',
    `var<workgroup> kt: array<vec4<f32>, ${KT * D4}>;`,
    `var<workgroup> vt: array<vec4<f32>, ${KT * D4}>;`,
    'fn f16x8(w: vec4<u32>) -> array<vec4<f32>, 2> {',
    '  return array<vec4<f32>, 2>(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)));',
    '}',
    // an empty partial (no key of the chunk is attended by this query): weight 0 in the merge
    'fn emptyPartial(pb: u32) {',
    `  for (var i = 0u; i < ${D}u; i = i + 1u) { parts[pb + i] = 0.0; }`,
    `  parts[pb + ${D}u] = -3.0e38;`,
    `  parts[pb + ${D + 1}u] = 0.0;`,
    '}',
    `@compute @workgroup_size(${Q})`,
    'fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {',
    '  let chunk = wid.x;',
    '  let kv = wid.y;',
    `  let qi = wid.z * ${Q}u + lid;`,
    `  let live = qi < S.rows * ${rep}u;`,
    `  let r = min(qi / ${rep}u, S.rows - 1u);`,
    `  let h = kv * ${rep}u + qi % ${rep}u;`,
    // last key this query attends (causal), and the chunk's keys
    '  let last = S.pos + r;',
    '  let end = S.pos + S.rows;',
    '  let k0 = chunk * S.rchunk;',
    '  let k1 = min(k0 + S.rchunk, end);',
    `  let pb = ((r * ${qHeads}u + h) * S.rnc + chunk) * ${PS}u;`,
    // a tile whose every row ends before the chunk (workgroup-uniform) writes empty partials
    `  let tileLast = S.pos + min(S.rows - 1u, (wid.z * ${Q}u + ${Q - 1}u) / ${rep}u);`,
    '  if (tileLast < k0) {',
    '    if (live) { emptyPartial(pb); }',
    '    return;',
    '  }',
    `  var q: array<vec4<f32>, ${D4}>;`,
    `  for (var i = 0u; i < ${D4}u; i = i + 1u) { q[i] = qr[(r * ${qHeads}u + h) * ${D4}u + i] * S.scale; }`,
    `  var acc: array<vec4<f32>, ${D4}>;`,
    '  var m = -3.0e38;',
    '  var l = 0.0;',
    `  for (var t0 = k0; t0 < k1; t0 = t0 + ${KT}u) {`,
    '    workgroupBarrier();',
    // stage KT keys and values as float32: key loads octet-major (consecutive threads, consecutive tokens of one
    // channel octet: consecutive vec4s), value loads token-major (a token's row is contiguous)
    `    for (var e = lid; e < ${KT * D8}u; e = e + ${Q}u) {`,
    `      let o = e / ${KT}u;`,
    `      let tt = e % ${KT}u;`,
    `      let kx = f16x8(K[${denseKeyOctetIndex(D, 'kv', 'min(t0 + tt, end - 1u)', 'o')}]);`,
    `      kt[tt * ${D4}u + 2u * o] = kx[0];`,
    `      kt[tt * ${D4}u + 2u * o + 1u] = kx[1];`,
    `      let tv = e / ${D8}u;`,
    `      let ov = e % ${D8}u;`,
    `      let vx = f16x8(V[(kv * S.cap + min(t0 + tv, end - 1u)) * ${D8}u + ov]);`,
    `      vt[tv * ${D4}u + 2u * ov] = vx[0];`,
    `      vt[tv * ${D4}u + 2u * ov + 1u] = vx[1];`,
    '    }',
    '    workgroupBarrier();',
    `    var s: array<f32, ${KT}>;`,
    '    var mt = m;',
    `    for (var j = 0u; j < ${KT}u; j = j + 1u) {`,
    '      var d = vec4<f32>(0.0);',
    `      for (var i = 0u; i < ${D4}u; i = i + 1u) { d = fma(q[i], kt[j * ${D4}u + i], d); }`,
    '      let t = t0 + j;',
    '      s[j] = select(-3.0e38, d.x + d.y + d.z + d.w, live && t < k1 && t <= last);',
    '      mt = max(mt, s[j]);',
    '    }',
    // rescale once per tile, then mix the tile's values
    '    let corr = exp(m - mt);',
    '    l = l * corr;',
    `    for (var i = 0u; i < ${D4}u; i = i + 1u) { acc[i] = acc[i] * corr; }`,
    `    for (var j = 0u; j < ${KT}u; j = j + 1u) {`,
    '      let p = select(0.0, exp(s[j] - mt), s[j] > -1.0e38);',
    '      l = l + p;',
    `      for (var i = 0u; i < ${D4}u; i = i + 1u) { acc[i] = fma(vec4<f32>(p), vt[j * ${D4}u + i], acc[i]); }`,
    '    }',
    '    m = mt;',
    '  }',
    '  if (!live) { return; }',
    `  for (var i = 0u; i < ${D4}u; i = i + 1u) {`,
    '    let a = acc[i];',
    '    parts[pb + 4u * i] = a.x;',
    '    parts[pb + 4u * i + 1u] = a.y;',
    '    parts[pb + 4u * i + 2u] = a.z;',
    '    parts[pb + 4u * i + 3u] = a.w;',
    '  }',
    `  parts[pb + ${D}u] = m;`,
    `  parts[pb + ${D + 1}u] = l;`,
    '}',
  ].join('\n');
}
