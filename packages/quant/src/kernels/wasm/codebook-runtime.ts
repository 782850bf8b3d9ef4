/**
 * Instantiation and JS glue of the codebook WebAssembly SIMD kernels: one module (with its own memory) per layout
 * signature, compiled synchronously on first use and cached. Every call stages the view's codes, its decoded scales
 * and the level tables into the module's memory and runs, per KV head and chunk of 4 query rows, a table pass and a
 * token pass (see codebook-codegen.ts).
 * @internal
 */
import { XqError } from '../../errors.js';
import type { CodebookKvView } from '../codebook.js';
import type { UnitSegment } from './codebook-codegen.js';
import type { Fn } from './asm.js';
import { DESC_WORDS, TABLE_BASE, genCodebookKeys, genCodebookValues, genKeyTables, genValueExpand, unitSet, writeDescriptors, type UnitSet } from './codebook-codegen.js';
import { Arena, instantiateAsync, instantiateSync, wasmSimdSupported, type WasmMemory } from './runtime.js';

type Kernel = (...args: number[]) => void;

/** Codes per unit for bits 1…8: for short views (tables cheap to build) and for long ones (fewer lookups). */
const K_SHORT = [0, 4, 2, 1, 1, 1, 1, 1, 1];
const K_LONG = [0, 8, 4, 2, 2, 1, 1, 1, 1];

/** Most units a generated kernel unrolls, and most table bytes (larger layouts run in JS). */
const MAX_UNITS = 2048;
const MAX_TABLE_BYTES = 1 << 24;

interface Variant { set: UnitSet; keys: Kernel; values: Kernel }

interface CodebookInstance {
  memory: WasmMemory;
  keyTables: Kernel;
  valueExpand: Kernel;
  /** Unit sets for short and long views (the same object when they coincide). */
  short: Variant;
  long: Variant;
}

const instances = new Map<string, CodebookInstance | null>();
/** Layouts kept compiled at most (the oldest is dropped first). */
const MAX_INSTANCES = 64;

/** What the generated code of a view depends on: its segments (without the levels, staged per call). */
type Layout = { readonly segments: readonly UnitSegment[] };

/** The part of a view's layout the generated code depends on. */
function signature(v: Layout): string {
  return v.segments.map((s) => `${s.start},${s.length},${s.bits},${s.bitOffset},${s.scaleSlot}`).join(';');
}

/** The functions of a layout's module, or null when the layout is too large for generated kernels. */
function kernelsFor(v: Layout): { fns: Fn[]; sets: UnitSet[] } | null {
  const sets = [unitSet(v.segments, K_SHORT), unitSet(v.segments, K_LONG)];
  if (sets.some((s) => s.units.length > MAX_UNITS || s.tableBytes > MAX_TABLE_BYTES)) return null;
  if (sets[0]!.units.length === sets[1]!.units.length) sets.pop();
  const fns: Fn[] = [genKeyTables(), genValueExpand()];
  sets.forEach((s, i) => fns.push(genCodebookKeys(`keys${i}`, s), genCodebookValues(`values${i}`, s)));
  return { fns, sets };
}

function wrap(sets: UnitSet[], { memory, exports: ex }: { memory: WasmMemory; exports: Record<string, unknown> }): CodebookInstance {
  const k = (n: string) => ex[n] as Kernel;
  const variant = (i: number): Variant => ({ set: sets[i]!, keys: k(`keys${i}`), values: k(`values${i}`) });
  const short = variant(0);
  return { memory, keyTables: k('cbKeyTables'), valueExpand: k('cbValueExpand'), short, long: sets.length > 1 ? variant(1) : short };
}

function remember(key: string, inst: CodebookInstance | null): void {
  if (!instances.has(key) && instances.size >= MAX_INSTANCES) instances.delete(instances.keys().next().value!);
  instances.set(key, inst);
}

function instanceFor(v: CodebookKvView): CodebookInstance | null {
  const key = signature(v);
  const hit = instances.get(key);
  if (hit !== undefined) return hit;
  let inst: CodebookInstance | null = null;
  if (wasmSimdSupported()) {
    try {
      const k = kernelsFor(v);
      inst = k && wrap(k.sets, instantiateSync(k.fns));
    } catch {
      // e.g. a runtime that refuses synchronous compilation: the JS kernels run instead (see prepareCodebook)
      inst = null;
    }
  }
  remember(key, inst);
  return inst;
}

/** Compiles the kernels of these views' layouts asynchronously; true when every layout has SIMD kernels. */
export async function prepareCodebook(views: readonly Layout[]): Promise<boolean> {
  if (!wasmSimdSupported()) return false;
  let ok = true;
  for (const v of views) {
    const key = signature(v);
    if (instances.get(key)) continue;
    const k = kernelsFor(v);
    if (!k) {
      ok = false;
      continue;
    }
    try {
      remember(key, wrap(k.sets, await instantiateAsync(k.fns)));
    } catch {
      ok = false;
    }
  }
  return ok;
}

/** Whether the codebook kernels have a WebAssembly SIMD version for this (consistent) view. */
export function wasmCodebookApplies(v: CodebookKvView): boolean {
  return v.tokens > 0 && instanceFor(v) !== null;
}

let forced: 'short' | 'long' | undefined;
/** Test hook: always take the short or the long unit set (undefined: by estimated cost). */
export function forceCodebookVariant(v: 'short' | 'long' | undefined): void {
  forced = v;
}

/**
 * The unit set of a call over T tokens: the one with the lower estimated cost, lookups (T per unit) against table
 * entries built or expanded per call, `entryCost` lookups each (4 for keys, 6 for values: fitted to the crossovers
 * measured on x86-64, e.g. ~1000 tokens at 1 and 2 bits, ~300 at 3 bits, at headDim 128).
 */
