/**
 * WGSL of the model side of the device decoder: embedding gather, matrix-vector products over fp16 weights (stored as
 * u32 pairs, read 8 at a time) with fused RMSNorm prologue and bias / residual / SwiGLU epilogues, and greedy or
 * Gumbel-max sampling that writes the next token id on the device.
 * @internal
 */

/** What a matrix-vector product does before and after `W·x`. @internal */
export interface MatvecSpec {
  /** Input features (a multiple of 8). */
  inFeatures: number;
  /** Output rows (for `swiglu`: pairs, i.e. W has 2·rows rows, gate and up interleaved). */
  rows: number;
  /** Rows per 32-thread group (each workgroup of 256 threads computes 8 × this many rows). */
  rowsPerGroup: number;
  /** Normalize the input by RMSNorm with weights `g` first (epsilon). */
  rmsNormEps?: number;
  /** Add a float32 bias per row (for swiglu: per W row, before the activation). */
  bias: boolean;
  /** `'store'`: y = Wx; `'residual'`: y += Wx; `'swiglu'`: y[i] = silu(W[2i]·x)·(W[2i+1]·x). */
  epilogue: 'store' | 'residual' | 'swiglu';
  /**
   * Subgroup size the kernel may assume (every subgroup full and this size), or unset: then the RMSNorm's sum of squares
   * is a `subgroupAdd` and one barrier instead of an eight-step tree, and a row's 32 lane partials are summed by
   * shuffles inside the subgroup (with subgroups narrower than 32, one workgroup-memory sum of the subgroups' partials).
   */
  subgroupSize?: number;
  /**
   * Keep the weight loads one batch ahead: the first batch is issued before the RMSNorm prologue (the weights do not
   * depend on the input, so their latency overlaps the norm), and each next batch before the current one's products
   * (register double-buffering, as the attention's value prefetch).
   */
  prefetchWeights?: boolean;
}

/** Workgroup size of the matrix-vector kernels. @internal */
export const MATVEC_WORKGROUP = 256;

/** Rows per workgroup of a spec. @internal */
export function matvecRowsPerWorkgroup(s: MatvecSpec): number {
  return 8 * s.rowsPerGroup;
}

/**
 * `y = epilogue(W · prologue(x))`. Bindings: 0 W (fp16 pairs `[rows′, in/2]`), 1 x (f32), 2 y (f32), 3 g (f32 norm
 * weights or unused), 4 bias (f32 or unused). Thread group `grp` (32 lanes) owns rows; lane `l` reads the vec4<u32>
 * columns `l, l+32, …` of each of its rows (coalesced), then the 32 partial sums of a row are added in workgroup memory.
 * @internal
 */
