import { XqBackendError, XqConfigError, XqShapeError, type KvStats, type PackedKv } from '@xquant/quant';
import {
  assertGpuLayout,
  assertGpuSupported,
  kvStrides,
  packedBytes,
  sharedMeta,
  toGpuLayout,
  type GpuKvGeometry,
  type GpuKvLayout,
  type GpuLayoutOptions,
} from './layout.js';
import {
  CHUNK_TOKENS,
  PARAM_FIELDS,
  combineKernelSource,
  mainKernelSource,
  sharedBytes,
  type KernelKind,
  type Params,
  type ShaderSpec,
  type StageSpec,
} from './wgsl.js';

/** A packed K or V block resident on the GPU (see {@link GpuKvLayout} for the layouts). */
export interface GpuKv extends GpuKvGeometry {
  /** Packed codes (may be another layer's buffer: cross-layer sharing). */
  readonly codes: GPUBuffer;
  /** Interleaved scale/zero. */
  readonly meta: GPUBuffer;
}

/**
 * Full-precision residual keys or values: `buffer` holds float32 `[kvHeads, capacity, headDim]`
 * (`[capacity, kvHeads, headDim]` when `tokenMajor`), the first `tokens` valid.
 */
export interface ResidualKv {
  buffer: GPUBuffer;
  tokens: number;
  capacity: number;
  tokenMajor?: boolean;
}

/** A recorded kernel invocation: bind groups and parameters are fixed, so it can be encoded many times. */
export interface KernelCall {
  /** Record the dispatches (one or two) into a compute pass. */
  encode(pass: GPUComputePassEncoder): void;
  /** Output buffer (float32). */
  readonly out: GPUBuffer;
  /** Number of float32 outputs. */
  readonly outLength: number;
  /** Bytes of packed codes plus metadata the call reads. */
  readonly packedBytes: number;
  /** Number of dispatches {@link KernelCall.encode} records. */
  readonly dispatches: number;
  /** Free the call's own buffers (uniforms, partials, and the output if the call allocated it). */
  destroy(): void;
}

/** Tuning knobs of the kernels (defaults are the measured best). */
export interface KernelTuning {
  /** Query heads per workgroup (default: min(GQA group, 4), lowered to fit workgroup memory). */
  headsPerGroup?: number;
  /** Loads issued together (default 4). */
  unroll?: number;
  /** Issue all value loads of a chunk up front (decodeAttention: before the key reduction and softmax, default true; valueMix: before staging p, default false). */
  prefetch?: boolean;
}

/** Arguments of {@link PackedAttentionGpu.keyScores}. */
export interface KeyScoresArgs extends KernelTuning {
  /** float32 `[qHeads, headDim]`. */
  q: GPUBuffer;
  qHeads: number;
  keys: GpuKv;
  /** float32 `[qHeads, keys.tokens]`; allocated when omitted. */
  out?: GPUBuffer;
}

/** Arguments of {@link PackedAttentionGpu.valueMix}. */
export interface ValueMixArgs extends KernelTuning {
  /** float32 `[qHeads, pStride]` weights; the first `values.tokens` of each row are used. */
  p: GPUBuffer;
  qHeads: number;
  values: GpuKv;
  /** Row stride of `p` (default `values.tokens`). */
  pStride?: number;
  /** float32 `[qHeads, headDim]`; allocated when omitted. */
  out?: GPUBuffer;
}

/** Arguments of {@link PackedAttentionGpu.decodeAttention}. */
export interface DecodeArgs extends KernelTuning {
  /** float32 `[qHeads, headDim]` (one decode position). */
  q: GPUBuffer;
  qHeads: number;
  /** Quantized keys (tokens `0 … keys.tokens−1`); omit when every key is in the residual. */
  keys?: GpuKv;
  /** Quantized values (tokens `0 … values.tokens−1`). */
  values?: GpuKv;
  /** Full-precision keys of tokens `keys.tokens … n−1`. */
  residualKeys?: ResidualKv;
  /** Full-precision values of tokens `values.tokens … n−1`. */
  residualValues?: ResidualKv;
  /** KV heads (needed only when neither keys nor values are given). */
  kvHeads?: number;
  headDim?: number;
  /** Softmax scale (default 1/√headDim). */
  scale?: number;
  /** float32 `[qHeads, headDim]`; allocated when omitted. */
  out?: GPUBuffer;
}

