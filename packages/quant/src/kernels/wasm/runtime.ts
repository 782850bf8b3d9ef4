/**
 * Instantiation and JS glue of the generated WebAssembly SIMD kernels. One module (with its own memory) per head
 * dimension, compiled synchronously on first use. Every call stages its segments into the module's memory (codes as
 * they are, fp16 metadata converted to float32 by a SIMD kernel; consecutive token-major value segments back to back,
 * so a cache's value chunks are one region) and runs one kernel per key block or value region, KV head and chunk of
 * 4 query heads.
 * @internal
 */
import type { KernelGeometry, PackedMeta, Segment } from '../view.js';
import { assemble, type Fn } from './asm.js';
import { VALUE_CHUNK, genDenseKeys, genDenseValues, genHalfToFloat, genKeys, genValues, spanElems } from './codegen.js';

type Kernel = (...args: number[]) => void;

/** The slice of the WebAssembly JS API used here (typed locally: the package builds without DOM typings). */
export interface WasmMemory { readonly buffer: ArrayBuffer; grow(pages: number): number }
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports?: object) => { exports: Record<string, unknown> };
  compile(bytes: Uint8Array): Promise<object>;
  instantiate(module: object, imports?: object): Promise<{ exports: Record<string, unknown> }>;
}
const WA = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;

type Instance = { memory: WasmMemory } & Partial<Record<'keys1' | 'keys2' | 'values1' | 'values2' | 'denseKeys' | 'denseValues' | 'f16to32', Kernel>>;

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

/** Compiles and instantiates these functions synchronously as one module (throws where the runtime refuses). */
export function instantiateSync(fns: Fn[]): { memory: WasmMemory; exports: Record<string, unknown> } {
  const ex = new WA!.Instance(new WA!.Module(assemble(fns, 1))).exports;
  return { memory: ex.mem as WasmMemory, exports: ex };
}

/** Compiles and instantiates these functions asynchronously as one module. */
export async function instantiateAsync(fns: Fn[]): Promise<{ memory: WasmMemory; exports: Record<string, unknown> }> {
  const ex = (await WA!.instantiate(await WA!.compile(assemble(fns, 1)))).exports;
  return { memory: ex.mem as WasmMemory, exports: ex };
}

function kernelsFor(D: number): Fn[] {
  const fns: Fn[] = [genKeys(2, D), genKeys(1, D), genDenseKeys(D), genHalfToFloat()];
  if (D % 8 === 0) fns.push(genDenseValues(D));
  for (const bits of [2, 1] as const) if (D % spanElems(bits) === 0) fns.push(genValues(bits, D));
  return fns;
}

function wrap(fns: Fn[], ex: Record<string, unknown>): Instance {
  const inst: Instance = { memory: ex.mem as WasmMemory };
  for (const fn of fns) (inst as Record<string, unknown>)[fn.name] = ex[fn.name];
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
      inst = wrap(fns, instantiateSync(fns).exports);
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
      instances.set(D, wrap(fns, (await instantiateAsync(fns)).exports));
    } catch {
      ok = false;
    }
  }
  return ok;
}

/** Bump allocation of 16-byte-aligned regions (with 16 bytes of slack) in an instance's memory, grown when needed. */
export class Arena {
  private top = 64;
  alloc(bytes: number): number {
    const at = this.top;
    this.top += Math.ceil(bytes / 16) * 16 + 16;
    return at;
  }
  commit(inst: { memory: WasmMemory }): { f32: Float32Array; u32: Uint32Array; u16: Uint16Array } {
    const need = this.top - inst.memory.buffer.byteLength;
    if (need > 0) inst.memory.grow(Math.ceil(need / 65536));
    const b = inst.memory.buffer;
    return { f32: new Float32Array(b), u32: new Uint32Array(b), u16: new Uint16Array(b) };
  }
}

type Views = ReturnType<Arena['commit']>;

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/** Copies `src[from, from + n)` to `dst[at, at + n)` (one memcpy for typed arrays). */
function copyRow(dst: Float32Array, at: number, src: ArrayLike<number>, from: number, n: number): void {
  if (ArrayBuffer.isView(src)) dst.set((src as Float32Array).subarray(from, from + n), at);
  else for (let i = 0; i < n; i++) dst[at + i] = src[from + i]!;
}