export function matvecSource(s: MatvecSpec): string {
  const IN = s.inFeatures;
  const K = IN / 8;
  const RPG = s.rowsPerGroup;
  const wRows = s.epilogue === 'swiglu' ? 2 : 1; // W rows per output row
  const RW = RPG * wRows; // W rows per group
  const SGS = s.subgroupSize;
  if (SGS !== undefined && (!Number.isInteger(SGS) || SGS < 4 || SGS > 128 || (SGS & (SGS - 1)) !== 0)) throw new Error(`subgroupSize must be a power of two from 4 to 128; got ${SGS}`);
  const L: string[] = [];
  const push = (...l: string[]) => L.push(...l);
  if (SGS) push('enable subgroups;', 'requires subgroup_id;');
  push(
    '@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;',
    '@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;',
    '@group(0) @binding(2) var<storage, read_write> y: array<f32>;',
    '@group(0) @binding(3) var<storage, read> g: array<vec4<f32>>;',
    '@group(0) @binding(4) var<storage, read> bias: array<f32>;',
    `var<workgroup> red: array<f32, ${256 * RW}>;`,
  );
  const norm = s.rmsNormEps !== undefined;
  if (norm) push(`var<workgroup> xs: array<vec4<f32>, ${IN / 4}>;`, 'var<workgroup> ss: array<f32, 256>;');
  push(
    '@compute @workgroup_size(256)',
    // with subgroups the thread index comes from the subgroup's, so a subgroup's lanes are consecutive threads
    SGS
      ? 'fn main(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sgid: u32, @builtin(subgroup_invocation_id) sgi: u32) {'
      : 'fn main(@builtin(workgroup_id) wid3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {',
    ...(SGS ? [`let lid = sgid * ${SGS}u + sgi;`] : []),
    'let wid = wid3.x + wid3.y * nwg.x;',
    'let grp = lid >> 5u;',
    'let lane = lid & 31u;',
    `let r0 = (wid * 8u + grp) * ${RPG}u;`,
  );
  const rowOf = (r: number) => (wRows === 2 ? `(r0 + ${r >> 1}u) * 2u + ${r & 1}u` : `r0 + ${r}u`);
  const totalW = s.rows * wRows;
  // every weight load of UK lane-strided columns × RW rows is issued before the products (loads in flight)
  const IT = Math.ceil(K / 32);
  const UK = Math.max(1, Math.min(IT, Math.floor(8 / RW)));
  const ragged = K % 32 !== 0;
  /**
   * Loads of the batch starting at column block `kb`: column `k{u}` and weights `w{u}_{r}` (names prefixed), as new
   * `let`s, as the prefetch registers' declarations (`var`) or assigned to them.
   */
  const loads = (kb: string, pre: string, mode: 'let' | 'var' | 'assign' = 'let') => {
    const decl = mode === 'assign' ? '' : `${mode} `;
    for (let u = 0; u < UK; u++) {
      push(`${decl}${pre}k${u} = min(lane + (${kb} + ${u}u) * 32u, ${K - 1}u);`);
      for (let r = 0; r < RW; r++) push(`${decl}${pre}w${u}_${r} = W[min(${rowOf(r)}, ${totalW - 1}u) * ${K}u + ${pre}k${u}];`);
    }
  };
  const prefetch = s.prefetchWeights === true;
  // the first batch into the prefetch registers, before the norm
  if (prefetch) loads('0u', 'f', 'var');
  if (norm) {
    // RMSNorm prologue: sum of squares over the workgroup, normalized x·g into workgroup memory
    push('var sq = 0.0;', `for (var i = lid; i < ${IN / 4}u; i = i + 256u) { let v = x[i]; sq = sq + dot(v, v); }`);
    if (SGS) {
      // each subgroup's sum, then every thread adds the 256 / SGS of them
      push('let sqs = subgroupAdd(sq);', 'if (sgi == 0u) { ss[sgid] = sqs; }', 'workgroupBarrier();', `var tot = 0.0;`, `for (var i = 0u; i < ${256 / SGS}u; i = i + 1u) { tot = tot + ss[i]; }`);
    } else {
      push('ss[lid] = sq;', 'workgroupBarrier();', 'for (var st = 128u; st >= 1u; st = st >> 1u) {', '  if (lid < st) { ss[lid] = ss[lid] + ss[lid + st]; }', '  workgroupBarrier();', '}', 'let tot = ss[0];');
    }
    push(
      `let inv = inverseSqrt(tot / ${IN}.0 + ${s.rmsNormEps!.toExponential(8)});`,
      `for (var i = lid; i < ${IN / 4}u; i = i + 256u) { xs[i] = x[i] * inv * g[i]; }`,
      'workgroupBarrier();',
    );
  }
  const xv = (idx: string) => (norm ? `xs[${idx}]` : `x[${idx}]`);
  for (let r = 0; r < RW; r++) push(`var a${r} = 0.0;`);
  /** Products of the batch at column block `kb` whose loads have the prefix `pre`. */
  const products = (kb: string, pre: string) => {
    for (let u = 0; u < UK; u++) {
      const live = ragged || IT % UK !== 0 ? `select(0.0, 1.0, lane + (${kb} + ${u}u) * 32u < ${K}u)` : '';
      push(`let ${pre}x${u}a = ${xv(`2u * ${pre}k${u}`)}${live ? ` * ${live}` : ''};`, `let ${pre}x${u}b = ${xv(`2u * ${pre}k${u} + 1u`)}${live ? ` * ${live}` : ''};`);
      for (let r = 0; r < RW; r++) {
        const w = `${pre}w${u}_${r}`;
        push(`a${r} = a${r} + dot(vec4<f32>(unpack2x16float(${w}.x), unpack2x16float(${w}.y)), ${pre}x${u}a) + dot(vec4<f32>(unpack2x16float(${w}.z), unpack2x16float(${w}.w)), ${pre}x${u}b);`);
      }
    }
  };
  push(`for (var kb = 0u; kb < ${IT}u; kb = kb + ${UK}u) {`);
  if (prefetch) {
    // this batch from the registers loaded one batch earlier; the next batch's loads issued now (the last iteration
    // reloads its own batch: the columns are clamped, so every load stays inside W)
    for (let u = 0; u < UK; u++) {
      push(`let k${u} = fk${u};`);
      for (let r = 0; r < RW; r++) push(`let w${u}_${r} = fw${u}_${r};`);
    }
    loads(`min(kb + ${UK}u, ${Math.floor((IT - 1) / UK) * UK}u)`, 'f', 'assign');
  } else {
    loads('kb', '');
  }
  products('kb', '');
  push('}');
  // the 32 lane partials of each row: P of them left after the subgroup's shuffles (1 with subgroups of 32 or more),
  // written by the lanes that hold them (the same code for every P, so lavapipe's 8-wide subgroups test the H200's path)
  const SW = SGS ? Math.min(SGS, 32) : 1; // lanes of a group inside one subgroup
  const P = 32 / SW;
  if (SGS) {
    for (let st = SW / 2; st >= 1; st /= 2) for (let r = 0; r < RW; r++) push(`a${r} = a${r} + subgroupShuffleXor(a${r}, ${st}u);`);
    push(`if (lane % ${SW}u == 0u) {`);
    for (let r = 0; r < RW; r++) push(`red[(grp * ${RW}u + ${r}u) * ${P}u + lane / ${SW}u] = a${r};`);
    push('}');
  } else {
    for (let r = 0; r < RW; r++) push(`red[(grp * ${RW}u + ${r}u) * 32u + lane] = a${r};`);
  }
  push('workgroupBarrier();');
  // one thread per output row of the workgroup sums the row's P partials
  push(`if (lid < ${8 * RPG}u) {`, `let gr = lid / ${RPG}u;`, `let rr = lid % ${RPG}u;`, `let o = wid * ${8 * RPG}u + lid;`, `if (o < ${s.rows}u) {`);
  const lanes = (acc: string, wr: string) => `for (var i = 0u; i < ${P}u; i = i + 1u) { ${acc} = ${acc} + red[(gr * ${RW}u + ${wr}) * ${P}u + i]; }`;
  if (wRows === 2) {
    push('var gs = 0.0;', 'var us = 0.0;', lanes('gs', 'rr * 2u'), lanes('us', 'rr * 2u + 1u'));
    if (s.bias) push('gs = gs + bias[2u * o];', 'us = us + bias[2u * o + 1u];');
    push('y[o] = gs / (1.0 + exp(-gs)) * us;');
  } else {
    push('var v = 0.0;', lanes('v', 'rr'));
    if (s.bias) push('v = v + bias[o];');
    push(s.epilogue === 'residual' ? 'y[o] = y[o] + v;' : 'y[o] = v;');
  }
  push('}', '}', '}');
  return L.join('\n');
}

