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
  /** Rows per 32-thread group (each workgroup of 256 threads computes 8 ÷ `splitK` × this many rows). */
  rowsPerGroup: number;
  /**
   * 32-thread groups that share each row (1, 2, 4 or 8; default 1): group `j` of a row's `splitK` reads the row's
   * column blocks `j, j + splitK, …`, so each thread has `splitK` times fewer weight loads and the dispatch `splitK` times
   * more workgroups. See {@link matvecSplit}.
   */
  splitK?: number;
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
  return (8 / (s.splitK ?? 1)) * s.rowsPerGroup;
}

/** Weight loads one thread of a decode product makes with `splitK` (column blocks of 32 vec4s × W rows per group). */
function loadsPerThread(s: Pick<MatvecSpec, 'inFeatures' | 'rowsPerGroup' | 'epilogue'>, splitK: number): number {
  return Math.ceil(Math.ceil(s.inFeatures / 8 / 32) / splitK) * s.rowsPerGroup * (s.epilogue === 'swiglu' ? 2 : 1);
}

/**
 * The `splitK` a decode product takes: 1 for a product with an RMSNorm prologue (each workgroup normalizes the whole
 * input again, so more workgroups cost more than the shorter chain saves: on an H100 gate/up split 4 ways took 0.87
 * instead of 0.65 ms per token, Llama-3.2-1B shape) and where the unsplit dispatch has at least 2048 workgroups (several
 * waves: other workgroups' loads overlap each one's chain); else the smallest of 1, 2, 4, 8 that leaves each thread at
 * most 8 weight loads, so that one batch of loads is in flight per thread instead of a chain of several (down on the
 * Llama-3.2-1B and Qwen2.5-0.5B shapes, 4 ways: 0.42 → 0.38 and 0.46 → 0.37 ms per token there). @internal
 */