/** Whether the packed kernels have a WebAssembly version for this geometry (1- or 2-bit codes). */
export function wasmPackedApplies(g: Pick<KernelGeometry, 'bits' | 'groupSize' | 'headDim'>, axis: 'channel' | 'token'): boolean {
  if (g.bits !== 1 && g.bits !== 2) return false;
  if (!isPow2(g.groupSize) || g.groupSize % (32 / g.bits) !== 0 || g.headDim % 4 !== 0) return false;
  if (axis === 'token' && g.headDim % spanElems(g.bits) !== 0) return false;
  return instanceFor(g.headDim) !== null;
}

/** Whether the dense baselines have a WebAssembly version for this head dimension. */
export function wasmDenseApplies(D: number, axis: 'channel' | 'token'): boolean {
  if (axis === 'token' && D % 8 !== 0) return false;
  return instanceFor(D) !== null;
}

/** Staged metadata: scale and zero as float32 at these byte offsets. */
interface StagedMeta { scale: number; zero: number; u16?: [number, number]; n: number }

function allocMeta(ar: Arena, n: number, f16: boolean): StagedMeta {
  const n8 = Math.ceil(n / 8) * 8;
  const m: StagedMeta = { scale: ar.alloc(n8 * 4), zero: ar.alloc(n8 * 4), n };
  if (f16) m.u16 = [ar.alloc(n8 * 2), ar.alloc(n8 * 2)];
  return m;
}

/** Copies the first `n` groups of `seg`'s scale/zero to group `at` of the staged metadata. */
function stageMeta(v: Views, m: StagedMeta, seg: Segment, n: number, at: number): void {
  const { scale, zero } = seg.view;
  const head = <A extends PackedMeta>(x: A): A => (x.length === n ? x : (x.subarray(0, n) as A));
  if (m.u16) {
    v.u16.set(head(scale as Uint16Array), m.u16[0] / 2 + at);
    v.u16.set(head(zero as Uint16Array), m.u16[1] / 2 + at);
  } else {
    v.f32.set(head(scale as Float32Array), m.scale / 4 + at);
    v.f32.set(head(zero as Float32Array), m.zero / 4 + at);
  }
}

/** Converts staged fp16 metadata to float32 (in the module). */
function finishMeta(inst: Instance, m: StagedMeta): void {
  if (!m.u16) return;
  const n8 = Math.ceil(m.n / 8);
  inst.f16to32!(m.u16[0], m.scale, n8);
  inst.f16to32!(m.u16[1], m.zero, n8);
}

/** A staged kernel call: runs the kernels on the staged K/V (activations in, results out). */
export type StagedRun = () => void;

/** A module instance of its own (not shared with the calls of the kernels), e.g. to keep staged data resident. */
export function privateInstance(D: number): Instance | null {
  if (!instanceFor(D)) return null;
  const fns = kernelsFor(D);
  return wrap(fns, instantiateSync(fns).exports);
}

/** Staged keys: consecutive segments of whole blocks of the same size back to back (a cache's blocks: one region). */
interface KeyRegion { first: number; tokens: number; seg: Segment; full: boolean; codes: number; meta: StagedMeta; segs: Segment[] }