const STORAGE = 0x80; // GPUBufferUsage.STORAGE
const COPY_SRC = 0x04;
const COPY_DST = 0x08;
const UNIFORM = 0x40;
const MAP_READ = 0x01;

const DEFAULT_STAGE: StageSpec = { bits: 2, meta: 'f16' };

/**
 * Packed-code decode attention on a `GPUDevice`. Create with {@link createPackedAttention}; upload blocks with
 * {@link PackedAttentionGpu.uploadKv}, then build calls and encode them into your own passes (or use `run`/`read`).
 */
export class PackedAttentionGpu {
  private readonly pipelines = new Map<string, Promise<GPUComputePipeline>>();
  private readonly syncPipelines = new Map<string, GPUComputePipeline>();
  private constructor(readonly device: GPUDevice) {}

  /** Wrap a device. Request the adapter's limits on it (see {@link requestNodeDevice}) for large caches. */
  static create(device: GPUDevice): PackedAttentionGpu {
    return new PackedAttentionGpu(device);
  }

  /** Create a buffer with `data` (STORAGE | COPY_SRC | COPY_DST plus `usage`). */
  createBuffer(data: Float32Array | Uint32Array | Int32Array, usage = 0, label?: string): GPUBuffer {
    const size = Math.max(16, Math.ceil(data.byteLength / 16) * 16);
    const buf = this.device.createBuffer({ size, usage: STORAGE | COPY_SRC | COPY_DST | usage, mappedAtCreation: true, label });
    new Uint8Array(buf.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    buf.unmap();
    return buf;
  }

  /** An uninitialized float32 storage buffer of `length` elements. */
  createOutput(length: number, label?: string): GPUBuffer {
    return this.device.createBuffer({ size: Math.max(16, Math.ceil((length * 4) / 16) * 16), usage: STORAGE | COPY_SRC | COPY_DST, label });
  }

  /** Upload a packed block (converted with {@link toGpuLayout} unless it already is a layout). */
  uploadKv(block: PackedKv | GpuKvLayout, opts?: GpuLayoutOptions): GpuKv {
    const l = 'codes' in block ? block : toGpuLayout(block, opts);
    assertGpuLayout(l, l.codes.length, l.meta.length);
    this.checkBinding(l.codes.byteLength, 'codes');
    const { codes, meta, ...geometry } = l;
    const what = l.axis === 'channel' ? 'key' : 'value';
    return { ...geometry, codes: this.createBuffer(codes, 0, `${what} codes`), meta: this.createBuffer(meta, 0, `${what} meta`) };
  }

  /** Cross-layer sharing: a block with this layer's scale/zero (`stats`) over `donor`'s codes buffer (not copied). */
  shareKv(stats: KvStats, donor: GpuKv): GpuKv {
    if (donor.capacity !== donor.tokens || donor.blockTokens !== undefined || donor.tokenMajor) {
      throw new XqShapeError('shareKv: the donor must be in the PackedKv layout (no spare capacity, blocks or token-major rows); pair other layouts with meta in the same order yourself');
    }
    const meta = sharedMeta(stats, donor);
    return { ...donor, meta: this.createBuffer(meta, 0, 'shared meta') };
  }

  private checkBinding(bytes: number, what: string): void {
    const max = this.device.limits.maxStorageBufferBindingSize;
    if (bytes > max) {
      throw new XqBackendError(
        'E_BACKEND_UNAVAILABLE',
        `${what}: ${bytes} bytes exceed this device's maxStorageBufferBindingSize (${max}); request the adapter's limits`,
      );
    }
  }

  private headsPerGroup(kind: KernelKind, rep: number, headDim: number, t: KernelTuning): number {
    let hg = t.headsPerGroup ?? Math.min(rep, 4);
    if (!Number.isInteger(hg) || hg < 1 || hg > 8) throw new XqConfigError('E_CONFIG', `headsPerGroup must be 1…8; got ${String(hg)}`);
    hg = Math.min(hg, rep);
    const limit = this.device.limits.maxComputeWorkgroupStorageSize;
    while (hg > 1 && sharedBytes({ kind, headDim, headsPerGroup: hg }) > limit) hg--;
    if (sharedBytes({ kind, headDim, headsPerGroup: hg }) > limit) {
      throw new XqBackendError('E_BACKEND_UNAVAILABLE', `the kernels need ${sharedBytes({ kind, headDim, headsPerGroup: hg })} bytes of workgroup memory; the device allows ${limit}`);
    }
    return hg;
  }

  /** A compute pipeline of WGSL `code` (entry `main`, layout `auto`), compiled once per distinct source. @internal */
  pipeline(code: string, label: string): Promise<GPUComputePipeline> {
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

  /**
   * {@link pipeline}, compiled synchronously (for callers that cannot await, e.g. a tfjs kernel inside `attend`);
   * a WGSL error surfaces as `E_KERNEL_MISSING` through the device's error scope. @internal
   */
  pipelineNow(code: string, label: string): GPUComputePipeline {
    let p = this.syncPipelines.get(code);
    if (!p) {
      const module = this.device.createShaderModule({ code, label });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label });
      this.syncPipelines.set(code, p);
    }
    return p;
  }

