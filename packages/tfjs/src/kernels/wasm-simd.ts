/**
 * WebAssembly SIMD versions of the packed-code kernels for four query vectors per KV head (the GQA decode case).
 * The module is assembled here from a few dozen instructions (no binary blob, no build step) and instantiated once.
 * Codes are unpacked four at a time: `(word >>> shift) & [m, m≪b, m≪2b, m≪3b]`, converted to float and rescaled by
 * `[1, 2^-b, 2^-2b, 2^-3b]` (exact: every value stays below 2^24).
 */

// ---- a minimal assembler ----------------------------------------------------------------------------------------
const I32 = 0x7f, F32 = 0x7d, V128 = 0x7b;

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}
const str = (s: string) => [...uleb(s.length), ...[...s].map((c) => c.charCodeAt(0))];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];

/** Instruction emitter for one function body. */
class Fn {
  code: number[] = [];
  private nLocals: number;
  private localTypes: number[] = [];
  constructor(readonly params: number) {
    this.nLocals = params;
  }
  local(type: number): number {
    this.localTypes.push(type);
    return this.nLocals++;
  }
  op(...bytes: number[]): this {
    this.code.push(...bytes);
    return this;
  }
  get(i: number) { return this.op(0x20, ...uleb(i)); }
  set(i: number) { return this.op(0x21, ...uleb(i)); }
  tee(i: number) { return this.op(0x22, ...uleb(i)); }
  i32(n: number) { return this.op(0x41, ...sleb(n | 0)); }
  simd(opcode: number, ...imm: number[]) { return this.op(0xfd, ...uleb(opcode), ...imm); }
  /** `for (i = from; i < to; i += step) body()` with i32 locals. */
  for(i: number, from: () => void, to: () => void, step: number, body: () => void): this {
    from();
    this.set(i);
    this.op(0x02, 0x40, 0x03, 0x40); // block loop
    this.get(i);
    to();
    this.op(0x4f, 0x0d, 1); // i32.ge_u; br_if 1 (exit block)
    body();
    this.get(i).i32(step).op(0x6a).set(i); // i += step
    this.op(0x0c, 0, 0x0b, 0x0b); // br 0; end loop; end block
    return this;
  }
  bytes(): number[] {
    const groups = this.localTypes.map((t) => [1, t]);
    const body = [...vec(groups), ...this.code, 0x0b];
    return [...uleb(body.length), ...body];
  }
}
// opcodes
const ADD = 0x6a, MUL = 0x6c, DIVU = 0x6e, SHRU = 0x76, SUB = 0x6b, SHL = 0x74;
const F32_LOAD = 0x2a, F32_STORE = 0x38, I32_LOAD = 0x28, F32_MUL = 0x94, F32_ADD = 0x92;
const V_LOAD = 0x00, V_LOAD32_SPLAT = 0x09, V_STORE = 0x0b, I32X4_SPLAT = 0x11, F32X4_SPLAT = 0x13, V_AND = 0x4e;
const F32X4_ADD = 0xe4, F32X4_MUL = 0xe6, F32X4_CONVERT_U = 0xfb;
const mem = (align: number, offset = 0) => [align, ...uleb(offset)];

/**
 * keys4(q, scale, zero, packed, out, D, tokens, gs, bits, a, consts, outStride): scores of 4 query vectors over one head of a
 * key block (`gs`: the key group size, tokens per scale/zero). q `[4, D]`, scale/zero `[D, tokens/gs]` f32, packed `[D, tokens·bits/32]`, out `[4, outStride]`,
 * a: scratch `[D, 4]`, consts: mask vector then scale vector (32 bytes). Requires gs % 8 == 0, bits ≤ 4.
 */