/** Stages packed keys; the run is one kernel call per staged region, KV head and chunk of 4 query heads. */
export function stageKeyScores(inst: Instance, q: ArrayLike<number>, g: KernelGeometry, res: Float32Array): StagedRun {
  const { kvHeads: H, headDim: D, groupSize: gs, rep, stride, tokens: N } = g;
  const bits = g.bits as 1 | 2;
  const SPAN = spanElems(bits);
  const npg = gs < SPAN ? SPAN / gs : 1;
  const regions: KeyRegion[] = [];
  for (const s of g.segments) {
    const last = regions[regions.length - 1];
    if (last && last.full && last.seg.kblk === s.kblk && last.seg.f16 === s.f16) last.segs.push(s);
    else regions.push({ first: s.offset, tokens: 0, seg: s, full: false, codes: 0, meta: { scale: 0, zero: 0, n: 0 }, segs: [s] });
    const r = regions[regions.length - 1]!;
    r.tokens += s.tokens;
    r.full = s.tokens === (s.view.capacity ?? s.tokens) && s.tokens % s.kblk === 0;
  }
  const ar = new Arena();
  for (const r of regions) {
    const words = r.segs.reduce((n, s) => n + s.view.packed.length, 0);
    r.codes = ar.alloc(words * 4);
    r.meta = allocMeta(ar, r.segs.reduce((n, s) => n + s.view.scale.length, 0), r.seg.f16);
  }
  const q4 = ar.alloc(D * 16);
  const out = ar.alloc(4 * N * 4);
  const offs = ar.alloc((D / 4) * 128);
  const tabs = ar.alloc(npg * (D / 4) * 256);
  const bias = ar.alloc(npg * 16);
  const v = ar.commit(inst);
  for (const r of regions) {
    let w = 0, m = 0;
    for (const s of r.segs) {
      v.u32.set(s.view.packed, r.codes / 4 + w);
      stageMeta(v, r.meta, s, s.view.scale.length, m);
      w += s.view.packed.length;
      m += s.view.scale.length;
    }
    finishMeta(inst, r.meta);
  }
  const fn = (bits === 2 ? inst.keys2 : inst.keys1)!;
  const gsh = Math.log2(gs);
  return () => {
    for (let kv = 0; kv < H; kv++) {
      for (let h0 = 0; h0 < rep; h0 += 4) {
        const nh = Math.min(4, rep - h0);
        const qb = (kv * rep + h0) * D;
        for (let d = 0, o = q4 / 4; d < D; d++, o += 4) {
          for (let l = 0; l < 4; l++) v.f32[o + l] = l < nh ? q[qb + l * D + d]! : 0;
        }
        for (const { seg: s, codes, meta, tokens, first } of regions) {
          const mo = kv * D * s.kgs * 4;
          fn(codes + kv * D * s.kws * 4, s.kws * 4, tokens, s.kblk, s.kbw * 4, s.kbm * 4, meta.scale + mo, meta.zero + mo, s.kgs, gsh,
            gs < SPAN ? gsh : 31, q4, out + first * 4, N * 4, offs, tabs, bias, Math.max(gs, SPAN) - 1, npg);
        }
        for (let l = 0; l < nh; l++) res.set(v.f32.subarray(out / 4 + l * N, out / 4 + (l + 1) * N), (kv * rep + h0 + l) * stride);
      }
    }
  };
}

/** A staged value region: consecutive token-major segments back to back, or one head-major segment. */
interface ValueRegion { first: number; tokens: number; tokenMajor: boolean; codes: number; meta: StagedMeta; segs: Segment[] }

/** Stages packed values; the run is one kernel call per staged region, KV head and chunk of 4 query heads. */
export function stageValueMix(inst: Instance, p: ArrayLike<number>, g: KernelGeometry, res: Float32Array): StagedRun {
  const { kvHeads: H, headDim: D, groupSize: gs, rep, stride } = g;
  const bits = g.bits as 1 | 2;
  const Wd = (D * bits) / 32;
  const G = D / gs;
  const ar = new Arena();
  const regions: ValueRegion[] = [];
  for (const s of g.segments) {
    const last = regions[regions.length - 1];
    const tm = !!s.view.tokenMajor;
    if (last && tm && last.tokenMajor && last.segs[0]!.f16 === s.f16) {
      last.segs.push(s);
      last.tokens += s.tokens;
    } else regions.push({ first: s.offset, tokens: s.tokens, tokenMajor: tm, codes: 0, meta: { scale: 0, zero: 0, n: 0 }, segs: [s] });
  }
  let maxT = 0;
  for (const r of regions) {
    // room for the rows read past the last token (up to a multiple of VALUE_CHUNK; read with weight 0)
    const rows = r.tokenMajor ? (r.tokens + VALUE_CHUNK) * H : H * (r.segs[0]!.view.capacity ?? r.tokens) + VALUE_CHUNK;
    r.codes = ar.alloc(rows * Wd * 4);
    r.meta = allocMeta(ar, rows * G, r.segs[0]!.f16);
    maxT = Math.max(maxT, r.tokens);
  }
  const Tpad = Math.ceil(maxT / VALUE_CHUNK) * VALUE_CHUNK;
  const pr = ar.alloc(4 * Tpad * 4);
  const out = ar.alloc(4 * D * 4);
  const NP = VALUE_CHUNK / 4;
  const offs = ar.alloc(NP * D * (bits === 2 ? 2 : 1));
  const tabs = ar.alloc(G * NP * 256);
  const acc = ar.alloc(D * 16);
  const bias = ar.alloc(G * 16);
  const v = ar.commit(inst);
  for (const r of regions) {
    let row = 0;
    for (const s of r.segs) {
      const rows = r.tokenMajor ? s.tokens * H : s.view.packed.length / Wd;
      v.u32.set(rows * Wd === s.view.packed.length ? s.view.packed : s.view.packed.subarray(0, rows * Wd), r.codes / 4 + row * Wd);
      stageMeta(v, r.meta, s, rows * G, row * G);
      row += rows;
    }
    finishMeta(inst, r.meta);
  }
  const fn = (bits === 2 ? inst.values2 : inst.values1)!;
  const gsh = Math.log2(gs);
  return () => {
    res.fill(0, 0, g.qHeads * D);
    for (const r of regions) {
      const s0 = r.segs[0]!;
      const [hs, ts] = r.tokenMajor ? [1, H] : [s0.vhs, s0.vts];
      for (let kv = 0; kv < H; kv++) {
        for (let h0 = 0; h0 < rep; h0 += 4) {
          const nh = Math.min(4, rep - h0);
          for (let l = 0; l < 4; l++) {
            const row = pr / 4 + l * Tpad;
            if (l < nh) copyRow(v.f32, row, p, (kv * rep + h0 + l) * stride + r.first, r.tokens);
            else v.f32.fill(0, row, row + r.tokens);
          }
          fn(r.codes + kv * hs * Wd * 4, ts * Wd * 4, r.tokens, r.meta.scale + kv * hs * G * 4, r.meta.zero + kv * hs * G * 4,
            ts * G * 4, G, gsh, pr, Tpad * 4, out, offs, tabs, acc, bias);
          for (let l = 0; l < nh; l++) {
            const o = (kv * rep + h0 + l) * D;
            for (let d = 0; d < D; d++) res[o + d] = res[o + d]! + v.f32[out / 4 + l * D + d]!;
          }
        }
      }
    }
  };
}