  private params(p: Partial<Params>): GPUBuffer {
    const size = Math.ceil(PARAM_FIELDS.length / 4) * 16;
    const buf = this.device.createBuffer({ size, usage: UNIFORM | COPY_DST, mappedAtCreation: true, label: 'params' });
    const u = new Uint32Array(buf.getMappedRange());
    const f = new Float32Array(u.buffer);
    PARAM_FIELDS.forEach((k, i) => {
      if (k === 'scale') f[i] = p.scale ?? 1;
      else u[i] = p[k] ?? 0;
    });
    buf.unmap();
    return buf;
  }

  /** A bind group of `buffers` at bindings 0, 1, … of `pipe`'s group 0. @internal */
  bind(pipe: GPUComputePipeline, buffers: GPUBuffer[]): GPUBindGroup {
    return this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  }

  private checkQ(qHeads: number, kvHeads: number, what: string): number {
    if (!Number.isInteger(qHeads) || qHeads <= 0) throw new XqShapeError(`${what}: qHeads must be a positive integer; got ${String(qHeads)}`);
    if (qHeads % kvHeads !== 0) throw new XqShapeError(`${what}: ${qHeads} query heads is not a multiple of ${kvHeads} KV heads (GQA)`);
    return qHeads / kvHeads;
  }

  /** Throws {@link XqShapeError} unless `buf` holds `floats` float32. @internal */
  checkSize(buf: GPUBuffer, floats: number, what: string): void {
    if (buf.size < floats * 4) throw new XqShapeError(`${what}: buffer of ${buf.size} bytes is smaller than the ${floats} float32 it must hold`);
  }

