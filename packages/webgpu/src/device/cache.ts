import { XqBackendError, XqConfigError, XqShapeError, XqStateError } from '@xquant/quant';
import {
  NONE,
  STEP_BYTES,
  STEP_FIELDS,
  chunkTokens,
  combineSource,
  decodeKernelSource,
  decodeSharedBytes,
  int8ValueGeometryOk,
  type DecodeSpec,
  type DeviceOperand,
} from './attention-wgsl.js';
import { MATRIX_CHUNK, SUBGROUP_MATRIX_FEATURE, matrixDecodeSource, matrixSharedBytes, matrixUnsupported, matrixWorkgroup, type MatrixDecodeSpec } from './matrix-attention-wgsl.js';
import { ROWS_MAX_CHUNKS, ROWS_QUERIES, rowsAttentionSource, rowsChunkBytes, rowsChunking } from './rows-attention-wgsl.js';
import { UPDATE_WORKGROUP, fillSource, quantizeRowsGroups, quantizeRowsSource, quantizeSource, updateKernelSource, updateRoles, type DeviceCalibration, type DeviceStorage, type FillKind, type UpdateSpec } from './update-wgsl.js';

const STORAGE = 0x80;
const COPY_SRC = 0x04;
const COPY_DST = 0x08;
const UNIFORM = 0x40;
const MAP_READ = 0x01;
/** Region alignment inside a buffer (minStorageBufferOffsetAlignment is at most 256). */
const ALIGN = 256;

/** Shape of a device cache: the model's layers and heads. */
export interface DeviceCacheShape {
  layers: number;
  /** Query heads (a multiple of kvHeads). */
  qHeads: number;
  kvHeads: number;
  headDim: number;
}

/** Storage of one layer's keys or values as a quantized cache describes it (bits 16 = never quantized). */
export interface DeviceLayerStorage {
  readonly bits: number;
  /** Layer whose codes this layer reads (null: its own). */
  readonly codesFrom: number | null;
}

/** A calibrator as the device can apply it: XQuant's η table or the least-squares fit. */
export interface DeviceCalibratorLike {
  readonly id: string;
  /** η per bit width (η calibrators). */
  readonly etaByBits?: Readonly<Partial<Record<number, number>>>;
}

/**
 * A resolved quantized-cache configuration (structurally the `config` of an `@xquant/tfjs` quantized cache, e.g.
 * `createKvCache('xquant-1.38', shape, { residualLength: 32 }).config`).
 */
export interface DeviceQuantizedConfig {
  readonly strategyId?: string;
  readonly residualLength: number;
  readonly groupSize: number;
  readonly valueGroupSize?: number;
  readonly precision: 'fp16' | 'fp32';
  readonly keys: readonly DeviceLayerStorage[];
  readonly values: readonly DeviceLayerStorage[];
  readonly keyCalibrators?: readonly (DeviceCalibratorLike | null)[];
  readonly valueCalibrators?: readonly (DeviceCalibratorLike | null)[];
}

/** What a device cache stores: fp16 keys and values for every token (`'full'`), or a quantized configuration. */
export type DeviceCacheSpec = { kind: 'full' } | { kind: 'quantized'; config: DeviceQuantizedConfig };

/**
 * Kernel geometry of the decode-attention pass. Unset fields take the geometry measured fastest on an H200 for the
 * cache's kind (docs/gpu/README.md): fp16 rows 128 threads × 4-token slots with GQA (256 × 4 and at most 4 query heads
 * per workgroup from head dim 128), 64 × 16 without, every query head of a KV head in one workgroup; packed codes 256
 * threads × 8-token slots with GQA (2 query heads per workgroup), 128 × 16 without (with int8 key scores; 128 × 8 when
 * the float path is asked for), 16-channel value slots; unroll 8, value unroll 8 and the value prefetch for both.
 */
export interface DeviceAttentionTuning {
  /** Threads per workgroup: 32, 64, 128 or 256 (a chunk is `slot` × this many tokens). */
  workgroup?: number;
  /**
   * Query heads one workgroup serves. Default: the whole GQA group (at most 8; at most 4 from head dim 128) for fp16
   * rows, 2 for packed codes (fewer accumulators per thread, more workgroups in flight: faster on an H200 although each
   * code is unpacked twice per group of 4; docs/gpu/README.md).
   */
  headsPerGroup?: number;
  /** Key channel quads loaded together. */
  unroll?: number;
  /** Consecutive tokens per thread in the key pass: 4, 8 or 16; fewer means more threads in flight. */
  slot?: number;
  /**
   * Value tokens whose loads are issued together (fp16 rows: that many rows; packed codes: the nearest whole number of
   * the layout's blocks of 8/bits tokens, at least one — one 128-bit load of codes per block and thread).
   */
  valueUnroll?: number;
  /** Channels of a packed value row per thread: 8 or 16. */
  valueSlot?: number;
  /**
   * Packed key scores. `'f32'` (default): exact float arithmetic on the codes. `'int8'`: keys stored 4 channels × 8/bits
   * tokens per word and scored with WGSL's packed 4×8-bit integer dot product (`dot4I8Packed`, dp4a where the GPU has
   * it): per key group and query head the query times the group's scales is rounded to int8 with one step
   * `max|q·s|/127`, so scores carry that rounding (the codes and metadata are the same; attention outputs within 5e-3
   * of the float32 path in the tests). Needs the WGSL language feature `packed_4x8_integer_dot_product` and
   * `slot · bits ≥ 8` (the short-context geometry then defaults to 8-token slots). Each thread rounds the query for its
   * own key group. Default: `'int8'` for packed keys without GQA in caches of at least {@link INT8_KEYS_MIN_CAPACITY}
   * tokens where the geometry fits it (on an H200 8–19 % faster than the float path at 32K–128K tokens, slower at 4K; the
   * added KL on the trained models is 1–2 % of the quantization's own; a WGSL without the language feature falls back to
   * `'f32'`), `'f32'` otherwise and with GQA (there the int8 path is 0–12 % slower: rounding the query for every head
   * a workgroup serves costs what the integer dot products save). See docs/gpu/README.md; `attentionDispatch()` says
   * which path runs.
   */
  keyDot?: 'f32' | 'int8';
  /**
   * Packed value mix. `'f32'` (default): exact float arithmetic on the codes. `'int8'`: values stored in a quad layout
   * (one word = one byte of 4 consecutive tokens' rows) and mixed with WGSL's packed 4×8-bit integer dot product
   * (`dot4I8Packed`): per `slot` tokens, value group and query head the softmax weights times the tokens' scales are
   * rounded to int8 with one step `max|w|/127` (by the thread that computed those tokens' exponentials), so the mix
   * carries that rounding (codes and metadata are the same as the float32 path's; attention outputs within 2e-2,
   * typically 1–3e-3, of the float32 path in the tests). Needs the WGSL language feature
   * `packed_4x8_integer_dot_product`, and a row of codes (`headDim · bits / 8` bytes) and the workgroup that divide one
   * another. Experimental: on an H200 it is slower than the float path (1.17× its time at 128K tokens, 32/8 heads, head
   * dim 64; about 2× at 128), even with the weights prepared at no extra pass (docs/gpu/README.md).
   * `'f16'`: the float path's layout and loads, with half-precision arithmetic (needs a device with `shader-f16`): each
   * thread sums its tokens' products in pairs of `f16` channels (two codes decoded per operation, two products per
   * half-precision FMA), its weights scaled over the chunk's largest value scale so that no sum can overflow, then hands
   * them to the float32 path (zero-points, residual ring, reductions). Attention outputs within 1e-2 (typically 2e-3)
   * of the float32 path in the tests; a token whose weight × scale is below about 1e-5 to 1e-4 (by geometry) of the
   * chunk's largest value scale falls into f16's subnormal range and keeps less precision.
   */
  valueDot?: 'f32' | 'int8' | 'f16';
  /** Benchmarks only (wrong results): leave out the packed key reduction or value loop to time the rest. @internal */
  debugSkip?: 'keys' | 'values' | 'both' | 'all' | 'arith' | 'nomerge' | 'empty' | 'empty-nomerge' | 'nolanes';
  /**
   * Float value loops (packed codes and fp16 rows): load the first batch of values before the softmax's reductions
   * and each next batch while the current one is mixed (register double-buffering). Default `true`: on an H200 the
   * decode-attention step took 0.3–6 % less time for packed codes and 1–13 % less for fp16 rows with it (32 pairs, GQA
   * 32/8 and 14/2), and ties to 9 % less in a second run that added rows without GQA (docs/gpu/README.md, 2026-12-03e).
   * With `matrix`: the chunk's key and value words are loaded into registers when the workgroup starts, not per
   * 64-token sub-block (not yet timed on a GPU; `prefetch: false` gives the per-sub-block loads).
   */
  prefetch?: boolean;
  /**
   * Reduce inside subgroups (`subgroupMax`, `subgroupAdd`, `subgroupShuffleXor`) before workgroup memory: the
   * softmax's maxima and sums take one barrier each instead of two (and none between them), and the value lanes are
   * reduce-scattered with shuffles, leaving one workgroup-memory sum over subgroups instead of every lane's row. Needs
   * a device opened with the `subgroups` feature whose adapter has one subgroup size (`subgroupMinSize` =
   * `subgroupMaxSize`: 32 on NVIDIA GPUs, 8 on lavapipe), the WGSL language feature `subgroup_id`, and not
   * `valueDot: 'int8'`; a geometry whose workgroup the subgroup size does not divide keeps the workgroup-memory
   * reductions. Default `false`: on an H200 the GQA step took 4–7 % less time with it (docs/gpu/README.md, 2026-12-05b).
   */
  subgroups?: boolean;
  /**
   * Run the decode attention of every layer whose keys and values are both packed codes on the GPU's matrix units (tensor
   * cores) through Chromium's experimental subgroup matrices: per chunk of 256 tokens and KV head, the codes are decoded
   * once into f16 tiles in workgroup memory, and the scores (codes × the query times each key group's scales) and the
   * value mix (codes × the softmax weights times each token's value scales) run as 16 × 8 × 16 f16 matrix products with
   * f32 results; zero-points, residual rings and the softmax stay float32. Operands in f16 carry its rounding (relative
   * 2^-11 per query × scale and per weight × scale; attention outputs compared with the float32 path by
   * `gpu-decode.bench.mjs`), and a query × key scale beyond f16's range (65504) overflows. An experiment: on an H100
   * (docs/gpu/README.md, 2026-12-05d) it was 7.7–9× slower than the default kernel with GQA (0.903 against 0.117 ms at
   * 128K tokens, 32/8 heads, head dim 64) and 20–22× slower without; Dawn's `disable_robustness` toggle took a third
   * off (0.598 ms, 2026-12-05e), so its bounds checks are not the main cost. Serves 1 to 8 query heads per KV head, head dims
   * that are multiples of 16, key groups dividing 256 and value groups of 16 or more; other layers (fp16 rows) keep the
   * float kernel in 256-token chunks, and a full cache ignores the option. Needs a device with
   * `chromium-experimental-subgroup-matrix` (Dawn lists it only with its `allow_unsafe_apis` toggle), `shader-f16`,
   * `subgroups` with 32-wide subgroups, and an adapter offering f16 × f16 → f32 matrices of 16 × 8 × 16; `XqBackendError`
   * otherwise. Not with the int8 or f16 value paths; the kernel has its own geometry, so a `workgroup`, `slot`, `small`
   * or `medium` given beside it is an `XqConfigError`. `'emulate'` (tests only): the same kernel with the matrix products
   * written as loops over the same tiles, for adapters without matrix units (slow). Default `false`.
   */
  matrix?: boolean | 'emulate';
  /**
   * Geometry for short contexts, used while the main one would leave the GPU idle (fewer than 256 workgroups):
   * default `{ workgroup: 32, slot: 4 }` (128-token chunks). `null`: always the main geometry.
   */
  small?: { workgroup: number; slot: number } | null;
  /**
   * Geometry for mid-length contexts, used while the main one would give fewer than 512 workgroups and this one at
   * least 256. Default for packed codes with GQA: half the main workgroup with the same slot (half-size chunks, so a
   * partial last chunk leaves less of a second wave: at 32 800 tokens, 32/8 heads, 0.039 against 0.050 ms on an H200,
   * docs/gpu/README.md); none otherwise. `null`: none. Not available with the int8 paths.
   */
  medium?: { workgroup: number; slot: number } | null;
}

