import { XqBackendError } from '@xquant/quant';

/** A WebGPU device opened in Node through the `webgpu` package (Dawn). Keep `gpu` referenced while you use the device. */
export interface NodeGpu {
  /** The object returned by `create()`; dropping it can crash dawn.node. */
  gpu: GPU;
  adapter: GPUAdapter;
  device: GPUDevice;
  /** Adapter vendor / architecture / device / description. */
  info: { vendor: string; architecture: string; device: string; description: string };
  /** Whether the device has `timestamp-query`. */
  timestamps: boolean;
}

/** Options of {@link requestNodeDevice}. */
export interface NodeGpuOptions {
  /** Dawn flags for `create()`, e.g. `['disable-dawn-features=timestamp_quantization']`. */
  flags?: string[];
  /** Copy the `webgpu` package's globals (GPUBufferUsage, …) onto globalThis (tfjs-backend-webgpu needs them). Default true. */
  installGlobals?: boolean;
}

const LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxStorageBuffersPerShaderStage',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
] as const;

/**
 * Open a WebGPU device in Node with the adapter's limits (large storage bindings, all workgroup memory) and
 * `timestamp-query`, `shader-f16`, `subgroups` and `chromium-experimental-subgroup-matrix` when available. (Dawn hides `shader-f16` on NVIDIA GPUs, crbug.com/42251215:
 * the flag `enable-dawn-features=vulkan_enable_f16_on_nvidia` lifts that block at your own risk.) Resolves to `null`
 * when no adapter is found (e.g. no GPU and no software Vulkan).
 */
export async function requestNodeDevice(opts: NodeGpuOptions = {}): Promise<NodeGpu | null> {
  let mod: { create: (flags: string[]) => GPU; globals: Record<string, unknown> };
  try {
    mod = (await import('webgpu')) as unknown as typeof mod;
  } catch (e) {
    throw new XqBackendError('E_BACKEND_UNAVAILABLE', `the 'webgpu' package (Dawn for Node) is not installed: ${String(e)}`, { cause: e });
  }
  if (opts.installGlobals ?? true) Object.assign(globalThis, mod.globals);
  const gpu = mod.create(opts.flags ?? []);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) return null;
  const requiredLimits: Record<string, number> = {};
  for (const k of LIMITS) requiredLimits[k] = adapter.limits[k];
  const timestamps = adapter.features.has('timestamp-query');
  // shader-f16 and subgroups where the adapter has them: the device cache's half-precision value mix (`valueDot: 'f16'`)
  // and its subgroup reductions (`subgroups: true`) need them
  // (and subgroup matrices, which Dawn lists only with its allow_unsafe_apis toggle: the cache's `matrix` tuning)
  const optional = (['timestamp-query', 'shader-f16', 'subgroups', 'chromium-experimental-subgroup-matrix'] as GPUFeatureName[]).filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures: optional });
  const ai = adapter.info;
  return {
    gpu,
    adapter,
    device,
    timestamps,
    info: { vendor: ai?.vendor ?? '', architecture: ai?.architecture ?? '', device: ai?.device ?? '', description: ai?.description ?? '' },
  };
}
