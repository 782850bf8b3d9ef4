import {
  SUPPORTED_BITS,
  XqFormatError,
  packedKernelPath,
  packedKvSegments,
  transposeTokensChannels,
  unpackCodes,
  type Bits,
  type GroupQuantOptions,
  type GroupStats,
  type PackedKv,
  type PackedKvView,
  type Precision,
} from '@xquant/quant';
import { loadGolden, type GoldenArray, type GoldenCase, type GoldenFamily, type GoldenSource } from './format.js';
import { xquantTarget, type ConformanceTarget } from './target.js';

/** The attention criterion of family g: `|out − ref_f64| ≤ rel·absum + abs`, per output element. */
export interface AttentionTolerance {
  /** Factor on `absum = Σ|a_k|·|ĉ_k|`. */
  rel: number;
  /** Absolute slack. */
  abs: number;
}

/** Tokens per value chunk of a quantized cache (`@xquant/tfjs` default), the layout the attention cases are also run on. */
const CACHE_VALUE_CHUNK = 32;

/** The golden README's suggested attention criterion (every reference kernel output passes it). */
export const DEFAULT_ATTENTION_TOLERANCE: Readonly<AttentionTolerance> = Object.freeze({ rel: 2e-3, abs: 1e-6 });

/** Options of {@link runGoldenFile} and {@link runGoldenCase}. */
export interface RunOptions {
  /** Operations to check; missing ones fall back to {@link xquantTarget}. */
  target?: Partial<ConformanceTarget>;
  /** Family g criterion; default {@link DEFAULT_ATTENTION_TOLERANCE}. */
  attentionTolerance?: AttentionTolerance;
}

/**
 * The comparison of one output array with the reference.
 * - `exact`: every element must be identical (integers, or float values equal as numbers; NaN equals NaN).
 * - `tolerance`: the family g criterion.
 * - `info`: reported, never fails the case (e.g. comparison with the reference's Triton/CUDA kernel outputs).
 */
export interface ArrayCheck {
  /** Name of the reference array (`codes` for codes unpacked from a packed reference array is `codes*`). */
  array: string;
  /** How the array is judged (see above). */
  criterion: 'exact' | 'tolerance' | 'info';
  /** Elements compared. */
  compared: number;
  /** Elements that differ (exact) or violate the criterion (tolerance/info). */
  mismatches: number;
  /** Max |ours − reference| (0 for integer arrays). */
  maxAbsError: number;
  /** Whether this array meets its criterion (always true for `info`). */
  passed: boolean;
  /** Human-readable description of the first mismatch, or extra figures. */
  note?: string;
}

/** The result of one golden case. */
export interface CaseResult {
  /** The case name from the file. */
  name: string;
  /** The file's family. */
  family: GoldenFamily;
  /** Every deciding check passed. */
  passed: boolean;
  /** Max |ours − reference| over the float outputs that decide the case (attention: vs `ref_f64`). */
  maxAbsError: number;
  /** Codes that differ from the reference codes (unpacked from `packed` where the case has no `codes` array). */
  mismatchedCodes: number;
  /** One line: what was compared, or what failed first. */
  detail: string;
  /** One entry per compared array (empty when the target threw). */
  checks: ArrayCheck[];
}

interface Spec {
  kind: 'keys' | 'values';
  B: number;
  H: number;
  T: number;
  D: number;
  heads: number;
  bits: Bits;
  groupSize: number;
  precision: Precision;
  gamma: number | null;
  rows: number;
  cols: number;
  opts: GroupQuantOptions;
}

const REQUIRED: Record<GoldenFamily, string[]> = {
  a_keys: ['x', 'codes', 'packed', 'scale', 'mn', 'deq'],
  b_values: ['x', 'codes', 'packed', 'scale', 'mn', 'deq'],
  c_calibration: ['x', 'packed', 'scale_raw', 'mn_raw', 'scale', 'mn', 'deq'],
  d_crosslayer: ['x_prev', 'x', 'packed_prev', 'scale_prev', 'mn_prev', 'scale_raw', 'mn_raw', 'scale', 'mn', 'deq'],
  e_anno2: ['x', 'codes', 'packed', 'scale', 'mn', 'deq'],
  f_packing: ['x', 'codes', 'packed', 'packed_pack_tensor', 'scale', 'mn'],
  g_attention: ['a', 'packed', 'scale', 'mn', 'ref_f64', 'absum'],
};

