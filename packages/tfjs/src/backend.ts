import * as tf from '@tensorflow/tfjs-core';
import { XqBackendError, XqConfigError } from '@xquant/quant';

/** Backends {@link selectBackend} knows, in its default order of preference. */
export type BackendName = 'tensorflow-gpu' | 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';

/** Default order: native GPU binding, native CPU binding, WebGPU (Dawn via the `webgpu` package), wasm, plain JS. */
export const BACKEND_ORDER: readonly BackendName[] = ['tensorflow-gpu', 'tensorflow', 'webgpu', 'wasm', 'cpu'];

/** Options of {@link selectBackend}. */
export interface SelectBackendOptions {
  /**
   * One backend to use, or an ordered list to try. A single name is an explicit override: if it cannot be loaded
   * the call throws `E_BACKEND_UNAVAILABLE` instead of falling back. Default: {@link BACKEND_ORDER}.
   */
  prefer?: BackendName | readonly BackendName[];
}

/** What {@link selectBackend} chose and why the backends before it were skipped. */
export interface BackendSelection {
  /** Name of the tfjs backend now active (`tf.getBackend()`). */
  backend: BackendName;
  /** One line: why this backend runs. */
  reason: string;
  /** Backends tried before it, each with a one-line reason. */
  skipped: {
    /** The backend skipped. */
    name: BackendName;
    /** One line: why it could not start. */
    why: string;
  }[];
}

/** True when an error from loading `@tensorflow/tfjs-node(-gpu)` means "not installed / native binding missing". */
export function isMissingNativeBinding(e: unknown): boolean {
  const err = e as { code?: string; message?: string } | null;
  if (!err) return false;
  if (err.code === 'MODULE_NOT_FOUND' || err.code === 'ERR_MODULE_NOT_FOUND') return true;
  const msg = String(err.message ?? '');
  return /tfjs_binding\.node\)? can not be found/.test(msg) || /Cannot find (module|package)/.test(msg);
}

// Keeps the Dawn GPU object alive for as long as the webgpu backend may run (Dawn is torn down when it is collected).
let dawnGpu: unknown = null;
let nativeTried: { name: BackendName; error: string } | null = null;
let loadedNative: BackendName | null = null;

/**
 * Import an optional peer backend package; when it is not installed, say which package to install (the tfjs backends
 * are peers of this package: install the ones you use).
 */
async function importPeer(pkg: string, load: () => Promise<unknown>): Promise<void> {
  try {
    await load();
  } catch (e) {
    const err = e as { code?: string; message?: string };
    if ((err?.code === 'MODULE_NOT_FOUND' || err?.code === 'ERR_MODULE_NOT_FOUND') && String(err.message).includes(pkg)) {
      throw new Error(`${pkg} is not installed (an optional peer dependency of @xquant/tfjs: npm i ${pkg})`);
    }
    throw e;
  }
}

function shortError(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  return m.split('\n')[0]!.slice(0, 200);
}

async function tryNative(name: 'tensorflow-gpu' | 'tensorflow'): Promise<string> {
  const pkg = name === 'tensorflow-gpu' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
  // After one native package failed, its kernels stay registered for 'tensorflow' and loading the other one
  // floods the console with "already registered" warnings: try only one of the two (toolchain notes §2).
  if (nativeTried && nativeTried.name !== name) {
    throw new Error(`not tried: ${nativeTried.name} already failed in this process (${nativeTried.error})`);
  }
  if (loadedNative && loadedNative !== name) throw new Error(`not tried: ${loadedNative} is already loaded in this process`);
  try {
    await importPeer(pkg, () => import(/* @vite-ignore */ pkg));
  } catch (e) {
    if (String((e as Error).message).startsWith(`${pkg} is not installed`)) throw e;
    const why = isMissingNativeBinding(e) ? `${pkg} is installed but its native binding (tfjs_binding.node) is missing` : shortError(e);
    // The package ran and registered its kernels: do not load the other native package in this process.
    nativeTried = { name, error: why };
    throw new Error(why);
  }
  if (!(await tf.setBackend('tensorflow'))) throw new Error(`${pkg} loaded but setBackend('tensorflow') failed`);
  loadedNative = name;
  return `${pkg} native binding loaded`;
}

/** True for a CPU-emulated WebGPU adapter (Mesa lavapipe/llvmpipe, SwiftShader): correct but far slower than wasm. */
function isSoftwareAdapter(adapter: unknown): boolean {
  const a = adapter as { isFallbackAdapter?: boolean; info?: { architecture?: string; device?: string; description?: string } };
  if (a.isFallbackAdapter) return true;
  const text = `${a.info?.architecture ?? ''} ${a.info?.device ?? ''} ${a.info?.description ?? ''}`.toLowerCase();
  return /software|llvmpipe|lavapipe|swiftshader/.test(text);
}