/** Options of {@link DeviceKvCache.create}. */
export interface DeviceCacheOptions {
  /** Tokens the cache can hold (rounded up to a multiple of the chunk and the residual length). */
  capacity: number;
  /**
   * Positions a batch may take into packed layers at once ({@link DeviceKvCache.encodeIngestRows}; default 1, at most
   * 256): their float32 residual rings get that many more slots (`kvHeads · batchRows · headDim · 8` bytes a layer).
   */
  batchRows?: number;
  tuning?: DeviceAttentionTuning;
}

/** Buffers a model hands the cache once (see {@link DeviceKvCache.attach}). */
export interface DeviceCacheIO {
  /** float32 `[qHeads·D + 2·kvHeads·D]`: this position's q, k, v (bias added, before rotation). */
  qkv: GPUBuffer;
  /** float32 rotary tables `[positions][cos D/2 | sin D/2]` covering every position the cache will hold. */
  rope: GPUBuffer;
  /** float32 `[qHeads·D]`: attention output. */
  out: GPUBuffer;
  /**
   * Positions `qkv` and `out` hold one after the other (default 1): a batch of up to this many positions can be encoded
   * into one command buffer (see {@link DeviceKvCache.beginPositions}); position `s` of a batch reads row `s` of `qkv` and
   * writes row `s` of `out`.
   */
  rows?: number;
}

/** Bytes held by the cache on the device, and what the bit accounting says of the tokens held. */
export interface DeviceCacheMemory {
  /** Bytes of every buffer the cache allocated (codes, metadata, rings, dense rows, scratch), at capacity. */
  allocatedBytes: number;
  /** Bytes the held tokens occupy in the layout: codes + metadata of quantized tokens, float32 residual tokens, fp16 dense rows. */
  usedBytes: number;
  /** Tokens held. */
  tokens: number;
  /** Stored bits per K/V element of the held tokens (`8·usedBytes / elements`). */
  trueBitsPerElement: number;
}

interface LayerRes {
  keys: DeviceStorage;
  values: DeviceStorage;
  keyDonor: number | null;
  valueDonor: number | null;
  K: GPUBuffer;
  V: GPUBuffer;
  ring: GPUBuffer | null;
  keyMetaOffset: number;
  valueMetaOffset: number;
  valueRingOffset: number;
  update: UpdateSpec;
  decode: DecodeSpec;
  /** The matrix kernel of the layer (tuning `matrix`), which then replaces the float one of `decode`. */
  matrix: MatrixDecodeSpec | null;
  updatePipe?: GPUComputePipeline;
  decodePipe?: GPUComputePipeline;
  decodePipeSmall?: GPUComputePipeline;
  decodeSmall: DecodeSpec | null;
  decodePipeMedium?: GPUComputePipeline;
  decodeMedium: DecodeSpec | null;
  updateBG?: GPUBindGroup;
  decodeBG?: GPUBindGroup;
  combineBG?: GPUBindGroup;
  /** The merge kernel of the layer: the cache's shared one, or one with the layer's quantization workgroups. */
  mergePipe?: GPUComputePipeline;
  /** The merge pass's quantizing workgroups alone (see {@link DeviceKvCache.encodeIngest}); quantized layers only. */
  ingestPipe?: GPUComputePipeline;
  /** Workgroups of the merge dispatch past the query heads: the layer's quantization (0: nothing packed). */
  quantizeWorkgroups: number;
  /** fp16 keys and values: a prefill batch attends in one dispatch ({@link DeviceKvCache.encodeLayerRows}). */
  rowsUpdatePipe?: GPUComputePipeline;
  rowsUpdateBG?: GPUBindGroup;
  rowsBG?: GPUBindGroup;
  /** The quantization a whole batch owes in one dispatch (packed layers; see {@link DeviceKvCache.encodeIngestRows}). */
  ingestRowsPipe?: GPUComputePipeline;
}

const align = (bytes: number) => Math.ceil(bytes / ALIGN) * ALIGN;

/** Capacity from which packed keys without GQA are scored with int8 by default (see `keyDot`). */
export const INT8_KEYS_MIN_CAPACITY = 32768;

/**
 * The subgroup size every subgroup of `device` has, for kernels that reduce with subgroup operations and assume it:
 * needs a device opened with the `subgroups` feature whose adapter reports one size (`subgroupMinSize` =
 * `subgroupMaxSize`, a power of two from 4 to 128: 32 on NVIDIA GPUs, 8 on lavapipe). Throws `XqBackendError`
 * (`E_BACKEND_UNAVAILABLE`) otherwise.
 */
export function requireFixedSubgroupSize(device: GPUDevice): number {
  if (!device.features.has('subgroups')) {
    throw new XqBackendError('E_BACKEND_UNAVAILABLE', "subgroups needs a device opened with the 'subgroups' feature (requestNodeDevice requests it where the adapter has it)");
  }
  const info = device.adapterInfo as GPUAdapterInfo | undefined;
  const min = info?.subgroupMinSize;
  const max = info?.subgroupMaxSize;
  if (min === undefined || min !== max || !Number.isInteger(min) || min < 4 || min > 128 || (min & (min - 1)) !== 0) {
    throw new XqBackendError('E_BACKEND_UNAVAILABLE', `subgroups needs one power-of-two subgroup size from 4 to 128; the adapter reports ${String(min)} to ${String(max)}`);
  }
  // (a WGSL without the language feature subgroup_id fails the kernel's compilation, which says so: the kernel requires it)
  return min;
}

/** Whether int8 key scores tile a configuration: `slot · bits ≥ 8` and chunk and key group nesting, in the main and short-context geometries. */
function int8KeysFit(cfg: DeviceQuantizedConfig, main: { workgroup: number; slot: number }, small: DeviceAttentionTuning['small']): boolean {
  const G = cfg.groupSize;
  const geometries = [main, small === undefined ? { workgroup: 32, slot: 8 } : small].filter((g): g is { workgroup: number; slot: number } => g !== null);
  return geometries.every((g) => {
    const C = chunkTokens(g);
    return (C % G === 0 || G % C === 0) && g.slot <= G && G % g.slot === 0 && cfg.keys.every((k) => k.bits === 16 || g.slot * k.bits >= 8);
  });
}

/**
 * Check that `device` can run the matrix-unit kernels (`DeviceAttentionTuning.matrix`, the GPU decoder's
 * `prefillMatrix`): Chromium's experimental subgroup matrices with f16 × f16 → f32 products of M 16, N 8, K 16,
 * `shader-f16`, and one subgroup size of 32. Throws an `E_BACKEND_UNAVAILABLE` error naming `what` and the missing piece
 * otherwise.
 */
export function requireMatrixUnits(device: GPUDevice, what: string): void {
  if (!device.features.has('shader-f16')) throw new XqBackendError('E_BACKEND_UNAVAILABLE', `${what} needs a device opened with the 'shader-f16' feature`);
  if (!device.features.has(SUBGROUP_MATRIX_FEATURE as GPUFeatureName)) {
    throw new XqBackendError('E_BACKEND_UNAVAILABLE', `${what} needs a device opened with '${SUBGROUP_MATRIX_FEATURE}' (Dawn lists it with the toggle allow_unsafe_apis: requestNodeDevice({ flags: ['enable-dawn-features=allow_unsafe_apis'] }))`);
  }
  // (on an H100, 2026-12-05, Dawn's device.adapterInfo did not list the configurations its adapter's info lists: only a
  // readable list that lacks ours says no; otherwise a configuration the adapter lacks fails the kernel's compilation)
  const listed = [...((device.adapterInfo as unknown as { subgroupMatrixConfigs?: Iterable<{ componentType: unknown; resultComponentType: unknown; M: unknown; N: unknown; K: unknown }> } | undefined)?.subgroupMatrixConfigs ?? [])];
  const configs = listed.filter((c) => typeof c.componentType === 'string' && typeof c.M === 'number');
  if (configs.length > 0 && !configs.some((c) => c.componentType === 'f16' && c.resultComponentType === 'f32' && c.M === 16 && c.N === 8 && c.K === 16)) {
    throw new XqBackendError('E_BACKEND_UNAVAILABLE', `${what} needs f16 × f16 → f32 subgroup matrices of M 16, N 8, K 16; the adapter offers ${configs.map((c) => `${c.componentType} → ${c.resultComponentType} ${c.M}×${c.N}×${c.K}`).join(', ')}`);
  }
  const size = requireFixedSubgroupSize(device);
  if (size !== 32) throw new XqBackendError('E_BACKEND_UNAVAILABLE', `${what} needs 32-wide subgroups; the adapter's are ${size} wide`);
}