function posInt(p: Record<string, unknown>, key: string, where: string): number {
  const v = p[key];
  if (!Number.isInteger(v) || (v as number) <= 0) throw new XqFormatError(`${where}: params.${key} must be a positive integer; got ${JSON.stringify(v)}`);
  return v as number;
}

function whole(n: number, what: string, where: string): number {
  if (!Number.isInteger(n)) throw new XqFormatError(`${where}: params are inconsistent (${what} = ${n} is not an integer)`);
  return n;
}

/** Expected shape and dtype of every array a family may hold. */
function expectedArrays(family: GoldenFamily, s: Spec, where: string): Record<string, { shape: number[]; dtype: 'float32' | 'int32' }> {
  const { B, H, T, D, bits, groupSize: gs } = s;
  const fpw = 32 / bits;
  const keys = s.kind === 'keys';
  const f = (shape: number[]) => ({ shape, dtype: 'float32' as const });
  const i = (shape: number[]) => ({ shape, dtype: 'int32' as const });
  const x = f([B, H, T, D]);
  const rowsShape = keys ? [B, H, D, T] : [B, H, T, D];
  const packed = keys ? [B, H, D, whole(T / fpw, 'T/(32/bits)', where)] : [B, H, T, whole(D / fpw, 'D/(32/bits)', where)];
  const stat = keys ? [B, H, D, whole(T / gs, 'T/group_size', where)] : [B, H, T, whole(D / gs, 'D/group_size', where)];
  if (family === 'g_attention') {
    const out = f(keys ? [B, H, 1, T] : [B, H, 1, D]);
    return { a: f(keys ? [B, H, 1, D] : [B, H, 1, T]), packed: i(packed), scale: f(stat), mn: f(stat), ref_f64: out, absum: out, out_triton: out, out_cuda: out };
  }
  return {
    x, x_prev: x,
    codes: i(rowsShape),
    deq: f(rowsShape),
    packed: i(packed), packed_prev: i(packed), packed_pack_tensor: i(packed),
    scale: f(stat), mn: f(stat), scale_raw: f(stat), mn_raw: f(stat), scale_prev: f(stat), mn_prev: f(stat),
  };
}

/** Validates a case's params and arrays against its family; throws {@link @xquant/quant!XqFormatError} naming the case and array. */
function specOf(family: GoldenFamily, c: GoldenCase): Spec {
  const where = `${family}/${c.name}`;
  const p = c.params;
  const kind = p.kind;
  if (kind !== 'keys' && kind !== 'values') throw new XqFormatError(`${where}: params.kind must be 'keys' or 'values'; got ${JSON.stringify(kind)}`);
  const B = posInt(p, 'B', where);
  const H = posInt(p, 'H', where);
  const T = posInt(p, 'T', where);
  const D = posInt(p, 'D', where);
  const groupSize = posInt(p, 'group_size', where);
  const bits = p.bits as Bits;
  if (!(SUPPORTED_BITS as readonly unknown[]).includes(bits)) {
    throw new XqFormatError(`${where}: params.bits must be one of ${SUPPORTED_BITS.join(', ')}; got ${JSON.stringify(p.bits)}`);
  }
  if (p.dtype !== 'float16' && p.dtype !== 'float32') {
    throw new XqFormatError(`${where}: params.dtype must be 'float16' or 'float32'; got ${JSON.stringify(p.dtype)}`);
  }
  const precision: Precision = p.dtype === 'float16' ? 'fp16' : 'fp32';
  const gamma = p.gamma ?? null;
  if (gamma !== null && (typeof gamma !== 'number' || !Number.isFinite(gamma))) {
    throw new XqFormatError(`${where}: params.gamma must be a number or null; got ${JSON.stringify(p.gamma)}`);
  }
  if (family === 'c_calibration' && gamma === null) throw new XqFormatError(`${where}: calibration case without params.gamma`);
  const heads = B * H;
  const [rows, cols] = kind === 'keys' ? [heads * D, T] : [heads * T, D];
  const spec: Spec = { kind, B, H, T, D, heads, bits, groupSize, precision, gamma, rows, cols, opts: { bits, groupSize, precision } };
  const expected = expectedArrays(family, spec, where);
  for (const name of REQUIRED[family]) {
    if (!c.arrays[name]) throw new XqFormatError(`${where}: missing array '${name}'`);
  }
  for (const [name, arr] of Object.entries(c.arrays)) {
    const e = expected[name];
    if (!e) continue; // extra arrays are ignored
    if (arr.dtype !== e.dtype) throw new XqFormatError(`${where}: array '${name}' has dtype ${arr.dtype}, expected ${e.dtype}`);
    if (arr.shape.join(',') !== e.shape.join(',')) {
      throw new XqFormatError(`${where}: array '${name}' has shape [${arr.shape.join(', ')}], expected [${e.shape.join(', ')}] from params`);
    }
  }
  return spec;
}

