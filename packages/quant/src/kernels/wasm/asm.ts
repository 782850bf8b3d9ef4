/**
 * A minimal WebAssembly binary emitter: enough of the core and SIMD instruction sets to generate the kernels in
 * this folder at run time (no toolchain, no downloaded binaries).
 * @internal
 */

export const I32 = 0x7f;
export const F32 = 0x7d;
export const V128 = 0x7b;
export type ValType = typeof I32 | typeof F32 | typeof V128;

function uleb(n: number, out: number[]): void {
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
}

function sleb(n: number, out: number[]): void {
  n |= 0;
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return;
    }
    out.push(b | 0x80);
  }
}

/** Core opcodes used by the generators. */
const OP = {
  block: 0x02, loop: 0x03, if: 0x04, else: 0x05, end: 0x0b, br: 0x0c, br_if: 0x0d, return: 0x0f,
  local_get: 0x20, local_set: 0x21, local_tee: 0x22,
  i32_load: 0x28, f32_load: 0x2a, i32_load8_u: 0x2d, i32_load16_u: 0x2f, i32_store: 0x36, f32_store: 0x38, i32_store8: 0x3a,
  i32_const: 0x41,
  i32_eqz: 0x45, i32_eq: 0x46, i32_ne: 0x47, i32_lt_u: 0x49, i32_ge_u: 0x4f, i32_lt_s: 0x48, i32_ge_s: 0x4e,
  i32_add: 0x6a, i32_sub: 0x6b, i32_mul: 0x6c, i32_div_u: 0x6e, i32_rem_u: 0x70, i32_and: 0x71, i32_or: 0x72,
  i32_shl: 0x74, i32_shr_u: 0x76,
  f32_add: 0x92, f32_mul: 0x94, f32_convert_i32_u: 0xb3,
} as const;

/** SIMD opcodes (0xfd prefix). */
const SIMD = {
  v128_load: 0x00, v128_load32_splat: 0x09, v128_store: 0x0b, v128_const: 0x0c, i8x16_shuffle: 0x0d,
  i32x4_splat: 0x11, f32x4_splat: 0x13, f32x4_extract_lane: 0x1f, f32x4_replace_lane: 0x20,
  v128_and: 0x4e, v128_or: 0x50, i32x4_extend_low_i16x8_u: 0xa9, i32x4_extend_high_i16x8_u: 0xaa, i32x4_shl: 0xab,
  i32x4_shr_u: 0xad,
  f32x4_add: 0xe4, f32x4_mul: 0xe6,
} as const;

/** A function body under construction. Locals are numbered after the parameters. */
export class Fn {
  readonly code: number[] = [];
  readonly locals: ValType[] = [];
  constructor(readonly name: string, readonly params: ValType[], readonly results: ValType[] = []) {}

  /** Declares a local and returns its index. */
  local(t: ValType): number {
    this.locals.push(t);
    return this.params.length + this.locals.length - 1;
  }
  private op(o: number): this { this.code.push(o); return this; }
  private mem(o: number, align: number, offset: number): this {
    this.code.push(o); uleb(align, this.code); uleb(offset, this.code); return this;
  }
  private simd(o: number): this { this.code.push(0xfd); uleb(o, this.code); return this; }
  private simdMem(o: number, align: number, offset: number): this {
    this.simd(o); uleb(align, this.code); uleb(offset, this.code); return this;
  }

  get(i: number): this { this.code.push(OP.local_get); uleb(i, this.code); return this; }
  set(i: number): this { this.code.push(OP.local_set); uleb(i, this.code); return this; }
  tee(i: number): this { this.code.push(OP.local_tee); uleb(i, this.code); return this; }
  i32(n: number): this { this.code.push(OP.i32_const); sleb(n, this.code); return this; }

  block(): this { this.code.push(OP.block, 0x40); return this; }
  loop(): this { this.code.push(OP.loop, 0x40); return this; }
  if_(): this { this.code.push(OP.if, 0x40); return this; }
  else_(): this { return this.op(OP.else); }
  end(): this { return this.op(OP.end); }
  br(depth: number): this { this.code.push(OP.br); uleb(depth, this.code); return this; }
  brIf(depth: number): this { this.code.push(OP.br_if); uleb(depth, this.code); return this; }

  add(): this { return this.op(OP.i32_add); }
  sub(): this { return this.op(OP.i32_sub); }
  mul(): this { return this.op(OP.i32_mul); }
  divU(): this { return this.op(OP.i32_div_u); }
  and(): this { return this.op(OP.i32_and); }
  or(): this { return this.op(OP.i32_or); }
  shl(): this { return this.op(OP.i32_shl); }
  shrU(): this { return this.op(OP.i32_shr_u); }
  eqz(): this { return this.op(OP.i32_eqz); }
  ltU(): this { return this.op(OP.i32_lt_u); }
  geU(): this { return this.op(OP.i32_ge_u); }
  ne(): this { return this.op(OP.i32_ne); }