/** A binding's buffer type, in binding order of a kernel. */
export type BindingKind = 'read-only-storage' | 'storage' | 'uniform' | 'dynamic-uniform';
/** Binding types of each kernel, in binding order (explicit layouts: 'auto' would drop bindings a variant does not read). */
const LAYOUTS: Record<'update' | 'decode' | 'combine' | 'combineQuantize' | 'fill' | 'rows', BindingKind[]> = {
  // the step uniform has a dynamic offset: one slot per position of a batch (see DeviceKvCache.beginPositions)
  update: ['read-only-storage', 'read-only-storage', 'storage', 'storage', 'storage', 'storage', 'dynamic-uniform'],
  decode: ['read-only-storage', 'read-only-storage', 'read-only-storage', 'read-only-storage', 'read-only-storage', 'read-only-storage', 'read-only-storage', 'storage', 'dynamic-uniform'],
  combine: ['read-only-storage', 'storage', 'dynamic-uniform'],
  // + K, V (written), ring, donor keys, donor values: the quantization the schedule owes
  combineQuantize: ['read-only-storage', 'storage', 'dynamic-uniform', 'storage', 'storage', 'read-only-storage', 'read-only-storage', 'read-only-storage'],
  fill: ['storage', 'uniform'],
  // a prefill batch's causal attention over fp16 rows: rotated queries of the batch, keys, values, partials, step
  rows: ['read-only-storage', 'read-only-storage', 'read-only-storage', 'storage', 'dynamic-uniform'],
};

/** Compiles WGSL compute kernels with explicit bind group layouts (one per list of binding types), each source once. */
export class KernelCompiler {
  private readonly layouts = new Map<string, GPUBindGroupLayout>();
  private readonly pipes = new Map<string, Promise<GPUComputePipeline>>();
  constructor(readonly device: GPUDevice) {}
  layout(kinds: readonly BindingKind[]): GPUBindGroupLayout {
    const key = kinds.join(',');
    let l = this.layouts.get(key);
    if (!l) {
      l = this.device.createBindGroupLayout({
        entries: kinds.map((type, binding) => ({ binding, visibility: 4 /* COMPUTE */, buffer: type === 'dynamic-uniform' ? { type: 'uniform', hasDynamicOffset: true } : { type } })),
      });
      this.layouts.set(key, l);
    }
    return l;
  }
  pipeline(code: string, kinds: readonly BindingKind[], label: string): Promise<GPUComputePipeline> {
    let p = this.pipes.get(code);
    if (!p) {
      const module = this.device.createShaderModule({ code, label });
      const layout = this.device.createPipelineLayout({ bindGroupLayouts: [this.layout(kinds)] });
      p = this.device.createComputePipelineAsync({ layout, compute: { module, entryPoint: 'main' }, label }).catch(async (e: unknown) => {
        const info = await module.getCompilationInfo();
        const msgs = info.messages.filter((m) => m.type === 'error').map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('; ');
        throw new XqBackendError('E_KERNEL_MISSING', `WGSL pipeline '${label}' failed to compile: ${msgs || String(e)}`, { cause: e });
      });
      this.pipes.set(code, p);
    }
    return p;
  }
}

function calibrationOf(cal: DeviceCalibratorLike | null | undefined, bits: number, what: string): DeviceCalibration {
  if (!cal) return { kind: 'none' };
  if (cal.id === 'eta') {
    const eta = cal.etaByBits?.[bits] ?? 0;
    return eta === 0 ? { kind: 'none' } : { kind: 'eta', eta };
  }
  if (cal.id === 'least-squares') return { kind: 'least-squares' };
  throw new XqConfigError('E_CONFIG', `${what}: calibrator '${cal.id}' has no device form (the device cache applies 'eta' and 'least-squares')`);
}

/**
 * A KV cache that lives on the GPU: fp16 rows (`full`) or 1/2/4-bit packed codes with fp16 scale/zero and float32
 * residual rings (quantized), pre-allocated to a capacity and appended in place by one update pass per layer and
 * position; attention reads it in place (GQA-aware packed kernels, split-K with a merge pass). The host keeps only
 * counters: no data crosses to the CPU while decoding.
 *
 * Per position: {@link DeviceKvCache.beginPosition}, then per layer {@link DeviceKvCache.encodeLayer} (update →
 * attention → merge) into the caller's compute pass, submit, then {@link DeviceKvCache.endPosition}.
 */
export class DeviceKvCache {
  readonly capacity: number;
  readonly chunk: number;
  /** Tokens per chunk of the short-context geometry. */
  readonly smallChunk: number;
  /** Tokens per chunk of the mid-length geometry (the main chunk when there is none). */
  readonly mediumChunk: number;
  /** Workgroups per chunk and KV head of the mid-length geometry. */
  private readonly mediumHeadGroups: number;
  /** Workgroups per chunk and KV head of the main geometry (query heads ÷ heads per workgroup, rounded up). */
  private readonly headGroups: number;
  private geometry: 'main' | 'medium' | 'short-context' = 'main';
  /** Per position of the batch begun: its geometry and chunks (slot 0 is also `geometry` / `nc`). */
  private slots: { geometry: 'main' | 'medium' | 'short-context'; nc: number }[] = [];
  /** Chunks of the batch attention of the batch begun (see {@link DeviceKvCache.encodeLayerRows}). */
  private rowChunks = 0;
  /** Bytes between the step slots of a batch (the device's uniform offset alignment, at least the struct). */
  private readonly stepStride: number;
  /** Positions a batch may hold (`rows` of the attached buffers). */
  private rows = 1;
  private tokensHeld = 0;
  private readonly layers: LayerRes[];
  private step: GPUBuffer;
  private readonly parts: GPUBuffer;
  private readonly qbuf: GPUBuffer;
  private readonly dummy: GPUBuffer;
  /** Placeholder for writable bindings a layer does not use (a buffer must not be bound writable and read-only at once). */
  private readonly dummyRW: GPUBuffer;
  private combinePipe?: GPUComputePipeline;
  /** The batch attention of layers with fp16 keys and values, and its merge (compiled where such a layer exists). */
  private rowsPipe?: GPUComputePipeline;
  private rowsMergePipe?: GPUComputePipeline;
  /** Rotated queries and attention partials of a prefill batch (made by attach when it binds more than one row). */
  private rowQueries: GPUBuffer | null = null;
  private rowParts: GPUBuffer | null = null;
  /** Chunks the partials buffer holds per query (at most ROWS_MAX_CHUNKS; fewer where the binding size limit says so). */
  private rowMaxChunks = 0;
  private rowsMergeBG?: GPUBindGroup;
  private io?: DeviceCacheIO;
  private disposed = false;
  private stepData = new ArrayBuffer(STEP_BYTES);
  private readonly R: number;
  private readonly quantized: boolean;
  /** Positions a batch may take into packed layers at once (the rings' extra slots). */
  private readonly batchRows: number;
  private nc = 0;
  private readonly compiler: KernelCompiler;
  /** How packed keys are scored: float arithmetic or the int8 dot product. */
  private readonly keyScores: 'f32' | 'int8';
  /** int8 key scores chosen by default (not asked for): compiled without the WGSL feature, the cache falls back to f32. */
  private readonly int8ByDefault: boolean;