function coords(index: number, shape: number[]): string {
  const out: number[] = [];
  let rest = index;
  for (let k = shape.length - 1; k >= 0; k--) {
    out.unshift(rest % shape[k]!);
    rest = Math.floor(rest / shape[k]!);
  }
  return `[${out.join(',')}]`;
}

function lengthMismatch(array: string, got: number, want: number, criterion: ArrayCheck['criterion'] = 'exact'): ArrayCheck {
  return { array, criterion, compared: 0, mismatches: want, maxAbsError: Infinity, passed: criterion === 'info', note: `${array}: got ${got} elements, expected ${want}` };
}

/** Element-wise identity of integers (as unsigned 32-bit words when `words`) or float values. */
function exact(array: string, got: ArrayLike<number>, ref: GoldenArray, opts: { words?: boolean; float?: boolean } = {}): ArrayCheck {
  const want = ref.data;
  if (got.length !== want.length) return lengthMismatch(array, got.length, want.length);
  let mismatches = 0;
  let maxAbsError = 0;
  let first = -1;
  for (let i = 0; i < want.length; i++) {
    const g = opts.words ? got[i]! >>> 0 : got[i]!;
    const w = opts.words ? want[i]! >>> 0 : want[i]!;
    if (g === w || (g !== g && w !== w)) continue;
    mismatches++;
    if (first < 0) first = i;
    if (opts.float) maxAbsError = Math.max(maxAbsError, Number.isNaN(g - w) ? Infinity : Math.abs(g - w));
  }
  const fmt = (v: number) => (opts.words ? `0x${(v >>> 0).toString(16).padStart(8, '0')}` : String(v));
  return {
    array,
    criterion: 'exact',
    compared: want.length,
    mismatches,
    maxAbsError,
    passed: mismatches === 0,
    ...(first >= 0
      ? { note: `${array}: ${mismatches}/${want.length} differ; first at ${coords(first, ref.shape)}: got ${fmt(got[first]!)}, want ${fmt(want[first]!)}` }
      : {}),
  };
}

/** `|got − ref| ≤ rel·absum + abs` per element. */
function withinTolerance(array: string, got: ArrayLike<number>, ref: GoldenArray, absum: GoldenArray, tol: AttentionTolerance, criterion: 'tolerance' | 'info'): ArrayCheck {
  const want = ref.data;
  if (got.length !== want.length) return lengthMismatch(array, got.length, want.length, criterion);
  let mismatches = 0;
  let maxAbsError = 0;
  let maxRatio = 0;
  let worst = -1;
  let worstExcess = -Infinity;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    const limit = tol.rel * absum.data[i]! + tol.abs;
    const e = Number.isNaN(err) ? Infinity : err;
    maxAbsError = Math.max(maxAbsError, e);
    if (absum.data[i]! > 0) maxRatio = Math.max(maxRatio, e / absum.data[i]!);
    if (!(e <= limit)) mismatches++;
    if (e - limit > worstExcess) {
      worstExcess = e - limit;
      worst = i;
    }
  }
  const w = worst;
  const note =
    mismatches > 0
      ? `${array}: ${mismatches}/${want.length} outside ${tol.rel}·absum + ${tol.abs}; worst at ${coords(w, ref.shape)}: got ${got[w]}, ref_f64 ${want[w]}, |Δ| ${Math.abs(got[w]! - want[w]!).toExponential(2)} > ${(tol.rel * absum.data[w]! + tol.abs).toExponential(2)}`
      : `${array}: max |Δ| ${maxAbsError.toExponential(2)}, max |Δ|/absum ${maxRatio.toExponential(2)}`;
  return { array, criterion, compared: want.length, mismatches, maxAbsError, passed: criterion === 'info' || mismatches === 0, note };
}

