/**
 * Generators of the WebAssembly SIMD kernels. Every kernel processes one KV head and one chunk of 4 query heads
 * held in the 4 lanes of an f32x4 (missing heads are zero rows whose results are discarded).
 *
 * Packed kernels: 16-entry tables indexed by a nibble of codes. 2-bit: the two codes of 2 channels (keys) or 2 tokens
 * (values), T[c0 + 4c1] = c0·a0 + c1·a1; 1-bit: the bits of 4 channels/tokens, T[n] = Σ_{j ∈ n} a_j, where
 * a = (query or probability)·scale. One table serves a whole group; a lookup is one byte load, one v128 load and one
 * f32x4 add for 4 heads. Nibble offsets are computed with SIMD bit operations on 4 packed words at a time
 * (64 elements at 2 bits, 128 at 1 bit), which permutes the element order within a block; `perm` undoes it.
 * @internal
 */
import { Fn, I32, V128 } from './asm.js';

/** Elements covered by one 4-word SIMD block of codes. */
export function blockElems(bits: 1 | 2): number {
  return 4 * (32 / bits);
}

/** Emits `local = perm(slot)`: the element index (within a 4-word block) whose nibble offset sits at `slot`. */
function emitPerm(f: Fn, bits: 1 | 2, slot: number, dst: number): void {
  if (bits === 2) {
    // slot = q·16 + 4l + j ↔ element 16l + 4j + q
    f.get(slot).i32(2).shrU().i32(3).and().i32(4).shl();
    f.get(slot).i32(3).and().i32(2).shl().or();
    f.get(slot).i32(4).shrU().or().set(dst);
  } else {
    // slot = (4hi + q)·16 + 4l + j ↔ element 32l + 8j + 4hi + q
    f.get(slot).i32(2).shrU().i32(3).and().i32(5).shl();
    f.get(slot).i32(3).and().i32(3).shl().or();
    f.get(slot).i32(6).shrU().i32(2).shl().or();
    f.get(slot).i32(4).shrU().i32(3).and().or().set(dst);
  }
}

/**
 * Emits the nibble offsets (×16, i.e. byte offsets of v128 table entries) of one 4-word block.
 * `rowPtr(j)` pushes the address of the 4 words of reduction row j (2 rows at 2 bits, 4 rows at 1 bit);
 * the 4 (2-bit) or 8 (1-bit) result vectors are stored at `dst + 16·v`.
 */
function emitOffsets(f: Fn, bits: 1 | 2, rowPtr: (j: number) => void, dst: () => void, tmp: number[]): void {
  const hi = 0xf0f0f0f0 | 0;
  const store = (src: () => void, v: number, shifted: boolean) => {
    dst();
    src();
    if (shifted) f.i32(4).vshl();
    f.vconst(hi).vand().vstore(16 * v);
  };
  if (bits === 2) {
    const [x0, x1, ev, od] = tmp as [number, number, number, number];
    rowPtr(0); f.vload().set(x0);
    rowPtr(1); f.vload().set(x1);
    f.get(x0).vconst(0x33333333).vand().get(x1).vconst(0x33333333).vand().i32(2).vshl().vor().set(ev);
    f.get(x0).i32(2).vshrU().vconst(0x33333333).vand().get(x1).vconst(0xcccccccc | 0).vand().vor().set(od);
    store(() => f.get(ev), 0, true);
    store(() => f.get(od), 1, true);
    store(() => f.get(ev), 2, false);
    store(() => f.get(od), 3, false);
  } else {
    const [x0, x1, x2, x3, P, Q, P2, Q2] = tmp as [number, number, number, number, number, number, number, number];
    const xs = [x0, x1, x2, x3];
    for (let j = 0; j < 4; j++) { rowPtr(j); f.vload().set(xs[j]!); }
    const m5 = 0x55555555, ma = 0xaaaaaaaa | 0, m3 = 0x33333333, mc = 0xcccccccc | 0;
    f.get(x0).vconst(m5).vand().get(x1).vconst(m5).vand().i32(1).vshl().vor().set(P);
    f.get(x2).vconst(m5).vand().get(x3).vconst(m5).vand().i32(1).vshl().vor().set(Q);
    f.get(x0).i32(1).vshrU().vconst(m5).vand().get(x1).vconst(ma).vand().vor().set(P2);
    f.get(x2).i32(1).vshrU().vconst(m5).vand().get(x3).vconst(ma).vand().vor().set(Q2);
    // E (q=0), E2 (q=1), O (q=2), O2 (q=3); reuse x0..x3 for them
    const E = x0, E2 = x1, O = x2, O2 = x3;
    f.get(P).vconst(m3).vand().get(Q).vconst(m3).vand().i32(2).vshl().vor().set(E);
    f.get(P2).vconst(m3).vand().get(Q2).vconst(m3).vand().i32(2).vshl().vor().set(E2);
    f.get(P).i32(2).vshrU().vconst(m3).vand().get(Q).vconst(mc).vand().vor().set(O);
    f.get(P2).i32(2).vshrU().vconst(m3).vand().get(Q2).vconst(mc).vand().vor().set(O2);
    const qs = [E, E2, O, O2];
    for (let q = 0; q < 4; q++) store(() => f.get(qs[q]!), q, true);
    for (let q = 0; q < 4; q++) store(() => f.get(qs[q]!), 4 + q, false);
  }
}