  private constructor(
    readonly device: GPUDevice,
    readonly shape: Readonly<DeviceCacheShape>,
    readonly spec: DeviceCacheSpec,
    capacity: number,
    tuning: DeviceAttentionTuning,
    batchRows = 1,
  ) {
    const { layers: Lc, qHeads, kvHeads, headDim: D } = shape;
    for (const [k, v] of Object.entries({ layers: Lc, qHeads, kvHeads, headDim: D })) {
      if (!Number.isInteger(v) || v <= 0) throw new XqShapeError(`device cache: ${k} must be a positive integer; got ${String(v)}`);
    }
    if (qHeads % kvHeads !== 0) throw new XqShapeError(`device cache: ${qHeads} query heads is not a multiple of ${kvHeads} KV heads`);
    // the kernels split a row into power-of-two parts per thread (a head dim like 80 or 96 left fractional thread counts)
    if (!Number.isInteger(D) || D < 16 || D > 256 || (D & (D - 1)) !== 0) throw new XqShapeError(`device cache: headDim must be a power of two from 16 to 256; got ${D}`);
    if (!Number.isInteger(batchRows) || batchRows < 1 || batchRows > 256) throw new XqConfigError('E_CONFIG', `batchRows must be an integer from 1 to 256; got ${String(batchRows)}`);
    this.batchRows = batchRows;
    this.compiler = new KernelCompiler(device);
    const rep = qHeads / kvHeads;
    // defaults: the geometries measured fastest on an H200 (docs/gpu/README.md, 2026-12-03/04) for dense rows and packed
    // codes, with GQA (rep > 1) and without; fp16 rows with GQA: 512-token chunks (0.130 against 0.149 ms for 1024 at
    // 128K tokens, 32/8 heads, head dim 64; 0.075 against 0.091 with 14/2)
    // packed keys without GQA, in caches sized for long contexts: int8 key scores over 16-token slots by default (8–19 %
    // faster than the float path at 32K–128K tokens on an H200, docs/gpu/README.md 2026-12-03d; at 4K the int8
    // short-context geometry measured slower: 0.669 against 0.550 ms of attention per token on the Qwen1.5-0.5B shape);
    // with GQA the float path stays faster
    // fp16 rows with GQA from head dim 128: 256 threads × 4-token slots, at most 4 query heads per workgroup (11–26 % faster
    // than 128 × 4 with 32/8 heads at 32K–128K, 5–7 % with 14/2; head dim 64 within ±3 %: docs/gpu/README.md 2026-12-03e)
    const wideFp16 = spec.kind === 'full' && rep > 1 && D >= 128;
    const int8Candidate = spec.kind === 'quantized' && rep === 1 && tuning.keyDot === undefined && capacity >= INT8_KEYS_MIN_CAPACITY;
    const best =
      spec.kind === 'full'
        ? { workgroup: rep > 1 ? (wideFp16 ? 256 : 128) : 64, slot: rep > 1 ? 4 : 16, unroll: 8, valueUnroll: 8, valueSlot: 8, prefetch: true }
        : { workgroup: rep > 1 ? 256 : 128, slot: int8Candidate ? 16 : 8, unroll: 8, valueUnroll: 8, valueSlot: 16, prefetch: true };
    const asked = tuning;
    tuning = { ...best, ...tuning };
    const matrix = tuning.matrix ?? false;
    if (matrix !== false && matrix !== true && matrix !== 'emulate') throw new XqConfigError('E_CONFIG', `matrix must be true, false or 'emulate'; got ${String(matrix)}`);
    let matrixSg = 0;
    // (a full cache has no packed layers: nothing for the matrix kernel, so the option changes nothing there)
    if (matrix && spec.kind === 'quantized') {
      if ((tuning.valueDot ?? 'f32') !== 'f32' || (tuning.keyDot ?? 'f32') !== 'f32') throw new XqConfigError('E_CONFIG', "matrix: not with the int8 or f16 key/value paths (keyDot and valueDot 'f32')");
      if (!device.features.has('shader-f16')) throw new XqBackendError('E_BACKEND_UNAVAILABLE', "matrix needs a device opened with the 'shader-f16' feature");
      matrixSg = requireFixedSubgroupSize(device);
      if (matrix === true) requireMatrixUnits(device, 'matrix');
      // the matrix kernel has one geometry: a geometry asked for beside it would be silently replaced
      const geometry = (['workgroup', 'slot', 'small', 'medium'] as const).filter((k) => asked[k] !== undefined && asked[k] !== null);
      if (geometry.length > 0) throw new XqConfigError('E_CONFIG', `matrix: the matrix kernel has its own geometry (256-token chunks); leave ${geometry.join(', ')} unset`);
      // the float kernel of any layer left to it (fp16 rows) runs in the same 256-token chunks; one geometry throughout
      tuning = { ...tuning, workgroup: 64, slot: MATRIX_CHUNK / 64, small: null, medium: null, keyDot: 'f32' };
    }
    const wg = tuning.workgroup ?? 64;
    if (![32, 64, 128, 256].includes(wg)) throw new XqConfigError('E_CONFIG', `workgroup must be 32, 64, 128 or 256; got ${String(wg)}`);
    for (const k of ['prefetch', 'subgroups'] as const) {
      if (tuning[k] !== undefined && typeof tuning[k] !== 'boolean') throw new XqConfigError('E_CONFIG', `${k} must be true or false; got ${String(tuning[k])}`);
    }
    const slot = tuning.slot ?? 8;
    if (![4, 8, 16].includes(slot)) throw new XqConfigError('E_CONFIG', `slot must be 4, 8 or 16; got ${String(slot)}`);
    let hg = Math.min(tuning.headsPerGroup ?? Math.min(rep, spec.kind === 'full' ? (wideFp16 ? 4 : 8) : 2), rep);
    if (!Number.isInteger(hg) || hg < 1) throw new XqConfigError('E_CONFIG', `headsPerGroup must be a positive integer; got ${String(tuning.headsPerGroup)}`);
    // a mid-length geometry asked for has no int8 variant: the default then stays float
    const keyDot = tuning.keyDot ?? (int8Candidate && !tuning.medium && int8KeysFit(spec.config, { workgroup: wg, slot }, tuning.small) ? 'int8' : 'f32');
    if (keyDot !== 'f32' && keyDot !== 'int8') throw new XqConfigError('E_CONFIG', `keyDot must be 'f32' or 'int8'; got ${String(keyDot)}`);
    // fp16 key rows (every key layer at 16 bits included) are always scored in float
    this.keyScores = keyDot === 'int8' && spec.kind === 'quantized' && spec.config.keys.some((k) => k.bits !== 16) ? 'int8' : 'f32';
    this.int8ByDefault = this.keyScores === 'int8' && tuning.keyDot === undefined;
    const int8 = keyDot === 'int8' && spec.kind === 'quantized';
    const keyGroup = spec.kind === 'quantized' ? spec.config.groupSize : 32;
    const valueDot = tuning.valueDot ?? 'f32';
    if (valueDot !== 'f32' && valueDot !== 'int8' && valueDot !== 'f16') throw new XqConfigError('E_CONFIG', `valueDot must be 'f32', 'int8' or 'f16'; got ${String(valueDot)}`);
    const int8Values = valueDot === 'int8' && spec.kind === 'quantized';
    const f16Values = valueDot === 'f16' && spec.kind === 'quantized';
    if (f16Values && !device.features.has('shader-f16')) {
      throw new XqBackendError('E_BACKEND_UNAVAILABLE', "valueDot 'f16' needs a device opened with the 'shader-f16' feature (requestNodeDevice requests it where the adapter has it)");
    }
    const subgroupSize = tuning.subgroups === true ? requireFixedSubgroupSize(device) : undefined;
    if (subgroupSize !== undefined && int8Values) throw new XqConfigError('E_CONFIG', "subgroups: the subgroup reductions are not built for valueDot 'int8'");
    const valueGroup = spec.kind === 'quantized' ? (spec.config.valueGroupSize ?? spec.config.groupSize) : D;
    const dot = { ...(int8 ? { keyDot } : {}), ...(int8Values || f16Values ? { valueDot } : {}) };
    // workgroup memory of the int8 value mix depends on the value group (not a kernel field: the kernel reads it from the operand)
    const shared = (g: { workgroup: number; slot: number }, headsPerGroup: number) => decodeSharedBytes({ ...g, headsPerGroup, headDim: D, ...dot, ...(int8Values ? { valueGroup } : {}) });
    const limit = device.limits.maxComputeWorkgroupStorageSize;
    while (hg > 1 && shared({ workgroup: wg, slot }, hg) > limit) hg--;
    if (shared({ workgroup: wg, slot }, hg) > limit) {
      throw new XqBackendError('E_BACKEND_UNAVAILABLE', `decode attention needs ${shared({ workgroup: wg, slot }, hg)} bytes of workgroup memory; the device allows ${limit}`);
    }
    this.chunk = chunkTokens({ workgroup: wg, slot });
    this.headGroups = Math.ceil(rep / hg);
    const small = tuning.small === undefined ? { workgroup: 32, slot: int8 ? 8 : 4 } : tuning.small;
    const checkGeometry = (name: string, g: { workgroup: number; slot: number } | null) => {
      if (g && (![32, 64, 128, 256].includes(g.workgroup) || ![4, 8, 16].includes(g.slot))) {
        throw new XqConfigError('E_CONFIG', `${name} geometry: workgroup 32…256 and slot 4, 8 or 16; got ${JSON.stringify(g)}`);
      }
    };
    checkGeometry('small', small);
    this.smallChunk = small ? chunkTokens(small) : this.chunk;
    let hgSmall = hg;
    while (small && hgSmall > 1 && shared(small, hgSmall) > limit) hgSmall--;
    // default only where measured: packed codes with GQA (256 → 128 threads on an H200)
    const medium = tuning.medium === undefined ? (spec.kind === 'quantized' && rep > 1 && wg >= 64 && !int8 && !int8Values ? { workgroup: wg / 2, slot } : null) : tuning.medium;
    checkGeometry('medium', medium);
    if (medium && (int8 || int8Values)) throw new XqConfigError('E_CONFIG', 'the medium geometry is not available with the int8 key or value paths');
    this.mediumChunk = medium ? chunkTokens(medium) : this.chunk;
    let hgMedium = hg;
    while (medium && hgMedium > 1 && shared(medium, hgMedium) > limit) hgMedium--;
    this.mediumHeadGroups = Math.ceil(rep / hgMedium);
    const cfg = spec.kind === 'quantized' ? spec.config : null;
    this.quantized = cfg !== null;
    this.R = cfg?.residualLength ?? 1;
    if (cfg) this.checkConfig(cfg, D);
    if (int8 && cfg) {
      for (const [name, g] of [['main', { workgroup: wg, slot }], ['short-context', small]] as const) {
        if (!g) continue;
        const C = chunkTokens(g);
        if (C % keyGroup !== 0 && keyGroup % C !== 0) throw new XqConfigError('E_CONFIG', `keyDot 'int8': the ${name} chunk (${C} tokens) and the key group (${keyGroup}) must divide one another`);
        cfg.keys.forEach((k, l) => {
          if (k.bits !== 16 && g.slot * k.bits < 8) throw new XqConfigError('E_CONFIG', `keyDot 'int8': layer ${l}'s ${k.bits}-bit keys need a ${name} slot of at least ${8 / k.bits} tokens; got ${g.slot}`);
        });
      }
    }
    if (int8Values && cfg) {
      for (const [name, g] of [['main', { workgroup: wg, slot }], ['short-context', small]] as const) {
        if (!g) continue;
        cfg.values.forEach((v, l) => {
          if (v.bits !== 16 && !int8ValueGeometryOk(D, v.bits, g.workgroup, valueGroup)) {
            throw new XqConfigError('E_CONFIG', `valueDot 'int8': layer ${l}'s ${v.bits}-bit value rows (${(D * v.bits) / 8} bytes) and the ${name} workgroup (${g.workgroup} threads) must divide one another`);
          }
        });
      }
    }
    const unit = lcm(lcm(lcm(this.chunk, this.smallChunk), this.mediumChunk), cfg ? cfg.residualLength * 2 : 1);
    if (!Number.isInteger(capacity) || capacity <= 0) throw new XqShapeError(`device cache: capacity must be a positive integer; got ${String(capacity)}`);
    this.capacity = Math.ceil(capacity / unit) * unit;
    const unroll = tuning.unroll ?? 4;
    for (const [name, u] of [['unroll', unroll], ['valueUnroll', tuning.valueUnroll ?? 4]] as const) {
      if (!Number.isInteger(u) || u < 1 || u > 32) throw new XqConfigError('E_CONFIG', `${name} must be an integer from 1 to 32; got ${String(u)}`);
    }
    // every buffer made here, destroyed again if a later layer or buffer throws (nothing is left allocated)
    const made: GPUBuffer[] = [];
    const make = (size: number, label: string) => {
      if (size > device.limits.maxStorageBufferBindingSize) {
        throw new XqBackendError('E_BACKEND_UNAVAILABLE', `${label}: ${size} bytes exceed maxStorageBufferBindingSize (${device.limits.maxStorageBufferBindingSize}); lower the capacity`);
      }
      const b = device.createBuffer({ size: Math.max(ALIGN, size), usage: STORAGE | COPY_SRC | COPY_DST, label });
      made.push(b);
      return b;
    };
    try {
      const cap = this.capacity;
      const R = this.R;
      this.layers = [];
      for (let l = 0; l < Lc; l++) {
        const ks = cfg ? cfg.keys[l]! : { bits: 16, codesFrom: null };
        const vs = cfg ? cfg.values[l]! : { bits: 16, codesFrom: null };
        const gk = cfg?.groupSize ?? 32;
        const gv = cfg?.valueGroupSize ?? gk;
        const storage = (st: DeviceLayerStorage, g: number, cals: DeviceQuantizedConfig['keyCalibrators'], what: string): DeviceStorage =>
          st.bits === 16
            ? { kind: 'dense' }
            : { kind: 'packed', bits: st.bits as 1 | 2 | 4, groupSize: g, donor: st.codesFrom !== null, calibration: calibrationOf(cals?.[l], st.bits, `layer ${l} ${what}`) };
        const keys = storage(ks, gk, cfg?.keyCalibrators, 'keys');
        const values = storage(vs, gv, cfg?.valueCalibrators, 'values');
        // a layer's key or value buffer: dense fp16 rows, or [codes (own only) | fp16 scale/zero]; the same element count
        // (kvHeads · capacity · headDim) either way, grouped along tokens (keys) or channels (values)
        const sizes = (st: DeviceStorage): { bytes: number; metaOffset: number } => {
          const elems = kvHeads * cap * D;
          if (st.kind === 'dense') return { bytes: elems * 2, metaOffset: 0 };
          const codes = st.donor ? 0 : align((elems * st.bits) / 8);
          return { bytes: codes + (elems / st.groupSize) * 4, metaOffset: codes / 4 };
        };
        const { bytes: keyBytes, metaOffset: keyMetaOffset } = sizes(keys);
        const { bytes: valueBytes, metaOffset: valueMetaOffset } = sizes(values);
        const keyRing = keys.kind === 'packed' ? align(kvHeads * (R + batchRows) * D * 4) : 0;
        const valueRing = values.kind === 'packed' ? kvHeads * (R + batchRows + 1) * D * 4 : 0;
        const rk: DeviceOperand = keys.kind === 'dense' ? { kind: 'dense' } : { kind: 'packed', bits: keys.bits, groupSize: keys.groupSize };
        const rv: DeviceOperand = values.kind === 'dense' ? { kind: 'dense' } : { kind: 'packed', bits: values.bits, groupSize: values.groupSize };
        this.layers.push({
          keys,
          values,
          keyDonor: ks.codesFrom,
          valueDonor: vs.codesFrom,
          K: make(keyBytes, `layer ${l} keys`),
          V: make(valueBytes, `layer ${l} values`),
          ring: keyRing + valueRing > 0 ? make(keyRing + valueRing, `layer ${l} residual rings`) : null,
          keyMetaOffset,
          valueMetaOffset,
          valueRingOffset: keyRing / 4,
          update: { qHeads, kvHeads, headDim: D, keys, values, residualLength: R, keyMetaOffset, valueMetaOffset, valueRingOffset: keyRing / 4, rope: true, ...(int8 ? { keyLayout: 'quad' as const } : {}), ...(int8Values ? { valueLayout: 'quad' as const } : {}) },
          decode: { headDim: D, rep, headsPerGroup: hg, keys: rk, values: rv, residual: keys.kind === 'packed' || values.kind === 'packed', workgroup: wg, slot, unroll, ...dot, ...(tuning.valueUnroll ? { valueUnroll: tuning.valueUnroll } : {}), ...(tuning.valueSlot ? { valueSlot: tuning.valueSlot } : {}), ...(tuning.debugSkip ? { debugSkip: tuning.debugSkip } : {}), ...(tuning.prefetch === true ? { prefetch: true } : {}), ...(subgroupSize ? { subgroupSize } : {}) },
          decodeSmall: null,
          decodeMedium: null,
          matrix: null,
          quantizeWorkgroups: 0,
        });
      }
      this.stepStride = Math.max(STEP_BYTES, device.limits.minUniformBufferOffsetAlignment ?? 256);
      this.step = device.createBuffer({ size: this.stepStride, usage: UNIFORM | COPY_DST, label: 'device cache step' });
      made.push(this.step);
      if (matrix && spec.kind === 'quantized') this.setMatrixLayers(matrix === 'emulate', matrixSg, tuning.prefetch === true);
      if (small && this.smallChunk !== this.chunk) {
        for (const l of this.layers) l.decodeSmall = { ...l.decode, ...small, headsPerGroup: hgSmall };
      }
      if (medium && this.mediumChunk !== this.chunk) {
        for (const l of this.layers) l.decodeMedium = { ...l.decode, ...medium, headsPerGroup: hgMedium };
      }
      const maxChunks = Math.ceil(cap / Math.min(this.chunk, this.smallChunk, this.mediumChunk));
      this.parts = make(qHeads * maxChunks * (D + 2) * 4, 'attention partials');
      this.qbuf = make(qHeads * D * 4, 'rotated queries');
      this.dummy = make(ALIGN, 'unused binding');
      this.dummyRW = make(ALIGN, 'unused writable binding');
    } catch (e) {
      for (const b of made) b.destroy();
      throw e;
    }
  }

