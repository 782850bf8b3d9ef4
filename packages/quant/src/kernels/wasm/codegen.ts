/**
 * Generators of the WebAssembly SIMD kernels. Every kernel processes one KV head and one chunk of 4 query heads
 * held in the 4 lanes of an f32x4 (missing heads are zero rows whose results are discarded).
 *
 * Packed kernels (1- and 2-bit codes) work on bit planes: a code is c = Σ_p 2^p·b_p, so a sum Σ_j w_j·c_j over four
 * codes is Σ_p 2^p·T[n_p], where n_p is the nibble of plane-p bits of the four codes and T[n] = Σ_{j ∈ n} w_j is a
 * 16-entry subset-sum table of f32x4 (4 heads). One table serves every plane and every element of a group: 4 channels
 * of a token group for keys (w = q·scale), 4 tokens of a channel group for values (w = p·scale); the zero-point
 * becomes one bias per group. A lookup is a byte load, a v128 load and an f32x4 add for 4 heads. Nibble offsets are
 * computed with SIMD bit operations on 4 rows × 4 packed words at a time (a "span": 64 elements at 2 bits, 128 at
 * 1 bit), which permutes the element order within a span; `emitPerm` maps a slot back to its element.
 * @internal
 */
import { Fn, I32, V128 } from './asm.js';

/** Elements of one row covered by a span (4 words). */
export function spanElems(bits: 1 | 2): number {
  return 128 / bits;
}

const params = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * Emits the byte offsets (nibble × 16) of four rows × 4 words into 128 bytes at `dst()`. 1-bit: slot `s` at byte s,
 * slot = (4hi + q)·16 + 4l + j ↔ element 32l + 8j + 4hi + q; 2-bit: the two planes of slot `s` at bytes 2s, 2s + 1
 * (one 16-bit load reads both), slot = r·16 + 4l + j ↔ element 16l + 4j + r (l: word, j: byte of the word).
 */
function emitOffsets(f: Fn, bits: 1 | 2, rowPtr: (j: number) => void, dst: () => void, tmp: number[]): void {
  const nib = (src: number, low: boolean) => {
    f.get(src);
    if (low) f.i32(4).vshl();
    f.vconst(0xf0f0f0f0 | 0).vand();
  };
  const store = (src: number, v: number, low: boolean) => {
    dst();
    nib(src, low);
    f.vstore(16 * v);
  };
  const [x0, x1, x2, x3, P, Q, P2, Q2] = tmp as [number, number, number, number, number, number, number, number];
  const xs = [x0, x1, x2, x3];
  for (let j = 0; j < 4; j++) { rowPtr(j); f.vload().set(xs[j]!); }
  const m5 = 0x55555555, ma = 0xaaaaaaaa | 0, m3 = 0x33333333, mc = 0xcccccccc | 0;
  // 2-bit fields (row j | row j+1) of the even bits (P, Q) and odd bits (P2, Q2), then nibbles of 4 rows
  f.get(x0).vconst(m5).vand().get(x1).vconst(m5).vand().i32(1).vshl().vor().set(P);
  f.get(x2).vconst(m5).vand().get(x3).vconst(m5).vand().i32(1).vshl().vor().set(Q);
  f.get(x0).i32(1).vshrU().vconst(m5).vand().get(x1).vconst(ma).vand().vor().set(P2);
  f.get(x2).i32(1).vshrU().vconst(m5).vand().get(x3).vconst(ma).vand().vor().set(Q2);
  const E = x0, E2 = x1, O = x2, O2 = x3;
  f.get(P).vconst(m3).vand().get(Q).vconst(m3).vand().i32(2).vshl().vor().set(E);
  f.get(P2).vconst(m3).vand().get(Q2).vconst(m3).vand().i32(2).vshl().vor().set(E2);
  f.get(P).i32(2).vshrU().vconst(m3).vand().get(Q).vconst(mc).vand().vor().set(O);
  f.get(P2).i32(2).vshrU().vconst(m3).vand().get(Q2).vconst(mc).vand().vor().set(O2);
  if (bits === 1) {
    // E, E2, O, O2 hold elements ≡ 0, 1, 2, 3 mod 4
    [E, E2, O, O2, E, E2, O, O2].forEach((src, v) => store(src, v, v < 4));
    return;
  }
  // E/O hold plane 0 of even/odd elements, E2/O2 plane 1: interleave the planes byte by byte
  const pairs: Array<[number, number, boolean]> = [[E, E2, true], [O, O2, true], [E, E2, false], [O, O2, false]];
  pairs.forEach(([p0, p1, low], r) => {
    nib(p0, low);
    f.set(P);
    nib(p1, low);
    f.set(Q);
    for (const half of [0, 1]) {
      dst();
      f.get(P).get(Q).shuffle(Array.from({ length: 16 }, (_, k) => 8 * half + (k >> 1) + (k & 1) * 16));
      f.vstore(32 * r + 16 * half);
    }
  });
}