/**
 * Emits one 16-entry table at address `dst` (pushed by `dst()`), from weights in locals `a` (2 for 2-bit, 4 for
 * 1-bit). `t` are v128 temporaries.
 */
function emitTable(f: Fn, bits: 1 | 2, dst: () => void, a: number[], t: number[]): void {
  const put = (n: number, val: () => void) => { dst(); val(); f.vstore(16 * n); };
  const sum = (...xs: number[]) => () => { f.get(xs[0]!); for (const x of xs.slice(1)) f.get(x).fadd(); };
  if (bits === 2) {
    const [a0, a1] = a as [number, number];
    const [A2, A3, B2, B3] = t as [number, number, number, number];
    f.get(a0).get(a0).fadd().set(A2);
    f.get(A2).get(a0).fadd().set(A3);
    f.get(a1).get(a1).fadd().set(B2);
    f.get(B2).get(a1).fadd().set(B3);
    const A = [-1, a0, A2, A3];
    const B = [-1, a1, B2, B3];
    for (let c1 = 0; c1 < 4; c1++) {
      for (let c0 = 0; c0 < 4; c0++) {
        const n = c0 + 4 * c1;
        if (n === 0) put(0, () => f.vzero());
        else if (c1 === 0) put(n, sum(A[c0]!));
        else if (c0 === 0) put(n, sum(B[c1]!));
        else put(n, sum(A[c0]!, B[c1]!));
      }
    }
  } else {
    const [a0, a1, a2, a3] = a as [number, number, number, number];
    const [t3, c] = t as [number, number];
    f.get(a0).get(a1).fadd().set(t3);
    f.get(a3).get(a2).fadd().set(c);
    put(0, () => f.vzero());
    put(1, sum(a0)); put(2, sum(a1)); put(3, sum(t3));
    put(4, sum(a2)); put(5, sum(a2, a0)); put(6, sum(a2, a1)); put(7, sum(a2, t3));
    put(8, sum(a3)); put(9, sum(a3, a0)); put(10, sum(a3, a1)); put(11, sum(a3, t3));
    put(12, sum(c)); put(13, sum(c, a0)); put(14, sum(c, a1)); put(15, sum(c, t3));
  }
}

/** Stores the 4 lanes of `v` at `base`, `base + stride`, `base + 2·stride`, `base + 3·stride` (i32 locals). */
function emitStoreLanes(f: Fn, v: number, base: number, stride: number): void {
  for (let lane = 0; lane < 4; lane++) {
    f.get(base);
    if (lane > 0) f.get(stride).i32(lane).mul().add();
    f.get(v).extract(lane).f32store();
  }
}