  /** Layers with packed keys and values take the matrix kernel (its geometry in their decode spec, for dispatch and logs). */
  private setMatrixLayers(emulate: boolean, subgroupSize: number, prefetch: boolean): void {
    const { qHeads, kvHeads, headDim: D } = this.shape;
    const rep = qHeads / kvHeads;
    const limit = this.device.limits.maxComputeWorkgroupStorageSize;
    this.layers.forEach((l, i) => {
      if (l.keys.kind !== 'packed' || l.values.kind !== 'packed') return;
      let m: MatrixDecodeSpec = { headDim: D, rep, keys: { bits: l.keys.bits, groupSize: l.keys.groupSize }, values: { bits: l.values.bits, groupSize: l.values.groupSize }, subgroupSize, stageMeta: true, ...(emulate ? { emulate: true } : {}), ...(prefetch ? { prefetch: true } : {}) };
      const why = matrixUnsupported(m);
      if (why) throw new XqConfigError('E_CONFIG', `matrix: layer ${i}: ${why}`);
      // the chunk's scale/zero words staged in workgroup memory where they fit beside the tiles
      if (matrixSharedBytes(m) > limit) m = { ...m, stageMeta: false };
      if (matrixSharedBytes(m) > limit) throw new XqBackendError('E_BACKEND_UNAVAILABLE', `matrix: the kernel needs ${matrixSharedBytes(m)} bytes of workgroup memory; the device allows ${limit}`);
      const wg = matrixWorkgroup(m);
      l.matrix = m;
      l.decode = { ...l.decode, workgroup: wg, slot: MATRIX_CHUNK / wg, headsPerGroup: rep };
    });
  }

  private checkConfig(cfg: DeviceQuantizedConfig, D: number): void {
    const L = this.shape.layers;
    if (cfg.precision !== 'fp16') throw new XqConfigError('E_CONFIG', `the device cache stores fp16 scale/zero (precision 'fp16'); got '${String(cfg.precision)}'`);
    if (cfg.keys.length !== L || cfg.values.length !== L) throw new XqConfigError('E_PLAN', `the configuration has ${cfg.keys.length} key and ${cfg.values.length} value entries for ${L} layers`);
    const R = cfg.residualLength;
    const gk = cfg.groupSize;
    const gv = cfg.valueGroupSize ?? gk;
    if (!Number.isInteger(R) || R <= 0 || R % 16 !== 0) throw new XqConfigError('E_RESIDUAL', `the device cache needs a residual length that is a multiple of 16; got ${String(R)}`);
    for (const [kind, list, g] of [['keys', cfg.keys, gk], ['values', cfg.values, gv]] as const) {
      list.forEach((s, l) => {
        if (s.bits === 16) return;
        if (s.bits !== 1 && s.bits !== 2 && s.bits !== 4) throw new XqConfigError('E_BITS', `layer ${l} ${kind}: the device cache stores 1, 2 or 4-bit codes (or 16 = fp16); got ${s.bits}`);
        if (!Number.isInteger(g) || g % 16 !== 0 || (g * s.bits) % 32 !== 0) {
          throw new XqConfigError('E_GROUP_SIZE', `layer ${l} ${kind}: group size ${g} must be a multiple of 16 holding whole 32-bit words of ${s.bits}-bit codes`);
        }
        if (kind === 'keys' && R % g !== 0) throw new XqConfigError('E_RESIDUAL', `residual length ${R} must be a multiple of the key group size ${g}`);
        if (kind === 'values' && D % g !== 0) throw new XqConfigError('E_GROUP_SIZE', `headDim ${D} must be a multiple of the value group size ${g}`);
        if (s.codesFrom !== null) {
          const d = list[s.codesFrom];
          if (!d || s.codesFrom >= l || d.bits !== s.bits || d.codesFrom !== null) {
            throw new XqConfigError('E_PLAN', `layer ${l} ${kind}: codes from layer ${s.codesFrom} must come from an earlier layer with its own ${s.bits}-bit codes`);
          }
        }
      });
    }
  }

  /** Allocate a cache on `device` and compile its kernels. */
  static async create(device: GPUDevice, shape: DeviceCacheShape, spec: DeviceCacheSpec, options: DeviceCacheOptions): Promise<DeviceKvCache> {
    const tuning = options.tuning ?? {};
    const c = new DeviceKvCache(device, shape, spec, options.capacity, tuning, options.batchRows);
    try {
      await c.compile();
      return c;
    } catch (e) {
      c.dispose();
      // a WGSL without packed_4x8_integer_dot_product: the default int8 key scores give way to the float path
      if (!c.int8ByDefault || !(e instanceof XqBackendError) || e.code !== 'E_KERNEL_MISSING') throw e;
      const f = new DeviceKvCache(device, shape, spec, options.capacity, { ...tuning, keyDot: 'f32' }, options.batchRows);
      await f.compile();
      return f;
    }
  }