/**
 * Stages dense float32 K or V (`[kvHeads, T, D]`, `axis` 'channel' for keys); the run is one kernel call per KV head and
 * chunk of 4 query heads over `a` (`q` `[qHeads, D]` or `p` `[qHeads, T]`).
 */
export function stageDense(inst: Instance, axis: 'channel' | 'token', a: ArrayLike<number>, X: ArrayLike<number>, kvHeads: number, D: number, T: number, rep: number, res: Float32Array): StagedRun {
  const keys = axis === 'channel';
  const per = keys ? D : T;
  const ar = new Arena();
  const x = ar.alloc(kvHeads * T * D * 4);
  const act = ar.alloc(4 * per * 4);
  const out = ar.alloc(4 * (keys ? T : D) * 4);
  const { f32 } = ar.commit(inst);
  f32.set(X instanceof Float32Array ? X : Float32Array.from(X), x / 4);
  const fn = (keys ? inst.denseKeys : inst.denseValues)!;
  const n = keys ? T : D;
  return () => {
    for (let kv = 0; kv < kvHeads; kv++) {
      for (let h0 = 0; h0 < rep; h0 += 4) {
        const nh = Math.min(4, rep - h0);
        for (let l = 0; l < 4; l++) {
          const row = act / 4 + l * per;
          if (l < nh) copyRow(f32, row, a, (kv * rep + h0 + l) * per, per);
          else f32.fill(0, row, row + per);
        }
        fn(x + kv * T * D * 4, T, act, out);
        for (let l = 0; l < nh; l++) res.set(f32.subarray(out / 4 + l * n, out / 4 + (l + 1) * n), (kv * rep + h0 + l) * n);
      }
    }
  };
}

/** Packed key scores through the WebAssembly kernels. */
export function wasmKeyScores(q: ArrayLike<number>, g: KernelGeometry, res: Float32Array): void {
  stageKeyScores(instanceFor(g.headDim)!, q, g, res)();
}

/** Packed value mix through the WebAssembly kernels. */
export function wasmValueMix(p: ArrayLike<number>, g: KernelGeometry, res: Float32Array): void {
  stageValueMix(instanceFor(g.headDim)!, p, g, res)();
}

/** Dense key scores (axis 'channel') or value mix ('token') through the WebAssembly kernels. */
export function wasmDense(axis: 'channel' | 'token', a: ArrayLike<number>, X: ArrayLike<number>, kvHeads: number, D: number, T: number, rep: number, res: Float32Array): void {
  stageDense(instanceFor(D)!, axis, a, X, kvHeads, D, T, rep, res)();
}
