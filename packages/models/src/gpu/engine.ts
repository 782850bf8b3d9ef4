import { XqBackendError, XqConfigError, XqNumericError, XqShapeError, XqStateError, halfBitsArray } from '@xquant/quant';
import {
  DeviceKvCache,
  KernelCompiler,
  requireFixedSubgroupSize,
  requireMatrixUnits,
  type DeviceAttentionTuning,
  type DeviceCacheMemory,
  type DeviceCacheSpec,
} from '@xquant/webgpu';
import type { ModelConfig } from '../config.js';
import { validateModelConfig } from '../config.js';
import type { WeightSource } from '../model.js';
import { checkWeightsMatchConfig } from '../weight-check.js';
import { ropeInverseFrequencies, ropeTables } from '../rope.js';
import { MATMUL_TOKENS, MATVEC_WORKGROUP, SAMPLE_BLOCK, embedSource, matmulRowsSource, matmulWorkgroups, matmulUnsupported, matvecRowsPerWorkgroup, matvecRowsSource, matvecRowsTokens, matvecSource, matvecSplit, sampleSource, type MatvecSpec } from './kernels.js';

const SAMPLE_LAYOUT: ('read-only-storage' | 'storage' | 'uniform')[] = ['read-only-storage', 'storage', 'uniform', 'storage'];

const STORAGE = 0x80;
const COPY_SRC = 0x04;
const COPY_DST = 0x08;
const UNIFORM = 0x40;
const MAP_READ = 0x01;

/** Default of {@link GpuDecoderOptions.prefillMatrixMinWorkgroups} (measured on an H100: see there). */
export const PREFILL_MATRIX_MIN_WORKGROUPS = 256;
/** Options of {@link GpuDecoder.create}. */
export interface GpuDecoderOptions {
  /** The KV cache: `{ kind: 'full' }` (fp16 rows) or `{ kind: 'quantized', config }` with a resolved `@xquant/tfjs` config. */
  cache: DeviceCacheSpec;
  /** Positions the decoder can hold (prompt + generated tokens). */
  capacity: number;
  /** Decode-attention kernel geometry. */
  tuning?: DeviceAttentionTuning;
  /** Decode steps submitted ahead of the token read back (default 2; 1 = fully synchronous). */
  inFlight?: number;
  /**
   * Reduce with subgroup operations: in the matrix-vector products (each row's lane partials by shuffles, RMSNorm's sum
   * of squares by `subgroupAdd`) and, unless `tuning.subgroups` is given, in the cache's attention kernel (see
   * `DeviceAttentionTuning.subgroups`, also for what the device needs; a typed error without it). Default `false`:
   * correct on lavapipe, not yet timed on a GPU.
   */
  subgroups?: boolean;
  /**
   * Keep the matrix-vector products' weight loads one batch ahead: the first batch before the RMSNorm prologue (q/k/v,
   * gate/up, the output head), so its latency overlaps the norm, and each next batch before the current one's products.
   * Default `false`: correct on lavapipe, not yet timed on a GPU.
   */
  prefetchWeights?: boolean;
  /**
   * Split the rows of the decode matrix-vector products without a norm prologue whose dispatch is a single wave and
   * whose threads would walk several batches of weight loads in a chain (down on the Llama-3.2-1B and Qwen2.5 shapes)
   * over 2, 4 or 8 thread groups each, so that every thread issues its loads in one batch. Measured on an H100: down 0.42
   * → 0.38 ms per token (Llama-3.2-1B shape) and 0.46 → 0.37 (Qwen2.5-0.5B). Default `true`; `false` keeps one 32-thread
   * group per row (the kernels before the option). Same numbers up to the order of float sums.
   */
  splitMatvecs?: boolean;
  /**
   * Prompt positions encoded into one command buffer (default 32; 1 = a position at a time, as decoding does). A batch
   * runs each layer's matrix-vector products once over all its positions (every weight loaded once per 8 positions,
   * 4 for gate/up, instead of once per position; see `prefillMatrix`), the attention over fp16 rows (a `full` cache,
   * the prompt cache of `prefillAttention: 'full-precision'`) as one causal dispatch per layer, and packed layers'
   * update and attention position by position. Each position attends as it would alone: the numbers equal the
   * one-at-a-time path up to the order of float sums.
   */
  prefillBatch?: number;
  /**
   * Run the prefill batches' products on the GPU's matrix units (tensor cores) through Chromium's experimental subgroup
   * matrices: 64 weight rows × 32 positions per workgroup, every weight loaded once per 32 positions, each input split
   * into two f16 parts so the products keep about 22 bits of it. Products whose shapes do not fit (input features not a
   * multiple of 32, weight rows not of 16) keep the float kernel; `prefillMatrixProducts` counts those that run on the
   * matrix units. It needs what `DeviceAttentionTuning.matrix` needs (a typed error otherwise). `'emulate'`: the same
   * kernel with the products as loops (tests on adapters without matrix units; needs `shader-f16`). Only products
   * with at least `prefillMatrixMinWorkgroups` workgroups per batch take the matrix units. Default `false`: on an H100
   * (docs/gpu/README.md, 2026-12-05d) a 4096-token prompt of the Llama-3.2-1B shape took 2216 ms with every product on
   * the matrix units against 1449 ms with none (two calls on the same kind of machine).
   */
  prefillMatrix?: boolean | 'emulate';
  /**
   * With `prefillMatrix`: the fewest workgroups a product's dispatch over one batch must have to run on the matrix units
   * (64 weight rows × 32 positions per workgroup); smaller products keep the float kernel. Default 256: on an H100 the
   * gate/up product of the Llama-3.2-1B shape (256 workgroups per batch of 32) took 362 ms of GPU time on the matrix
   * units against 643 ms on the float kernel over a 4096-token prompt, while q/k/v, o and down (48, 32 and 32
   * workgroups, too few to fill the GPU's 132 multiprocessors) took 1.6–3.3× longer. A non-negative integer.
   */
  prefillMatrixMinWorkgroups?: number;
  /**
   * What prompt positions attend over when a prompt of two or more tokens starts an empty decoder whose cache is
   * quantized (a one-token prompt attends over itself alone, from the cache's float32 ring).
   * `'full-precision'` (default): the prompt's fp16 K/V, as the reference implementation's prefill and the tfjs
   * runtime's `forward` do; the positions are taken into the quantized cache (the words decoding would leave for the
   * same K/V) without attending over it, and the first new token is sampled from the last prompt position. It needs a
   * second, fp16 cache for the prompt on the device (`memory().prefillBytes`, kept for the next prompt until
   * `replaceCache` or `dispose`). `'cache'`: the quantized cache, as in decoding, so every prompt position computes
   * what it would one at a time — far from the reference for low-bit caches (xquant-1.38 on xq-llama-20m, 75-token
   * prompt: 0.42 of the largest logit off the reference at the last prompt position, against 2e-4). A prompt that
   * continues held positions attends as with `'cache'`; with a `full` cache the two are the same.
   */
  prefillAttention?: 'cache' | 'full-precision';
}