  private async compile(): Promise<void> {
    const k = this.compiler;
    this.combinePipe = await k.pipeline(combineSource(this.shape.headDim, this.shape.qHeads), LAYOUTS.combine, 'device cache merge');
    const { headDim: D, qHeads, kvHeads } = this.shape;
    if (this.layers.some((l) => isDense(l))) {
      [this.rowsPipe, this.rowsMergePipe] = await Promise.all([
        k.pipeline(rowsAttentionSource(D, qHeads, qHeads / kvHeads), LAYOUTS.rows, 'batch attention (fp16 rows)'),
        k.pipeline(combineSource(D, qHeads, undefined, 'rows'), LAYOUTS.combine, 'batch attention merge'),
      ]);
    }
    await Promise.all(
      this.layers.map(async (l, i) => {
        const q = quantizeSource(l.update);
        l.quantizeWorkgroups = q?.workgroups ?? 0;
        [l.mergePipe, l.ingestPipe, l.updatePipe, l.rowsUpdatePipe, l.ingestRowsPipe, l.decodePipe, l.decodePipeSmall, l.decodePipeMedium] = await Promise.all([
          q ? k.pipeline(combineSource(this.shape.headDim, this.shape.qHeads, q), LAYOUTS.combineQuantize, `layer ${i} merge and quantization`) : Promise.resolve(this.combinePipe!),
          // (no merge workgroups: every workgroup quantizes)
          q ? k.pipeline(combineSource(this.shape.headDim, 0, q), LAYOUTS.combineQuantize, `layer ${i} quantization`) : Promise.resolve(undefined),
          k.pipeline(updateKernelSource(l.update), LAYOUTS.update, `layer ${i} update`),
          k.pipeline(updateKernelSource({ ...l.update, batched: true }), LAYOUTS.update, `layer ${i} batch update`),
          q ? k.pipeline(quantizeRowsSource(l.update, q), LAYOUTS.combineQuantize, `layer ${i} batch quantization`) : Promise.resolve(undefined),
          k.pipeline(l.matrix ? matrixDecodeSource(l.matrix) : decodeKernelSource(l.decode), LAYOUTS.decode, `layer ${i} attention${l.matrix ? ' (matrix units)' : ''}`),
          l.decodeSmall ? k.pipeline(decodeKernelSource(l.decodeSmall), LAYOUTS.decode, `layer ${i} attention (short contexts)`) : Promise.resolve(undefined),
          l.decodeMedium ? k.pipeline(decodeKernelSource(l.decodeMedium), LAYOUTS.decode, `layer ${i} attention (mid-length contexts)`) : Promise.resolve(undefined),
        ]);
      }),
    );
  }

  /** Tokens held. */
  get tokens(): number {
    return this.tokensHeld;
  }

  /** The buffer the update pass writes the rotated queries to (`[qHeads·D]` float32). */
  get queries(): GPUBuffer {
    return this.qbuf;
  }

  /** Bind the model's buffers (once, before the first position). */
  attach(io: DeviceCacheIO): void {
    this.checkAlive();
    const { qHeads, kvHeads, headDim: D } = this.shape;
    const rows = io.rows ?? 1;
    if (!Number.isInteger(rows) || rows < 1) throw new XqShapeError(`rows must be a positive integer; got ${String(io.rows)}`);
    if (io.qkv.size < rows * (qHeads + 2 * kvHeads) * D * 4) throw new XqShapeError(`qkv buffer of ${io.qkv.size} bytes is smaller than ${rows} × ${(qHeads + 2 * kvHeads) * D} floats`);
    if (io.out.size < rows * qHeads * D * 4) throw new XqShapeError(`out buffer of ${io.out.size} bytes is smaller than ${rows} × ${qHeads * D} floats`);
    const dev = this.device;
    // the batch attention's partials: chunks of every query of a batch (checked before anything changes)
    const chunkBytes = rowsChunkBytes(rows, qHeads, D);
    const rowMaxChunks = Math.min(ROWS_MAX_CHUNKS, Math.floor(dev.limits.maxStorageBufferBindingSize / chunkBytes));
    if (rows > 1 && this.rowsPipe && rowMaxChunks < 1) {
      throw new XqBackendError('E_BACKEND_UNAVAILABLE', `a batch of ${rows} rows needs ${chunkBytes} bytes of attention partials per chunk; the device binds at most ${dev.limits.maxStorageBufferBindingSize}`);
    }
    if (rows * this.stepStride > this.step.size) {
      const grown = dev.createBuffer({ size: rows * this.stepStride, usage: UNIFORM | COPY_DST, label: 'device cache step' });
      this.step.destroy();
      this.step = grown;
    }
    this.rows = rows;
    this.io = io;
    this.rowQueries?.destroy();
    this.rowParts?.destroy();
    this.rowQueries = this.rowParts = null;
    if (rows > 1) {
      if (this.rowsPipe) {
        this.rowMaxChunks = rowMaxChunks;
        this.rowParts = dev.createBuffer({ size: this.rowMaxChunks * chunkBytes, usage: STORAGE, label: 'batch attention partials' });
      }
      this.rowQueries = dev.createBuffer({ size: rows * qHeads * D * 4, usage: STORAGE, label: 'batch rotated queries' });
    }
    const stepSlot: GPUBufferBinding = { buffer: this.step, offset: 0, size: STEP_BYTES };
    const range = (buffer: GPUBuffer, fromWords: number, toBytes?: number): GPUBufferBinding => ({ buffer, offset: fromWords * 4, size: (toBytes ?? buffer.size) - fromWords * 4 });
    const whole = (buffer: GPUBuffer): GPUBufferBinding => ({ buffer });
    for (const l of this.layers) {
      l.updateBG = dev.createBindGroup({
        layout: this.compiler.layout(LAYOUTS.update),
        entries: [...[io.qkv, io.rope, this.qbuf, l.K, l.V, l.ring ?? this.dummyRW].map(whole), stepSlot].map((resource, binding) => ({ binding, resource })),
      });
      const keyCodes = l.keys.kind === 'dense' ? whole(l.K) : l.keyDonor !== null ? range(this.layers[l.keyDonor]!.K, 0, this.layers[l.keyDonor]!.keyMetaOffset * 4) : range(l.K, 0, l.keyMetaOffset * 4);
      const keyMeta = l.keys.kind === 'dense' ? whole(this.dummy) : range(l.K, l.keyMetaOffset);
      const valueCodes = l.values.kind === 'dense' ? whole(l.V) : l.valueDonor !== null ? range(this.layers[l.valueDonor]!.V, 0, this.layers[l.valueDonor]!.valueMetaOffset * 4) : range(l.V, 0, l.valueMetaOffset * 4);
      const valueMeta = l.values.kind === 'dense' ? whole(this.dummy) : range(l.V, l.valueMetaOffset);
      const ringK = l.ring && l.keys.kind === 'packed' ? range(l.ring, 0, l.valueRingOffset * 4 || l.ring.size) : whole(this.dummy);
      const ringV = l.ring && l.values.kind === 'packed' ? range(l.ring, l.valueRingOffset) : whole(this.dummy);
      l.decodeBG = dev.createBindGroup({
        layout: this.compiler.layout(LAYOUTS.decode),
        entries: [whole(this.qbuf), keyCodes, keyMeta, valueCodes, valueMeta, ringK, ringV, whole(this.parts), stepSlot].map((resource, binding) => ({ binding, resource })),
      });
      l.rowsUpdateBG = this.rowQueries
        ? dev.createBindGroup({
            layout: this.compiler.layout(LAYOUTS.update),
            entries: [...[io.qkv, io.rope, this.rowQueries, l.K, l.V, l.ring ?? this.dummyRW].map(whole), stepSlot].map((resource, binding) => ({ binding, resource })),
          })
        : undefined;
      if (this.rowQueries && this.rowParts && isDense(l)) {
        l.rowsBG = dev.createBindGroup({
          layout: this.compiler.layout(LAYOUTS.rows),
          entries: [...[this.rowQueries, l.K, l.V, this.rowParts].map(whole), stepSlot].map((resource, binding) => ({ binding, resource })),
        });
      } else {
        l.rowsBG = undefined;
      }
    }
    this.rowsMergeBG = this.rowParts ? dev.createBindGroup({ layout: this.compiler.layout(LAYOUTS.combine), entries: [whole(this.rowParts), whole(io.out), stepSlot].map((resource, binding) => ({ binding, resource })) }) : undefined;
    const comb = dev.createBindGroup({ layout: this.compiler.layout(LAYOUTS.combine), entries: [whole(this.parts), whole(io.out), stepSlot].map((resource, binding) => ({ binding, resource })) });
    for (const l of this.layers) {
      if (l.quantizeWorkgroups === 0) {
        l.combineBG = comb;
        continue;
      }
      const dk = l.keyDonor !== null ? this.layers[l.keyDonor]!.K : this.dummy;
      const dv = l.valueDonor !== null ? this.layers[l.valueDonor]!.V : this.dummy;
      l.combineBG = dev.createBindGroup({
        layout: this.compiler.layout(LAYOUTS.combineQuantize),
        entries: [whole(this.parts), whole(io.out), stepSlot, ...[l.K, l.V, l.ring!, dk, dv].map(whole)].map((resource, binding) => ({ binding, resource })),
      });
    }
  }

  /**
   * Start the position `tokens`: write this step's counters (tokens attended, quantized boundary, the key block and
   * value token the schedule quantizes now) for every layer's passes. Call once per position, before encoding layers.
   */
  beginPosition(): void {
    this.beginPositions(1);
  }