async function tryWebgpu(requested: boolean): Promise<string> {
  const g = globalThis as { navigator?: { gpu?: unknown } };
  if (!g.navigator?.gpu) {
    let mod: { create: (opts: string[]) => unknown; globals: Record<string, unknown> };
    try {
      // Node only (browsers have navigator.gpu): a computed specifier, so bundlers leave Dawn's native package out
      const dawn = 'webgpu';
      mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ dawn)) as typeof mod;
    } catch (e) {
      throw new Error(isMissingNativeBinding(e) ? "the optional 'webgpu' package is not installed" : shortError(e));
    }
    Object.assign(globalThis, mod.globals);
    dawnGpu = mod.create([]);
    // Must exist before tfjs-backend-webgpu is imported: it probes navigator.gpu at import time.
    if (g.navigator) (g.navigator as { gpu?: unknown }).gpu = dawnGpu;
    else Object.defineProperty(globalThis, 'navigator', { value: { gpu: dawnGpu }, configurable: true, writable: true });
  }
  const gpu = g.navigator!.gpu as { requestAdapter(): Promise<unknown> };
  const adapter = await gpu.requestAdapter();
  if (!adapter) throw new Error('no WebGPU adapter (on Linux without a GPU install Mesa lavapipe: scripts/setup-webgpu.sh)');
  if (!requested && isSoftwareAdapter(adapter)) {
    throw new Error("only a software WebGPU adapter (CPU emulation, slower than wasm); ask for it with prefer: 'webgpu'");
  }
  await importPeer('@tensorflow/tfjs-backend-webgpu', () => import('@tensorflow/tfjs-backend-webgpu'));
  if (!(await tf.setBackend('webgpu'))) throw new Error('tfjs-backend-webgpu failed to initialize');
  const info = (adapter as { info?: { vendor?: string; architecture?: string } }).info;
  return `WebGPU adapter ${info?.vendor || 'unknown'}${info?.architecture ? ` (${info.architecture})` : ''}`;
}

async function tryWasm(): Promise<string> {
  await importPeer('@tensorflow/tfjs-backend-wasm', () => import('@tensorflow/tfjs-backend-wasm'));
  if (!(await tf.setBackend('wasm'))) throw new Error('tfjs-backend-wasm failed to initialize');
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  return `tfjs wasm backend (${simd ? 'SIMD' : 'no SIMD'}, single thread)`;
}

async function tryCpu(): Promise<string> {
  await importPeer('@tensorflow/tfjs-backend-cpu', () => import('@tensorflow/tfjs-backend-cpu'));
  if (!(await tf.setBackend('cpu'))) throw new Error('tfjs-backend-cpu failed to initialize');
  return 'plain JavaScript backend (always available)';
}

const LOADERS: Record<BackendName, (requested: boolean) => Promise<string>> = {
  'tensorflow-gpu': () => tryNative('tensorflow-gpu'),
  tensorflow: () => tryNative('tensorflow'),
  webgpu: (requested) => tryWebgpu(requested),
  wasm: tryWasm,
  cpu: tryCpu,
};

/**
 * Activate the best available tfjs backend and say which one runs. Order: tfjs-node-gpu → tfjs-node → WebGPU → wasm → cpu
 * (only one of the two native packages is tried per process). In the default order a software (CPU-emulated) WebGPU
 * adapter is skipped in favour of wasm. Pass `prefer` to force one backend or another order.
 * @example
 * const { backend, reason, skipped } = await selectBackend();
 * console.log(`running on ${backend}: ${reason}`, skipped);
 */
export async function selectBackend(options: SelectBackendOptions = {}): Promise<BackendSelection> {
  const explicit = typeof options.prefer === 'string';
  const order: readonly BackendName[] = options.prefer === undefined ? BACKEND_ORDER : explicit ? [options.prefer as BackendName] : (options.prefer as readonly BackendName[]);
  if (!(explicit || options.prefer === undefined || Array.isArray(options.prefer)) || order.length === 0) {
    throw new XqConfigError('E_CONFIG', `prefer must be a backend name or a non-empty list of ${BACKEND_ORDER.join(', ')}`);
  }
  for (const name of order as readonly string[]) {
    if (!(name in LOADERS)) {
      throw new XqConfigError('E_CONFIG', `unknown backend '${String(name)}'; expected one of ${BACKEND_ORDER.join(', ')}`);
    }
  }
  const skipped: BackendSelection['skipped'] = [];
  for (const name of order) {
    const active = tf.getBackend();
    if (active !== null && (name === 'tensorflow-gpu' || name === 'tensorflow' ? loadedNative === name && active === 'tensorflow' : active === name)) {
      return { backend: name, reason: `${name} already active`, skipped };
    }
    try {
      // A backend named in `prefer` is requested; in the default order a software WebGPU adapter is skipped.
      const reason = await LOADERS[name](options.prefer !== undefined);
      return { backend: name, reason, skipped };
    } catch (e) {
      skipped.push({ name, why: shortError(e) });
    }
  }
  const detail = skipped.map((s) => `${s.name}: ${s.why}`).join('; ');
  throw new XqBackendError('E_BACKEND_UNAVAILABLE', `no tfjs backend could be started (${detail})`);
}

/** Release the WebGPU device reference held by {@link selectBackend} so the Node process can exit. */
export function releaseWebgpu(): void {
  const g = globalThis as { navigator?: { gpu?: unknown } };
  if (g.navigator && g.navigator.gpu === dawnGpu && dawnGpu !== null) delete g.navigator.gpu;
  dawnGpu = null;
}