function hsum4Into(f: Fn, a: number, b: number, c: number, d: number, u: number, w: number, dst: number): void {
  // (Σa, Σb, Σc, Σd) via two rounds of shuffles and adds
  const lanes = (...l: number[]) => l.flatMap((x) => [4 * x, 4 * x + 1, 4 * x + 2, 4 * x + 3]);
  f.get(a).get(b).shuffle(lanes(0, 4, 1, 5)).get(a).get(b).shuffle(lanes(2, 6, 3, 7)).fadd().set(u);
  f.get(c).get(d).shuffle(lanes(0, 4, 1, 5)).get(c).get(d).shuffle(lanes(2, 6, 3, 7)).fadd().set(w);
  f.get(u).get(w).shuffle(lanes(0, 1, 4, 5)).get(u).get(w).shuffle(lanes(2, 3, 6, 7)).fadd().set(dst);
}

/**
 * Packed key scores for one KV head. Params: codes (rows `[D][rowBytes/4]` u32, padded to whole 4-word blocks),
 * rowBytes, T, scale, zero (`[D][G]` f32), G, gsh (log2 gs), gslotShift (log2 gs when gs < block, else 31),
 * q4 (`[D]` v128), out (`[4][T]` f32), offs, tabs, bias (scratch), everyMask (max(gs, block) − 1), npg (groups per
 * table build: block/gs when gs < block, else 1).
 */
export function genKeys(bits: 1 | 2, D: number): Fn {
  const f = new Fn(`keys${bits}`, new Array(15).fill(I32));
  const [codes, rowBytes, T, scale, zero, G, gsh, gslotShift, q4, out, offs, tabs, bias, everyMask, npg] = Array.from({ length: 15 }, (_, i) => i) as number[] as [number, number, number, number, number, number, number, number, number, number, number, number, number, number, number];
  const k = bits === 2 ? 2 : 4;
  const ncb = D / k;
  const SPAN = blockElems(bits);
  const tabBytes = ncb * 256;
  const L = () => f.local(I32);
  const V = () => f.local(V128);
  const s0 = L(), slot = L(), tl = L(), t = L(), g = L(), cb = L(), tb = L(), qp = L(), sp = L(), zp = L(), Gb = L();
  const rp = L(), op = L(), outRow = L(), ob = L(), sl = L(), tp = L(), gsl = L();
  const a = [V(), V(), V(), V()];
  const tv = [V(), V(), V(), V()];
  const bacc = V(), acc = V();
  const tmp = [V(), V(), V(), V(), V(), V(), V(), V()];

  f.get(G).i32(4).mul().set(Gb);
  f.get(T).i32(4).mul().set(outRow);
  f.forLoop(s0, () => f.i32(0), () => f.get(T), SPAN, () => {
    // tables and bias for the groups starting in this span
    f.get(s0).get(everyMask).and().eqz().if_();
    f.forLoop(sl, () => f.i32(0), () => f.get(npg), 1, () => {
      f.get(s0).get(gsh).shrU().get(sl).add().tee(g).get(G).ltU().if_();
      f.get(tabs).get(sl).i32(tabBytes).mul().add().set(tp);
      f.vzero().set(bacc);
      f.get(q4).set(qp);
      f.get(scale).get(g).i32(4).mul().add().set(sp);
      f.get(zero).get(g).i32(4).mul().add().set(zp);
      f.forLoop(cb, () => f.i32(0), () => f.i32(ncb), 1, () => {
        for (let j = 0; j < k; j++) {
          f.get(qp).vload(16 * j).get(sp).vsplatLoad().fmul().set(a[j]!);
          f.get(qp).vload(16 * j).get(zp).vsplatLoad().fmul().get(bacc).fadd().set(bacc);
          f.get(sp).get(Gb).add().set(sp);
          f.get(zp).get(Gb).add().set(zp);
        }
        emitTable(f, bits, () => f.get(tp), a.slice(0, k), tv);
        f.get(tp).i32(256).add().set(tp);
        f.get(qp).i32(16 * k).add().set(qp);
      });
      f.get(bias).get(sl).i32(16).mul().add().get(bacc).vstore();
      f.end();
    });
    f.end();
    // nibble offsets of the span
    f.get(codes).get(s0).i32(bits === 2 ? 2 : 3).shrU().add().set(rp);
    f.get(offs).set(op);
    f.forLoop(cb, () => f.i32(0), () => f.i32(ncb), 1, () => {
      emitOffsets(f, bits, (j) => { f.get(rp); if (j > 0) f.get(rowBytes).i32(j).mul().add(); }, () => f.get(op), tmp);
      f.get(rp).get(rowBytes).i32(k).mul().add().set(rp);
      f.get(op).i32(SPAN).add().set(op);
    });
    // gather, token by token
    f.forLoop(slot, () => f.i32(0), () => f.i32(SPAN), 1, () => {
      emitPerm(f, bits, slot, tl);
      f.get(s0).get(tl).add().tee(t).get(T).ltU().if_();
      f.get(tl).get(gslotShift).shrU().set(gsl);
      f.get(tabs).get(gsl).i32(tabBytes).mul().add().set(tb);
      f.get(offs).get(slot).add().set(op);
      f.get(bias).get(gsl).i32(4).shl().add().vload().set(a[0]!);
      for (let j = 1; j < 4; j++) f.vzero().set(a[j]!);
      for (let c = 0; c < ncb; c++) {
        f.get(op).load8(c * SPAN).get(tb).add().vload(c * 256).get(a[c & 3]!).fadd().set(a[c & 3]!);
      }
      f.get(a[0]!).get(a[1]!).fadd().get(a[2]!).get(a[3]!).fadd().fadd().set(acc);
      f.get(out).get(t).i32(4).mul().add().set(ob);
      emitStoreLanes(f, acc, ob, outRow);
      f.end();
    });
  });
  return f;
}