/** Info comparison of two outputs (ours vs the reference kernel's): max |Δ| and bit-identical count. */
function agreement(array: string, got: ArrayLike<number>, ref: GoldenArray): ArrayCheck {
  const want = ref.data;
  if (got.length !== want.length) return lengthMismatch(array, got.length, want.length, 'info');
  let maxAbsError = 0;
  let same = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    maxAbsError = Math.max(maxAbsError, Number.isNaN(d) ? Infinity : d);
    if (got[i] === want[i]) same++;
  }
  return {
    array,
    criterion: 'info',
    compared: want.length,
    mismatches: want.length - same,
    maxAbsError,
    passed: true,
    note: `ours vs ${array}: max |Δ| ${maxAbsError.toExponential(2)}, ${same}/${want.length} identical`,
  };
}

/** The quantizer-layout input of a case: keys `[B,H,T,D]` → `[B·H·D, T]`, values `[B·H·T, D]` as stored. */
function layoutInput(s: Spec, x: GoldenArray): Float32Array {
  const data = x.data as Float32Array;
  return s.kind === 'keys' ? transposeTokensChannels(data, { heads: s.heads, tokens: s.T, headDim: s.D }) : data;
}

function asStats(s: Spec, scale: GoldenArray, zero: GoldenArray): GroupStats {
  return { rows: s.rows, cols: s.cols, bits: s.bits, groupSize: s.groupSize, precision: s.precision, scale: scale.data as Float32Array, zero: zero.data as Float32Array };
}

function refCodes(s: Spec, packed: GoldenArray): Uint8Array {
  return unpackCodes(packed.data as Int32Array, s.rows, s.cols, s.bits);
}

type Ops = ConformanceTarget;

async function quantChecks(ops: Ops, s: Spec, c: GoldenCase, family: GoldenFamily): Promise<ArrayCheck[]> {
  const A = c.arrays;
  const x = layoutInput(s, A.x!);
  const q = family === 'e_anno2' ? await ops.quantizeRowsAnno2(x, s.rows, s.cols, s.opts) : await ops.quantizeRows(x, s.rows, s.cols, s.opts);
  const checks: ArrayCheck[] = [];
  checks.push(A.codes ? exact('codes', q.codes, A.codes) : exact('codes*', q.codes, { ...A.packed!, shape: [s.rows, s.cols], data: Int32Array.from(refCodes(s, A.packed!)) }));
  const packed = await ops.packCodes(q.codes, s.rows, s.cols, s.bits);
  checks.push(exact('packed', packed, A.packed!, { words: true }));
  if (A.packed_pack_tensor) checks.push(exact('packed_pack_tensor', packed, A.packed_pack_tensor, { words: true }));
  if (family === 'c_calibration') {
    checks.push(exact('scale_raw', q.scale, A.scale_raw!, { float: true }), exact('mn_raw', q.zero, A.mn_raw!, { float: true }));
    const cal = await ops.calibrateStats(q, s.gamma!);
    checks.push(exact('scale', cal.scale, A.scale!, { float: true }), exact('mn', cal.zero, A.mn!, { float: true }));
    checks.push(exact('deq', await ops.dequantizeRows(q.codes, cal), A.deq!, { float: true }));
    return checks;
  }
  checks.push(exact('scale', q.scale, A.scale!, { float: true }), exact('mn', q.zero, A.mn!, { float: true }));
  if (A.deq) checks.push(exact('deq', await ops.dequantizeRows(q.codes, q), A.deq, { float: true }));
  return checks;
}

