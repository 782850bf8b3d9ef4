/**
 * @packageDocumentation
 * tfjs-backend-webgpu programs for packed-code decode attention: the same WGSL as the raw-WebGPU entry, run through
 * `backend.runWebGPUProgram` on tfjs tensors. Use {@link createWebGpuAttentionKernels} when the active backend is
 * `webgpu`.
 */
import { engine, tensor, type DataType, type Tensor, type Tensor2D, type TensorInfo } from '@tensorflow/tfjs-core';
import { XqBackendError, XqConfigError, XqShapeError, type KvStats, type PackedKv } from '@xquant/quant';
import type { KernelTuning } from './raw.js';
import {
  assertGpuLayout,
  assertGpuSupported,
  kvStrides,
  sharedMeta,
  layoutDims,
  toGpuLayout,
  type GpuKvGeometry,
  type GpuKvLayout,
  type GpuLayoutOptions,
  type MetaFormat,
} from './layout.js';
import {
  CHUNK_TOKENS,
  PARAM_FIELDS,
  WORKGROUP,
  combineKernelSource,
  inputNames,
  mainKernelSource,
  sharedBytes,
  type KernelKind,
  type Params,
  type ShaderSpec,
  type StageSpec,
} from './wgsl.js';

/** The part of tfjs-backend-webgpu's `WebGPUBackend` these kernels use. */
export interface WebGpuBackendLike {
  device: GPUDevice;
  runWebGPUProgram(
    program: WebGpuProgramLike,
    inputs: TensorInfo[],
    outputDtype: DataType,
    programDefinedUniform?: Array<{ type: string; data: number[] }>,
  ): TensorInfo;
  disposeData(dataId: object, force?: boolean): boolean;
}

/** Structural copy of tfjs-backend-webgpu's `WebGPUProgram` interface. */
export interface WebGpuProgramLike {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[]; y?: number[]; z?: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms?: string;
  variableComponents?: number[];
  getUserCode(): string;
}

/**
 * A packed K or V block as tfjs tensors (layouts of {@link GpuKvLayout}).
 * `codes`: int32 (the u32 words' bits). `meta`: int32 `[…, groups]` for `'f16'`, float32 `[…, groups, 2]` for `'f32'`.
 */
export interface TfPackedKv extends GpuKvGeometry {
  /** Packed codes. */
  readonly codes: Tensor;
  /** Interleaved scale/zero. */
  readonly meta: Tensor;
}

/**
 * Full-precision residual keys or values: float32 `[kvHeads, capacity, headDim]` (`[capacity, kvHeads, headDim]` when
 * `tokenMajor`), the first `tokens` valid (default all).
 */
export interface TfResidual {
  tensor: Tensor;
  tokens?: number;
  tokenMajor?: boolean;
}

/** Arguments of {@link WebGpuAttentionKernels.decodeAttention}. */
export interface TfDecodeArgs {
  /** float32 `[qHeads, headDim]`. */
  q: Tensor;
  keys?: TfPackedKv;
  values?: TfPackedKv;
  residualKeys?: TfResidual | Tensor;
  residualValues?: TfResidual | Tensor;
  /** Needed only when neither keys nor values are given. */
  kvHeads?: number;
  /** Softmax scale (default 1/√headDim). */
  scale?: number;
}

/** Packed-code attention kernels on a tfjs WebGPU backend. Outputs are new tensors owned by the caller. */
export interface WebGpuAttentionKernels {
  /** `q·k̂ᵀ` (no 1/√d) over packed keys, GQA: q `[qHeads, headDim]` → `[qHeads, keys.tokens]`. */
  keyScores(q: Tensor, keys: TfPackedKv): Tensor2D;
  /** `Σ_t p·v̂` over packed values, GQA: p `[qHeads, ≥ values.tokens]` → `[qHeads, headDim]`. */
  valueMix(p: Tensor, values: TfPackedKv): Tensor2D;
  /** Fused decode attention (softmax(q·Kᵀ·scale)·V) over packed + residual K/V → `[qHeads, headDim]`. */
  decodeAttention(args: TfDecodeArgs): Tensor2D;
  /** Free the provider's small helper tensor. */
  dispose(): void;
}