/**
 * Packed value mix for one KV head. Params: codes (rows `[Tpad][rowBytes/4]` u32, Tpad a multiple of 64, padding
 * rows zero), rowBytes, Tpad, scale, zero (`[Tpad][G]` f32, padding zero), G, gsh (log2 gs), p (`[4][Tpad]` f32
 * rows, padding zero), out (`[4][D]` f32), offs, tabs, acc (`[D]` v128), bias (`[G]` v128) (scratch).
 */
export function genValues(bits: 1 | 2, D: number): Fn {
  const f = new Fn(`values${bits}`, new Array(13).fill(I32));
  const [codes, rowBytes, Tpad, scale, zero, G, gsh, p, out, offs, tabs, accp, bias] = Array.from({ length: 13 }, (_, i) => i) as [number, number, number, number, number, number, number, number, number, number, number, number, number];
  const k = bits === 2 ? 2 : 4;
  const NP = 64 / k;
  const CB = blockElems(bits);
  const NB = D / CB;
  const cbShift = Math.log2(CB);
  const L = () => f.local(I32);
  const V = () => f.local(V128);
  const c0 = L(), tb = L(), t = L(), g = L(), i = L(), s = L(), d = L(), tl = L(), op = L(), tb0 = L(), PR = L(), Gb = L();
  const rp = L(), ptr = L(), sptr = L();
  const pv = [V(), V(), V(), V()];
  const a = [V(), V(), V(), V()];
  const tv = [V(), V(), V(), V()];
  const acc = V();
  const tmp = [V(), V(), V(), V(), V(), V(), V(), V()];

  f.get(Tpad).i32(4).mul().set(PR);
  f.get(G).i32(4).mul().set(Gb);
  f.forLoop(i, () => f.i32(0), () => f.i32(16 * D), 16, () => { f.get(accp).get(i).add().vzero().vstore(); });
  f.forLoop(i, () => f.i32(0), () => f.get(G).i32(16).mul(), 16, () => { f.get(bias).get(i).add().vzero().vstore(); });
  f.forLoop(c0, () => f.i32(0), () => f.get(Tpad), 64, () => {
    // tables: (g·NP + tb)·256
    f.forLoop(tb, () => f.i32(0), () => f.i32(NP), 1, () => {
      for (let j = 0; j < k; j++) {
        // p4 of token t = c0 + k·tb + j
        f.get(c0).get(tb).i32(k).mul().add().i32(j).add().i32(4).mul().set(t); // byte offset t·4
        f.get(p).get(t).add().vsplatLoad();
        for (let lane = 1; lane < 4; lane++) f.get(p).get(t).add().get(PR).i32(lane).mul().add().f32load().replace(lane);
        f.set(pv[j]!);
      }
      f.forLoop(g, () => f.i32(0), () => f.get(G), 1, () => {
        for (let j = 0; j < k; j++) {
          // scale/zero of token c0 + k·tb + j, group g
          f.get(c0).get(tb).i32(k).mul().add().i32(j).add().get(Gb).mul().get(g).i32(4).mul().add().set(sptr);
          f.get(pv[j]!).get(scale).get(sptr).add().vsplatLoad().fmul().set(a[j]!);
          f.get(bias).get(g).i32(4).shl().add().tee(ptr);
          f.get(ptr).vload().get(pv[j]!).get(zero).get(sptr).add().vsplatLoad().fmul().fadd().vstore();
        }
        emitTable(f, bits, () => f.get(tabs).get(g).i32(NP).mul().get(tb).add().i32(8).shl().add(), a.slice(0, k), tv);
      });
    });
    // nibble offsets: offs + tb·D + (block)·CB + slot
    f.forLoop(tb, () => f.i32(0), () => f.i32(NP), 1, () => {
      f.get(codes).get(c0).get(tb).i32(k).mul().add().get(rowBytes).mul().add().set(rp);
      for (let wb = 0; wb < NB; wb++) {
        emitOffsets(
          f,
          bits,
          (j) => { f.get(rp); if (j > 0) f.get(rowBytes).i32(j).mul().add(); if (wb > 0) f.i32(16 * wb).add(); },
          () => { f.get(offs).get(tb).i32(D).mul().add(); if (wb > 0) f.i32(wb * CB).add(); },
          tmp,
        );
      }
    });
    // gather, channel by channel
    f.forLoop(s, () => f.i32(0), () => f.i32(D), 1, () => {
      f.get(s).i32(CB - 1).and().set(tl);
      emitPerm(f, bits, tl, tl);
      f.get(s).i32(cbShift).shrU().i32(cbShift).shl().get(tl).add().set(d);
      f.get(d).get(gsh).shrU().set(g);
      f.get(tabs).get(g).i32(NP * 256).mul().add().set(tb0);
      f.get(offs).get(s).add().set(op);
      for (let j = 0; j < 4; j++) f.vzero().set(a[j]!);
      for (let b = 0; b < NP; b++) {
        f.get(op).load8(b * D).get(tb0).add().vload(b * 256).get(a[b & 3]!).fadd().set(a[b & 3]!);
      }
      f.get(accp).get(d).i32(4).shl().add().tee(ptr);
      f.get(ptr).vload().get(a[0]!).get(a[1]!).fadd().get(a[2]!).get(a[3]!).fadd().fadd().fadd().vstore();
    });
  });
  // out[lane][d] = acc[d] + bias[g(d)]
  f.forLoop(d, () => f.i32(0), () => f.i32(D), 1, () => {
    f.get(accp).get(d).i32(4).shl().add().vload().get(bias).get(d).get(gsh).shrU().i32(4).shl().add().vload().fadd().set(acc);
    for (let lane = 0; lane < 4; lane++) f.get(out).get(d).i32(4).mul().add().get(acc).extract(lane).f32store(lane * D * 4);
  });
  return f;
}