/** Options of {@link GpuDecoder.generate}. */
export interface GpuGenerateOptions {
  /** Token ids to start from (fed one position at a time after what the decoder holds). */
  prompt: readonly number[];
  /** Tokens to generate at most. */
  maxNewTokens: number;
  /** 0 (default): greedy; > 0: Gumbel-max sampling at this temperature, seeded per position. */
  temperature?: number;
  /** Seed of the sampler. */
  seed?: number;
  /** Stop after any of these ids (included in the output). Default: the model's end-of-sequence ids. */
  stopTokens?: readonly number[];
  /** Called with each token as it is read back. */
  onToken?: (id: number) => void;
  /** Prompt positions per prefill submission in this call: 1 … the decoder's `prefillBatch` (its value by default). */
  prefillBatch?: number;
}

/** What {@link GpuDecoder.generate} returns. */
export interface GpuGenerateResult {
  /** Generated ids (without the prompt). */
  tokens: number[];
  /** Wall milliseconds of the prompt positions. */
  prefillMs: number;
  /** Wall milliseconds per generated token (first submit to last read back, divided by the tokens). */
  msPerToken: number;
  /**
   * Host milliseconds per generated token spent encoding and submitting its position (command encoding of every
   * layer's passes, uniform writes). Positions are queued `inFlight` ahead, so where this approaches `msPerToken` the
   * host, not the GPU, bounds the decode.
   */
  hostMsPerToken: number;
}

/** Bytes the decoder holds on the device. */
export interface GpuDecoderMemory {
  /** fp16 weights, float32 norms and biases, rotary tables. */
  weightBytes: number;
  /** Bytes of weights read per position by the matrix-vector products (all projections and the output head). */
  weightReadBytesPerToken: number;
  /** Activations, token ids and read-back buffers. */
  scratchBytes: number;
  /** The fp16 prompt cache of `prefillAttention: 'full-precision'` (0 until a prompt needed it). */
  prefillBytes: number;
  cache: DeviceCacheMemory;
}

interface Matvec {
  /** Thread groups per row of the decode product (1 for the prefill forms). */
  splitK?: number;
  pipe: GPUComputePipeline;
  bg: GPUBindGroup;
  workgroups: number;
  /** Batch rows one workgroup covers (the prefill form; dispatch y = ⌈rows / tokens⌉). */
  tokens?: number;
}

interface LayerOps {
  qkv: Matvec;
  o: Matvec;
  gateUp: Matvec;
  down: Matvec;
  /** The same products over the rows of a prefill batch (absent with `prefillBatch` 1 and `prefillAttention: 'cache'`). */
  batch: { qkv: Matvec; o: Matvec; gateUp: Matvec; down: Matvec } | null;
}

/**
 * Kinds of operation {@link GpuDecoder.profile} and {@link GpuDecoder.profilePrefill} time. In a prefill batch,
 * `attention` is the whole attention step of a layer (update, attention and merge) and `ingest` the batch taken into a
 * quantized cache without attending (a full-precision prefill).
 */
export type ProfileKind = 'embed' | 'qkv' | 'update' | 'attention' | 'ingest' | 'o' | 'gateUp' | 'down' | 'lmHead' | 'sample';

/** Timestamp pairs around the passes of one position, summed per kind. */
class Profiler {
  private readonly qs: GPUQuerySet;
  private readonly kinds: (ProfileKind | 'position')[] = [];
  private readonly resolveBuf: GPUBuffer;
  private readonly staging: GPUBuffer;
  constructor(private readonly device: GPUDevice, private readonly max: number) {
    this.qs = device.createQuerySet({ type: 'timestamp', count: 2 * max });
    this.resolveBuf = device.createBuffer({ size: 16 * max, usage: 0x0200 /* QUERY_RESOLVE */ | COPY_SRC });
    this.staging = device.createBuffer({ size: 16 * max, usage: MAP_READ | COPY_DST });
  }
  next(kind: ProfileKind | 'position'): GPUComputePassTimestampWrites {
    const i = this.kinds.length;
    if (i >= this.max) throw new XqStateError('E_STATE', 'profiler: more passes than expected');
    this.kinds.push(kind);
    return { querySet: this.qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }
  resolve(enc: GPUCommandEncoder): void {
    const n = 2 * this.kinds.length;
    enc.resolveQuerySet(this.qs, 0, n, this.resolveBuf, 0);
    enc.copyBufferToBuffer(this.resolveBuf, 0, this.staging, 0, 8 * n);
  }
  async read(): Promise<Record<string, number>> {
    await this.staging.mapAsync(MAP_READ);
    const t = new BigUint64Array(this.staging.getMappedRange().slice(0, 16 * this.kinds.length));
    this.staging.unmap();
    const out: Record<string, number> = {};
    this.kinds.forEach((k, i) => (out[k] = (out[k] ?? 0) + Number(t[2 * i + 1]! - t[2 * i]!) / 1e6));
    this.qs.destroy();
    this.resolveBuf.destroy();
    this.staging.destroy();
    return out;
  }
}

/**
 * The compute passes of one command buffer: every operation in one `shared` pass (to be ended after the last), or, with
 * a profiler, each operation `op(kind, body)` in a timed pass of its own (`shared` null), or (`whole`) every operation in
 * one shared pass timed as a whole (kind `position`).
 */
function operationPasses(enc: GPUCommandEncoder, profile: Profiler | undefined, whole = false): { shared: GPUComputePassEncoder | null; op: (kind: ProfileKind, body: (pass: GPUComputePassEncoder) => void) => void } {
  const shared = !profile ? enc.beginComputePass() : whole ? enc.beginComputePass({ timestampWrites: profile.next('position') }) : null;
  const op = (kind: ProfileKind, body: (pass: GPUComputePassEncoder) => void) => {
    if (shared) return body(shared);
    const pass = enc.beginComputePass({ timestampWrites: profile!.next(kind) });
    body(pass);
    pass.end();
  };
  return { shared, op };
}

/** float32 → fp16 bit patterns packed two per u32 (round to nearest even), for weights. */
function toHalfPairs(x: Float32Array, name: string): Uint32Array {
  if (x.length % 2 !== 0) throw new XqShapeError(`${name}: an even number of values is needed for fp16 pairs; got ${x.length}`);
  const h = halfBitsArray(x);
  for (let i = 0; i < h.length; i++) {
    if ((h[i]! & 0x7c00) === 0x7c00) throw new XqNumericError(`${name}: value ${x[i]} at flat index ${i} does not fit in fp16 (largest finite 65504)`);
  }
  return new Uint32Array(h.buffer, h.byteOffset, h.length / 2);
}

/**
 * A Llama / Qwen2 decoder that runs every decode step on the GPU (raw WebGPU): fp16 weights, a device-resident KV
 * cache (`DeviceKvCache` of `@xquant/webgpu`: `full` fp16 rows or any quantized configuration), RMSNorm fused into the following
 * matrix-vector product, SwiGLU fused into the gate/up product, and sampling on the device. One command buffer per
 * position; the only data read back is the sampled token id, and up to `inFlight` positions are queued ahead of it.
 */
export class GpuDecoder {
  private readonly buffers: GPUBuffer[] = [];
  private weightBytes = 0;
  private scratchBytes = 0;
  private readonly layers: LayerOps[] = [];
  private embed!: { pipe: GPUComputePipeline; bg: GPUBindGroup; workgroups: number };
  /** The embedding gather of a prefill batch (absent with `prefillBatch` 1 and `prefillAttention: 'cache'`). */
  private embedRows: { pipe: GPUComputePipeline; bg: GPUBindGroup; workgroups: number } | null = null;
  /** Positions of a prefill batch: rows of the activation buffers. */
  private readonly batchRows: number;
  private prefillMatrixCount = 0;
  /** What prompt positions attend over (see {@link GpuDecoderOptions.prefillAttention}). */
  private prefillAttention: 'cache' | 'full-precision' = 'full-precision';
  /** The fp16 cache of the prompt for `'full-precision'` prefill (made when first needed). */
  private promptCache: DeviceKvCache | null = null;
  private lmHead!: Matvec;
  private sample!: { pipe: GPUComputePipeline; pipe2: GPUComputePipeline; blocks: number; bg: GPUBindGroup };
  private samplePart!: GPUBuffer;
  private readonly step: GPUBuffer;
  private tokens: GPUBuffer;
  private rope: GPUBuffer | null = null;
  /** Positions the decoder can hold. */
  capacity: number;
  /** Bytes of weights the matrix-vector products read per position (every projection and the output head). */
  private matvecBytes = 0;
  private embedTable: GPUBuffer | null = null;
  private readonly staging: GPUBuffer[] = [];
  private readonly pending: (Promise<void> | null)[] = [];
  private pos = 0;
  private disposed = false;
  /** pos, vocab, temperature, seed, rows of the batch (the decode kernels read the first four). */
  private readonly stepData = new ArrayBuffer(32);
  private readonly inFlight: number;
  /** Subgroup size the model's kernels assume (`subgroups: true`), or undefined. */
  private subgroupSize: number | undefined;
  cache!: DeviceKvCache;
  private x!: GPUBuffer;
  private qkv!: GPUBuffer;
  private attn!: GPUBuffer;
  private gu!: GPUBuffer;
  private logits!: GPUBuffer;