/** Emits `dst = element(slot)` within a span (the inverse of the slot order of {@link emitOffsets}). */
function emitPerm(f: Fn, bits: 1 | 2, slot: number, dst: number): void {
  f.get(slot).i32(2).shrU().i32(3).and().i32(bits === 2 ? 4 : 5).shl();
  f.get(slot).i32(3).and().i32(bits === 2 ? 2 : 3).shl().or();
  if (bits === 2) f.get(slot).i32(4).shrU().or().set(dst);
  else {
    f.get(slot).i32(6).shrU().i32(2).shl().or();
    f.get(slot).i32(4).shrU().i32(3).and().or().set(dst);
  }
}

/** Emits the 16-entry subset-sum table of weights `a` (4 v128 locals) at `dst()`; `t` are 2 v128 temporaries. */
function emitTable(f: Fn, dst: () => void, a: number[], t: number[]): void {
  const [a0, a1, a2, a3] = a as [number, number, number, number];
  const [t3, c] = t as [number, number];
  f.get(a0).get(a1).fadd().set(t3);
  f.get(a3).get(a2).fadd().set(c);
  const low = [-1, a0, a1, t3];
  const high = [-1, a2, a3, c];
  for (let n = 0; n < 16; n++) {
    dst();
    const [x, y] = [low[n & 3]!, high[n >> 2]!];
    if (n === 0) f.vzero();
    else if (y < 0) f.get(x);
    else if (x < 0) f.get(y);
    else f.get(x).get(y).fadd();
    f.vstore(16 * n);
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

/**
 * Emits `acc += Σ lookups` over `n` steps of `u` table reads per plane (a loop keeps the code in registers). `op`
 * points at the offset of slot 0 (2-bit: both planes in one 16-bit word), `tp` at the table of step 0.
 */
function emitLookups(f: Fn, bits: 1 | 2, n: number, u: number, op: number, tp: number, opStep: number, tpStep: number, i: number, x: number, acc: number[]): void {
  f.forLoop(i, () => f.i32(0), () => f.i32(n), u, () => {
    for (let c = 0; c < u; c++) {
      const lookup = (a: number) => f.get(tp).add().vload(c * tpStep).get(a).fadd().set(a);
      if (bits === 1) {
        f.get(op).load8(c * opStep);
        lookup(acc[c & 1]!);
      } else {
        f.get(op).load16(c * opStep).tee(x).i32(255).and();
        lookup(acc[c & 1]!);
        f.get(x).i32(8).shrU();
        lookup(acc[2 + (c & 1)]!);
      }
    }
    f.get(op).i32(u * opStep).add().set(op);
    f.get(tp).i32(u * tpStep).add().set(tp);
  });
  // acc0 + acc1 (+ 2·(acc2 + acc3) for plane 1) on the stack
  f.get(acc[0]!).get(acc[1]!).fadd();
  if (bits === 2) f.get(acc[2]!).get(acc[3]!).fadd().get(acc[2]!).get(acc[3]!).fadd().fadd().fadd();
}

const unroll = (n: number) => (n % 4 === 0 ? 4 : n % 2 === 0 ? 2 : 1);

/**
 * Packed key scores for one KV head over consecutive key blocks. Params: codes (row d of block b at
 * codes + b·blkBytes + d·rowBytes), rowBytes, T (tokens), bt (tokens per block), blkBytes, blkMeta (bytes between the
 * metadata of blocks), scale, zero (f32 `[D][G]` per block), G, gsh (log2 groupSize), gslotShift (gsh when
 * groupSize < span, else 31), q4 (`[D]` v128), out (f32 rows of 4 heads, token 0), outRow (bytes between rows), offs,
 * tabs, bias (scratch), everyMask (max(groupSize, span) − 1), npg (groups per span, ≥ 1). Needs D % 4 = 0, groupSize
 * a power of two.
 */
export function genKeys(bits: 1 | 2, D: number): Fn {
  const f = new Fn(`keys${bits}`, new Array(19).fill(I32));
  const [codes, rowBytes, Tall, bt, blkBytes, blkMeta, scale, zero, G, gsh, gslotShift, q4, out, outRow, offs, tabs, bias, everyMask, npg] = params(19) as [number, number, number, number, number, number, number, number, number, number, number, number, number, number, number, number, number, number, number];
  const SPAN = spanElems(bits);
  const NQ = D / 4;
  const tabBytes = NQ * 256;
  const L = () => f.local(I32);
  const V = () => f.local(V128);
  const s0 = L(), slot = L(), el = L(), t = L(), g = L(), cq = L(), qp = L(), sp = L(), zp = L(), Gb = L();
  const rp = L(), op = L(), ob = L(), sl = L(), tp = L(), gsl = L(), i = L(), t0 = L(), T = L();
  const a = [V(), V(), V(), V()];
  const tv = [V(), V()];
  const bacc = V(), r = V();
  const tmp = [V(), V(), V(), V(), V(), V(), V(), V()];
  f.get(G).i32(4).mul().set(Gb);
  f.forLoop(t0, () => f.i32(0), () => f.get(Tall), 0, () => {
    // T = tokens of this block
    f.get(Tall).get(t0).sub().tee(T).get(bt).geU().if_().get(bt).set(T).end();
    f.forLoop(s0, () => f.i32(0), () => f.get(T), SPAN, () => {
      // tables and bias of the groups that start in this span
      f.get(s0).get(everyMask).and().eqz().if_();
      f.forLoop(sl, () => f.i32(0), () => f.get(npg), 1, () => {
        f.get(s0).get(gsh).shrU().get(sl).add().tee(g).get(G).ltU().if_();
        f.get(tabs).get(sl).i32(tabBytes).mul().add().set(tp);
        f.vzero().set(bacc);
        f.get(q4).set(qp);
        f.get(scale).get(g).i32(4).mul().add().set(sp);
        f.get(zero).get(g).i32(4).mul().add().set(zp);
        f.forLoop(cq, () => f.i32(0), () => f.i32(NQ), 1, () => {
          for (let j = 0; j < 4; j++) {
            f.get(qp).vload(16 * j).get(sp).vsplatLoad().fmul().set(a[j]!);
            f.get(qp).vload(16 * j).get(zp).vsplatLoad().fmul().get(bacc).fadd().set(bacc);
            f.get(sp).get(Gb).add().set(sp);
            f.get(zp).get(Gb).add().set(zp);
          }
          emitTable(f, () => f.get(tp), a, tv);
          f.get(tp).i32(256).add().set(tp);
          f.get(qp).i32(64).add().set(qp);
        });
        f.get(bias).get(sl).i32(16).mul().add().get(bacc).vstore();
        f.end();
      });
      f.end();
      // nibble offsets of the span, 128 bytes per channel quad
      f.get(codes).get(s0).i32(bits === 2 ? 2 : 3).shrU().add().set(rp);
      f.get(offs).set(op);
      f.forLoop(cq, () => f.i32(0), () => f.i32(NQ), 1, () => {
        emitOffsets(f, bits, (j) => { f.get(rp); if (j > 0) f.get(rowBytes).i32(j).mul().add(); }, () => f.get(op), tmp);
        f.get(rp).get(rowBytes).i32(4).mul().add().set(rp);
        f.get(op).i32(128).add().set(op);
      });
      // lookups, token by token
      f.forLoop(slot, () => f.i32(0), () => f.i32(SPAN), 1, () => {
        emitPerm(f, bits, slot, el);
        f.get(s0).get(el).add().tee(t).get(T).ltU().if_();
        f.get(el).get(gslotShift).shrU().set(gsl);
        f.get(tabs).get(gsl).i32(tabBytes).mul().add().set(tp);
        f.get(offs).get(slot).i32(bits - 1).shl().add().set(op);
        for (const v of a) f.vzero().set(v);
        emitLookups(f, bits, NQ, unroll(NQ), op, tp, 128, 256, i, el, a);
        f.get(bias).get(gsl).i32(4).shl().add().vload().fadd().set(r);
        f.get(out).get(t).i32(4).mul().add().set(ob);
        emitStoreLanes(f, r, ob, outRow);
        f.end();
      });
    });
    // next block
    f.get(codes).get(blkBytes).add().set(codes);
    f.get(scale).get(blkMeta).add().set(scale);
    f.get(zero).get(blkMeta).add().set(zero);
    f.get(out).get(bt).i32(4).mul().add().set(out);
    f.get(t0).get(bt).add().set(t0);
  });
  return f;
}

/** Tokens per value chunk (16 tables of 4 tokens per channel group). */
export const VALUE_CHUNK = 64;

/**
 * Packed value mix for one KV head. Params: codes (token 0; token t at codes + t·tokenBytes), tokenBytes, T,
 * scale, zero (f32, token t at + t·metaBytes, `[G]` each), metaBytes, G, gsh (log2 groupSize), p (f32 rows of 4
 * heads), pRow (bytes between rows), out (`[4][D]` f32), offs, tabs, acc (`[D]` v128), bias (`[G]` v128) (scratch).
 * Tokens are read in chunks of {@link VALUE_CHUNK}; those past T (codes, metadata and p readable, any value) get
 * weight 0. Needs D % span = 0, groupSize a power of two.
 */
export function genValues(bits: 1 | 2, D: number): Fn {
  const f = new Fn(`values${bits}`, new Array(15).fill(I32));
  const [codes, tokenBytes, T, scale, zero, metaBytes, G, gsh, p, pRow, out, offs, tabs, accp, bias] = params(15) as [number, number, number, number, number, number, number, number, number, number, number, number, number, number, number];
  const NT = VALUE_CHUNK / 4;
  const CB = spanElems(bits);
  const NB = D / CB;
  const cbShift = Math.log2(CB);
  const L = () => f.local(I32);
  const V = () => f.local(V128);
  const c0 = L(), tb = L(), g = L(), i = L(), s = L(), d = L(), sl = L(), op = L(), tp = L(), rp = L(), ptr = L(), mp = L();
  const pv = [V(), V(), V(), V()];
  const mk = [V(), V(), V(), V()];
  const a = [V(), V(), V(), V()];
  const tv = [V(), V()];
  const r = V();
  const tmp = [V(), V(), V(), V(), V(), V(), V(), V()];
  f.forLoop(i, () => f.i32(0), () => f.i32(16 * D), 16, () => { f.get(accp).get(i).add().vzero().vstore(); });
  f.forLoop(i, () => f.i32(0), () => f.get(G).i32(16).mul(), 16, () => { f.get(bias).get(i).add().vzero().vstore(); });
  f.forLoop(c0, () => f.i32(0), () => f.get(T), VALUE_CHUNK, () => {
    // tables of 4 tokens × group: (g·NT + tb)·256
    f.forLoop(tb, () => f.i32(0), () => f.i32(NT), 1, () => {
      for (let j = 0; j < 4; j++) {
        // mask: all ones for tokens before T (weights of later tokens are zeroed, whatever their metadata)
        f.i32(0).get(c0).get(tb).i32(2).shl().add().i32(j).add().tee(ptr).get(T).ltU().sub().i32x4Splat().set(mk[j]!);
        f.get(ptr).i32(4).mul().get(p).add().tee(ptr).vsplatLoad();
        for (let lane = 1; lane < 4; lane++) f.get(ptr).get(pRow).i32(lane).mul().add().f32load().replace(lane);
        f.set(pv[j]!);
      }
      f.get(c0).get(tb).i32(2).shl().add().get(metaBytes).mul().set(mp);
      f.forLoop(g, () => f.i32(0), () => f.get(G), 1, () => {
        for (let j = 0; j < 4; j++) {
          f.get(pv[j]!).get(scale).get(mp).add().get(g).i32(4).mul().add().i32(j).get(metaBytes).mul().add().vsplatLoad().fmul().get(mk[j]!).vand().set(a[j]!);
          f.get(bias).get(g).i32(4).shl().add().tee(ptr);
          f.get(ptr).vload().get(pv[j]!).get(zero).get(mp).add().get(g).i32(4).mul().add().i32(j).get(metaBytes).mul().add().vsplatLoad().fmul().get(mk[j]!).vand().fadd().vstore();
        }
        emitTable(f, () => f.get(tabs).get(g).i32(NT).mul().get(tb).add().i32(8).shl().add(), a, tv);
      });
    });
    // nibble offsets: offs + (tb·NB + block)·128
    f.forLoop(tb, () => f.i32(0), () => f.i32(NT), 1, () => {
      f.get(codes).get(c0).get(tb).i32(2).shl().add().get(tokenBytes).mul().add().set(rp);
      for (let cb = 0; cb < NB; cb++) {
        emitOffsets(
          f,
          bits,
          (j) => { f.get(rp); if (j > 0) f.get(tokenBytes).i32(j).mul().add(); if (cb > 0) f.i32(16 * cb).add(); },
          () => { f.get(offs).get(tb).i32(NB * 128).mul().add(); if (cb > 0) f.i32(cb * 128).add(); },
          tmp,
        );
      }
    });
    // lookups, channel by channel
    f.forLoop(s, () => f.i32(0), () => f.i32(D), 1, () => {
      f.get(s).i32(CB - 1).and().set(sl);
      emitPerm(f, bits, sl, d);
      f.get(s).i32(cbShift).shrU().i32(cbShift).shl().get(d).add().set(d);
      f.get(tabs).get(d).get(gsh).shrU().i32(NT * 256).mul().add().set(tp);
      f.get(offs).get(s).i32(cbShift).shrU().i32(128).mul().add().get(sl).i32(bits - 1).shl().add().set(op);
      for (const v of a) f.vzero().set(v);
      emitLookups(f, bits, NT, 4, op, tp, NB * 128, 256, i, sl, a);
      f.set(r);
      f.get(accp).get(d).i32(4).shl().add().tee(ptr);
      f.get(ptr).vload().get(r).fadd().vstore();
    });
  });
  // out[lane][d] = acc[d] + bias[g(d)]
  f.forLoop(d, () => f.i32(0), () => f.i32(D), 1, () => {
    f.get(accp).get(d).i32(4).shl().add().vload().get(bias).get(d).get(gsh).shrU().i32(4).shl().add().vload().fadd().set(r);
    for (let lane = 0; lane < 4; lane++) f.get(out).get(d).i32(4).mul().add().get(r).extract(lane).f32store(lane * D * 4);
  });
  return f;
}

/** fp16 bit patterns → float32: `n8` vectors of 8 halves at src, 8 floats each at dst (finite values only). */
export function genHalfToFloat(): Fn {
  const f = new Fn('f16to32', [I32, I32, I32]);
  const [src, dst, n8] = [0, 1, 2];
  const i = f.local(I32), x = f.local(V128), w = f.local(V128);
  f.forLoop(i, () => f.i32(0), () => f.get(n8), 1, () => {
    f.get(src).get(i).i32(4).shl().add().vload().set(x);
    for (const high of [false, true]) {
      // ((h & 0x7fff) << 13) as f32 × 2^112 is exact for normal and subnormal halves; then the sign
      f.get(x).extendU16(high).set(w);
      f.get(dst).get(i).i32(5).shl().add();
      f.get(w).vconst(0x7fff).vand().i32(13).vshl().vconst(0x77800000).fmul();
      f.get(w).vconst(0x8000).vand().i32(16).vshl().vor();
      f.vstore(high ? 16 : 0);
    }
  });
  return f;
}

function hsum4Into(f: Fn, a: number, b: number, c: number, d: number, u: number, w: number, dst: number): void {
  // (Σa, Σb, Σc, Σd) via two rounds of shuffles and adds
  const lanes = (...l: number[]) => l.flatMap((x) => [4 * x, 4 * x + 1, 4 * x + 2, 4 * x + 3]);
  f.get(a).get(b).shuffle(lanes(0, 4, 1, 5)).get(a).get(b).shuffle(lanes(2, 6, 3, 7)).fadd().set(u);
  f.get(c).get(d).shuffle(lanes(0, 4, 1, 5)).get(c).get(d).shuffle(lanes(2, 6, 3, 7)).fadd().set(w);
  f.get(u).get(w).shuffle(lanes(0, 1, 4, 5)).get(u).get(w).shuffle(lanes(2, 3, 6, 7)).fadd().set(dst);
}

/**
 * Dense key scores for one KV head: K `[T][D]` f32, q `[4][D]` f32 rows, out `[4][T]`. Lanes run over channels;
 * each key row is read once for the 4 heads, 2 tokens at a time.
 */
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