/** Dense key scores for one KV head: K `[T][D]` f32, q `[4][D]` f32 rows, out `[4][T]`. Lanes run over channels. */
export function genDenseKeys(D: number): Fn {
  const f = new Fn('denseKeys', [I32, I32, I32, I32]);
  const [K, T, q, out] = [0, 1, 2, 3];
  const L = () => f.local(I32);
  const V = () => f.local(V128);
  const t = L(), kp = L(), ob = L(), outRow = L(), Tm1 = L();
  const acc = [[V(), V()], [V(), V()], [V(), V()], [V(), V()]] as const;
  const k0 = V(), k1 = V(), qv = V(), u = V(), w = V(), r = V();
  f.get(T).i32(4).mul().set(outRow);
  f.get(T).i32(1).sub().set(Tm1);
  const body = (two: boolean) => {
    f.get(K).get(t).i32(D * 4).mul().add().set(kp);
    for (let h = 0; h < 4; h++) for (let j = 0; j < (two ? 2 : 1); j++) f.vzero().set(acc[h]![j]!);
    for (let i = 0; i < D / 4; i++) {
      f.get(kp).vload(16 * i).set(k0);
      if (two) f.get(kp).vload(D * 4 + 16 * i).set(k1);
      for (let h = 0; h < 4; h++) {
        f.get(q).vload(h * D * 4 + 16 * i).set(qv);
        f.get(qv).get(k0).fmul().get(acc[h]![0]!).fadd().set(acc[h]![0]!);
        if (two) f.get(qv).get(k1).fmul().get(acc[h]![1]!).fadd().set(acc[h]![1]!);
      }
    }
    for (let j = 0; j < (two ? 2 : 1); j++) {
      hsum4Into(f, acc[0]![j]!, acc[1]![j]!, acc[2]![j]!, acc[3]![j]!, u, w, r);
      f.get(out).get(t).i32(j).add().i32(4).mul().add().set(ob);
      emitStoreLanes(f, r, ob, outRow);
    }
  };
  f.forLoop(t, () => f.i32(0), () => f.get(Tm1), 2, () => body(true));
  f.get(T).i32(1).and().if_();
  f.get(Tm1).set(t);
  body(false);
  f.end();
  return f;
}