  private constructor(
    readonly device: GPUDevice,
    readonly config: ModelConfig,
    capacity: number,
    inFlight: number,
    batchRows: number,
  ) {
    this.inFlight = inFlight;
    this.capacity = capacity;
    this.batchRows = batchRows;
    this.step = this.buffer(32, UNIFORM | COPY_DST, 'model step', 'scratch');
    this.tokens = this.buffer(4 * (capacity + 1), STORAGE | COPY_SRC | COPY_DST, 'token ids', 'scratch');
    for (let i = 0; i < inFlight; i++) {
      this.staging.push(this.buffer(4, MAP_READ | COPY_DST, 'token read-back', 'scratch'));
      this.pending.push(null);
    }
  }

  private buffer(size: number, usage: number, label: string, kind: 'weights' | 'scratch'): GPUBuffer {
    const b = this.device.createBuffer({ size: Math.max(16, Math.ceil(size / 16) * 16), usage, label });
    this.buffers.push(b);
    if (kind === 'weights') this.weightBytes += b.size;
    else this.scratchBytes += b.size;
    return b;
  }

  private upload(data: Uint32Array | Float32Array, label: string): GPUBuffer {
    const limit = this.device.limits.maxStorageBufferBindingSize;
    if (data.byteLength > limit) throw new XqBackendError('E_BACKEND_UNAVAILABLE', `${label}: ${data.byteLength} bytes exceed this device's maxStorageBufferBindingSize (${limit})`);
    const b = this.device.createBuffer({ size: Math.max(16, Math.ceil(data.byteLength / 16) * 16), usage: STORAGE | COPY_DST, mappedAtCreation: true, label });
    new Uint8Array(b.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    b.unmap();
    this.buffers.push(b);
    this.weightBytes += b.size;
    return b;
  }

  /**
   * Upload a model's weights (HF names, as {@link WeightSource} gives them) as fp16 and compile the kernels. Each
   * weight's shape is checked against `config`; non-finite values and values outside fp16 are typed errors.
   */
  static async create(device: GPUDevice, config: ModelConfig, weights: WeightSource, options: GpuDecoderOptions): Promise<GpuDecoder> {
    validateModelConfig(config, weights.source);
    await checkWeightsMatchConfig(config, weights);
    const cap = options.capacity;
    if (!Number.isInteger(cap) || cap <= 0) throw new XqShapeError(`capacity must be a positive integer; got ${String(cap)}`);
    if (cap > config.maxPositionEmbeddings * 64) throw new XqShapeError(`capacity ${cap} is far beyond the model's ${config.maxPositionEmbeddings} positions`);
    const inFlight = options.inFlight ?? 2;
    for (const k of ['subgroups', 'prefetchWeights', 'splitMatvecs'] as const) {
      if (options[k] !== undefined && typeof options[k] !== 'boolean') throw new XqConfigError('E_CONFIG', `${k} must be true or false; got ${String(options[k])}`);
    }
    const pm = options.prefillMatrix ?? false;
    if (pm !== true && pm !== false && pm !== 'emulate') throw new XqConfigError('E_CONFIG', `prefillMatrix must be true, false or 'emulate'; got ${String(options.prefillMatrix)}`);
    const mw = options.prefillMatrixMinWorkgroups ?? PREFILL_MATRIX_MIN_WORKGROUPS;
    if (!Number.isInteger(mw) || mw < 0) throw new XqConfigError('E_CONFIG', `prefillMatrixMinWorkgroups must be a non-negative integer; got ${String(options.prefillMatrixMinWorkgroups)}`);
    if (!Number.isInteger(inFlight) || inFlight < 1 || inFlight > 8) throw new XqConfigError('E_CONFIG', `inFlight must be an integer in [1, 8]; got ${String(inFlight)}`);
    const pa = options.prefillAttention ?? 'full-precision';
    if (pa !== 'cache' && pa !== 'full-precision') throw new XqConfigError('E_CONFIG', `prefillAttention must be 'cache' or 'full-precision'; got ${String(options.prefillAttention)}`);
    const batch = options.prefillBatch ?? 32;
    if (!Number.isInteger(batch) || batch < 1 || batch > 256) throw new XqConfigError('E_CONFIG', `prefillBatch must be an integer in [1, 256]; got ${String(options.prefillBatch)}`);
    const d = new GpuDecoder(device, config, cap, inFlight, batch);
    d.prefillAttention = pa;
    try {
      await d.build(weights, { ...options, prefillMatrix: pm, prefillMatrixMinWorkgroups: mw });
    } catch (e) {
      d.dispose();
      throw e;
    }
    return d;
  }

  private async build(weights: WeightSource, options: GpuDecoderOptions): Promise<void> {
    const c = this.config;
    const dev = this.device;
    this.subgroupSize = options.subgroups === true ? requireFixedSubgroupSize(dev) : undefined;
    // (create resolved both defaults)
    const prefillMatrix = options.prefillMatrix!;
    const minWorkgroups = options.prefillMatrixMinWorkgroups!;
    if (prefillMatrix === true) requireMatrixUnits(dev, 'prefillMatrix');
    if (prefillMatrix === 'emulate' && !dev.features.has('shader-f16')) throw new XqBackendError('E_BACKEND_UNAVAILABLE', "prefillMatrix 'emulate' needs a device opened with the 'shader-f16' feature");
    const H = c.hiddenSize;
    const D = c.headDim;
    const qd = c.numHeads * D;
    const kvd = c.numKvHeads * D;
    const I = c.intermediateSize;
    if (H % 8 !== 0 || qd % 8 !== 0 || I % 8 !== 0) throw new XqShapeError(`the GPU decoder needs hidden (${H}), heads·headDim (${qd}) and intermediate (${I}) sizes that are multiples of 8`);
    const read = async (name: string, shape: number[]): Promise<Float32Array> => {
      if (!weights.has(name)) throw new XqShapeError(`${weights.source}: missing weight '${name}' (expected shape [${shape.join(', ')}])`);
      const got = weights.shape(name);
      if (got.length !== shape.length || got.some((v, i) => v !== shape[i])) {
        throw new XqShapeError(`${weights.source}: weight '${name}' has shape [${got.join(', ')}], expected [${shape.join(', ')}]`);
      }
      const data = await weights.read(name);
      for (let i = 0; i < data.length; i++) {
        const v = data[i]!;
        if (v - v !== 0) throw new XqNumericError(`${weights.source}: weight '${name}' has a non-finite value (${v}) at flat index ${i}`);
      }
      return data;
    };
    const rows = async (names: string[], counts: number[], cols: number, label: string) => {
      const parts = await Promise.all(names.map((n, i) => read(n, [counts[i]!, cols])));
      const all = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
      let at = 0;
      for (const p of parts) {
        all.set(p, at);
        at += p.length;
      }
      return this.upload(toHalfPairs(all, label), label);
    };
    const vec = async (names: string[], counts: number[], label: string) => {
      const parts = await Promise.all(names.map((n, i) => read(n, [counts[i]!])));
      const all = new Float32Array(counts.reduce((a, b) => a + b, 0));
      let at = 0;
      for (const p of parts) {
        all.set(p, at);
        at += p.length;
      }
      return this.upload(all, label);
    };
    const k = new KernelCompiler(dev);
    const MV: ('read-only-storage' | 'storage' | 'uniform')[] = ['read-only-storage', 'read-only-storage', 'storage', 'read-only-storage', 'read-only-storage'];
    const MVB: ('read-only-storage' | 'storage' | 'uniform')[] = [...MV, 'uniform'];
    const B = this.batchRows;
    // the batch kernels: for batches of prompt positions, and for the last prompt position of a full-precision prefill
    const batchKernels = B > 1 || this.prefillAttention === 'full-precision';
    const dummy = this.buffer(16, STORAGE, 'unused binding', 'scratch');
    // activations
    // one row per position of a prefill batch (decoding uses row 0)
    this.x = this.buffer(4 * H * B, STORAGE | COPY_SRC | COPY_DST, 'hidden state', 'scratch');
    this.qkv = this.buffer(4 * (qd + 2 * kvd) * B, STORAGE | COPY_SRC, 'qkv', 'scratch');
    this.attn = this.buffer(4 * qd * B, STORAGE | COPY_SRC, 'attention output', 'scratch');
    this.gu = this.buffer(4 * I * B, STORAGE, 'swiglu', 'scratch');
    this.logits = this.buffer(4 * c.vocabSize, STORAGE | COPY_SRC, 'logits', 'scratch');
    const matvec = async (spec: MatvecSpec, W: GPUBuffer, x: GPUBuffer, y: GPUBuffer, g: GPUBuffer | null, bias: GPUBuffer | null, label: string): Promise<Matvec> => {
      const splitK = options.splitMatvecs === false ? 1 : matvecSplit(spec);
      const kernel = { ...spec, splitK, ...(this.subgroupSize ? { subgroupSize: this.subgroupSize } : {}), ...(options.prefetchWeights === true ? { prefetchWeights: true } : {}) };
      const pipe = await k.pipeline(matvecSource(kernel), MV, label);
      const bg = dev.createBindGroup({
        layout: k.layout(MV),
        entries: [W, x, y, g ?? dummy, bias ?? dummy].map((buffer, binding) => ({ binding, resource: { buffer } })),
      });
      this.matvecBytes += W.size;
      return { pipe, bg, workgroups: Math.ceil(spec.rows / matvecRowsPerWorkgroup(kernel)), splitK };
    };
    // the same product over the rows of a prefill batch
    // (on the matrix units with prefillMatrix, where the shape fits)
    const matvecRows = async (spec: MatvecSpec, W: GPUBuffer, x: GPUBuffer, y: GPUBuffer, g: GPUBuffer | null, bias: GPUBuffer | null, label: string): Promise<Matvec> => {
      const onMatrix = prefillMatrix !== false && matmulUnsupported(spec) === null && matmulWorkgroups(spec) * Math.ceil(B / MATMUL_TOKENS) >= minWorkgroups;
      const pipe = await k.pipeline(onMatrix ? matmulRowsSource(spec, prefillMatrix === 'emulate') : matvecRowsSource(spec), MVB, `${label} (prefill${onMatrix ? ', matrix units' : ''})`);
      const bg = dev.createBindGroup({
        layout: k.layout(MVB),
        entries: [W, x, y, g ?? dummy, bias ?? dummy, this.step].map((buffer, binding) => ({ binding, resource: { buffer } })),
      });
      if (!onMatrix) return { pipe, bg, workgroups: Math.ceil(spec.rows / 8), tokens: matvecRowsTokens(spec) };
      this.prefillMatrixCount++;
      return { pipe, bg, workgroups: matmulWorkgroups(spec), tokens: MATMUL_TOKENS };
    };
    // rows per 32-lane group: more for tall matrices (more loads in flight per thread), 1 for short ones
    const rpg = (rowsOut: number) => (rowsOut >= 65536 ? 4 : rowsOut >= 8192 ? 2 : 1);
    const eps = c.rmsNormEps;
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}.`;
      const a = `${p}self_attn.`;
      const m = `${p}mlp.`;
      const gIn = await vec([`${p}input_layernorm.weight`], [H], `layer ${l} input norm`);
      const gPost = await vec([`${p}post_attention_layernorm.weight`], [H], `layer ${l} post-attention norm`);
      const wqkv = await rows([`${a}q_proj.weight`, `${a}k_proj.weight`, `${a}v_proj.weight`], [qd, kvd, kvd], H, `layer ${l} qkv`);
      const bqkv = c.attentionBias ? await vec([`${a}q_proj.bias`, `${a}k_proj.bias`, `${a}v_proj.bias`], [qd, kvd, kvd], `layer ${l} qkv bias`) : null;
      const wo = await rows([`${a}o_proj.weight`], [H], qd, `layer ${l} o`);
      const bo = c.outputBias ? await vec([`${a}o_proj.bias`], [H], `layer ${l} o bias`) : null;
      // gate and up interleaved row by row, so one workgroup sees both rows of an output
      const [gate, up] = await Promise.all([read(`${m}gate_proj.weight`, [I, H]), read(`${m}up_proj.weight`, [I, H])]);
      const inter = new Float32Array(2 * I * H);
      for (let r = 0; r < I; r++) {
        inter.set(gate.subarray(r * H, (r + 1) * H), 2 * r * H);
        inter.set(up.subarray(r * H, (r + 1) * H), (2 * r + 1) * H);
      }
      const wgu = this.upload(toHalfPairs(inter, `layer ${l} gate/up`), `layer ${l} gate/up`);
      let bgu: GPUBuffer | null = null;
      let bdown: GPUBuffer | null = null;
      if (c.mlpBias) {
        const [bg, bu] = await Promise.all([read(`${m}gate_proj.bias`, [I]), read(`${m}up_proj.bias`, [I])]);
        const b = new Float32Array(2 * I);
        for (let r = 0; r < I; r++) {
          b[2 * r] = bg[r]!;
          b[2 * r + 1] = bu[r]!;
        }
        bgu = this.upload(b, `layer ${l} gate/up bias`);
        bdown = await vec([`${m}down_proj.bias`], [H], `layer ${l} down bias`);
      }
      const wdown = await rows([`${m}down_proj.weight`], [H], I, `layer ${l} down`);
      const specs = {
        qkv: { inFeatures: H, rows: qd + 2 * kvd, rowsPerGroup: rpg(qd + 2 * kvd), rmsNormEps: eps, bias: bqkv !== null, epilogue: 'store' },
        o: { inFeatures: qd, rows: H, rowsPerGroup: rpg(H), bias: bo !== null, epilogue: 'residual' },
        gateUp: { inFeatures: H, rows: I, rowsPerGroup: rpg(2 * I), rmsNormEps: eps, bias: bgu !== null, epilogue: 'swiglu' },
        down: { inFeatures: I, rows: H, rowsPerGroup: rpg(H), bias: bdown !== null, epilogue: 'residual' },
      } satisfies Record<string, MatvecSpec>;
      const args = {
        qkv: [wqkv, this.x, this.qkv, gIn, bqkv, `layer ${l} qkv`],
        o: [wo, this.attn, this.x, null, bo, `layer ${l} o`],
        gateUp: [wgu, this.x, this.gu, gPost, bgu, `layer ${l} gate/up`],
        down: [wdown, this.gu, this.x, null, bdown, `layer ${l} down`],
      } as const;
      const ops = async (make: typeof matvec) => ({
        qkv: await make(specs.qkv, ...args.qkv),
        o: await make(specs.o, ...args.o),
        gateUp: await make(specs.gateUp, ...args.gateUp),
        down: await make(specs.down, ...args.down),
      });
      this.layers.push({ ...(await ops(matvec)), batch: batchKernels ? await ops(matvecRows) : null });
    }
    const gFinal = await vec(['model.norm.weight'], [c.hiddenSize], 'final norm');
    const E = await rows(['model.embed_tokens.weight'], [c.vocabSize], H, 'embedding');
    const head = c.tieWordEmbeddings ? E : await rows(['lm_head.weight'], [c.vocabSize], H, 'lm head');
    this.lmHead = await matvec({ inFeatures: H, rows: c.vocabSize, rowsPerGroup: rpg(c.vocabSize), rmsNormEps: eps, bias: false, epilogue: 'store' }, head, this.x, this.logits, gFinal, null, 'lm head');
    const EL: ('read-only-storage' | 'storage' | 'uniform')[] = ['read-only-storage', 'read-only-storage', 'storage', 'uniform'];
    const ep = await k.pipeline(embedSource(H), EL, 'embedding');
    this.embed = { pipe: ep, bg: null!, workgroups: Math.ceil(H / 2 / 256) };
    if (batchKernels) this.embedRows = { pipe: await k.pipeline(embedSource(H, true), EL, 'embedding (prefill)'), bg: null!, workgroups: Math.ceil(H / 2 / 256) };
    this.samplePart = this.buffer(8 * Math.ceil(c.vocabSize / SAMPLE_BLOCK), STORAGE, 'sampling partials', 'scratch');
    this.sample = {
      pipe: await k.pipeline(sampleSource(c.vocabSize, 1), SAMPLE_LAYOUT, 'sampling (blocks)'),
      pipe2: await k.pipeline(sampleSource(c.vocabSize, 2), SAMPLE_LAYOUT, 'sampling (final)'),
      blocks: Math.ceil(c.vocabSize / SAMPLE_BLOCK),
      bg: null!,
    };
    this.embedTable = E;
    this.compiler = k;
    this.rebindTokens();
    await this.useCache(options.cache, this.capacity, options.tuning);
  }

  /**
   * Put a new, empty KV cache behind the same weights (e.g. to compare cache configurations without reloading the
   * model): the old cache and rotary tables are freed once the new ones are made, so a call that fails leaves the
   * decoder as it was (both caches are allocated for that moment).
   */
  async replaceCache(spec: DeviceCacheSpec, capacity: number = this.capacity, tuning?: DeviceAttentionTuning): Promise<void> {
    this.checkAlive();
    if (!Number.isInteger(capacity) || capacity <= 0) throw new XqShapeError(`capacity must be a positive integer; got ${String(capacity)}`);
    await this.device.queue.onSubmittedWorkDone();
    // the new cache first: a call that fails (bad tuning, a feature the device lacks) leaves the old one in place
    const [oldCache, oldRope] = [this.cache, this.rope];
    await this.useCache(spec, capacity, tuning);
    oldCache.dispose();
    // (bound to the old rotary tables)
    this.promptCache?.dispose();
    this.promptCache = null;
    if (oldRope) this.release(oldRope, 'weights');
    this.capacity = capacity;
    const grown = this.buffer(4 * (capacity + 1), STORAGE | COPY_SRC | COPY_DST, 'token ids', 'scratch');
    this.release(this.tokens, 'scratch');
    this.tokens = grown;
    this.rebindTokens();
    this.pos = 0;
  }

  /** Destroy a buffer this decoder made and take it out of the byte counts. */
  private release(b: GPUBuffer, kind: 'weights' | 'scratch'): void {
    if (kind === 'weights') this.weightBytes -= b.size;
    else this.scratchBytes -= b.size;
    b.destroy();
    const i = this.buffers.indexOf(b);
    if (i >= 0) this.buffers.splice(i, 1);
  }

  private compiler!: KernelCompiler;

  private rebindTokens(): void {
    const k = this.compiler;
    const bind = (kinds: ('read-only-storage' | 'storage' | 'uniform')[], bufs: GPUBuffer[]) =>
      this.device.createBindGroup({ layout: k.layout(kinds), entries: bufs.map((buffer, binding) => ({ binding, resource: { buffer } })) });
    this.embed.bg = bind(['read-only-storage', 'read-only-storage', 'storage', 'uniform'], [this.embedTable!, this.tokens, this.x, this.step]);
    if (this.embedRows) this.embedRows.bg = bind(['read-only-storage', 'read-only-storage', 'storage', 'uniform'], [this.embedTable!, this.tokens, this.x, this.step]);
    this.sample.bg = bind(SAMPLE_LAYOUT, [this.logits, this.tokens, this.step, this.samplePart]);
  }

  private async useCache(spec: DeviceCacheSpec, capacity: number, tuning?: DeviceAttentionTuning): Promise<void> {
    const c = this.config;
    const D = c.headDim;
    // the decoder's `subgroups` is the attention kernel's default too
    const t = this.subgroupSize && tuning?.subgroups === undefined ? { ...tuning, subgroups: true } : tuning;
    // (rings that hold a whole prefill batch: a full-precision prefill takes it into the packed layers in two dispatches)
    const cache = await DeviceKvCache.create(this.device, { layers: c.numLayers, qHeads: c.numHeads, kvHeads: c.numKvHeads, headDim: D }, spec, { capacity, batchRows: this.batchRows, ...(t ? { tuning: t } : {}) });
    // rotary tables for every position, [pos][cos D/2 | sin D/2]
    const inv = ropeInverseFrequencies(D, c.ropeTheta, c.ropeScaling);
    const positions = cache.capacity;
    const rope = new Float32Array(positions * D);
    const CH = 4096;
    for (let s = 0; s < positions; s += CH) {
      const n = Math.min(CH, positions - s);
      const { cos, sin } = ropeTables(inv, s, n);
      for (let t = 0; t < n; t++) {
        rope.set(cos.subarray(t * (D / 2), (t + 1) * (D / 2)), (s + t) * D);
        rope.set(sin.subarray(t * (D / 2), (t + 1) * (D / 2)), (s + t) * D + D / 2);
      }
    }
    let ropeBuffer: GPUBuffer | null = null;
    try {
      ropeBuffer = this.upload(rope, 'rotary tables');
      cache.attach({ qkv: this.qkv, rope: ropeBuffer, out: this.attn, rows: this.batchRows });
    } catch (e) {
      cache.dispose();
      if (ropeBuffer) this.release(ropeBuffer, 'weights');
      throw e;
    }
    this.rope = ropeBuffer;
    this.cache = cache;
  }

  /**
   * Thread groups per weight row of each decode matrix-vector product (see {@link GpuDecoderOptions.splitMatvecs}), for
   * logs and benchmarks: 1 is the unsplit kernel.
   */
  get matvecSplits(): { qkv: number; o: number; gateUp: number; down: number; lmHead: number } {
    const l = this.layers[0]!;
    return { qkv: l.qkv.splitK ?? 1, o: l.o.splitK ?? 1, gateUp: l.gateUp.splitK ?? 1, down: l.down.splitK ?? 1, lmHead: this.lmHead.splitK ?? 1 };
  }

  /** Prefill products (of the four per layer) that run on the matrix units (see {@link GpuDecoderOptions.prefillMatrix}). */
  get prefillMatrixProducts(): number {
    return this.prefillMatrixCount;
  }

  /** Whether the model's kernels reduce with subgroup operations (the `subgroups` option). */
  get usesSubgroups(): boolean {
    return this.subgroupSize !== undefined;
  }

  /** Positions held (prompt and generated tokens). */
  get position(): number {
    return this.pos;
  }

  private checkAlive(): void {
    if (this.disposed) throw new XqStateError('E_STATE', 'the GPU decoder was disposed');
  }

  /** A prompt of `what` (generate, profilePrefill): at least one token, every id inside the vocabulary. */
  private checkPrompt(what: string, prompt: readonly number[]): void {
    const V = this.config.vocabSize;
    if (prompt.length === 0) throw new XqShapeError(`${what}: the prompt must hold at least one token`);
    prompt.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= V) throw new XqConfigError('E_CONFIG', `${what}: token id ${id} at index ${i} is outside the vocabulary [0, ${V})`);
    });
  }

  /** A call's `prefillBatch` (default the decoder's), checked against the decoder's. */
  private prefillBatchOf(value: number | undefined): number {
    const batch = value ?? this.batchRows;
    if (!Number.isInteger(batch) || batch < 1 || batch > this.batchRows) throw new XqConfigError('E_CONFIG', `prefillBatch must be an integer in [1, ${this.batchRows}] (the decoder's); got ${String(value)}`);
    return batch;
  }

  /**
   * Whether a prompt of `length` tokens takes the full-precision prefill: it starts an empty decoder whose cache is
   * quantized (a one-token prompt attends over itself alone: the cache's float32 ring serves it without a prompt cache).
   */
  private fullPrecisionPrefill(length: number): boolean {
    return this.prefillAttention === 'full-precision' && this.pos === 0 && length > 1 && this.cache.spec.kind === 'quantized';
  }

  private writeStep(temperature: number, seed: number, rows = 1): void {
    const u = new Uint32Array(this.stepData);
    const f = new Float32Array(this.stepData);
    u[0] = this.pos;
    u[1] = this.config.vocabSize;
    f[2] = temperature;
    u[3] = seed >>> 0;
    u[4] = rows;
    this.device.queue.writeBuffer(this.step, 0, this.stepData);
  }

  /** Encode and submit position `pos` (its token is `tokens[pos]` on the device); `sample`: compute the next token. */
  private submitPosition(sample: boolean, temperature: number, seed: number, readback: GPUBuffer | null, profile?: Profiler, wholePass = false): void {
    if (this.pos >= this.cache.capacity || this.pos >= this.capacity) throw new XqStateError('E_STATE', `the decoder is full (${this.capacity} positions)`);
    this.writeStep(temperature, seed);
    this.cache.beginPosition();
    const enc = this.device.createCommandEncoder();
    // one pass for the whole position; when profiling, one timed pass per operation (wholePass: the one pass, timed)
    const { shared, op } = operationPasses(enc, profile, wholePass);
    const run = (kind: ProfileKind, m: Matvec) =>
      op(kind, (pass) => {
        pass.setPipeline(m.pipe);
        pass.setBindGroup(0, m.bg);
        pass.dispatchWorkgroups(Math.min(m.workgroups, 65535), Math.ceil(m.workgroups / 65535));
      });
    op('embed', (pass) => {
      pass.setPipeline(this.embed.pipe);
      pass.setBindGroup(0, this.embed.bg);
      pass.dispatchWorkgroups(this.embed.workgroups);
    });
    for (let l = 0; l < this.layers.length; l++) {
      const L = this.layers[l]!;
      run('qkv', L.qkv);
      op('update', (pass) => this.cache.encodeUpdate(pass, l));
      op('attention', (pass) => this.cache.encodeAttention(pass, l));
      run('o', L.o);
      run('gateUp', L.gateUp);
      run('down', L.down);
    }
    if (sample) {
      run('lmHead', this.lmHead);
      op('sample', (pass) => {
        pass.setPipeline(this.sample.pipe);
        pass.setBindGroup(0, this.sample.bg);
        pass.dispatchWorkgroups(this.sample.blocks);
        pass.setPipeline(this.sample.pipe2);
        pass.dispatchWorkgroups(1);
      });
    }
    shared?.end();
    if (profile) profile.resolve(enc);
    if (readback) enc.copyBufferToBuffer(this.tokens, 4 * (this.pos + 1), readback, 0, 4);
    this.device.queue.submit([enc.finish()]);
    this.cache.endPosition();
    this.pos++;
  }

  /**
   * Run `count` prompt positions (their ids already in `tokens`) without sampling, in batches of up to `batch`
   * (see {@link GpuDecoder.submitBatch}); a batch of one position whose attention runs over the cache goes through the
   * decode path.
   */
  private submitPrefill(count: number, batch: number, fullPrecision: boolean): void {
    for (let done = 0; done < count; ) {
      const rows = Math.min(batch, count - done);
      // (without the batch kernels the batch is 1: they exist whenever prefillBatch > 1 or the prefill is full-precision)
      if (!fullPrecision && rows === 1) this.submitPosition(false, 0, 0, null);
      else this.submitBatch(rows, fullPrecision, null);
      done += rows;
    }
  }

  /**
   * One command buffer for `rows` consecutive positions: per layer the batch's matrix-vector products once over its
   * rows, and between them the cache's update, attention and merge — for fp16 layers the whole batch in three
   * dispatches (`encodeLayerRows`), for packed layers position by position — or, with `fullPrecision`, attention over
   * the fp16 prompt cache and the positions taken into the quantized cache without attending. With
   * `sample` (one row), the next token is sampled on the device and copied to `sample.readback`.
   */
  private submitBatch(rows: number, fullPrecision: boolean, sample: { temperature: number; seed: number; readback: GPUBuffer } | null, profile?: Profiler): void {
    if (this.pos + rows > this.cache.capacity || this.pos + rows > this.capacity) throw new XqStateError('E_STATE', `the decoder is full (${this.capacity} positions)`);
    const fp = fullPrecision ? this.promptCache! : null;
    this.writeStep(sample?.temperature ?? 0, sample?.seed ?? 0, rows);
    this.cache.beginPositions(rows);
    fp?.beginPositions(rows);
    const enc = this.device.createCommandEncoder();
    // one pass for the whole batch; when profiling (no sampling), one timed pass per operation
    const { shared, op } = operationPasses(enc, profile);
    const run = (kind: ProfileKind, m: Matvec) =>
      op(kind, (pass) => {
        pass.setPipeline(m.pipe);
        pass.setBindGroup(0, m.bg);
        pass.dispatchWorkgroups(m.workgroups, Math.ceil(rows / m.tokens!));
      });
    const embed = this.embedRows!;
    op('embed', (pass) => {
      pass.setPipeline(embed.pipe);
      pass.setBindGroup(0, embed.bg);
      pass.dispatchWorkgroups(embed.workgroups, rows);
    });
    for (let l = 0; l < this.layers.length; l++) {
      const b = this.layers[l]!.batch!;
      run('qkv', b.qkv);
      // fp16 rows: the whole batch's update, attention and merge in three dispatches; packed layers position by position
      const attend = fp ?? this.cache;
      op('attention', (pass) => {
        if (rows > 1 && attend.rowsAttention(l)) attend.encodeLayerRows(pass, l);
        else for (let s = 0; s < rows; s++) attend.encodeLayer(pass, l, s);
      });
      if (fp) {
        op('ingest', (pass) => {
          if (rows > 1) this.cache.encodeIngestRows(pass, l);
          else this.cache.encodeIngest(pass, l, 0);
        });
      }
      run('o', b.o);
      run('gateUp', b.gateUp);
      run('down', b.down);
    }
    if (sample) {
      // one row: the decode kernels of the output head and sampler read row 0 (never profiled: profilePrefill samples nothing)
      const pass = shared!;
      pass.setPipeline(this.lmHead.pipe);
      pass.setBindGroup(0, this.lmHead.bg);
      pass.dispatchWorkgroups(Math.min(this.lmHead.workgroups, 65535), Math.ceil(this.lmHead.workgroups / 65535));
      pass.setPipeline(this.sample.pipe);
      pass.setBindGroup(0, this.sample.bg);
      pass.dispatchWorkgroups(this.sample.blocks);
      pass.setPipeline(this.sample.pipe2);
      pass.dispatchWorkgroups(1);
    }
    shared?.end();
    if (profile) profile.resolve(enc);
    if (sample) enc.copyBufferToBuffer(this.tokens, 4 * (this.pos + 1), sample.readback, 0, 4);
    this.device.queue.submit([enc.finish()]);
    this.cache.endPositions(rows);
    fp?.endPositions(rows);
    this.pos += rows;
  }

  /** The fp16 prompt cache, empty and holding at least `positions` (made or grown here). */
  private async promptCacheFor(positions: number): Promise<DeviceKvCache> {
    const c = this.config;
    if (!this.promptCache || this.promptCache.capacity < positions) {
      this.promptCache?.dispose();
      this.promptCache = null;
      const pc = await DeviceKvCache.create(this.device, { layers: c.numLayers, qHeads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim }, { kind: 'full' }, { capacity: positions });
      try {
        pc.attach({ qkv: this.qkv, rope: this.rope!, out: this.attn, rows: this.batchRows });
      } catch (e) {
        pc.dispose();
        throw e;
      }
      this.promptCache = pc;
    }
    this.promptCache.reset();
    return this.promptCache;
  }

  /**
   * GPU time of each kind of operation in one decode position (timestamp queries; the device needs
   * `timestamp-query`): the position after what the decoder holds runs `steps` times (each a fresh position), one
   * timed compute pass per operation; returns the median milliseconds per kind and their sum (`total`; each timed pass
   * adds a gap between operations, so it exceeds the untimed position's GPU time). Then `steps` more positions run as
   * decoding runs them, every operation in one compute pass, timed as a whole: `position` is their median.
   */
  async profile(steps = 5): Promise<Record<ProfileKind | 'total' | 'position', number>> {
    this.checkAlive();
    if (!this.device.features.has('timestamp-query')) throw new XqBackendError('E_BACKEND_UNAVAILABLE', 'profile() needs a device with timestamp-query');
    if (!Number.isInteger(steps) || steps < 1) throw new XqShapeError(`profile: steps must be a positive integer; got ${String(steps)}`);
    if (this.pos + 2 * steps > this.capacity) throw new XqShapeError(`profile: 2 × ${steps} positions after ${this.pos} exceed the capacity ${this.capacity}`);
    const per: Record<string, number[]> = {};
    for (let i = 0; i < 2 * steps; i++) {
      const whole = i >= steps;
      const p = new Profiler(this.device, whole ? 1 : 4 + 6 * this.layers.length);
      this.submitPosition(true, 0, 0, null, p, whole);
      const t = await p.read();
      for (const [k, v] of Object.entries(t)) (per[k] ??= []).push(v);
    }
    const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
    const out = Object.fromEntries(Object.entries(per).map(([k, v]) => [k, med(v)])) as Record<ProfileKind | 'total' | 'position', number>;
    out.total = Object.entries(out).reduce((s2, [k, v]) => (k === 'total' || k === 'position' ? s2 : s2 + v), 0);
    return out;
  }

  /**
   * GPU time of a prefill by kind of operation (timestamp queries; the device needs `timestamp-query`): `prompt` runs
   * after what the decoder holds, in batches of `prefillBatch` (default the decoder's) as `generate` runs a prompt, every
   * operation of every batch in a timed pass of its own; returns the milliseconds per kind summed over the batches, and
   * their sum. The decoder then holds the prompt; nothing is sampled. A batch of one position goes through the batch
   * kernels too. Timed passes add a gap between operations, so the sum exceeds the prefill's wall time.
   */
  async profilePrefill(prompt: readonly number[], opts: { prefillBatch?: number } = {}): Promise<Partial<Record<ProfileKind, number>> & { total: number }> {
    this.checkAlive();
    if (!this.device.features.has('timestamp-query')) throw new XqBackendError('E_BACKEND_UNAVAILABLE', 'profilePrefill() needs a device with timestamp-query');
    this.checkPrompt('profilePrefill', prompt);
    if (this.pos + prompt.length > this.capacity) throw new XqShapeError(`profilePrefill: ${this.pos} held + ${prompt.length} prompt positions exceed the capacity ${this.capacity}`);
    const batch = this.prefillBatchOf(opts.prefillBatch);
    if (!this.embedRows) throw new XqStateError('E_STATE', "profilePrefill needs the batch kernels (prefillBatch > 1 or prefillAttention 'full-precision')");
    this.device.queue.writeBuffer(this.tokens, 4 * this.pos, new Uint32Array(prompt));
    const fullPrecision = this.fullPrecisionPrefill(prompt.length);
    if (fullPrecision) await this.promptCacheFor(prompt.length);
    const out: Partial<Record<ProfileKind, number>> & { total: number } = { total: 0 };
    for (let done = 0; done < prompt.length; ) {
      const rows = Math.min(batch, prompt.length - done);
      const p = new Profiler(this.device, 1 + 6 * this.layers.length);
      this.submitBatch(rows, fullPrecision, null, p);
      for (const [k, v] of Object.entries(await p.read())) {
        out[k as ProfileKind] = (out[k as ProfileKind] ?? 0) + v;
        out.total += v;
      }
      done += rows;
    }
    return out;
  }

  /**
   * Generate after what the decoder holds: the prompt positions run on the device without read-back, then each
   * new token is sampled on the device and read back (one map per token, `inFlight` positions queued ahead).
   * Up to `inFlight − 1` positions past a stop token may have been computed when it returns.
   */
  async generate(opts: GpuGenerateOptions): Promise<GpuGenerateResult> {
    this.checkAlive();
    const { prompt, maxNewTokens } = opts;
    this.checkPrompt('generate', prompt);
    if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) throw new XqConfigError('E_CONFIG', `maxNewTokens must be a positive integer; got ${String(maxNewTokens)}`);
    const temperature = opts.temperature ?? 0;
    if (!Number.isFinite(temperature) || temperature < 0 || (temperature > 0 && temperature < 1e-6)) {
      throw new XqConfigError('E_CONFIG', `temperature must be 0 (greedy) or a finite number ≥ 1e-6; got ${String(temperature)}`);
    }
    if (this.pos + prompt.length + maxNewTokens > this.capacity) {
      throw new XqShapeError(`generate: ${this.pos} held + ${prompt.length} prompt + ${maxNewTokens} new positions exceed the capacity ${this.capacity}`);
    }
    const batch = this.prefillBatchOf(opts.prefillBatch);
    const stops = new Set(opts.stopTokens ?? this.config.eosTokenIds);
    const seed = opts.seed ?? 0;
    this.device.queue.writeBuffer(this.tokens, 4 * this.pos, new Uint32Array(prompt));
    const t0 = performance.now();
    // (full-precision: the last prompt position too; the first new token is sampled from it, in the loop below)
    const fullPrecision = this.fullPrecisionPrefill(prompt.length);
    if (fullPrecision) await this.promptCacheFor(prompt.length);
    this.submitPrefill(prompt.length - 1, batch, fullPrecision);
    await this.device.queue.onSubmittedWorkDone();
    const prefillMs = performance.now() - t0;
    const out: number[] = [];
    const t1 = performance.now();
    let submitted = 0;
    let hostMs = 0;
    let done = false;
    const ring = this.staging.length;
    const take = async (slot: number) => {
      await this.pending[slot];
      this.pending[slot] = null;
      const b = this.staging[slot]!;
      const id = new Uint32Array(b.getMappedRange())[0]!;
      b.unmap();
      return id;
    };
    while (!done && out.length < maxNewTokens) {
      // keep `ring` positions in flight: the last prompt token, then each generated token as its own position
      while (submitted < maxNewTokens && submitted - out.length < ring) {
        const slot = submitted % ring;
        const h0 = performance.now();
        if (fullPrecision && submitted === 0) this.submitBatch(1, true, { temperature, seed, readback: this.staging[slot]! });
        else this.submitPosition(true, temperature, seed, this.staging[slot]!);
        this.pending[slot] = this.staging[slot]!.mapAsync(MAP_READ);
        hostMs += performance.now() - h0;
        submitted++;
        if (submitted >= maxNewTokens) break;
      }
      const id = await take(out.length % ring);
      out.push(id);
      opts.onToken?.(id);
      if (stops.has(id)) done = true;
    }
    // drain what is still in flight (positions computed past a stop token stay in the cache)
    for (let i = out.length; i < submitted; i++) await take(i % ring);
    const msPerToken = (performance.now() - t1) / Math.max(1, out.length);
    return { tokens: out, prefillMs, msPerToken, hostMsPerToken: hostMs / Math.max(1, submitted) };
  }

