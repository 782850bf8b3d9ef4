/**
 * Instantiation and JS glue of the generated WebAssembly SIMD kernels. One module (with its own memory) per head
 * dimension, compiled synchronously on first use; inputs are copied into its memory on every call.
 * @internal
 */
import type { PackedKv } from '../../kv.js';
import type { KernelGeometry } from '../validate.js';
import { assemble, type Fn } from './asm.js';
import { blockElems, genDenseKeys, genDenseValues, genKeys, genValues } from './codegen.js';

type Kernel = (...args: number[]) => void;

/** The slice of the WebAssembly JS API used here (typed locally: the package builds without DOM typings). */
interface WasmMemory { readonly buffer: ArrayBuffer; grow(pages: number): number }
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports?: object) => { exports: Record<string, unknown> };
  compile(bytes: Uint8Array): Promise<object>;
  instantiate(module: object, imports?: object): Promise<{ exports: Record<string, unknown> }>;
}
const WA = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;

interface Instance {
  memory: WasmMemory;
  keys1?: Kernel;
  keys2?: Kernel;
  values1?: Kernel;
  values2?: Kernel;
  denseKeys?: Kernel;
  denseValues?: Kernel;
}

const instances = new Map<number, Instance | null>();
let simdSupported: boolean | undefined;

/** True when this runtime compiles WebAssembly with SIMD (checked once with a one-instruction module). */
export function wasmSimdSupported(): boolean {
  if (simdSupported !== undefined) return simdSupported;
  try {
    // (func (result v128) v128.const 0) — valid only with SIMD
    const bytes = Uint8Array.from([
      0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 22, 1, 20, 0, 253, 12,
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11,
    ]);
    simdSupported = WA !== undefined && WA.validate(bytes);
  } catch {
    simdSupported = false;
  }
  return simdSupported ?? false;
}

function kernelsFor(D: number): Fn[] {
  const fns: Fn[] = [genKeys(2, D), genKeys(1, D), genDenseKeys(D)];
  if (D % 8 === 0) fns.push(genDenseValues(D));
  if (D % blockElems(2) === 0) fns.push(genValues(2, D));
  if (D % blockElems(1) === 0) fns.push(genValues(1, D));
  return fns;
}

function wrap(fns: Fn[], ex: Record<string, unknown>): Instance {
  const inst: Instance = { memory: ex.mem as WasmMemory };
  for (const f of fns) (inst as unknown as Record<string, Kernel>)[f.name] = ex[f.name] as Kernel;
  return inst;
}

const dimOk = (D: number) => Number.isInteger(D) && D > 0 && D % 4 === 0 && D <= 4096;

function instanceFor(D: number): Instance | null {
  const hit = instances.get(D);
  if (hit !== undefined) return hit;
  let inst: Instance | null = null;
  if (wasmSimdSupported() && dimOk(D)) {
    try {
      // synchronous compilation (~20 KB module); runtimes that refuse it on their main thread fall back to JS
      // unless prepareWasm() compiled the module asynchronously beforehand
      const fns = kernelsFor(D);
      inst = wrap(fns, new WA!.Instance(new WA!.Module(assemble(fns, 1))).exports);
    } catch {
      inst = null;
    }
  }
  instances.set(D, inst);
  return inst;
}

/** Compiles the kernels for these head dimensions asynchronously; true when all of them are ready. */
export async function prepareWasm(headDims: readonly number[]): Promise<boolean> {
  if (!wasmSimdSupported()) return false;
  let ok = true;
  for (const D of headDims) {
    if (instances.get(D)) continue;
    if (!dimOk(D)) { ok = false; continue; }
    try {
      const fns = kernelsFor(D);
      const module = await WA!.compile(assemble(fns, 1));
      instances.set(D, wrap(fns, (await WA!.instantiate(module)).exports));
    } catch {
      ok = false;
    }
  }
  return ok;
}

/** Bump allocation of 16-byte-aligned regions in an instance's memory, growing it when needed. */
class Arena {
  private top = 64;
  readonly offsets: number[] = [];
  alloc(bytes: number): number {
    const at = this.top;
    this.top += Math.ceil(bytes / 16) * 16;
    return at;
  }
  commit(inst: Instance): { f32: Float32Array; u32: Uint32Array } {
    const need = this.top - inst.memory.buffer.byteLength;
    if (need > 0) inst.memory.grow(Math.ceil(need / 65536));
    return { f32: new Float32Array(inst.memory.buffer), u32: new Uint32Array(inst.memory.buffer) };
  }
}

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** Copies `src[from, from + n)` to `dst[at, at + n)` (one memcpy for typed arrays). */
function copyRow(dst: Float32Array, at: number, src: ArrayLike<number>, from: number, n: number): void {
  if (ArrayBuffer.isView(src)) dst.set((src as Float32Array).subarray(from, from + n), at);
  else for (let i = 0; i < n; i++) dst[at + i] = src[from + i]!;
}