function pick(inst: CodebookInstance, T: number, entryCost: number): Variant {
  if (forced) return inst[forced];
  const cost = (s: UnitSet) => s.units.length * T + (entryCost * s.tableBytes) / 16;
  return cost(inst.long.set) < cost(inst.short.set) ? inst.long : inst.short;
}

/** Stages codes, decoded scales, levels and descriptors; returns their byte offsets. */
function stageView(ar: Arena, v: CodebookKvView, set: UnitSet) {
  const { heads: H, tokens: T } = v;
  const words = T * H * v.rowWords;
  const nScales = T * H * v.scalesPerRow;
  const nLev = v.segments.reduce((n, s) => n + s.levels.length, 0);
  return {
    codes: ar.alloc(words * 4),
    scales: ar.alloc(nScales * 4),
    lev: ar.alloc(nLev * 4),
    desc: ar.alloc(set.units.length * DESC_WORDS * 4),
    fill(u32: Uint32Array, f32: Float32Array) {
      u32.set(words === v.packed.length ? v.packed : v.packed.subarray(0, words), this.codes / 4);
      const sc = v.scales;
      const tab = v.scaleTable;
      for (let i = 0, o = this.scales / 4; i < nScales; i++, o++) f32[o] = tab[sc[i]!]!;
      let l = this.lev / 4;
      for (const s of v.segments) {
        f32.set(s.levels, l);
        l += s.levels.length;
      }
      writeDescriptors(set, u32, this.desc / 4);
    },
  };
}

/** Allocates the unit tables first, at {@link TABLE_BASE} (the generated code addresses them with immediates). */
function allocTables(ar: Arena, bytes: number): number {
  const at = ar.alloc(bytes);
  if (at !== TABLE_BASE) throw new XqError('E_INVARIANT', 'codebook kernels: the unit tables must be the first staged region');
  return at;
}

/**
 * Stages one call: the unit tables, the view (codes, decoded scales, levels, descriptors) and an input and an output
 * region of the given sizes, in the instance of the view's layout; picks the unit set by `entryCost` (see {@link pick}).
 */
function stageCall(v: CodebookKvView, entryCost: number, inBytes: number, outBytes: number) {
  const inst = instanceFor(v)!;
  const vr = pick(inst, v.tokens, entryCost);
  const ar = new Arena();
  const tabs = allocTables(ar, vr.set.tableBytes);
  const st = stageView(ar, v, vr.set);
  const input = ar.alloc(inBytes);
  const output = ar.alloc(outBytes);
  const { u32, f32 } = ar.commit(inst);
  st.fill(u32, f32);
  return { inst, vr, tabs, st, input, output, f32, rowBytes: v.heads * v.rowWords * 4, scaleBytes: v.heads * v.scalesPerRow * 4 };
}

/** `codebookKeyScores` through the WebAssembly kernels (the view and arrays already checked). */
export function wasmCodebookKeyScores(q: Float32Array, rows: number, v: CodebookKvView, out: Float32Array, rowStride: number): void {
  const { heads: H, tokens: T, headDim: D } = v;
  const per = rows / H;
  const { inst, vr, tabs, st, input: q4, output: o, f32, rowBytes, scaleBytes } = stageCall(v, 4, D * 16, 4 * T * 4);
  for (let h = 0; h < H; h++) {
    for (let j0 = 0; j0 < per; j0 += 4) {
      const nh = Math.min(4, per - j0);
      const qb = (h * per + j0) * D;
      for (let c = 0, k = q4 / 4; c < D; c++, k += 4) {
        for (let l = 0; l < 4; l++) f32[k + l] = l < nh ? q[qb + l * D + c]! : 0;
      }
      inst.keyTables(st.desc, vr.set.units.length, q4, st.lev, tabs);
      vr.keys(st.codes + h * v.rowWords * 4, rowBytes, T, st.scales + h * v.scalesPerRow * 4, scaleBytes, o, T * 4);
      for (let l = 0; l < nh; l++) out.set(f32.subarray(o / 4 + l * T, o / 4 + (l + 1) * T), (h * per + j0 + l) * rowStride);
    }
  }
}

/** `codebookValueMix` through the WebAssembly kernels (the view and arrays already checked; `out` is overwritten). */
export function wasmCodebookValueMix(p: Float32Array, rows: number, v: CodebookKvView, out: Float32Array, rowStride: number): void {
  const { heads: H, tokens: T, headDim: D } = v;
  const per = rows / H;
  const { inst, vr, tabs, st, input: pr, output: o, f32, rowBytes, scaleBytes } = stageCall(v, 6, 4 * T * 4, 4 * D * 4);
  for (let h = 0; h < H; h++) {
    for (let j0 = 0; j0 < per; j0 += 4) {
      const nh = Math.min(4, per - j0);
      for (let l = 0; l < 4; l++) {
        const at = pr / 4 + l * T;
        if (l < nh) {
          const from = (h * per + j0 + l) * rowStride;
          f32.set(p.subarray(from, from + T), at);
        } else f32.fill(0, at, at + T);
      }
      vr.values(st.codes + h * v.rowWords * 4, rowBytes, T, st.scales + h * v.scalesPerRow * 4, scaleBytes, pr, T * 4);
      inst.valueExpand(st.desc, vr.set.units.length, st.lev, tabs, o, D * 4);
      for (let l = 0; l < nh; l++) out.set(f32.subarray(o / 4 + l * D, o / 4 + (l + 1) * D), (h * per + j0 + l) * D);
    }
  }
}