/** The model step uniform of the prefill kernels: the first position, vocabulary, sampler, and the rows of the batch. */
const BATCH_STEP = 'struct Step { pos: u32, vocab: u32, temperature: f32, seed: u32, rows: u32 };';

/** Tokens (rows of x and y) one workgroup of {@link matvecRowsSource} computes: 8, or 4 for SwiGLU (two W rows each). @internal */
export function matvecRowsTokens(s: Pick<MatvecSpec, 'epilogue'>): number {
  return s.epilogue === 'swiglu' ? 4 : 8;
}

/**
 * The matrix-vector product of `s` over the rows of a prefill batch: `y[t] = epilogue(W · prologue(x[t]))` for the
 * `S.rows` rows t of x (stride `inFeatures`) and y (stride `rows`). Each workgroup computes 8 output rows for
 * {@link matvecRowsTokens} tokens, so every weight it loads serves that many tokens (a position at a time loads the
 * weights once per token). Lane `l` of a 32-thread group reads the vec4<u32> columns `l, l+32, …` of its row (as
 * {@link matvecSource}); with a norm, each workgroup first reduces its tokens' sums of squares. `rowsPerGroup`,
 * `subgroupSize` and `prefetchWeights` are not used. Bindings: those of {@link matvecSource}, and 5 the step uniform.
 * Dispatch (⌈rows / 8⌉, ⌈batch / tokens⌉). @internal
 */