export function matvecSplit(s: Pick<MatvecSpec, 'inFeatures' | 'rows' | 'rowsPerGroup' | 'epilogue' | 'rmsNormEps'>): number {
  if (s.rmsNormEps !== undefined || Math.ceil(s.rows / (8 * s.rowsPerGroup)) >= 2048) return 1;
  for (const k of [1, 2, 4]) if (loadsPerThread(s, k) <= 8) return k;
  return 8;
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
  const SK = s.splitK ?? 1;
  if (![1, 2, 4, 8].includes(SK)) throw new Error(`splitK must be 1, 2, 4 or 8; got ${String(s.splitK)}`);
  const RG = 8 / SK; // row groups per workgroup
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
    // the group's rows, and (split) which of the rows' column-block slices it reads
    `let r0 = (wid * ${RG}u + grp / ${SK}u) * ${RPG}u;`,
    ...(SK > 1 ? [`let slice = grp % ${SK}u;`] : []),
  );
  const rowOf = (r: number) => (wRows === 2 ? `(r0 + ${r >> 1}u) * 2u + ${r & 1}u` : `r0 + ${r}u`);
  const totalW = s.rows * wRows;
  // every weight load of UK lane-strided columns × RW rows is issued before the products (loads in flight)
  const IT = Math.ceil(K / 32); // column blocks of a row
  const ITS = Math.ceil(IT / SK); // of them, per group
  const UK = Math.max(1, Math.min(ITS, Math.floor(8 / RW)));
  const ragged = K % 32 !== 0 || IT % SK !== 0;
  /** Column (vec4 index in the row) of lane `lane` in this group's block `kb + u`. */
  const col = (kb: string, u: number) => (SK > 1 ? `lane + ((${kb} + ${u}u) * ${SK}u + slice) * 32u` : `lane + (${kb} + ${u}u) * 32u`);
  /**
   * Loads of the batch starting at column block `kb`: column `k{u}` and weights `w{u}_{r}` (names prefixed), as new
   * `let`s, as the prefetch registers' declarations (`var`) or assigned to them.
   */
  const loads = (kb: string, pre: string, mode: 'let' | 'var' | 'assign' = 'let') => {
    const decl = mode === 'assign' ? '' : `${mode} `;
    for (let u = 0; u < UK; u++) {
      push(`${decl}${pre}k${u} = min(${col(kb, u)}, ${K - 1}u);`);
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
      const live = ragged || ITS % UK !== 0 ? `select(0.0, 1.0, ${col(kb, u)} < ${K}u)` : '';
      push(`let ${pre}x${u}a = ${xv(`2u * ${pre}k${u}`)}${live ? ` * ${live}` : ''};`, `let ${pre}x${u}b = ${xv(`2u * ${pre}k${u} + 1u`)}${live ? ` * ${live}` : ''};`);
      for (let r = 0; r < RW; r++) {
        const w = `${pre}w${u}_${r}`;
        push(`a${r} = a${r} + dot(vec4<f32>(unpack2x16float(${w}.x), unpack2x16float(${w}.y)), ${pre}x${u}a) + dot(vec4<f32>(unpack2x16float(${w}.z), unpack2x16float(${w}.w)), ${pre}x${u}b);`);
      }
    }
  };
  push(`for (var kb = 0u; kb < ${ITS}u; kb = kb + ${UK}u) {`);
  if (prefetch) {
    // this batch from the registers loaded one batch earlier; the next batch's loads issued now (the last iteration
    // reloads its own batch: the columns are clamped, so every load stays inside W)
    for (let u = 0; u < UK; u++) {
      push(`let k${u} = fk${u};`);
      for (let r = 0; r < RW; r++) push(`let w${u}_${r} = fw${u}_${r};`);
    }
    loads(`min(kb + ${UK}u, ${Math.floor((ITS - 1) / UK) * UK}u)`, 'f', 'assign');
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
  // one thread per output row of the workgroup sums the row's P partials of each of its SK groups
  push(`if (lid < ${RG * RPG}u) {`, `let gr = lid / ${RPG}u;`, `let rr = lid % ${RPG}u;`, `let o = wid * ${RG * RPG}u + lid;`, `if (o < ${s.rows}u) {`);
  const lanes = (acc: string, wr: string) =>
    SK > 1
      ? `for (var i = 0u; i < ${SK * P}u; i = i + 1u) { ${acc} = ${acc} + red[((gr * ${SK}u + i / ${P}u) * ${RW}u + ${wr}) * ${P}u + i % ${P}u]; }`
      : `for (var i = 0u; i < ${P}u; i = i + 1u) { ${acc} = ${acc} + red[(gr * ${RW}u + ${wr}) * ${P}u + i]; }`;
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

/** Output rows (W rows) one workgroup of {@link matmulRowsSource} computes: four 16-row tiles. @internal */
export const MATMUL_ROWS = 64;
/** Batch rows (tokens) one workgroup of {@link matmulRowsSource} computes: four 8-token tiles. @internal */
export const MATMUL_TOKENS = 32;
/** Input features staged in workgroup memory at a time. */
const MATMUL_K_CHUNK = 32;

/** Workgroups along the weight rows of {@link matmulRowsSource} for `s` (dispatch x). @internal */
export function matmulWorkgroups(s: Pick<MatvecSpec, 'rows' | 'epilogue'>): number {
  return Math.ceil((s.rows * (s.epilogue === 'swiglu' ? 2 : 1)) / MATMUL_ROWS);
}

/** Why {@link matmulRowsSource} cannot compute `s` (null: it can). @internal */
export function matmulUnsupported(s: Pick<MatvecSpec, 'inFeatures' | 'rows' | 'epilogue'>): string | null {
  const totalW = s.rows * (s.epilogue === 'swiglu' ? 2 : 1);
  if (s.inFeatures % MATMUL_K_CHUNK !== 0) return `${s.inFeatures} input features (a multiple of ${MATMUL_K_CHUNK} is needed)`;
  if (totalW % 16 !== 0) return `${totalW} weight rows (a multiple of 16 is needed)`;
  return null;
}

/**
 * The product of `s` over the rows of a prefill batch on the matrix units (Chromium's experimental subgroup matrices,
 * f16 × f16 → f32, M 16 × N 8 × K 16): `y[t] = epilogue(W · prologue(x[t]))` as {@link matvecRowsSource}, for
 * {@link MATMUL_ROWS} weight rows × {@link MATMUL_TOKENS} tokens per workgroup, so every weight serves 32 tokens. Four
 * 32-lane subgroups own 16 weight rows each; the left operands are loaded from the weights as they lie (fp16 rows), the
 * right ones from the batch's inputs staged in workgroup memory as f16. Each input is split into two f16 parts, `hi`
 * = f16(x) and `lo` = f16(x − hi), both multiplied, so the products keep about 22 bits of the float32 input (f16 alone
 * keeps 11); before the split each token's row is scaled by a power of two that brings its largest |input| near 2^13
 * (no f16 overflow, few subnormals), undone in the epilogue. Without a norm the prologue still finds that largest |x|.
 * `emulate`: the same kernel with the products as loops over the same operands (tests on adapters without matrix
 * units; no subgroup operations). Bindings as {@link matvecRowsSource} (W read as `array<f16>`). Dispatch
 * (⌈W rows / 64⌉, ⌈batch / 32⌉), 128 threads. @internal
 */
export function matmulRowsSource(s: MatvecSpec, emulate: boolean): string {
  const why = matmulUnsupported(s);
  if (why) throw new Error(`matmulRowsSource: ${why}`);
  const IN = s.inFeatures;
  const wRows = s.epilogue === 'swiglu' ? 2 : 1;
  const totalW = s.rows * wRows;
  const norm = s.rmsNormEps !== undefined;
  const TT = MATMUL_TOKENS;
  const KC = MATMUL_K_CHUNK;
  const L: string[] = [];
  const push = (...l: string[]) => L.push(...l);
  push('enable f16;');
  if (!emulate) push('enable subgroups;', 'requires subgroup_id;', 'enable chromium_experimental_subgroup_matrix;', 'alias ML = subgroup_matrix_left<f16, 16, 16>;', 'alias MR = subgroup_matrix_right<f16, 8, 16>;', 'alias MA = subgroup_matrix_result<f32, 8, 16>;');
  push(
    BATCH_STEP,
    '@group(0) @binding(0) var<storage, read> W: array<f16>;',
    '@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;',
    '@group(0) @binding(2) var<storage, read_write> y: array<f32>;',
    '@group(0) @binding(3) var<storage, read> g: array<vec4<f32>>;',
    '@group(0) @binding(4) var<storage, read> bias: array<f32>;',
    '@group(0) @binding(5) var<uniform> S: Step;',
    // the staged inputs [k][token] (hi and lo parts), then the results [W row][token]
    `var<workgroup> xh: array<f16, ${KC * TT}>;`,
    `var<workgroup> xl: array<f16, ${KC * TT}>;`,
    `var<workgroup> ys: array<f32, ${MATMUL_ROWS * TT}>;`,
    `var<workgroup> red: array<f32, ${4 * TT * 2}>;`,
    `var<workgroup> tscale: array<f32, ${TT}>;`,
    `var<workgroup> tnorm: array<f32, ${TT}>;`,
    '@compute @workgroup_size(128)',
    // (the matrix units: subgroup sg is the hardware's, 32 lanes; emulated: lanes 32·sg … 32·sg + 31)
    `fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32${emulate ? '' : ', @builtin(subgroup_id) sgid: u32'}) {`,
    emulate ? 'let sg = lid / 32u;' : 'let sg = sgid;',
    'let lane = lid % 32u;',
    `let t0 = wid.y * ${TT}u;`,
    // a subgroup whose 16 rows lie past the weights computes the last 16 again (no branch around the matrix
    // operations, which need subgroup-uniform control flow); the epilogue writes only rows that exist
    `let o0 = min(wid.x * ${MATMUL_ROWS}u + sg * 16u, ${totalW - 16}u);`,
    // prologue: per token (thread t = lid % 32, quarter lid / 32 of the features) the sum of squares and the largest
    // |x · g| (|x| without a norm); rows past the batch read the last one (their results are not written)
    `let pt = min(t0 + lane, S.rows - 1u) * ${IN / 4}u;`,
    'var sq = 0.0;',
    'var mx = 0.0;',
    // (quarter lid / 32, not the subgroup: where lanes fall into hardware subgroups is the implementation's)
    `for (var i = (lid / 32u) * ${IN / 16}u; i < (lid / 32u + 1u) * ${IN / 16}u; i = i + 1u) {`,
    '  let v = x[pt + i];',
    ...(norm ? ['  sq = sq + dot(v, v);', '  mx = max(mx, max(max(abs(v.x * g[i].x), abs(v.y * g[i].y)), max(abs(v.z * g[i].z), abs(v.w * g[i].w))));'] : ['  mx = max(mx, max(max(abs(v.x), abs(v.y)), max(abs(v.z), abs(v.w))));']),
    '}',
    `red[lid] = sq;`,
    `red[${4 * TT}u + lid] = mx;`,
    'workgroupBarrier();',
    `if (lid < ${TT}u) {`,
    `  let q = red[lid] + red[lid + 32u] + red[lid + 64u] + red[lid + 96u];`,
    `  let inv = ${norm ? `inverseSqrt(q / ${IN}.0 + ${s.rmsNormEps!.toExponential(8)})` : '1.0'};`,
    `  let m = max(max(red[${4 * TT}u + lid], red[${4 * TT + 32}u + lid]), max(red[${4 * TT + 64}u + lid], red[${4 * TT + 96}u + lid])) * inv;`,
    // a power of two: the largest scaled |input| in [2^13, 2^14) (1 for an all-zero row)
    '  let e = select(0.0, 13.0 - floor(log2(m)), m > 0.0);',
    '  tnorm[lid] = inv;',
    '  tscale[lid] = exp2(clamp(e, -100.0, 100.0));',
    '}',
    'workgroupBarrier();',
  );
  if (emulate) {
    // lane (of the 32 of its subgroup) owns elements lane + 32i of each 16 × 8 result tile (row e / 8, token e % 8)
    push('var acc: array<array<f32, 4>, 4>;');
  } else {
    push('var acc0 = MA(); var acc1 = MA(); var acc2 = MA(); var acc3 = MA();');
  }
  push(`for (var k0 = 0u; k0 < ${IN}u; k0 = k0 + ${KC}u) {`);
  // stage KC features × 32 tokens: thread → (token, 8 consecutive features); hi and lo parts
  push(
    '  workgroupBarrier();',
    `  for (var e = lid; e < ${(KC / 4) * TT}u; e = e + 128u) {`,
    `    let t = e / ${KC / 4}u;`,
    `    let kq = e % ${KC / 4}u;`,
    `    let v = x[min(t0 + t, S.rows - 1u) * ${IN / 4}u + k0 / 4u + kq]${norm ? ' * g[k0 / 4u + kq]' : ''} * (tnorm[t] * tscale[t]);`,
    // hi: v with its mantissa cut to f16's 10 bits (exact in f16), by a mask the compiler cannot fold away (lavapipe
    // folds v − f32(f16(v)) to 0); lo: the exact remainder, rounded to f16
    '    let hb = bitcast<vec4<f32>>(bitcast<vec4<u32>>(v) & vec4<u32>(0xffffe000u));',
    '    let hi = vec4<f16>(hb);',
    '    let lo = vec4<f16>(v - hb);',
    `    for (var c = 0u; c < 4u; c = c + 1u) { xh[(kq * 4u + c) * ${TT}u + t] = hi[c]; xl[(kq * 4u + c) * ${TT}u + t] = lo[c]; }`,
    '  }',
    '  workgroupBarrier();',
  );
  for (let kk = 0; kk < KC; kk += 16) {
    if (emulate) {
      // (runtime loop bounds the compiler cannot see — S.rows ≥ 1, so each min is its constant — because an unrolled
      // emulation compiles slowly on lavapipe)
      push(
        `    for (var nt = 0u; nt < min(4u, S.rows + 15u); nt = nt + 1u) {`,
        '      for (var i = 0u; i < min(4u, S.rows + 15u); i = i + 1u) {',
        '        let el = lane + i * 32u;',
        '        let r = el / 8u;',
        '        let tc = nt * 8u + el % 8u;',
        '        var a = 0.0;',
        `        for (var k = 0u; k < min(16u, S.rows + 15u); k = k + 1u) {`,
        `          let w = f32(W[(o0 + r) * ${IN}u + k0 + ${kk}u + k]);`,
        `          a = a + w * f32(xh[(${kk}u + k) * ${TT}u + tc]) + w * f32(xl[(${kk}u + k) * ${TT}u + tc]);`,
        '        }',
        '        acc[nt][i] = acc[nt][i] + a;',
        '      }',
        '    }',
      );
    } else {
      push(`    let w${kk} = subgroupMatrixLoad<ML>(&W, o0 * ${IN}u + k0 + ${kk}u, false, ${IN}u);`);
      for (let nt = 0; nt < 4; nt++) {
        for (const part of ['xh', 'xl']) push(`    acc${nt} = subgroupMatrixMultiplyAccumulate(w${kk}, subgroupMatrixLoad<MR>(&${part}, ${kk * TT + nt * 8}u, false, ${TT}u), acc${nt});`);
      }
    }
  }
  push('}');
  // results to workgroup memory [W row of the workgroup][token]
  push('{');
  if (emulate) {
    push('  for (var nt = 0u; nt < 4u; nt = nt + 1u) {', '    for (var i = 0u; i < 4u; i = i + 1u) {', '      let el = lane + i * 32u;', `      ys[(sg * 16u + el / 8u) * ${TT}u + nt * 8u + el % 8u] = acc[nt][i];`, '    }', '  }');
  } else {
    for (let nt = 0; nt < 4; nt++) push(`  subgroupMatrixStore(&ys, sg * ${16 * TT}u + ${nt * 8}u, acc${nt}, false, ${TT}u);`);
  }
  push('}', 'workgroupBarrier();');
  // epilogue: thread → (output, token), undoing the token's scale
  const outs = MATMUL_ROWS / wRows;
  push(
    `for (var e = lid; e < ${outs * TT}u; e = e + 128u) {`,
    `  let j = e / ${TT}u;`,
    `  let t = e % ${TT}u;`,
    `  let o = wid.x * ${outs}u + j;`,
    `  if (o < ${s.rows}u && t0 + t < S.rows) {`,
    '    let inv = 1.0 / tscale[t];',
  );
  if (wRows === 2) {
    push(`    var gs = ys[(2u * j) * ${TT}u + t] * inv;`, `    var us = ys[(2u * j + 1u) * ${TT}u + t] * inv;`);
    if (s.bias) push('    gs = gs + bias[2u * o];', '    us = us + bias[2u * o + 1u];');
    push(`    y[(t0 + t) * ${s.rows}u + o] = gs / (1.0 + exp(-gs)) * us;`);
  } else {
    push(`    var v = ys[j * ${TT}u + t] * inv;`);
    if (s.bias) push('    v = v + bias[o];');
    push(s.epilogue === 'residual' ? `    y[(t0 + t) * ${s.rows}u + o] = y[(t0 + t) * ${s.rows}u + o] + v;` : `    y[(t0 + t) * ${s.rows}u + o] = v;`);
  }
  push('  }', '}', '}');
  return L.join('\n');
}