const UNIFORM_DECL = PARAM_FIELDS.map((k) => `${k} : ${k === 'scale' ? 'f32' : 'u32'},`).join(' ');

class XqProgram implements WebGpuProgramLike {
  readonly variableNames: string[];
  readonly shaderKey: string;
  readonly dispatchLayout = { x: [0] };
  readonly workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  readonly uniforms = UNIFORM_DECL;
  readonly variableComponents?: number[];
  constructor(
    private readonly source: string,
    kind: KernelKind | 'combine',
    readonly outputShape: number[],
    readonly dispatch: [number, number, number],
    metas: Partial<Record<string, MetaFormat>> = {},
  ) {
    this.variableNames = inputNames(kind);
    this.shaderKey = `xquant_${kind}_${hash(source)}`;
    if (Object.values(metas).includes('f32')) this.variableComponents = this.variableNames.map((n) => (metas[n] === 'f32' ? 2 : 1));
  }
  getUserCode(): string {
    return this.source;
  }
}

function hash(s: string): string {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return (h >>> 0).toString(36) + s.length.toString(36);
}

function uniformsOf(p: Partial<Params>): Array<{ type: string; data: number[] }> {
  return PARAM_FIELDS.map((k) => (k === 'scale' ? { type: 'float32', data: [p.scale ?? 1] } : { type: 'uint32', data: [p[k] ?? 0] }));
}

/**
 * Convert a packed block to tensors in the kernels' layout (codes as int32, metadata interleaved). The tensors live
 * on the active backend; dispose them (or use tidy) when done.
 */
export function packedKvToTensors(block: PackedKv | GpuKvLayout, opts?: GpuLayoutOptions): TfPackedKv {
  const l = 'codes' in block ? block : toGpuLayout(block, opts);
  assertGpuLayout(l, l.codes.length, l.meta.length);
  const d = layoutDims(l);
  const lead =
    l.axis === 'channel'
      ? l.blockTokens !== undefined
        ? [l.capacity / l.blockTokens, l.heads, l.headDim]
        : [l.heads, l.headDim]
      : l.tokenMajor
        ? [l.capacity, l.heads]
        : [l.heads, l.capacity];
  const perRow = l.axis === 'channel' && l.blockTokens !== undefined ? { w: (l.blockTokens * l.bits) / 32, g: l.blockTokens / l.groupSize } : { w: d.wordsPerRow, g: d.groupsPerRow };
  const { codes: c, meta: m, ...geometry } = l;
  const codes = tensor(new Int32Array(c.buffer, c.byteOffset, c.length), [...lead, perRow.w], 'int32');
  const meta =
    l.metaFormat === 'f16'
      ? tensor(new Int32Array(m.buffer, m.byteOffset, m.length), [...lead, perRow.g], 'int32')
      : tensor(new Float32Array(m.buffer, m.byteOffset, m.length), [...lead, perRow.g, 2], 'float32');
  return { ...geometry, codes, meta };
}

/** Cross-layer sharing with tensors: this layer's scale/zero over `donor`'s codes tensor (shared, not copied). */
export function shareTfKv(stats: KvStats, donor: TfPackedKv): TfPackedKv {
  if (donor.capacity !== donor.tokens || donor.blockTokens !== undefined || donor.tokenMajor) {
    throw new XqShapeError('shareTfKv: the donor must be in the PackedKv layout (no spare capacity, blocks or token-major rows)');
  }
  const m = sharedMeta(stats, donor);
  const lead = donor.meta.shape.slice(0, donor.metaFormat === 'f16' ? undefined : -1);
  const meta = donor.metaFormat === 'f16' ? tensor(new Int32Array(m.buffer), lead, 'int32') : tensor(new Float32Array(m.buffer), [...lead, 2], 'float32');
  return { ...donor, meta };
}