export function matvecRowsSource(s: MatvecSpec): string {
  const IN = s.inFeatures;
  const K = IN / 8;
  const T = matvecRowsTokens(s);
  const wRows = s.epilogue === 'swiglu' ? 2 : 1;
  const totalW = s.rows * wRows;
  const IT = Math.ceil(K / 32);
  const norm = s.rmsNormEps !== undefined;
  const L: string[] = [];
  const push = (...l: string[]) => L.push(...l);
  push(
    BATCH_STEP,
    '@group(0) @binding(0) var<storage, read> W: array<vec4<u32>>;',
    '@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;',
    '@group(0) @binding(2) var<storage, read_write> y: array<f32>;',
    '@group(0) @binding(3) var<storage, read> g: array<vec4<f32>>;',
    '@group(0) @binding(4) var<storage, read> bias: array<f32>;',
    '@group(0) @binding(5) var<uniform> S: Step;',
    // lane partials of every (row, token), and before them the norm's sums of squares
    `var<workgroup> red: array<f32, ${256 * wRows * T}>;`,
  );
  if (norm) push(`var<workgroup> inv: array<f32, ${T}>;`);
  push(
    '@compute @workgroup_size(256)',
    'fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {',
    'let grp = lid >> 5u;',
    'let lane = lid & 31u;',
    `let t0 = wid.y * ${T}u;`,
    `let r0 = wid.x * 8u + grp;`,
  );
  // x rows past the batch read the last one (their results are not written)
  for (let j = 0; j < T; j++) push(`let xr${j} = min(t0 + ${j}u, S.rows - 1u) * ${IN / 4}u;`);
  if (norm) {
    for (let j = 0; j < T; j++) push(`var sq${j} = 0.0;`);
    push(`for (var i = lid; i < ${IN / 4}u; i = i + 256u) {`);
    for (let j = 0; j < T; j++) push(`{ let v = x[xr${j} + i]; sq${j} = sq${j} + dot(v, v); }`);
    push('}');
    for (let j = 0; j < T; j++) push(`red[${j * 256}u + lid] = sq${j};`);
    push('workgroupBarrier();', 'for (var st = 128u; st >= 1u; st = st >> 1u) {', '  if (lid < st) {');
    for (let j = 0; j < T; j++) push(`    red[${j * 256}u + lid] = red[${j * 256}u + lid] + red[${j * 256}u + lid + st];`);
    push('  }', '  workgroupBarrier();', '}');
    push(`if (lid < ${T}u) { inv[lid] = inverseSqrt(red[lid * 256u] / ${IN}.0 + ${s.rmsNormEps!.toExponential(8)}); }`, 'workgroupBarrier();');
    for (let j = 0; j < T; j++) push(`let n${j} = inv[${j}];`);
  }
  for (let r = 0; r < wRows; r++) for (let j = 0; j < T; j++) push(`var a${r}_${j} = 0.0;`);
  const rowOf = (r: number) => (wRows === 2 ? `r0 * 2u + ${r}u` : 'r0');
  push(`for (var kb = 0u; kb < ${IT}u; kb = kb + 1u) {`, `let kc = lane + kb * 32u;`, `let k = min(kc, ${K - 1}u);`);
  push(`let live = select(0.0, 1.0, kc < ${K}u);`);
  for (let r = 0; r < wRows; r++) {
    push(`let w${r} = W[min(${rowOf(r)}, ${totalW - 1}u) * ${K}u + k];`);
    push(`let wa${r} = vec4<f32>(unpack2x16float(w${r}.x), unpack2x16float(w${r}.y));`, `let wb${r} = vec4<f32>(unpack2x16float(w${r}.z), unpack2x16float(w${r}.w));`);
  }
  if (norm) push('let ga = g[2u * k] * live;', 'let gb = g[2u * k + 1u] * live;');
  for (let j = 0; j < T; j++) {
    const sa = norm ? ` * ga * n${j}` : ' * live';
    const sb = norm ? ` * gb * n${j}` : ' * live';
    push(`let xa${j} = x[xr${j} + 2u * k]${sa};`, `let xb${j} = x[xr${j} + 2u * k + 1u]${sb};`);
    for (let r = 0; r < wRows; r++) push(`a${r}_${j} = a${r}_${j} + dot(wa${r}, xa${j}) + dot(wb${r}, xb${j});`);
  }
  push('}');
  // the norm's last reads of red are behind the barrier above; every (row, token) partial of this lane
  for (let r = 0; r < wRows; r++) for (let j = 0; j < T; j++) push(`red[((grp * ${wRows}u + ${r}u) * ${T}u + ${j}u) * 32u + lane] = a${r}_${j};`);
  push('workgroupBarrier();');
  // one thread per (row, token) of the workgroup sums the row's 32 partials
  push(`if (lid < ${8 * T}u) {`, `let gr = lid / ${T}u;`, `let j = lid % ${T}u;`, 'let o = wid.x * 8u + gr;', 'let t = t0 + j;', `if (o < ${s.rows}u && t < S.rows) {`);
  const sum = (acc: string, r: string) => `var ${acc} = 0.0; for (var i = 0u; i < 32u; i = i + 1u) { ${acc} = ${acc} + red[((gr * ${wRows}u + ${r}) * ${T}u + j) * 32u + i]; }`;
  if (wRows === 2) {
    push(sum('gs', '0u'), sum('us', '1u'));
    if (s.bias) push('gs = gs + bias[2u * o];', 'us = us + bias[2u * o + 1u];');
    push(`y[t * ${s.rows}u + o] = gs / (1.0 + exp(-gs)) * us;`);
  } else {
    push(sum('v', '0u'));
    if (s.bias) push('v = v + bias[o];');
    push(s.epilogue === 'residual' ? `y[t * ${s.rows}u + o] = y[t * ${s.rows}u + o] + v;` : `y[t * ${s.rows}u + o] = v;`);
  }
  push('}', '}', '}');
  return L.join('\n');
}