async function crossLayerChecks(ops: Ops, s: Spec, c: GoldenCase): Promise<ArrayCheck[]> {
  const A = c.arrays;
  const checks: ArrayCheck[] = [];
  // layer l−1: anno=0 then calibration
  const prev = await ops.quantizeRows(layoutInput(s, A.x_prev!), s.rows, s.cols, s.opts);
  const prevCal = s.gamma === null ? prev : await ops.calibrateStats(prev, s.gamma);
  checks.push(exact('codes_prev*', prev.codes, { ...A.packed_prev!, shape: [s.rows, s.cols], data: Int32Array.from(refCodes(s, A.packed_prev!)) }));
  checks.push(exact('packed_prev', await ops.packCodes(prev.codes, s.rows, s.cols, s.bits), A.packed_prev!, { words: true }));
  checks.push(exact('scale_prev', prevCal.scale, A.scale_prev!, { float: true }), exact('mn_prev', prevCal.zero, A.mn_prev!, { float: true }));
  // layer l: anno=1 (own scale/zero, no codes) then calibration, read with layer l−1's codes
  const own = await ops.groupStats(layoutInput(s, A.x!), s.rows, s.cols, s.opts);
  checks.push(exact('scale_raw', own.scale, A.scale_raw!, { float: true }), exact('mn_raw', own.zero, A.mn_raw!, { float: true }));
  const cal = s.gamma === null ? own : await ops.calibrateStats(own, s.gamma);
  checks.push(exact('scale', cal.scale, A.scale!, { float: true }), exact('mn', cal.zero, A.mn!, { float: true }));
  checks.push(exact('deq', await ops.dequantizeRows(prev.codes, cal), A.deq!, { float: true }));
  return checks;
}

async function attentionChecks(ops: Ops, s: Spec, c: GoldenCase, tol: AttentionTolerance): Promise<ArrayCheck[]> {
  const A = c.arrays;
  const words = A.packed!.data;
  const block: PackedKv = {
    ...asStats(s, A.scale!, A.mn!),
    heads: s.heads,
    tokens: s.T,
    headDim: s.D,
    axis: s.kind === 'keys' ? 'channel' : 'token',
    packed: new Uint32Array(words.buffer, words.byteOffset, words.length),
  };
  const a = A.a!.data as Float32Array;
  const run = (kv: PackedKvView | readonly PackedKvView[]) => (s.kind === 'keys' ? ops.packedKeyScores(a, kv) : ops.packedValueMix(a, kv));
  const out = await run(block);
  const checks = [withinTolerance('ref_f64', out, A.ref_f64!, A.absum!, tol, 'tolerance')];
  // the same data as a quantized cache stores it: key blocks / token-major chunks of 32 tokens, fp16 metadata as bits
  const segmentTokens = s.kind === 'keys' ? Math.max(s.groupSize, 32 / s.bits) : CACHE_VALUE_CHUNK;
  const segments = packedKvSegments(block, { segmentTokens, metaFormat: s.precision === 'fp16' ? 'f16' : 'f32' });
  const cached = withinTolerance('ref_f64 (cache layout)', await run(segments), A.ref_f64!, A.absum!, tol, 'tolerance');
  const layout = s.kind === 'keys' ? `${segments.length} key blocks of ${segmentTokens} tokens` : `${segments.length} token-major chunks of ${segmentTokens} tokens`;
  checks.push({ ...cached, note: `${cached.note} (${layout}, ${s.precision === 'fp16' ? 'fp16 bit patterns' : 'float32'}; kernel path ${packedKernelPath(segments, s.heads)})` });
  for (const k of ['out_triton', 'out_cuda'] as const) {
    if (!A[k]) continue;
    checks.push(agreement(k, out, A[k]));
    const ref = withinTolerance(`${k}_vs_ref_f64`, A[k].data, A.ref_f64!, A.absum!, tol, 'info');
    checks.push({ ...ref, note: `reference ${ref.note}` });
  }
  return checks;
}