function keysFn(): Fn {
  const f = new Fn(12);
  const [q, sc, zr, pk, out, D, T, gs, bits, a, cst, ostride] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
  const g = f.local(I32), d = f.local(I32), t = f.local(I32), G = f.local(I32), fpw = f.local(I32), wpr = f.local(I32);
  const sh = f.local(I32), p = f.local(I32), ap = f.local(I32), sIdx = f.local(I32), m = f.local(I32);
  const s = f.local(F32), z = f.local(F32), qv = f.local(F32);
  const z0 = f.local(F32), z1 = f.local(F32), z2 = f.local(F32), z3 = f.local(F32);
  const acc = [f.local(V128), f.local(V128), f.local(V128), f.local(V128)];
  const codes = f.local(V128), maskv = f.local(V128), scalev = f.local(V128);
  const acc2 = [f.local(V128), f.local(V128), f.local(V128), f.local(V128)];
  const codes2 = f.local(V128), av = f.local(V128);
  const w = f.local(I32), sh4 = f.local(I32), wprB = f.local(I32), aEnd = f.local(I32);
  const zs = [z0, z1, z2, z3];
  f.i32(32).get(bits).op(DIVU).set(fpw);
  f.get(T).get(fpw).op(DIVU).set(wpr);
  f.get(T).get(gs).op(DIVU).set(G);
  f.get(bits).i32(2).op(SHL).set(sh4); // 4 codes further
  f.get(wpr).i32(2).op(SHL).set(wprB);
  f.get(cst).simd(V_LOAD, ...mem(0)).set(maskv);
  f.get(cst).simd(V_LOAD, ...mem(0, 16)).set(scalev);
  f.for(g, () => f.i32(0), () => f.get(G), 1, () => {
    for (const zz of zs) f.op(0x43, 0, 0, 0, 0).set(zz); // f32.const 0
    f.for(d, () => f.i32(0), () => f.get(D), 1, () => {
      // sIdx = (d*G + g) * 4
      f.get(d).get(G).op(MUL).get(g).op(ADD).i32(2).op(SHL).set(sIdx);
      f.get(sc).get(sIdx).op(ADD).op(F32_LOAD, ...mem(2)).set(s);
      f.get(zr).get(sIdx).op(ADD).op(F32_LOAD, ...mem(2)).set(z);
      for (let mm = 0; mm < 4; mm++) {
        // qv = q[mm*D + d]
        f.get(q).i32(mm).get(D).op(MUL).get(d).op(ADD).i32(2).op(SHL).op(ADD).op(F32_LOAD, ...mem(2)).set(qv);
        // a[d*4+mm] = qv*s
        f.get(a).get(d).i32(4).op(SHL).op(ADD).get(qv).get(s).op(F32_MUL).op(F32_STORE, ...mem(2, mm * 4));
        f.get(zs[mm]!).get(qv).get(z).op(F32_MUL).op(F32_ADD).set(zs[mm]!);
      }
    });
    // eight tokens per pass (two groups of four from one word), four query vectors: 8 accumulators
    f.for(t, () => f.get(g).get(gs).op(MUL), () => f.get(g).i32(1).op(ADD).get(gs).op(MUL), 8, () => {
      // sh = (t % fpw) * bits ; p = pk + (t / fpw) * 4
      f.get(t).get(t).get(fpw).op(DIVU).tee(p).get(fpw).op(MUL).op(SUB).get(bits).op(MUL).set(sh);
      f.get(pk).get(p).i32(2).op(SHL).op(ADD).set(p);
      for (let mm = 0; mm < 4; mm++) {
        f.get(zs[mm]!).simd(F32X4_SPLAT).tee(acc[mm]!).set(acc2[mm]!);
      }
      f.get(a).set(ap);
      f.get(a).get(D).i32(4).op(SHL).op(ADD).set(aEnd);
      f.for(d, () => f.get(a), () => f.get(aEnd), 16, () => {
        f.get(p).op(I32_LOAD, ...mem(2)).get(sh).op(SHRU).tee(w);
        f.simd(I32X4_SPLAT).get(maskv).simd(V_AND).simd(F32X4_CONVERT_U).get(scalev).simd(F32X4_MUL).set(codes);
        f.get(w).get(sh4).op(SHRU).simd(I32X4_SPLAT).get(maskv).simd(V_AND).simd(F32X4_CONVERT_U).get(scalev).simd(F32X4_MUL).set(codes2);
        for (let mm = 0; mm < 4; mm++) {
          f.get(d).simd(V_LOAD32_SPLAT, ...mem(2, mm * 4)).set(av);
          f.get(acc[mm]!).get(codes).get(av).simd(F32X4_MUL).simd(F32X4_ADD).set(acc[mm]!);
          f.get(acc2[mm]!).get(codes2).get(av).simd(F32X4_MUL).simd(F32X4_ADD).set(acc2[mm]!);
        }
        f.get(p).get(wprB).op(ADD).set(p);
      });
      for (let mm = 0; mm < 4; mm++) {
        // out[(mm*ostride + t)*4] = acc, then the next four tokens
        f.get(out).i32(mm).get(ostride).op(MUL).get(t).op(ADD).i32(2).op(SHL).op(ADD).tee(ap);
        f.get(acc[mm]!).simd(V_STORE, ...mem(0));
        f.get(ap).get(acc2[mm]!).simd(V_STORE, ...mem(0, 16));
      }
    });
  });
  void m;
  return f;
}