/** Whether the packed kernels (keys or values) have a WebAssembly version for this geometry. */
export function wasmPackedApplies(g: KernelGeometry, axis: 'channel' | 'token'): boolean {
  if (g.bits !== 1 && g.bits !== 2) return false;
  const fpw = 32 / g.bits;
  if (!isPow2(g.groupSize) || g.groupSize % fpw !== 0 || g.headDim % 4 !== 0) return false;
  if (axis === 'token' && g.headDim % blockElems(g.bits) !== 0) return false;
  return instanceFor(g.headDim) !== null;
}

/** Whether the dense baselines have a WebAssembly version for this head dimension. */
export function wasmDenseApplies(D: number, axis: 'channel' | 'token'): boolean {
  if (axis === 'token' && D % 8 !== 0) return false;
  return instanceFor(D) !== null;
}

/** Packed key scores through the WebAssembly kernel (see `genKeys`). */
export function wasmKeyScores(q: ArrayLike<number>, keys: PackedKv, g: KernelGeometry, res: Float32Array): void {
  const { kvHeads, tokens: T, headDim: D, groupSize: gs, rep } = g;
  const bits = g.bits as 1 | 2;
  const inst = instanceFor(D)!;
  const fpw = 32 / bits;
  const W = T / fpw;
  const W4 = Math.ceil(W / 4) * 4;
  const G = T / gs;
  const SPAN = blockElems(bits);
  const ncb = D / (bits === 2 ? 2 : 4);
  const npg = gs < SPAN ? SPAN / gs : 1;
  const ar = new Arena();
  const codes = ar.alloc(kvHeads * D * W4 * 4);
  const scale = ar.alloc(kvHeads * D * G * 4);
  const zero = ar.alloc(kvHeads * D * G * 4);
  const q4 = ar.alloc(D * 16);
  const out = ar.alloc(4 * T * 4);
  const offs = ar.alloc(ncb * SPAN);
  const tabs = ar.alloc(npg * ncb * 256);
  const bias = ar.alloc(npg * 16);
  const { f32, u32 } = ar.commit(inst);
  if (W4 === W) u32.set(keys.packed, codes / 4);
  else for (let r = 0; r < kvHeads * D; r++) u32.set(keys.packed.subarray(r * W, (r + 1) * W), codes / 4 + r * W4);
  f32.set(keys.scale, scale / 4);
  f32.set(keys.zero, zero / 4);
  const fn = (bits === 2 ? inst.keys2 : inst.keys1)!;
  const gsh = Math.log2(gs);
  for (let kv = 0; kv < kvHeads; kv++) {
    for (let h0 = 0; h0 < rep; h0 += 4) {
      const nh = Math.min(4, rep - h0);
      const qb = (kv * rep + h0) * D;
      for (let d = 0, o = q4 / 4; d < D; d++, o += 4) {
        for (let l = 0; l < 4; l++) f32[o + l] = l < nh ? q[qb + l * D + d]! : 0;
      }
      fn(codes + kv * D * W4 * 4, W4 * 4, T, scale + kv * D * G * 4, zero + kv * D * G * 4, G, gsh,
        gs < SPAN ? gsh : 31, q4, out, offs, tabs, bias, Math.max(gs, SPAN) - 1, npg);
      for (let l = 0; l < nh; l++) res.set(f32.subarray(out / 4 + l * T, out / 4 + (l + 1) * T), (kv * rep + h0 + l) * T);
    }
  }
}