function summarizeChecks(family: GoldenFamily, c: GoldenCase, s: Spec, checks: ArrayCheck[]): Omit<CaseResult, 'name' | 'family' | 'checks'> {
  const deciding = checks.filter((k) => k.criterion !== 'info');
  const passed = deciding.every((k) => k.passed);
  const floatChecks = deciding.filter((k) => !/codes|packed/.test(k.array));
  const maxAbsError = floatChecks.reduce((m, k) => Math.max(m, k.maxAbsError), 0);
  const mismatchedCodes = deciding.filter((k) => k.array.startsWith('codes')).reduce((n, k) => n + k.mismatches, 0);
  let detail: string;
  if (!passed) {
    detail = deciding.filter((k) => !k.passed).map((k) => k.note ?? `${k.array}: failed`).join('; ');
  } else if (family === 'g_attention') {
    detail = checks.map((k) => k.note).filter(Boolean).join('; ');
  } else {
    detail = `bit-exact: ${deciding.map((k) => k.array.replace('*', '')).join(', ')}`;
  }
  if (family === 'd_crosslayer' && c.params.model_slice_is_full === false) {
    detail += `; note: the reference model would keep only ${String(c.params.model_key_slice_words)} of ${s.T / (32 / s.bits)} words per row (group_size ≠ 32); deq uses all codes`;
  }
  return { passed, maxAbsError, mismatchedCodes, detail };
}

/**
 * Runs one golden case of `family` against the target (default xquant-ts). Structural problems throw
 * {@link @xquant/quant!XqFormatError}; an exception from the target makes the case fail with the error in `detail`.
 */
export async function runGoldenCase(family: GoldenFamily, c: GoldenCase, options: RunOptions = {}): Promise<CaseResult> {
  const spec = specOf(family, c);
  return runChecked(family, c, spec, options);
}

async function runChecked(family: GoldenFamily, c: GoldenCase, spec: Spec, options: RunOptions): Promise<CaseResult> {
  const ops: Ops = { ...xquantTarget, ...options.target };
  const tol = options.attentionTolerance ?? DEFAULT_ATTENTION_TOLERANCE;
  let checks: ArrayCheck[];
  try {
    checks =
      family === 'd_crosslayer'
        ? await crossLayerChecks(ops, spec, c)
        : family === 'g_attention'
          ? await attentionChecks(ops, spec, c, tol)
          : await quantChecks(ops, spec, c, family);
  } catch (e) {
    const err = e as { name?: string; code?: string; message?: string };
    return {
      name: c.name,
      family,
      passed: false,
      maxAbsError: Infinity,
      mismatchedCodes: 0,
      detail: `error: ${err?.name ?? 'Error'}${err?.code ? ` [${err.code}]` : ''}: ${err?.message ?? String(e)}`,
      checks: [],
    };
  }
  return { name: c.name, family, ...summarizeChecks(family, c, spec, checks), checks };
}

/**
 * Runs every case of a golden file (a path, JSON text, or a parsed object) and returns one {@link CaseResult} per
 * case, in file order. The whole file is validated before any case runs, so a corrupt file throws
 * {@link @xquant/quant!XqFormatError} (or `XqError` `E_IO` when it cannot be read) instead of returning partial results.
 * Criteria: codes and packed words identical; scale, zero-point and dequantized values identical (fp16 and fp32
 * cases alike); attention `|out − ref_f64| ≤ 2e-3·absum + 1e-6`, on the golden block and on the same data laid out as a
 * quantized cache keeps it (key blocks, token-major value chunks, fp16 metadata as bit patterns).
 */
export async function runGoldenFile(source: GoldenSource, options: RunOptions = {}): Promise<CaseResult[]> {
  const file = loadGolden(source);
  const specs = file.cases.map((c) => specOf(file.family, c));
  const results: CaseResult[] = [];
  for (let i = 0; i < file.cases.length; i++) results.push(await runChecked(file.family, file.cases[i]!, specs[i]!, options));
  return results;
}

/** Counts of a result list. */
export function summarizeResults(results: readonly CaseResult[]): {
  /** Cases run. */
  total: number;
  /** Cases that passed. */
  passed: number;
  /** Cases that failed. */
  failed: number;
} {
  const passed = results.filter((r) => r.passed).length;
  return { total: results.length, passed, failed: results.length - passed };
}