  /** Scores `q·k̂ᵀ` (no 1/√d) of every query head over packed keys, GQA: `[qHeads, keys.tokens]`. */
  async keyScores(args: KeyScoresArgs): Promise<KernelCall> {
    const { keys, qHeads } = args;
    if (keys.axis !== 'channel') throw new XqShapeError('keyScores needs keys quantized per channel (axis "channel")');
    const rep = this.checkQ(qHeads, keys.heads, 'keyScores');
    const D = keys.headDim;
    this.checkSize(args.q, qHeads * D, 'q');
    const hg = this.headsPerGroup('keyScores', rep, D, args);
    const spec: ShaderSpec = { kind: 'keyScores', headDim: D, rep, headsPerGroup: hg, keys: stage(keys), unroll: args.unroll ?? 4 };
    const pipe = await this.pipeline(mainKernelSource(spec, 'raw'), 'xquant keyScores');
    const outLength = qHeads * keys.tokens;
    const own = !args.out;
    const out = args.out ?? this.createOutput(outLength, 'scores');
    this.checkSize(out, outLength, 'out');
    const { kws, kgs, kblk, kbw, kbm } = kvStrides(keys);
    const params = this.params({ tk: keys.tokens, n: keys.tokens, kws, kgs, kblk, kbw, kbm, kgsz: keys.groupSize, ostride: keys.tokens });
    const bg = this.bind(pipe, [args.q, keys.codes, keys.meta, out, params]);
    const grid: [number, number, number] = [Math.ceil(keys.tokens / CHUNK_TOKENS), keys.heads, Math.ceil(rep / hg)];
    return dispatchCall([{ pipe, bg, grid }], { out, outLength, packedBytes: packedBytes(keys), temps: [params], own });
  }

  /** `Σ_t p[h,t]·v̂[kv(h),t,:]` over packed values, GQA: `[qHeads, headDim]` (split over token chunks, then summed). */
  async valueMix(args: ValueMixArgs): Promise<KernelCall> {
    const { values, qHeads } = args;
    if (values.axis !== 'token') throw new XqShapeError('valueMix needs values quantized per token (axis "token")');
    const rep = this.checkQ(qHeads, values.heads, 'valueMix');
    const D = values.headDim;
    const pStride = args.pStride ?? values.tokens;
    if (!Number.isInteger(pStride) || pStride < values.tokens) throw new XqShapeError(`pStride must be an integer ≥ ${values.tokens}; got ${String(pStride)}`);
    this.checkSize(args.p, qHeads * pStride, 'p');
    const hg = this.headsPerGroup('valueMix', rep, D, args);
    const spec: ShaderSpec = { kind: 'valueMix', headDim: D, rep, headsPerGroup: hg, values: stage(values), unroll: args.unroll ?? 4, prefetch: args.prefetch ?? false };
    const [pipe, comb] = await Promise.all([
      this.pipeline(mainKernelSource(spec, 'raw'), 'xquant valueMix'),
      this.pipeline(combineKernelSource(D, 'sum', 'raw'), 'xquant sum'),
    ]);
    const nc = Math.ceil(values.tokens / CHUNK_TOKENS);
    return this.twoPass(pipe, comb, [args.p, values.codes, values.meta], {
      qHeads,
      D,
      nc,
      kvHeads: values.heads,
      nhg: Math.ceil(rep / hg),
      params: { tv: values.tokens, n: values.tokens, ...pick(kvStrides(values), 'vhs', 'vts'), vgsz: values.groupSize, vgpr: values.headDim / values.groupSize, nc, ostride: pStride },
      out: args.out,
      packedBytes: packedBytes(values),
    });
  }