  load(offset = 0): this { return this.mem(OP.i32_load, 2, offset); }
  /** i32.load with alignment hint 1 byte (for loads at any byte address). */
  loadU(offset = 0): this { return this.mem(OP.i32_load, 0, offset); }
  load8(offset = 0): this { return this.mem(OP.i32_load8_u, 0, offset); }
  load16(offset = 0): this { return this.mem(OP.i32_load16_u, 1, offset); }
  store(offset = 0): this { return this.mem(OP.i32_store, 2, offset); }
  f32load(offset = 0): this { return this.mem(OP.f32_load, 2, offset); }
  f32store(offset = 0): this { return this.mem(OP.f32_store, 2, offset); }
  f32add(): this { return this.op(OP.f32_add); }

  vload(offset = 0): this { return this.simdMem(SIMD.v128_load, 4, offset); }
  vsplatLoad(offset = 0): this { return this.simdMem(SIMD.v128_load32_splat, 2, offset); }
  vstore(offset = 0): this { return this.simdMem(SIMD.v128_store, 4, offset); }
  /** v128.const with four i32 lanes. */
  vconst(a: number, b = a, c = a, d = a): this {
    this.simd(SIMD.v128_const);
    for (const v of [a, b, c, d]) this.code.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
    return this;
  }
  vzero(): this { return this.vconst(0); }
  shuffle(lanes: number[]): this { this.simd(SIMD.i8x16_shuffle); this.code.push(...lanes); return this; }
  i32x4Splat(): this { return this.simd(SIMD.i32x4_splat); }
  f32x4Splat(): this { return this.simd(SIMD.f32x4_splat); }
  extract(lane: number): this { this.simd(SIMD.f32x4_extract_lane); this.code.push(lane); return this; }
  replace(lane: number): this { this.simd(SIMD.f32x4_replace_lane); this.code.push(lane); return this; }
  vand(): this { return this.simd(SIMD.v128_and); }
  vor(): this { return this.simd(SIMD.v128_or); }
  /** i32x4.extend_low_i16x8_u / extend_high_i16x8_u. */
  extendU16(high: boolean): this { return this.simd(high ? SIMD.i32x4_extend_high_i16x8_u : SIMD.i32x4_extend_low_i16x8_u); }
  vshl(): this { return this.simd(SIMD.i32x4_shl); }
  vshrU(): this { return this.simd(SIMD.i32x4_shr_u); }
  fadd(): this { return this.simd(SIMD.f32x4_add); }
  fmul(): this { return this.simd(SIMD.f32x4_mul); }

  /** `for (i = init(); i < end(); i += step) body()` (unsigned compare); `init`/`end` push an i32. */
  forLoop(i: number, init: () => void, end: () => void, step: number, body: () => void): this {
    init();
    this.set(i);
    this.block().loop();
    this.get(i);
    end();
    this.geU().brIf(1);
    body();
    this.get(i).i32(step).add().set(i);
    this.br(0).end().end();
    return this;
  }
}

/** Assembles functions into a module that defines and exports one memory (`mem`) and every function by name. */
export function assemble(fns: Fn[], initialPages: number): Uint8Array {
  const out: number[] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  const section = (id: number, body: number[]) => {
    out.push(id);
    uleb(body.length, out);
    out.push(...body);
  };
  const vec = (items: number[][]): number[] => {
    const b: number[] = [];
    uleb(items.length, b);
    for (const it of items) b.push(...it);
    return b;
  };
  const name = (s: string): number[] => {
    const b: number[] = [];
    const bytes = Array.from(new TextEncoder().encode(s));
    uleb(bytes.length, b);
    return b.concat(bytes);
  };
  section(1, vec(fns.map((f) => [0x60, ...vec(f.params.map((t) => [t])), ...vec(f.results.map((t) => [t]))])));
  section(3, vec(fns.map((_, i) => { const b: number[] = []; uleb(i, b); return b; })));
  const mem: number[] = [0x00];
  uleb(initialPages, mem);
  section(5, vec([mem]));
  section(7, vec([[...name('mem'), 0x02, 0x00], ...fns.map((f, i) => { const b = [...name(f.name), 0x00]; uleb(i, b); return b; })]));
  section(10, vec(fns.map((f) => {
    const groups: number[][] = [];
    for (let i = 0; i < f.locals.length; ) {
      let j = i;
      while (j < f.locals.length && f.locals[j] === f.locals[i]) j++;
      const g: number[] = [];
      uleb(j - i, g);
      g.push(f.locals[i]!);
      groups.push(g);
      i = j;
    }
    const body = [...vec(groups), ...f.code, OP.end];
    const b: number[] = [];
    uleb(body.length, b);
    return b.concat(body);
  })));
  return Uint8Array.from(out);
}