/**
 * Embedding gather: `x = E[tokens[pos]]` (fp16 rows → f32), or with `batched` row r of x = `E[tokens[pos + r]]` for the
 * `S.rows` rows of a prefill batch (dispatch y = rows). Bindings: 0 E, 1 tokens, 2 x, 3 step. @internal
 */
export function embedSource(hidden: number, batched = false): string {
  const at = batched ? `r * ${hidden}u + ` : '';
  return [
    batched ? BATCH_STEP : 'struct Step { pos: u32, vocab: u32, temperature: f32, seed: u32 };',
    '@group(0) @binding(0) var<storage, read> E: array<u32>;',
    '@group(0) @binding(1) var<storage, read> tokens: array<u32>;',
    '@group(0) @binding(2) var<storage, read_write> x: array<f32>;',
    '@group(0) @binding(3) var<uniform> S: Step;',
    '@compute @workgroup_size(256)',
    'fn main(@builtin(global_invocation_id) gid: vec3<u32>) {',
    batched ? `  let i = gid.x; let r = gid.y; if (i >= ${hidden / 2}u || r >= S.rows) { return; }` : `  let i = gid.x; if (i >= ${hidden / 2}u) { return; }`,
    `  let t = min(tokens[S.pos${batched ? ' + r' : ''}], S.vocab - 1u);`,
    `  let w = unpack2x16float(E[t * ${hidden / 2}u + i]);`,
    `  x[${at}2u * i] = w.x;`,
    `  x[${at}2u * i + 1u] = w.y;`,
    '}',
  ].join('\n');
}