  /**
   * One fused decode step: scores over packed + residual keys, softmax (scaled), weighted sum over packed + residual
   * values, split over 512-token chunks (flash-decoding) and merged by a second pass. Returns `[qHeads, headDim]`.
   * Tokens `0 … n−1` with `n = keys.tokens + residualKeys.tokens = values.tokens + residualValues.tokens`.
   */
  async decodeAttention(args: DecodeArgs): Promise<KernelCall> {
    const { keys, values, residualKeys: rk, residualValues: rv, qHeads } = args;
    if (keys && keys.axis !== 'channel') throw new XqShapeError('decodeAttention: keys must be quantized per channel');
    if (values && values.axis !== 'token') throw new XqShapeError('decodeAttention: values must be quantized per token');
    const kvHeads = keys?.heads ?? values?.heads ?? args.kvHeads;
    const D = keys?.headDim ?? values?.headDim ?? args.headDim;
    if (kvHeads === undefined || D === undefined) throw new XqShapeError('decodeAttention: give keys/values or kvHeads and headDim');
    if (keys && values && (keys.heads !== values.heads || keys.headDim !== values.headDim)) {
      throw new XqShapeError(`decodeAttention: keys are [${keys.heads} heads, d=${keys.headDim}] but values are [${values.heads} heads, d=${values.headDim}]`);
    }
    assertGpuSupported(keys?.bits ?? 2, keys?.groupSize ?? 32, D, 'decodeAttention');
    const rep = this.checkQ(qHeads, kvHeads, 'decodeAttention');
    const tk = keys?.tokens ?? 0;
    const tv = values?.tokens ?? 0;
    const rkt = rk?.tokens ?? 0;
    const rvt = rv?.tokens ?? 0;
    const n = tk + rkt;
    if (n !== tv + rvt) throw new XqShapeError(`decodeAttention: keys cover ${tk}+${rkt} tokens but values cover ${tv}+${rvt}`);
    if (n === 0) throw new XqShapeError('decodeAttention: no tokens to attend to');
    for (const [r, what] of [[rk, 'residualKeys'], [rv, 'residualValues']] as const) {
      if (r && (!Number.isInteger(r.tokens) || r.tokens < 0 || r.capacity < r.tokens)) throw new XqShapeError(`${what}: need 0 ≤ tokens ≤ capacity; got ${r.tokens}/${r.capacity}`);
      if (r) this.checkSize(r.buffer, kvHeads * r.capacity * D, what);
    }
    this.checkSize(args.q, qHeads * D, 'q');
    const hg = this.headsPerGroup('decode', rep, D, args);
    const spec: ShaderSpec = {
      kind: 'decode',
      headDim: D,
      rep,
      headsPerGroup: hg,
      keys: keys ? stage(keys) : DEFAULT_STAGE,
      values: values ? stage(values) : DEFAULT_STAGE,
      unroll: args.unroll ?? 4,
      prefetch: args.prefetch ?? true,
    };
    const [pipe, comb] = await Promise.all([
      this.pipeline(mainKernelSource(spec, 'raw'), 'xquant decode'),
      this.pipeline(combineKernelSource(D, 'softmax', 'raw'), 'xquant merge'),
    ]);
    const dummy = this.device.createBuffer({ size: 16, usage: STORAGE, label: 'empty' });
    const ks = kvStrides(keys);
    const vs = kvStrides(values);
    const nc = Math.ceil(n / CHUNK_TOKENS);
    const call = await this.twoPass(
      pipe,
      comb,
      [args.q, keys?.codes ?? dummy, keys?.meta ?? dummy, values?.codes ?? dummy, values?.meta ?? dummy, rk?.buffer ?? dummy, rv?.buffer ?? dummy],
      {
        qHeads,
        D,
        nc,
        kvHeads,
        nhg: Math.ceil(rep / hg),
        params: {
          n,
          tk,
          tv,
          ...pick(ks, 'kws', 'kgs', 'kblk', 'kbw', 'kbm'),
          kgsz: keys?.groupSize ?? 32,
          ...pick(vs, 'vhs', 'vts'),
          vgsz: values?.groupSize ?? 32,
          vgpr: values ? D / values.groupSize : 1,
          rkhs: rk?.tokenMajor ? 1 : (rk?.capacity ?? 0),
          rkts: rk?.tokenMajor ? kvHeads : 1,
          rvhs: rv?.tokenMajor ? 1 : (rv?.capacity ?? 0),
          rvts: rv?.tokenMajor ? kvHeads : 1,
          nc,
          scale: args.scale ?? 1 / Math.sqrt(D),
        },
        out: args.out,
        packedBytes: (keys ? packedBytes(keys) : 0) + (values ? packedBytes(values) : 0),
      },
    );
    const destroy = call.destroy;
    return { ...call, encode: call.encode, destroy: () => (destroy(), dummy.destroy()) };
  }