/** Token chunk of the dense value kernel (rows of one chunk stay in cache across channel blocks). */
const DENSE_V_CHUNK = 128;

/** Dense value mix for one KV head: V `[T][D]` f32, p `[4][T]` f32 rows, out `[4][D]` (overwritten). */
export function genDenseValues(D: number): Fn {
  const f = new Fn('denseValues', [I32, I32, I32, I32]);
  const [Vp, T, p, out] = [0, 1, 2, 3];
  const L = () => f.local(I32);
  const V = () => f.local(V128);
  const c0 = L(), c1 = L(), db = L(), t = L(), vp = L(), pt = L(), PR = L(), i = L(), o = L();
  const acc = [[V(), V()], [V(), V()], [V(), V()], [V(), V()]] as const;
  const v0 = V(), v1 = V(), ps = V();
  f.get(T).i32(4).mul().set(PR);
  f.forLoop(i, () => f.i32(0), () => f.i32(16 * D), 16, () => { f.get(out).get(i).add().vzero().vstore(); });
  f.forLoop(c0, () => f.i32(0), () => f.get(T), DENSE_V_CHUNK, () => {
    f.get(c0).i32(DENSE_V_CHUNK).add().tee(c1).get(T).geU().if_().get(T).set(c1).end();
    f.forLoop(db, () => f.i32(0), () => f.i32(D / 8), 1, () => {
      for (let h = 0; h < 4; h++) for (let j = 0; j < 2; j++) f.vzero().set(acc[h]![j]!);
      f.get(Vp).get(c0).i32(D * 4).mul().add().get(db).i32(32).mul().add().set(vp);
      f.get(c0).i32(4).mul().set(pt);
      f.forLoop(t, () => f.get(c0), () => f.get(c1), 1, () => {
        f.get(vp).vload().set(v0);
        f.get(vp).vload(16).set(v1);
        for (let h = 0; h < 4; h++) {
          f.get(p).get(pt).add();
          if (h > 0) f.get(PR).i32(h).mul().add();
          f.vsplatLoad().set(ps);
          f.get(ps).get(v0).fmul().get(acc[h]![0]!).fadd().set(acc[h]![0]!);
          f.get(ps).get(v1).fmul().get(acc[h]![1]!).fadd().set(acc[h]![1]!);
        }
        f.get(vp).i32(D * 4).add().set(vp);
        f.get(pt).i32(4).add().set(pt);
      });
      f.get(out).get(db).i32(32).mul().add().set(o);
      for (let h = 0; h < 4; h++) {
        for (let j = 0; j < 2; j++) {
          const off = h * D * 4 + 16 * j;
          f.get(o).get(o).vload(off).get(acc[h]![j]!).fadd().vstore(off);
        }
      }
    });
  });
  return f;
}