/**
 * values4(p, scale, zero, packed, out, zs, D, n, heads, h, gs, bits, consts, pStride): `out[m, d] += Σ_t p[m, t]·(code·s + z)`
 * over `n` token-major value rows (`packed` `[n, heads, D·bits/32]`, scale/zero `[n, heads, D/gs]` f32), head `h`,
 * 4 query vectors (`p` `[4, pStride]`, `out` `[4, D]` f32), leaving the zero-point term in `zs` `[4, D/gs]`. `gs` is the
 * value group size (channels per scale/zero, any divisor of D that is a multiple of 16). Requires bits ∈ {1, 2}, gs % 16 == 0.
 */
/** Channel quads per register block of values4 (4 measured faster than 2: per-token work is shared by 16 channels). */
const VALUE_QUADS = 4;

function valuesFn(quads = VALUE_QUADS): Fn {
  const f = new Fn(14);
  const [pp, sc, zr, pk, out, zsPtr, D, n, heads, h, gs, bits, cst, pstride] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
  const cb = f.local(I32), t = f.local(I32), G = f.local(I32), fpw = f.local(I32), wpr = f.local(I32), g = f.local(I32);
  const wi = f.local(I32), sh0 = f.local(I32), w = f.local(I32), mi = f.local(I32), pi = f.local(I32), o = f.local(I32);
  const s = f.local(F32), z = f.local(F32), pv = f.local(F32);
  const za = [f.local(F32), f.local(F32), f.local(F32), f.local(F32)];
  const maskv = f.local(V128), scalev = f.local(V128), codes = f.local(V128);
  const am = [f.local(V128), f.local(V128), f.local(V128), f.local(V128)];
  const acc: number[][] = [0, 1, 2, 3].map(() => Array.from({ length: quads }, () => f.local(V128)));
  f.i32(32).get(bits).op(DIVU).set(fpw);
  f.get(D).get(fpw).op(DIVU).set(wpr);
  f.get(D).get(gs).op(DIVU).set(G);
  f.get(cst).simd(V_LOAD, ...mem(0)).set(maskv);
  f.get(cst).simd(V_LOAD, ...mem(0, 16)).set(scalev);
  // code term, 4·quads channels per block
  f.for(cb, () => f.i32(0), () => f.get(D), 4 * quads, () => {
    f.get(cb).get(gs).op(DIVU).set(g);
    f.get(cb).get(fpw).op(DIVU).set(wi);
    f.get(cb).get(cb).get(fpw).op(DIVU).get(fpw).op(MUL).op(SUB).get(bits).op(MUL).set(sh0);
    for (const row of acc) for (const v of row) f.op(0xfd, ...uleb(0x0c), ...new Array(16).fill(0)).set(v); // v128.const 0
    for (const zz of za) f.op(0x43, 0, 0, 0, 0).set(zz);
    f.for(t, () => f.i32(0), () => f.get(n), 1, () => {
      // mi = ((t*heads + h)*G + g)*4 ; w = packed[(t*heads+h)*wpr + wi] >>> sh0
      f.get(t).get(heads).op(MUL).get(h).op(ADD).tee(pi).get(G).op(MUL).get(g).op(ADD).i32(2).op(SHL).set(mi);
      f.get(sc).get(mi).op(ADD).op(F32_LOAD, ...mem(2)).set(s);
      f.get(zr).get(mi).op(ADD).op(F32_LOAD, ...mem(2)).set(z);
      f.get(pk).get(pi).get(wpr).op(MUL).get(wi).op(ADD).i32(2).op(SHL).op(ADD).op(I32_LOAD, ...mem(2)).get(sh0).op(SHRU).set(w);
      for (let mm = 0; mm < 4; mm++) {
        f.get(pp).i32(mm).get(pstride).op(MUL).get(t).op(ADD).i32(2).op(SHL).op(ADD).op(F32_LOAD, ...mem(2)).tee(pv);
        f.get(s).op(F32_MUL).simd(F32X4_SPLAT).set(am[mm]!);
        f.get(za[mm]!).get(pv).get(z).op(F32_MUL).op(F32_ADD).set(za[mm]!); // zero-point term of this token
      }
      for (let qd = 0; qd < quads; qd++) {
        // 4 channels: (w >>> (qd·4·bits)) & masks
        f.get(w).get(bits).i32(qd * 4).op(MUL).op(SHRU).simd(I32X4_SPLAT).get(maskv).simd(V_AND).simd(F32X4_CONVERT_U).get(scalev).simd(F32X4_MUL).set(codes);
        for (let mm = 0; mm < 4; mm++) f.get(acc[mm]![qd]!).get(codes).get(am[mm]!).simd(F32X4_MUL).simd(F32X4_ADD).set(acc[mm]![qd]!);
      }
    });
    // zs[m*G + g] = Σ_t p·z, written by the first 16-channel block of each group
    f.get(cb).get(g).get(gs).op(MUL).op(0x46); // i32.eq
    f.op(0x04, 0x40); // if
    for (let mm = 0; mm < 4; mm++) f.get(zsPtr).i32(mm).get(G).op(MUL).get(g).op(ADD).i32(2).op(SHL).op(ADD).get(za[mm]!).op(F32_STORE, ...mem(2));
    f.op(0x0b); // end if
    for (let mm = 0; mm < 4; mm++) {
      for (let qd = 0; qd < quads; qd++) {
        // out[mm*D + cb + qd*4 … +3] += acc
        f.get(out).i32(mm).get(D).op(MUL).get(cb).op(ADD).i32(qd * 4).op(ADD).i32(2).op(SHL).op(ADD).tee(o);
        f.get(o).simd(V_LOAD, ...mem(0)).get(acc[mm]![qd]!).simd(F32X4_ADD).simd(V_STORE, ...mem(0));
      }
    }
  });
  return f;
}