  private twoPass(
    pipe: GPUComputePipeline,
    comb: GPUComputePipeline,
    inputs: GPUBuffer[],
    o: { qHeads: number; D: number; nc: number; kvHeads: number; nhg: number; params: Partial<Params>; out?: GPUBuffer; packedBytes: number },
  ): KernelCall {
    if (o.nc > 65535) throw new XqShapeError(`too many tokens for one dispatch: ${o.nc} chunks of ${CHUNK_TOKENS} (max 65535)`);
    const partials = this.createOutput(o.qHeads * o.nc * (o.D + 2), 'partials');
    const outLength = o.qHeads * o.D;
    const own = !o.out;
    const out = o.out ?? this.createOutput(outLength, 'attention out');
    this.checkSize(out, outLength, 'out');
    const params = this.params(o.params);
    const bg1 = this.bind(pipe, [...inputs, partials, params]);
    const bg2 = this.bind(comb, [partials, out, params]);
    const steps: DispatchStep[] = [
      { pipe, bg: bg1, grid: [o.nc, o.kvHeads, o.nhg] },
      { pipe: comb, bg: bg2, grid: [o.qHeads] },
    ];
    return dispatchCall(steps, { out, outLength, packedBytes: o.packedBytes, temps: [params, partials], own });
  }

  /** Encode calls into one compute pass and submit. */
  run(...calls: KernelCall[]): void {
    const enc = this.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (const c of calls) c.encode(pass);
    pass.end();
    this.device.queue.submit([enc.finish()]);
  }

  /** Read `length` float32 from a buffer (waits for queued work). */
  async read(buffer: GPUBuffer, length: number): Promise<Float32Array> {
    const staging = this.device.createBuffer({ size: Math.ceil((length * 4) / 4) * 4 || 4, usage: MAP_READ | COPY_DST });
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(buffer, 0, staging, 0, length * 4);
    this.device.queue.submit([enc.finish()]);
    await staging.mapAsync(1 /* GPUMapMode.READ */);
    const out = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    staging.destroy();
    return out;
  }

  /** Run a call and read its output. */
  async runAndRead(call: KernelCall): Promise<Float32Array> {
    this.run(call);
    return this.read(call.out, call.outLength);
  }
}

/** One dispatch of a {@link KernelCall}: a pipeline, its bind group and the workgroup grid. @internal */
export interface DispatchStep {
  pipe: GPUComputePipeline;
  bg: GPUBindGroup;
  grid: [number, number?, number?];
}

/**
 * A {@link KernelCall} that records `steps` in order; `destroy` frees the call's own buffers (`temps`: uniforms,
 * partials) and `out` when the call allocated it (`own`). @internal
 */
export function dispatchCall(steps: DispatchStep[], o: { out: GPUBuffer; outLength: number; packedBytes: number; temps: GPUBuffer[]; own: boolean }): KernelCall {
  return {
    out: o.out,
    outLength: o.outLength,
    packedBytes: o.packedBytes,
    dispatches: steps.length,
    encode(pass) {
      for (const s of steps) {
        pass.setPipeline(s.pipe);
        pass.setBindGroup(0, s.bg);
        pass.dispatchWorkgroups(...s.grid);
      }
    },
    destroy() {
      for (const t of o.temps) t.destroy();
      if (o.own) o.out.destroy();
    },
  };
}

function pick<T extends object, K extends keyof T>(o: T, ...keys: K[]): Pick<T, K> {
  const r = {} as Pick<T, K>;
  for (const k of keys) r[k] = o[k];
  return r;
}

function stage(kv: GpuKv): StageSpec {
  return { bits: kv.bits, meta: kv.metaFormat };
}

/** Wrap a `GPUDevice` in the packed-attention kernels. */
export function createPackedAttention(device: GPUDevice): PackedAttentionGpu {
  return PackedAttentionGpu.create(device);
}