  /**
   * Benchmarks: make the cache hold `tokens` positions of synthetic content (see `DeviceKvCache.fillSynthetic` of `@xquant/webgpu`)
   * so decoding can be timed at long contexts without running the model over them.
   */
  async fillSynthetic(tokens: number, seed = 1): Promise<void> {
    this.checkAlive();
    await this.cache.fillSynthetic(tokens, seed);
    this.pos = tokens;
  }

  /** Start over (buffers are kept). */
  reset(): void {
    this.checkAlive();
    this.cache.reset();
    this.pos = 0;
  }

  /** Bytes held on the device. */
  memory(): GpuDecoderMemory {
    this.checkAlive();
    return { weightBytes: this.weightBytes, weightReadBytesPerToken: this.matvecBytes, scratchBytes: this.scratchBytes, prefillBytes: this.promptCache?.memory().allocatedBytes ?? 0, cache: this.cache.memory() };
  }

  /** Read the logits of the last sampled position (tests, debugging). */
  async readLogits(): Promise<Float32Array> {
    this.checkAlive();
    const n = this.config.vocabSize;
    const st = this.device.createBuffer({ size: n * 4, usage: MAP_READ | COPY_DST });
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(this.logits, 0, st, 0, n * 4);
    this.device.queue.submit([enc.finish()]);
    await st.mapAsync(MAP_READ);
    const out = new Float32Array(st.getMappedRange().slice(0));
    st.destroy();
    return out;
  }

  /** Free every buffer (the cache's too). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of this.buffers) b.destroy();
    this.cache?.dispose();
    this.promptCache?.dispose();
  }
}