function assemble(valueQuads = VALUE_QUADS): Uint8Array {
  const i32s = (k: number) => new Array(k).fill(I32);
  const types = vec([
    [0x60, ...vec(i32s(12).map((x) => [x])), 0],
    [0x60, ...vec(i32s(14).map((x) => [x])), 0],
  ]);
  const imports = vec([[...str('env'), ...str('memory'), 0x02, 0x00, 0x01]]);
  const funcs = vec([[0], [1]]);
  const exports = vec([
    [...str('keys4'), 0x00, 0],
    [...str('values4'), 0x00, 1],
  ]);
  const code = vec([keysFn().bytes(), valuesFn(valueQuads).bytes()]);
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, types), ...section(2, imports), ...section(3, funcs), ...section(7, exports), ...section(10, code),
  ]);
}

// ---- runtime ----------------------------------------------------------------------------------------------------

/** The few WebAssembly APIs used here (the package compiles without DOM typings). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  Memory: new (d: { initial: number }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}
const WA = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;

/** The instantiated module plus a bump allocator over its memory (reset per call). */
export interface SimdKernels {
  memory: WasmMemory;
  keys4: (...a: number[]) => void;
  values4: (...a: number[]) => void;
  /** Reserve `bytes` (16-byte aligned) and return the offset; grows memory as needed. */
  alloc(bytes: number): number;
  reset(): void;
  f32(offset: number, n: number): Float32Array;
  u32(offset: number, n: number): Uint32Array;
  /** Write the unpacking constants for `bits` at a fresh offset. */
  consts(bits: number): number;
}

let cached: SimdKernels | null | undefined;

/** The SIMD kernels, or null when this runtime has no WebAssembly SIMD (then the JS kernels run). */
export function simdKernels(): SimdKernels | null {
  if (cached !== undefined) return cached;
  try {
    if (!WA) throw new Error('no WebAssembly');
    const memory = new WA.Memory({ initial: 16 });
    const inst = new WA.Instance(new WA.Module(assemble()), { env: { memory } });
    const ex = inst.exports as unknown as { keys4: SimdKernels['keys4']; values4: SimdKernels['values4'] };
    let top = 0;
    const k: SimdKernels = {
      memory,
      keys4: ex.keys4,
      values4: ex.values4,
      alloc(bytes: number) {
        const off = top;
        top += (bytes + 15) & ~15;
        const need = top - memory.buffer.byteLength;
        if (need > 0) memory.grow(Math.ceil(need / 65536));
        return off;
      },
      reset() {
        top = 0;
      },
      f32: (o, n) => new Float32Array(memory.buffer, o, n),
      u32: (o, n) => new Uint32Array(memory.buffer, o, n),
      consts(bits: number) {
        const o = k.alloc(32);
        const m = (1 << bits) - 1;
        const u = new Uint32Array(memory.buffer, o, 4);
        const f = new Float32Array(memory.buffer, o + 16, 4);
        for (let i = 0; i < 4; i++) {
          u[i] = (m << (i * bits)) >>> 0;
          f[i] = 2 ** (-i * bits);
        }
        return o;
      },
    };
    cached = k;
  } catch {
    cached = null;
  }
  return cached;
}

/** @internal The module bytes (exposed for tests). */
export const assembleSimdModule = assemble;