/** Packed value mix through the WebAssembly kernel (see `genValues`). */
export function wasmValueMix(p: ArrayLike<number>, values: PackedKv, g: KernelGeometry, res: Float32Array): void {
  const { kvHeads, tokens: T, headDim: D, groupSize: gs, rep } = g;
  const bits = g.bits as 1 | 2;
  const inst = instanceFor(D)!;
  const fpw = 32 / bits;
  const Wd = D / fpw;
  const G = D / gs;
  const Tpad = Math.ceil(T / 64) * 64;
  const NP = bits === 2 ? 32 : 16;
  const ar = new Arena();
  const codes = ar.alloc(Tpad * Wd * 4);
  const scale = ar.alloc(Tpad * G * 4);
  const zero = ar.alloc(Tpad * G * 4);
  const pr = ar.alloc(4 * Tpad * 4);
  const out = ar.alloc(4 * D * 4);
  const offs = ar.alloc(NP * D);
  const tabs = ar.alloc(G * NP * 256);
  const acc = ar.alloc(D * 16);
  const bias = ar.alloc(G * 16);
  const { f32, u32 } = ar.commit(inst);
  const fn = (bits === 2 ? inst.values2 : inst.values1)!;
  for (let kv = 0; kv < kvHeads; kv++) {
    u32.set(values.packed.subarray(kv * T * Wd, (kv + 1) * T * Wd), codes / 4);
    f32.set(values.scale.subarray(kv * T * G, (kv + 1) * T * G), scale / 4);
    f32.set(values.zero.subarray(kv * T * G, (kv + 1) * T * G), zero / 4);
    f32.fill(0, scale / 4 + T * G, scale / 4 + Tpad * G);
    f32.fill(0, zero / 4 + T * G, zero / 4 + Tpad * G);
    for (let h0 = 0; h0 < rep; h0 += 4) {
      const nh = Math.min(4, rep - h0);
      for (let l = 0; l < 4; l++) {
        const row = pr / 4 + l * Tpad;
        if (l < nh) {
          copyRow(f32, row, p, (kv * rep + h0 + l) * T, T);
          f32.fill(0, row + T, row + Tpad);
        } else f32.fill(0, row, row + Tpad);
      }
      fn(codes, Wd * 4, Tpad, scale, zero, G, Math.log2(gs), pr, out, offs, tabs, acc, bias);
      for (let l = 0; l < nh; l++) res.set(f32.subarray(out / 4 + l * D, out / 4 + (l + 1) * D), (kv * rep + h0 + l) * D);
    }
  }
}

/** Dense key scores through the WebAssembly kernel (keys copied into its memory, one KV head at a time). */
export function wasmDenseKeyScores(q: ArrayLike<number>, K: ArrayLike<number>, kvHeads: number, D: number, T: number, rep: number, res: Float32Array): void {
  const inst = instanceFor(D)!;
  const ar = new Arena();
  const k = ar.alloc(T * D * 4);
  const qr = ar.alloc(4 * D * 4);
  const out = ar.alloc(4 * T * 4);
  const { f32 } = ar.commit(inst);
  const src = K instanceof Float32Array ? K : Float32Array.from(K);
  for (let kv = 0; kv < kvHeads; kv++) {
    f32.set(src.subarray(kv * T * D, (kv + 1) * T * D), k / 4);
    for (let h0 = 0; h0 < rep; h0 += 4) {
      const nh = Math.min(4, rep - h0);
      for (let l = 0; l < 4; l++) {
        const row = qr / 4 + l * D;
        if (l < nh) copyRow(f32, row, q, (kv * rep + h0 + l) * D, D);
        else f32.fill(0, row, row + D);
      }
      inst.denseKeys!(k, T, qr, out);
      for (let l = 0; l < nh; l++) res.set(f32.subarray(out / 4 + l * T, out / 4 + (l + 1) * T), (kv * rep + h0 + l) * T);
    }
  }
}

/** Dense value mix through the WebAssembly kernel (values copied into its memory, one KV head at a time). */
export function wasmDenseValueMix(p: ArrayLike<number>, Vals: ArrayLike<number>, kvHeads: number, D: number, T: number, rep: number, res: Float32Array): void {
  const inst = instanceFor(D)!;
  const ar = new Arena();
  const v = ar.alloc(T * D * 4);
  const pr = ar.alloc(4 * T * 4);
  const out = ar.alloc(4 * D * 4);
  const { f32 } = ar.commit(inst);
  const src = Vals instanceof Float32Array ? Vals : Float32Array.from(Vals);
  for (let kv = 0; kv < kvHeads; kv++) {
    f32.set(src.subarray(kv * T * D, (kv + 1) * T * D), v / 4);
    for (let h0 = 0; h0 < rep; h0 += 4) {
      const nh = Math.min(4, rep - h0);
      for (let l = 0; l < 4; l++) {
        const row = pr / 4 + l * T;
        if (l < nh) copyRow(f32, row, p, (kv * rep + h0 + l) * T, T);
        else f32.fill(0, row, row + T);
      }
      inst.denseValues!(v, T, pr, out);
      for (let l = 0; l < nh; l++) res.set(f32.subarray(out / 4 + l * D, out / 4 + (l + 1) * D), (kv * rep + h0 + l) * D);
    }
  }
}