/** Logits each workgroup of the first sampling stage scans. @internal */
export const SAMPLE_BLOCK = 4096;

/**
 * Next token on the device, in two stages: every workgroup takes the argmax of 4096 logits (temperature 0) or of
 * `logits/T + Gumbel noise` (sampling with a hashed seed per position and logit) and writes `(value, index)`; one
 * workgroup then reduces those and writes the winner to `tokens[pos + 1]`. Ties go to the lower index.
 * Bindings: 0 logits, 1 tokens, 2 step, 3 partials. @internal
 */
export function sampleSource(vocab: number, stage: 1 | 2): string {
  const blocks = Math.ceil(vocab / SAMPLE_BLOCK);
  const head = [
    'struct Step { pos: u32, vocab: u32, temperature: f32, seed: u32 };',
    '@group(0) @binding(0) var<storage, read> logits: array<f32>;',
    '@group(0) @binding(1) var<storage, read_write> tokens: array<u32>;',
    '@group(0) @binding(2) var<uniform> S: Step;',
    '@group(0) @binding(3) var<storage, read_write> part: array<vec2<u32>>;',
    'var<workgroup> bv: array<f32, 256>;',
    'var<workgroup> bi: array<u32, 256>;',
    'fn hash(x: u32) -> u32 { var v = x * 747796405u + 2891336453u; v = ((v >> ((v >> 28u) + 4u)) ^ v) * 277803737u; return (v >> 22u) ^ v; }',
    '@compute @workgroup_size(256)',
    'fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {',
    '  var best = -3.4e38;',
    '  var idx = 0xffffffffu;',
  ];
  const body =
    stage === 1
      ? [
          '  let sample = S.temperature > 0.0;',
          `  for (var k = 0u; k < ${SAMPLE_BLOCK / 256}u; k = k + 1u) {`,
          `    let i = wid.x * ${SAMPLE_BLOCK}u + k * 256u + lid;`,
          `    if (i < ${vocab}u) {`,
          '      var v = logits[i];',
          '      if (sample) {',
          '        let u = (f32(hash(i ^ hash(S.seed ^ (S.pos * 2654435761u))) >> 8u) + 0.5) / 16777216.0;',
          '        v = v / S.temperature - log(-log(u));',
          '      }',
          '      if (v > best) { best = v; idx = i; }',
          '    }',
          '  }',
        ]
      : [`  for (var k = lid; k < ${blocks}u; k = k + 256u) {`, '    let p = part[k];', '    let v = bitcast<f32>(p.x);', '    if (v > best || (v == best && p.y < idx)) { best = v; idx = p.y; }', '  }'];
  const tail = [
    '  bv[lid] = best;',
    '  bi[lid] = idx;',
    '  workgroupBarrier();',
    '  for (var st = 128u; st >= 1u; st = st >> 1u) {',
    '    if (lid < st) {',
    '      let o = lid + st;',
    '      if (bv[o] > bv[lid] || (bv[o] == bv[lid] && bi[o] < bi[lid])) { bv[lid] = bv[o]; bi[lid] = bi[o]; }',
    '    }',
    '    workgroupBarrier();',
    '  }',
    stage === 1 ? '  if (lid == 0u) { part[wid.x] = vec2<u32>(bitcast<u32>(bv[0]), bi[0]); }' : '  if (lid == 0u) { tokens[S.pos + 1u] = bi[0]; }',
    '}',
  ];
  return [...head, ...body, ...tail].join('\n');
}