  /**
   * Start `count` consecutive positions encoded into one command buffer (a prefill batch; at most the `rows` the attached
   * buffers hold): position `tokens + s` is slot `s`, whose passes read row `s` of `qkv` and write row `s` of `out`.
   * Encode every layer of every slot in order (per layer, slot 0's update and attention before slot 1's, …), submit,
   * then {@link DeviceKvCache.endPositions} with the same count. Each slot's numbers are what the position would give
   * on its own.
   */
  beginPositions(count: number): void {
    this.checkAlive();
    if (!this.io) throw new XqStateError('E_STATE', 'attach(io) must be called before the first position');
    if (!Number.isInteger(count) || count < 1 || count > this.rows) throw new XqShapeError(`a batch holds 1 to ${this.rows} positions (the rows attached); got ${String(count)}`);
    if (this.tokensHeld + count > this.capacity) throw new XqStateError('E_STATE', `the device cache is full (${this.capacity} tokens; ${this.tokensHeld} held, ${count} more asked)`);
    const R = this.R;
    const kvh = this.shape.kvHeads;
    const hasSmall = this.smallChunk !== this.chunk;
    const hasMedium = this.mediumChunk !== this.chunk;
    const data = new ArrayBuffer((count - 1) * this.stepStride + STEP_BYTES);
    // the batch attention's chunks (layers with fp16 rows, io of more than one row)
    const rowChunks = this.rowParts ? rowsChunking(this.tokensHeld + count, this.shape.headDim, this.rowMaxChunks) : { chunk: 0, chunks: 0 };
    this.rowChunks = rowChunks.chunks;
    this.slots = [];
    for (let s = 0; s < count; s++) {
      const p = this.tokensHeld + s;
      const n = p + 1;
      // workgroups = chunks × KV heads × head groups. Main while it gives ≥ 512; else the mid-length geometry while that
      // gives ≥ 256; else the short-context one (while the main gives < 256). Thresholds from H200 rows (docs/gpu)
      const big = Math.ceil(n / this.chunk);
      const mid = Math.ceil(n / this.mediumChunk);
      const wMain = big * kvh * this.headGroups;
      let geometry: 'main' | 'medium' | 'short-context';
      if (hasMedium && wMain < 512 && mid * kvh * this.mediumHeadGroups >= 256) geometry = 'medium';
      else if (hasSmall && wMain < 256) geometry = 'short-context';
      else if (hasMedium && wMain < 512) geometry = 'medium';
      else geometry = 'main';
      const nc = geometry === 'main' ? big : geometry === 'medium' ? mid : Math.ceil(n / this.smallChunk);
      this.slots.push({ geometry, nc });
      const v: Record<(typeof STEP_FIELDS)[number], number> = {
        n,
        tk: this.quantized ? Math.floor(p / R) * R : 0,
        tv: this.quantized ? Math.max(0, p - R) : 0,
        nc,
        pos: p,
        // owed once this position is attended (the merge pass quantizes them): the key block that n completes, and the
        // value token that leaves the residual window of the next position
        kflush: this.quantized && n % R === 0 ? n - R : NONE,
        vquant: this.quantized && p - R >= 0 ? p - R : NONE,
        // (R + 1 and R + 2 slots serve one position at a time; a batch taken in at once needs its rows more)
        kring: R + this.batchRows,
        vring: R + this.batchRows + 1,
        cap: this.capacity,
        seed: 0,
        fill: 0,
        scale: 1 / Math.sqrt(this.shape.headDim),
        row: s,
        rows: count,
        rchunk: rowChunks.chunk,
        rnc: rowChunks.chunks,
      };
      const u = new Uint32Array(data, s * this.stepStride, STEP_BYTES / 4);
      const f = new Float32Array(data, s * this.stepStride, STEP_BYTES / 4);
      STEP_FIELDS.forEach((k, i) => {
        if (k === 'scale') f[i] = v[k];
        else u[i] = v[k];
      });
    }
    this.geometry = this.slots[0]!.geometry;
    this.nc = this.slots[0]!.nc;
    this.device.queue.writeBuffer(this.step, 0, data);
  }

  /** Encode layer `layer`'s update, attention and merge passes for the current position (or slot `slot` of a batch) into `pass`. */
  encodeLayer(pass: GPUComputePassEncoder, layer: number, slot = 0): void {
    this.encodeUpdate(pass, layer, slot);
    this.encodeAttention(pass, layer, slot);
  }

  /**
   * Whether {@link DeviceKvCache.encodeLayerRows} serves layer `layer`: its keys and values are fp16 rows (every layer of
   * a `full` cache; the 16-bit layers of a plan) and the attached buffers hold more than one row.
   */
  rowsAttention(layer: number): boolean {
    const l = this.layerOf(layer);
    return l.rowsBG !== undefined;
  }

  /**
   * Encode layer `layer` for every position of the batch begun ({@link DeviceKvCache.beginPositions}) in three
   * dispatches instead of three per position: the update pass of all rows, their causal attention (row s attends the
   * positions up to its own), and its merge into rows 0 … count − 1 of `out`. The numbers are each position's own up to
   * the order of float sums. Layers with {@link DeviceKvCache.rowsAttention} only.
   */
  encodeLayerRows(pass: GPUComputePassEncoder, layer: number): void {
    const l = this.layerOf(layer);
    if (!l.rowsBG || !l.rowsUpdateBG) {
      throw new XqStateError('E_STATE', `layer ${layer}: batch attention needs fp16 keys and values and buffers attached with more than one row (rowsAttention(${layer}) is false)`);
    }
    const rows = this.slots.length;
    if (rows === 0) throw new XqStateError('E_STATE', 'encodeLayerRows: no batch begun (beginPositions first)');
    const { qHeads, kvHeads } = this.shape;
    this.encodeRowsUpdate(pass, l, rows);
    pass.setPipeline(this.rowsPipe!);
    pass.setBindGroup(0, l.rowsBG, [0]);
    pass.dispatchWorkgroups(this.rowChunks, kvHeads, Math.ceil((rows * (qHeads / kvHeads)) / ROWS_QUERIES));
    pass.setPipeline(this.rowsMergePipe!);
    pass.setBindGroup(0, this.rowsMergeBG!, [0]);
    pass.dispatchWorkgroups(rows * qHeads);
  }

  /**
   * Take in every position of the batch begun without attending, in two dispatches instead of two per position: the
   * update pass of all rows (their rotated queries are written, not read) and the quantization they owe (the key blocks
   * they complete, the value tokens leaving the residual window), position after position within each aligned group of
   * 8 positions. The stored words are those {@link DeviceKvCache.encodeIngest} leaves slot by slot. Needs the buffers
   * attached with more than one row, and for a layer with packed keys or values a batch of at most the `batchRows` the
   * cache was created with (its rings hold that many more positions).
   */
  encodeIngestRows(pass: GPUComputePassEncoder, layer: number): void {
    const l = this.layerOf(layer);
    const rows = this.slots.length;
    if (rows === 0) throw new XqStateError('E_STATE', 'encodeIngestRows: no batch begun (beginPositions first)');
    if (!l.rowsUpdateBG) throw new XqStateError('E_STATE', `layer ${layer}: a batch taken in at once needs buffers attached with more than one row`);
    if (l.ingestRowsPipe && rows > this.batchRows) {
      throw new XqStateError('E_STATE', `layer ${layer}: a batch of ${rows} positions taken in at once needs rings for it (created with batchRows ${this.batchRows})`);
    }
    this.encodeRowsUpdate(pass, l, rows);
    if (!l.ingestRowsPipe) return;
    pass.setPipeline(l.ingestRowsPipe);
    pass.setBindGroup(0, l.combineBG!, [0]);
    pass.dispatchWorkgroups(l.quantizeWorkgroups, quantizeRowsGroups(this.tokensHeld, rows));
  }

  /** The update pass of every row of a batch of `rows` positions, in one dispatch. */
  private encodeRowsUpdate(pass: GPUComputePassEncoder, l: LayerRes, rows: number): void {
    const wgs = Math.ceil((rows * updateRoles(l.update).total) / UPDATE_WORKGROUP);
    pass.setPipeline(l.rowsUpdatePipe!);
    pass.setBindGroup(0, l.rowsUpdateBG!, [0]);
    pass.dispatchWorkgroups(Math.min(wgs, 65535), Math.ceil(wgs / 65535));
  }

  /**
   * Encode the update pass alone: rotate q and k, append k and v. Every position needs both this and
   * {@link DeviceKvCache.encodeAttention} for every layer (the merge pass quantizes what the schedule owes).
   */
  encodeUpdate(pass: GPUComputePassEncoder, layer: number, slot = 0): void {
    const l = this.layerOf(layer);
    const offset = this.slotOffset(slot);
    const wgs = Math.ceil(updateRoles(l.update).total / UPDATE_WORKGROUP);
    pass.setPipeline(l.updatePipe!);
    pass.setBindGroup(0, l.updateBG!, [offset]);
    pass.dispatchWorkgroups(Math.min(wgs, 65535), Math.ceil(wgs / 65535));
  }

  /**
   * The decode-attention dispatch of layer `layer` at the current position (after {@link DeviceKvCache.beginPosition}):
   * which geometry runs (`'main'`; `'medium'` while the main one would give fewer than 512 workgroups and it at least
   * 256; `'short-context'` while the main one would give fewer than 256), its threads per workgroup, token slot, query
   * heads per workgroup, chunks and workgroups, and whether packed keys are scored in float or with the int8 dot product
   * (`keyScores`; always `'f32'` for fp16 rows), and how packed values are mixed (`valueMix`, see `valueDot`; `'f32'`
   * for fp16 rows), and whether the kernel reduces with subgroup operations (`subgroups`, see the tuning of that name;
   * false where the subgroup size does not divide the geometry's workgroup), and whether the layer runs on the matrix
   * units (`matrix`, see the tuning of that name). For logs and benchmarks.
   */
  attentionDispatch(layer = 0): {
    geometry: 'main' | 'medium' | 'short-context';
    workgroup: number;
    slot: number;
    headsPerGroup: number;
    chunks: number;
    workgroups: number;
    keyScores: 'f32' | 'int8';
    valueMix: 'f32' | 'int8' | 'f16';
    subgroups: boolean;
    matrix: boolean;
  } {
    const l = this.layerOf(layer);
    const { spec: g } = this.decodeOf(l);
    const rep = this.shape.qHeads / this.shape.kvHeads;
    const workgroups = this.nc * Math.ceil(rep / g.headsPerGroup) * this.shape.kvHeads;
    const valueMix = g.values.kind === 'packed' ? (g.valueDot ?? 'f32') : 'f32';
    const subgroups = g.subgroupSize !== undefined && g.workgroup % g.subgroupSize === 0;
    return { geometry: this.geometry, workgroup: g.workgroup, slot: g.slot ?? 16, headsPerGroup: g.headsPerGroup, chunks: this.nc, workgroups, keyScores: this.keyScores, valueMix, subgroups: subgroups || l.matrix !== null, matrix: l.matrix !== null };
  }

  /** The decode kernel of a layer for a geometry (default: the current position's). */
  private decodeOf(l: LayerRes, geometry = this.geometry): { spec: DecodeSpec; pipe: GPUComputePipeline } {
    if (geometry === 'medium') return { spec: l.decodeMedium!, pipe: l.decodePipeMedium! };
    if (geometry === 'short-context') return { spec: l.decodeSmall!, pipe: l.decodePipeSmall! };
    return { spec: l.decode, pipe: l.decodePipe! };
  }