function checkKv(kv: TfPackedKv, axis: 'channel' | 'token', what: string): void {
  if (kv.axis !== axis) throw new XqShapeError(`${what}: expected axis '${axis}', got '${kv.axis}'`);
  assertGpuLayout(kv, kv.codes.size, kv.meta.size, what);
  if (kv.codes.dtype !== 'int32') throw new XqConfigError('E_CONFIG', `${what}.codes must be int32; got ${kv.codes.dtype}`);
  const wantMeta = kv.metaFormat === 'f16' ? 'int32' : 'float32';
  if (kv.meta.dtype !== wantMeta) throw new XqConfigError('E_CONFIG', `${what}.meta must be ${wantMeta} for metaFormat '${kv.metaFormat}'; got ${kv.meta.dtype}`);
}

function stageOf(kv: TfPackedKv): StageSpec {
  return { bits: kv.bits, meta: kv.metaFormat };
}

/**
 * Packed-code attention on a tfjs WebGPU backend: `tf.backend()` after `await tf.setBackend('webgpu')`.
 * Every call validates shapes/dtypes and throws typed XqErrors; GQA: query head h reads KV head ⌊h·kvHeads/qHeads⌋.
 */
export function createWebGpuAttentionKernels(backend: WebGpuBackendLike, tuning: KernelTuning = {}): WebGpuAttentionKernels {
  if (!backend || typeof backend.runWebGPUProgram !== 'function' || !backend.device) {
    throw new XqBackendError('E_BACKEND_UNAVAILABLE', 'createWebGpuAttentionKernels needs the tfjs WebGPU backend (tf.backend() with backend "webgpu")');
  }
  const limit = backend.device.limits.maxComputeWorkgroupStorageSize;
  let dummy: Tensor | undefined;
  const empty = () => (dummy ??= tensor(new Float32Array(4), [4], 'float32'));
  const unroll = tuning.unroll ?? 4;
  const heads = (kind: KernelKind, rep: number, D: number) => {
    let hg = Math.min(rep, tuning.headsPerGroup ?? 4);
    while (hg > 1 && sharedBytes({ kind, headDim: D, headsPerGroup: hg }) > limit) hg--;
    if (sharedBytes({ kind, headDim: D, headsPerGroup: hg }) > limit) {
      throw new XqBackendError('E_BACKEND_UNAVAILABLE', `the kernels need ${sharedBytes({ kind, headDim: D, headsPerGroup: hg })} bytes of workgroup memory; the device allows ${limit}`);
    }
    return hg;
  };
  const queryHeads = (q: Tensor, D: number, kvHeads: number, what: string): number => {
    if (q.dtype !== 'float32') throw new XqConfigError('E_CONFIG', `${what} must be float32; got ${q.dtype}`);
    if (q.rank !== 2 || q.shape[1] !== D) throw new XqShapeError(`${what} must be [qHeads, ${D}]; got [${q.shape.join(', ')}]`);
    const qh = q.shape[0]!;
    if (qh % kvHeads !== 0) throw new XqShapeError(`${what}: ${qh} query heads is not a multiple of ${kvHeads} KV heads (GQA)`);
    return qh;
  };
  const wrap = (info: TensorInfo) => engine().makeTensorFromTensorInfo(info) as Tensor2D;
  const twoPass = (prog: XqProgram, inputs: TensorInfo[], p: Partial<Params>, qHeads: number, D: number, mode: 'softmax' | 'sum'): Tensor2D => {
    const partial = backend.runWebGPUProgram(prog, inputs, 'float32', uniformsOf(p));
    try {
      const comb = new XqProgram(combineKernelSource(D, mode, 'tfjs'), 'combine', [qHeads, D], [qHeads, 1, 1]);
      return wrap(backend.runWebGPUProgram(comb, [partial], 'float32', uniformsOf(p)));
    } finally {
      backend.disposeData(partial.dataId);
    }
  };
  return {
    keyScores(q, keys) {
      checkKv(keys, 'channel', 'keys');
      const D = keys.headDim;
      const qHeads = queryHeads(q, D, keys.heads, 'q');
      const rep = qHeads / keys.heads;
      if (keys.tokens === 0) throw new XqShapeError('keys: no tokens');
      const hg = heads('keyScores', rep, D);
      const spec: ShaderSpec = { kind: 'keyScores', headDim: D, rep, headsPerGroup: hg, keys: stageOf(keys), unroll };
      const { kws, kgs, kblk, kbw, kbm } = kvStrides(keys);
      const prog = new XqProgram(mainKernelSource(spec, 'tfjs'), 'keyScores', [qHeads, keys.tokens], [Math.ceil(keys.tokens / CHUNK_TOKENS), keys.heads, Math.ceil(rep / hg)], { km: keys.metaFormat });
      const p = { n: keys.tokens, tk: keys.tokens, kws, kgs, kblk, kbw, kbm, kgsz: keys.groupSize, ostride: keys.tokens };
      return wrap(backend.runWebGPUProgram(prog, [q, keys.codes, keys.meta], 'float32', uniformsOf(p)));
    },
    valueMix(p, values) {
      checkKv(values, 'token', 'values');
      const D = values.headDim;
      if (p.dtype !== 'float32' || p.rank !== 2 || p.shape[1]! < values.tokens) {
        throw new XqShapeError(`p must be float32 [qHeads, ≥ ${values.tokens}]; got ${p.dtype} [${p.shape.join(', ')}]`);
      }
      const qHeads = p.shape[0]!;
      if (qHeads % values.heads !== 0) throw new XqShapeError(`p: ${qHeads} query heads is not a multiple of ${values.heads} KV heads (GQA)`);
      if (values.tokens === 0) throw new XqShapeError('values: no tokens');
      const rep = qHeads / values.heads;
      const hg = heads('valueMix', rep, D);
      const spec: ShaderSpec = { kind: 'valueMix', headDim: D, rep, headsPerGroup: hg, values: stageOf(values), unroll, prefetch: tuning.prefetch ?? false };
      const nc = Math.ceil(values.tokens / CHUNK_TOKENS);
      const prog = new XqProgram(mainKernelSource(spec, 'tfjs'), 'valueMix', [qHeads, nc, D + 2], [nc, values.heads, Math.ceil(rep / hg)], { vm: values.metaFormat });
      const { vhs, vts } = kvStrides(values);
      const par = { n: values.tokens, tv: values.tokens, vhs, vts, vgsz: values.groupSize, vgpr: D / values.groupSize, nc, ostride: p.shape[1]! };
      return twoPass(prog, [p, values.codes, values.meta], par, qHeads, D, 'sum');
    },
    decodeAttention(a) {
      const { keys, values } = a;
      if (keys) checkKv(keys, 'channel', 'keys');
      if (values) checkKv(values, 'token', 'values');
      const kvHeads = keys?.heads ?? values?.heads ?? a.kvHeads;
      const D = keys?.headDim ?? values?.headDim ?? a.q.shape[1];
      if (kvHeads === undefined || D === undefined) throw new XqShapeError('decodeAttention: give keys/values or kvHeads');
      if (keys && values && (keys.heads !== values.heads || keys.headDim !== values.headDim)) {
        throw new XqShapeError(`decodeAttention: keys are [${keys.heads} heads, d=${keys.headDim}] but values are [${values.heads} heads, d=${values.headDim}]`);
      }
      assertGpuSupported(keys?.bits ?? 2, keys?.groupSize ?? 32, D, 'decodeAttention');
      const qHeads = queryHeads(a.q, D, kvHeads, 'q');
      const rep = qHeads / kvHeads;
      const res = (r: TfResidual | Tensor | undefined, what: string) => {
        if (!r) return { t: empty(), tokens: 0, hs: 0, ts: 1 };
        const t = 'tensor' in r ? r.tensor : r;
        const tm = 'tensor' in r && r.tokenMajor === true;
        const [hAxis, tAxis] = tm ? [1, 0] : [0, 1];
        if (t.dtype !== 'float32' || t.rank !== 3 || t.shape[hAxis] !== kvHeads || t.shape[2] !== D) {
          const want = tm ? `[capacity, ${kvHeads}, ${D}]` : `[${kvHeads}, capacity, ${D}]`;
          throw new XqShapeError(`${what} must be float32 ${want}; got ${t.dtype} [${t.shape.join(', ')}]`);
        }
        const cap = t.shape[tAxis]!;
        const tokens = ('tensor' in r ? r.tokens : undefined) ?? cap;
        if (!Number.isInteger(tokens) || tokens < 0 || tokens > cap) throw new XqShapeError(`${what}: tokens ${tokens} outside 0…${cap}`);
        return { t, tokens, hs: tm ? 1 : cap, ts: tm ? kvHeads : 1 };
      };
      const rk = res(a.residualKeys, 'residualKeys');
      const rv = res(a.residualValues, 'residualValues');
      const tk = keys?.tokens ?? 0;
      const tv = values?.tokens ?? 0;
      const n = tk + rk.tokens;
      if (n !== tv + rv.tokens) throw new XqShapeError(`decodeAttention: keys cover ${tk}+${rk.tokens} tokens but values cover ${tv}+${rv.tokens}`);
      if (n === 0) throw new XqShapeError('decodeAttention: no tokens to attend to');
      const hg = heads('decode', rep, D);
      const dflt: StageSpec = { bits: 2, meta: 'f16' };
      const spec: ShaderSpec = { kind: 'decode', headDim: D, rep, headsPerGroup: hg, keys: keys ? stageOf(keys) : dflt, values: values ? stageOf(values) : dflt, unroll, prefetch: tuning.prefetch ?? true };
      const nc = Math.ceil(n / CHUNK_TOKENS);
      if (nc > 65535) throw new XqShapeError(`too many tokens for one dispatch: ${n}`);
      const prog = new XqProgram(mainKernelSource(spec, 'tfjs'), 'decode', [qHeads, nc, D + 2], [nc, kvHeads, Math.ceil(rep / hg)], {
        km: spec.keys!.meta,
        vm: spec.values!.meta,
      });
      const ks = kvStrides(keys);
      const vs = kvStrides(values);
      const owned: Tensor[] = [];
      const keep = (t: Tensor) => (owned.push(t), t);
      // the shared helper tensor must not be disposed with the call's own placeholders
      const placeholder = (m: MetaFormat) => (m === 'f32' ? keep(tensor(new Float32Array(4), [2, 2], 'float32')) : empty());
      try {
        const inputs = [
          a.q,
          keys?.codes ?? empty(),
          keys?.meta ?? placeholder(spec.keys!.meta),
          values?.codes ?? empty(),
          values?.meta ?? placeholder(spec.values!.meta),
          rk.t,
          rv.t,
        ];
        const par = {
          n,
          tk,
          tv,
          kws: ks.kws,
          kgs: ks.kgs,
          kblk: ks.kblk,
          kbw: ks.kbw,
          kbm: ks.kbm,
          kgsz: keys?.groupSize ?? 32,
          vhs: vs.vhs,
          vts: vs.vts,
          vgsz: values?.groupSize ?? 32,
          vgpr: values ? D / values.groupSize : 1,
          rkhs: rk.hs,
          rkts: rk.ts,
          rvhs: rv.hs,
          rvts: rv.ts,
          nc,
          scale: a.scale ?? 1 / Math.sqrt(D),
        };
        return twoPass(prog, inputs, par, qHeads, D, 'softmax');
      } finally {
        for (const t of owned) t.dispose();
      }
    },
    dispose() {
      dummy?.dispose();
      dummy = undefined;
    },
  };
}