  /** Byte offset of slot `slot`'s step counters, checked against the batch begun. */
  private slotOffset(slot: number): number {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slots.length) {
      throw new XqStateError('E_STATE', `slot ${String(slot)}: the batch begun holds ${this.slots.length} position(s) (beginPositions first)`);
    }
    return slot * this.stepStride;
  }

  /**
   * Encode the attention and merge passes alone (the rotated queries must be in {@link DeviceKvCache.queries}). The
   * merge pass of a quantized layer also quantizes what the schedule owes once this position is attended (the key
   * block it completes, the value token leaving the next position's residual window): extra workgroups that overlap
   * the merge instead of lengthening the update pass. Encoding it again at the same position repeats the same writes.
   */
  encodeAttention(pass: GPUComputePassEncoder, layer: number, slot = 0): void {
    const l = this.layerOf(layer);
    const offset = this.slotOffset(slot);
    const { geometry, nc } = this.slots[slot]!;
    const rep = this.shape.qHeads / this.shape.kvHeads;
    const { spec, pipe } = this.decodeOf(l, geometry);
    pass.setPipeline(pipe);
    pass.setBindGroup(0, l.decodeBG!, [offset]);
    pass.dispatchWorkgroups(nc * Math.ceil(rep / spec.headsPerGroup), this.shape.kvHeads);
    if (spec.debugSkip === 'nomerge' || spec.debugSkip === 'empty-nomerge') return;
    pass.setPipeline(l.mergePipe!);
    pass.setBindGroup(0, l.combineBG!, [offset]);
    pass.dispatchWorkgroups(this.shape.qHeads + l.quantizeWorkgroups);
  }

  /**
   * Take in the position (or slot `slot` of a batch) without attending: the update pass (rotate and append k and v;
   * the rotated queries are written but not read) and the quantization the schedule owes once the position is held —
   * the same words {@link DeviceKvCache.encodeLayer} leaves, without the attention and merge. For a caller that attends
   * elsewhere, e.g. a prefill whose attention runs over full-precision K/V as the reference implementation's does.
   */
  encodeIngest(pass: GPUComputePassEncoder, layer: number, slot = 0): void {
    this.encodeUpdate(pass, layer, slot);
    const l = this.layerOf(layer);
    if (!l.ingestPipe) return;
    pass.setPipeline(l.ingestPipe);
    pass.setBindGroup(0, l.combineBG!, [this.slotOffset(slot)]);
    pass.dispatchWorkgroups(l.quantizeWorkgroups);
  }

  private layerOf(layer: number): LayerRes {
    const l = this.layers[layer];
    if (!l?.updateBG) throw new XqStateError('E_STATE', `layer ${layer}: attach(io) first (or no such layer)`);
    return l;
  }

  /**
   * Bytes one decode step of layer `layer` reads from the cache at the current position: codes and scale/zero of the
   * quantized tokens, float32 residual rows, fp16 rows of dense layers.
   */
  attentionBytes(layer: number): number {
    const l = this.layerOf(layer);
    const { kvHeads: H, headDim: D } = this.shape;
    const n = this.tokensHeld + 1;
    const p = this.tokensHeld;
    const R = this.R;
    const tk = this.quantized ? Math.floor(p / R) * R : 0;
    const tv = this.quantized ? Math.max(0, p - R) : 0;
    let b = 0;
    for (const [st, q] of [[l.keys, tk], [l.values, tv]] as const) {
      if (st.kind === 'dense') b += H * n * D * 2;
      else b += (H * q * D * st.bits) / 8 + ((H * q * D) / st.groupSize) * 4 + H * (n - q) * D * 4;
    }
    return b;
  }

  /** Finish the position: the cache now holds one more token. */
  endPosition(): void {
    this.endPositions(1);
  }

  /** Finish the `count` positions of the batch begun by {@link DeviceKvCache.beginPositions}. */
  endPositions(count: number): void {
    this.checkAlive();
    if (count !== this.slots.length) throw new XqStateError('E_STATE', `endPositions(${String(count)}): the batch begun holds ${this.slots.length} position(s)`);
    this.tokensHeld += count;
    this.slots = [];
  }

  /**
   * Benchmarks: make the cache hold `tokens` positions of pseudo-random content (random codes, fp16 scale/zero and
   * rows, float32 rings) without running the model over them. Speed is what it is for real content; the numbers are not.
   */
  async fillSynthetic(tokens: number, seed = 1): Promise<void> {
    this.checkAlive();
    if (!Number.isInteger(tokens) || tokens < 0 || tokens >= this.capacity) throw new XqShapeError(`fillSynthetic: tokens must be an integer in [0, ${this.capacity}); got ${String(tokens)}`);
    const dev = this.device;
    const kinds: FillKind[] = ['words', 'f16', 'meta', 'f32'];
    const pipes = new Map(await Promise.all(kinds.map(async (k) => [k, await this.compiler.pipeline(fillSource(k), LAYOUTS.fill, `fill ${k}`)] as const)));
    const pipeOf = (k: FillKind) => pipes.get(k)!;
    const enc = dev.createCommandEncoder();
    const temps: GPUBuffer[] = [];
    let s = seed;
    const fill = (buf: GPUBuffer, kind: FillKind, offset: number, count: number) => {
      if (count <= 0) return;
      const u = dev.createBuffer({ size: 16, usage: UNIFORM | COPY_DST });
      temps.push(u);
      dev.queue.writeBuffer(u, 0, new Uint32Array([offset, count, s++, 0]));
      const p = pipeOf(kind);
      const bg = dev.createBindGroup({ layout: this.compiler.layout(LAYOUTS.fill), entries: [{ binding: 0, resource: { buffer: buf } }, { binding: 1, resource: { buffer: u } }] });
      const pass = enc.beginComputePass();
      pass.setPipeline(p);
      pass.setBindGroup(0, bg);
      const wgs = Math.ceil(count / 256);
      pass.dispatchWorkgroups(Math.min(wgs, 65535), Math.ceil(wgs / 65535));
      pass.end();
    };
    const { kvHeads: H, headDim: D } = this.shape;
    const cap = this.capacity;
    for (const l of this.layers) {
      for (const [buf, st, metaOff] of [[l.K, l.keys, l.keyMetaOffset], [l.V, l.values, l.valueMetaOffset]] as const) {
        if (st.kind === 'dense') fill(buf, 'f16', 0, (H * cap * D) / 2);
        else {
          if (!st.donor) fill(buf, 'words', 0, metaOff);
          fill(buf, 'meta', metaOff, buf.size / 4 - metaOff);
        }
      }
      if (l.ring) fill(l.ring, 'f32', 0, l.ring.size / 4);
    }
    dev.queue.submit([enc.finish()]);
    await dev.queue.onSubmittedWorkDone();
    for (const t of temps) t.destroy();
    void cap;
    this.tokensHeld = tokens;
    this.slots = [];
  }

  /** Bytes allocated and used (see {@link DeviceCacheMemory}). */
  memory(): DeviceCacheMemory {
    this.checkAlive();
    const { kvHeads: H, headDim: D, layers: Lc } = this.shape;
    const n = this.tokensHeld;
    let allocated = this.step.size + this.parts.size + this.qbuf.size + this.dummy.size + this.dummyRW.size + (this.rowQueries?.size ?? 0) + (this.rowParts?.size ?? 0);
    let used = 0;
    const R = this.R;
    // quantized positions after the last completed position's owed flush (the state the CPU cache reports)
    const qk = this.quantized ? Math.floor(n / R) * R : 0;
    const qv = this.quantized ? Math.max(0, n - R) : 0;
    for (const l of this.layers) {
      allocated += l.K.size + l.V.size + (l.ring?.size ?? 0);
      for (const [st, q] of [[l.keys, qk], [l.values, qv]] as const) {
        if (st.kind === 'dense') used += H * n * D * 2;
        else {
          used += (st.donor ? 0 : (H * q * D * st.bits) / 8) + ((H * q * D) / st.groupSize) * 4;
          used += H * (n - q) * D * 4;
        }
      }
    }
    const elements = 2 * Lc * H * D * n;
    return { allocatedBytes: allocated, usedBytes: used, tokens: n, trueBitsPerElement: elements ? (8 * used) / elements : 0 };
  }

  /**
   * Read one layer's storage back (tests, debugging): the raw u32 words of its key and value buffers and the float32
   * residual rings, with the offsets of the metadata and value ring. The words are in the device layouts (packed keys
   * and their scale/zero channel-quad-major, packed values in token blocks, their scale/zero in 8-token blocks, fp16
   * keys channel-octet-major: see the address helpers of `device/attention-wgsl.ts`), not the CPU cache's.
   */
  async readLayer(layer: number): Promise<{ keys: Uint32Array; values: Uint32Array; ring: Float32Array; keyMetaOffset: number; valueMetaOffset: number; valueRingOffset: number }> {
    this.checkAlive();
    const l = this.layers[layer];
    if (!l) throw new XqShapeError(`no layer ${layer}`);
    const read = async (b: GPUBuffer | null): Promise<ArrayBuffer> => {
      if (!b) return new ArrayBuffer(0);
      const st = this.device.createBuffer({ size: b.size, usage: MAP_READ | COPY_DST });
      const enc = this.device.createCommandEncoder();
      enc.copyBufferToBuffer(b, 0, st, 0, b.size);
      this.device.queue.submit([enc.finish()]);
      await st.mapAsync(1);
      const out = st.getMappedRange().slice(0);
      st.unmap();
      st.destroy();
      return out;
    };
    const [k, v, r] = await Promise.all([read(l.K), read(l.V), read(l.ring)]);
    return { keys: new Uint32Array(k), values: new Uint32Array(v), ring: new Float32Array(r), keyMetaOffset: l.keyMetaOffset, valueMetaOffset: l.valueMetaOffset, valueRingOffset: l.valueRingOffset };
  }

  /** Start over with no tokens (buffers are kept). */
  reset(): void {
    this.checkAlive();
    this.tokensHeld = 0;
    this.slots = [];
  }

  /** Free every buffer. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const l of this.layers) {
      l.K.destroy();
      l.V.destroy();
      l.ring?.destroy();
    }
    for (const b of [this.step, this.parts, this.qbuf, this.dummy, this.dummyRW, this.rowQueries, this.rowParts]) b?.destroy();
  }

  private checkAlive(): void {
    if (this.disposed) throw new XqStateError('E_STATE', 'the device cache was disposed');
  }
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}
function lcm(a: number, b: number): number {
  return (a / gcd(a, b)) * b;
}

/** Keys and values both fp16 rows: the layer can take a prefill batch in one dispatch. */
function isDense(l: LayerRes): boolean {
  return l.keys.kind === 'dense' && l.values.kind === 'dense';
}
