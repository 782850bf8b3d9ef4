/**
 * Generators of the WebAssembly SIMD kernels of the codebook (TurboQuant-style) layout. The codes of every segment
 * are read in units of k consecutive codes (k·bits ≤ 8): a unit's index is the k·bits bits at its bit position in the
 * row, taken with a shift and a mask from an unaligned i32 load that serves every unit within its 32 bits (codes
 * straddling 32-bit words cost nothing special).
 * Per KV head and chunk of 4 query rows (the 4 lanes of an f32x4):
 * - keys: a table per unit, T_u[idx] = Σ_{codes i of u} q[c_i]·level(digit_i(idx)), is built once per call; a row's
 *   score is Σ_slot scale(slot)·Σ_{units of slot} T_u[idx_u] (one v128 load and one f32x4 add per unit);
 * - values: an accumulator table per unit, W_u[idx] += p[t]·scale(slot) for every token (one v128 load, add and
 *   store per unit); at the end out[c_i] = Σ_y level(y)·Σ_{idx: digit_i(idx) = y} W_u[idx] (the transposed table).
 * The token kernels are generated per layout (bit positions, table addresses and scale slots as constants; the tables
 * lie at a fixed address); the table builder and the expansion read a descriptor list and are the same for every
 * layout.
 * @internal
 */
import { Fn, I32, V128 } from './asm.js';

/** The segment fields the kernels depend on (levels are staged per call). */
export interface UnitSegment {
  readonly start: number;
  readonly length: number;
  readonly bits: number;
  readonly bitOffset: number;
  readonly scaleSlot: number;
}

/** k consecutive codes of one segment, read as one index of k·b bits. */
export interface CodeUnit {
  /** Byte of the row holding the unit's first bit, and the bit within that byte. */
  readonly byte: number;
  readonly shift: number;
  /** Codes in the unit and bits per code. */
  readonly k: number;
  readonly b: number;
  /** Channel of the first code. */
  readonly channel: number;
  readonly slot: number;
  /** Byte offset of the segment's levels in the staged level table. */
  readonly levOff: number;
  /** Byte offset of the unit's table (2^(k·b) f32x4 entries). */
  readonly tab: number;
}

/** The units of a layout for one choice of codes per unit. */
export interface UnitSet {
  readonly units: readonly CodeUnit[];
  /** Bytes of all unit tables. */
  readonly tableBytes: number;
  /** Codes per unit for each bit width (index = bits). */
  readonly kOf: readonly number[];
}

/** Descriptor words per unit: table offset, k, b, channel, level offset. */
export const DESC_WORDS = 5;

/** Splits every segment into units of `kOf[bits]` codes (the last unit of a segment may hold fewer). */
export function unitSet(segments: readonly UnitSegment[], kOf: readonly number[]): UnitSet {
  const units: CodeUnit[] = [];
  let tab = 0;
  let levOff = 0;
  for (const s of segments) {
    const k = kOf[s.bits]!;
    for (let i = 0; i < s.length; i += k) {
      const kk = Math.min(k, s.length - i);
      const pos = s.bitOffset + i * s.bits;
      units.push({ byte: pos >>> 3, shift: pos & 7, k: kk, b: s.bits, channel: s.start + i, slot: s.scaleSlot, levOff, tab });
      tab += 16 << (kk * s.bits);
    }
    levOff += 4 << s.bits;
  }
  return { units, tableBytes: tab, kOf };
}

/** Writes the descriptor list of `set` at word `at` of `u32`. */
export function writeDescriptors(set: UnitSet, u32: Uint32Array, at: number): void {
  for (const u of set.units) {
    u32[at++] = u.tab;
    u32[at++] = u.k;
    u32[at++] = u.b;
    u32[at++] = u.channel;
    u32[at++] = u.levOff;
  }
}

/** Byte address of the unit tables in every module's memory (the first region a call stages; offsets become immediates). */
export const TABLE_BASE = 64;

/**
 * The units in runs that one 32-bit load covers: a run starts at the byte of its first unit's first bit and takes
 * units while their bits end within the 32 bits loaded from there.
 */
function wordRuns(set: UnitSet): { byte: number; units: { u: CodeUnit; at: number }[] }[] {
  const runs: { byte: number; units: { u: CodeUnit; at: number }[] }[] = [];
  for (const u of set.units) {
    const pos = 8 * u.byte + u.shift;
    const last = runs[runs.length - 1];
    if (last && pos >= 8 * last.byte && pos + u.k * u.b <= 8 * last.byte + 32) last.units.push({ u, at: pos - 8 * last.byte });
    else runs.push({ byte: u.byte, units: [{ u, at: u.shift }] });
  }
  return runs;
}

/** Pushes the byte offset (index × 16) of unit `u`'s table entry from the 32-bit word in local `w` (the unit at bit `at`). */
function emitIndex16(f: Fn, u: CodeUnit, w: number, at: number): void {
  const mask = ((1 << (u.k * u.b)) - 1) << 4;
  f.get(w);
  if (at > 4) f.i32(at - 4).shrU();
  else if (at < 4) f.i32(4 - at).shl();
  f.i32(mask).and();
}

/** Slots read by the units, in first-use order. */
function slotsOf(set: UnitSet): number[] {
  return [...new Set(set.units.map((u) => u.slot))];
}

/**
 * Key scores of one KV head and 4 query rows over T tokens. Params: codes (row of token 0), rowBytes (between
 * tokens), T, scales (f32 decoded scales of token 0, slot s at + 4s), scaleBytes (between tokens), out (f32 row of
 * lane 0, token 0), outRow (bytes between the 4 lanes' rows). The unit tables of {@link genKeyTables} lie at
 * {@link TABLE_BASE}. Rows are read up to 3 bytes past their last code byte.
 */
export function genCodebookKeys(name: string, set: UnitSet): Fn {
  const f = new Fn(name, new Array(7).fill(I32));
  const [codes, rowBytes, T, scales, scaleBytes, out, outRow] = [0, 1, 2, 3, 4, 5, 6];
  const t = f.local(I32), rp = f.local(I32), sp = f.local(I32), ob = f.local(I32), w = f.local(I32), or2 = f.local(I32), or3 = f.local(I32);
  const slots = slotsOf(set);
  const per = Math.max(1, Math.min(4, Math.floor(8 / slots.length)));
  const acc = new Map(slots.map((s) => [s, Array.from({ length: per }, () => f.local(V128))]));
  const used = new Map(slots.map((s) => [s, 0]));
  const r = f.local(V128);
  f.get(outRow).i32(2).mul().set(or2);
  f.get(outRow).i32(3).mul().set(or3);
  f.get(codes).set(rp);
  f.get(scales).set(sp);
  f.get(out).set(ob);
  const runs = wordRuns(set);
  f.forLoop(t, () => f.i32(0), () => f.get(T), 1, () => {
    // per slot, round robin over its accumulators (the first use of each one sets it)
    for (const s of slots) used.set(s, 0);
    for (const run of runs) {
      f.get(rp).loadU(run.byte).set(w);
      for (const { u, at } of run.units) {
        const n = used.get(u.slot)!;
        used.set(u.slot, n + 1);
        const a = acc.get(u.slot)![n % per]!;
        emitIndex16(f, u, w, at);
        f.vload(TABLE_BASE + u.tab);
        if (n >= per) f.get(a).fadd();
        f.set(a);
      }
    }
    slots.forEach((s, i) => {
      const as = acc.get(s)!.slice(0, Math.min(per, used.get(s)!));
      f.get(as[0]!);
      for (const a of as.slice(1)) f.get(a).fadd();
      f.get(sp).vsplatLoad(4 * s).fmul();
      if (i > 0) f.get(r).fadd();
      f.set(r);
    });
    f.get(ob).get(r).extract(0).f32store();
    f.get(ob).get(outRow).add().get(r).extract(1).f32store();
    f.get(ob).get(or2).add().get(r).extract(2).f32store();
    f.get(ob).get(or3).add().get(r).extract(3).f32store();
    f.get(rp).get(rowBytes).add().set(rp);
    f.get(sp).get(scaleBytes).add().set(sp);
    f.get(ob).i32(4).add().set(ob);
  });
  return f;
}

/**
 * Value mix of one KV head and 4 query rows over T tokens into the accumulator tables at {@link TABLE_BASE} (zeroed
 * first). Params: codes, rowBytes, T, scales, scaleBytes (as {@link genCodebookKeys}), p (f32 row of lane 0, token 0),
 * pRow (bytes between the lanes' rows).
 */
export function genCodebookValues(name: string, set: UnitSet): Fn {
  const f = new Fn(name, new Array(7).fill(I32));
  const [codes, rowBytes, T, scales, scaleBytes, p, pRow] = [0, 1, 2, 3, 4, 5, 6];
  const t = f.local(I32), rp = f.local(I32), sp = f.local(I32), pp = f.local(I32), a = f.local(I32), w = f.local(I32), pr2 = f.local(I32), pr3 = f.local(I32);
  const pv = f.local(V128);
  const slots = slotsOf(set);
  const wt = new Map(slots.map((s) => [s, f.local(V128)]));
  f.forLoop(t, () => f.i32(0), () => f.i32(set.tableBytes), 16, () => { f.get(t).vzero().vstore(TABLE_BASE); });
  f.get(pRow).i32(2).mul().set(pr2);
  f.get(pRow).i32(3).mul().set(pr3);
  f.get(codes).set(rp);
  f.get(scales).set(sp);
  f.get(p).set(pp);
  const runs = wordRuns(set);
  f.forLoop(t, () => f.i32(0), () => f.get(T), 1, () => {
    f.get(pp).vsplatLoad();
    f.get(pp).get(pRow).add().f32load().replace(1);
    f.get(pp).get(pr2).add().f32load().replace(2);
    f.get(pp).get(pr3).add().f32load().replace(3);
    f.set(pv);
    for (const s of slots) f.get(pv).get(sp).vsplatLoad(4 * s).fmul().set(wt.get(s)!);
    for (const run of runs) {
      f.get(rp).loadU(run.byte).set(w);
      for (const { u, at } of run.units) {
        emitIndex16(f, u, w, at);
        f.tee(a);
        f.get(a).vload(TABLE_BASE + u.tab).get(wt.get(u.slot)!).fadd().vstore(TABLE_BASE + u.tab);
      }
    }
    f.get(rp).get(rowBytes).add().set(rp);
    f.get(sp).get(scaleBytes).add().set(sp);
    f.get(pp).i32(4).add().set(pp);
  });
  return f;
}

/**
 * Builds the key tables of `n` units from their descriptors: T_u[x + y·2^(i·b)] = T_u[x] + q4[c_i]·level(y), code by
 * code (entries of the first i codes are extended in place, the y = 0 block last). Params: desc (DESC_WORDS i32 per
 * unit), n, q4 (`[D]` v128: the 4 rows' q[c] in the lanes), lev (staged f32 levels), tabs.
 */
export function genKeyTables(): Fn {
  const f = new Fn('cbKeyTables', [I32, I32, I32, I32, I32]);
  const [desc, n, q4, lev, tabs] = [0, 1, 2, 3, 4];
  const L = () => f.local(I32);
  const u = L(), d = L(), tp = L(), k = L(), b = L(), qp = L(), lp = L(), nb = L(), size = L(), i = L(), y = L(), x = L(), dst = L(), sz16 = L();
  const qv = f.local(V128), pv = f.local(V128);
  f.forLoop(u, () => f.i32(0), () => f.get(n), 1, () => {
    f.get(desc).get(u).i32(DESC_WORDS * 4).mul().add().set(d);
    f.get(tabs).get(d).load(0).add().set(tp);
    f.get(d).load(4).set(k);
    f.get(d).load(8).set(b);
    f.get(q4).get(d).load(12).i32(4).shl().add().set(qp);
    f.get(lev).get(d).load(16).add().set(lp);
    f.i32(1).get(b).shl().set(nb);
    f.get(qp).vload().set(qv);
    f.forLoop(y, () => f.i32(0), () => f.get(nb), 1, () => {
      f.get(tp).get(y).i32(4).shl().add().get(qv).get(lp).get(y).i32(2).shl().add().vsplatLoad().fmul().vstore();
    });
    f.get(nb).set(size);
    f.forLoop(i, () => f.i32(1), () => f.get(k), 1, () => {
      f.get(qp).i32(16).add().tee(qp).vload().set(qv);
      f.get(size).i32(4).shl().set(sz16);
      f.get(nb).set(y);
      f.block().loop();
      f.get(y).i32(1).sub().set(y);
      f.get(qv).get(lp).get(y).i32(2).shl().add().vsplatLoad().fmul().set(pv);
      f.get(tp).get(y).get(sz16).mul().add().set(dst);
      f.forLoop(x, () => f.i32(0), () => f.get(sz16), 16, () => {
        f.get(dst).get(x).add().get(tp).get(x).add().vload().get(pv).fadd().vstore();
      });
      f.get(y).brIf(0);
      f.end().end();
      f.get(size).get(b).shl().set(size);
    });
  });
  return f;
}

/**
 * Expands the value accumulator tables of `n` units: for the top code i of a table of 2^(i·b + b) entries,
 * out[c_i] = Σ_y level(y)·Σ_x W[x + y·2^(i·b)]; then the table is folded onto its first 2^(i·b) entries
 * (W[x] = Σ_y W[x + y·2^(i·b)]) for the next code. Params: desc, n, lev, tabs (overwritten), out (f32 row of lane 0),
 * outRow (bytes between the lanes' rows).
 */
export function genValueExpand(): Fn {
  const f = new Fn('cbValueExpand', [I32, I32, I32, I32, I32, I32]);
  const [desc, n, lev, tabs, out, outRow] = [0, 1, 2, 3, 4, 5];
  const L = () => f.local(I32);
  const u = L(), d = L(), tp = L(), k = L(), b = L(), c = L(), lp = L(), nb = L(), sub16 = L(), i = L(), y = L(), x = L(), base = L(), ob = L();
  const acc = f.local(V128), m = f.local(V128), m2 = f.local(V128);
  f.forLoop(u, () => f.i32(0), () => f.get(n), 1, () => {
    f.get(desc).get(u).i32(DESC_WORDS * 4).mul().add().set(d);
    f.get(tabs).get(d).load(0).add().set(tp);
    f.get(d).load(4).set(k);
    f.get(d).load(8).set(b);
    f.get(d).load(12).set(c);
    f.get(lev).get(d).load(16).add().set(lp);
    f.i32(1).get(b).shl().set(nb);
    // i = k − 1 … 0; sub16 = 16·2^(i·b)
    f.get(k).set(i);
    f.i32(16).get(k).i32(1).sub().get(b).mul().shl().set(sub16);
    f.block().loop();
    f.get(i).i32(1).sub().set(i);
    f.vzero().set(acc);
    f.forLoop(y, () => f.i32(0), () => f.get(nb), 1, () => {
      f.get(tp).get(y).get(sub16).mul().add().set(base);
      f.vzero().set(m);
      f.vzero().set(m2);
      // two partial sums, then the last entry of an odd count
      f.i32(0).set(x);
      f.block().loop();
      f.get(x).i32(16).add().get(sub16).geU().brIf(1);
      f.get(base).get(x).add().vload().get(m).fadd().set(m);
      f.get(base).get(x).add().vload(16).get(m2).fadd().set(m2);
      f.get(x).i32(32).add().set(x);
      f.br(0).end().end();
      f.get(x).get(sub16).ltU().if_();
      f.get(base).get(x).add().vload().get(m).fadd().set(m);
      f.end();
      f.get(m).get(m2).fadd().get(lp).get(y).i32(2).shl().add().vsplatLoad().fmul().get(acc).fadd().set(acc);
    });
    f.get(out).get(c).get(i).add().i32(2).shl().add().set(ob);
    f.get(ob).get(acc).extract(0).f32store();
    f.get(ob).get(outRow).add().get(acc).extract(1).f32store();
    f.get(ob).get(outRow).i32(2).mul().add().get(acc).extract(2).f32store();
    f.get(ob).get(outRow).i32(3).mul().add().get(acc).extract(3).f32store();
    f.get(i).eqz().brIf(1);
    // fold onto the first sub entries
    f.forLoop(y, () => f.i32(1), () => f.get(nb), 1, () => {
      f.get(tp).get(y).get(sub16).mul().add().set(base);
      f.forLoop(x, () => f.i32(0), () => f.get(sub16), 16, () => {
        f.get(tp).get(x).add().get(tp).get(x).add().vload().get(base).get(x).add().vload().fadd().vstore();
      });
    });
    f.get(sub16).get(b).shrU().set(sub16);
    f.br(0).end().end();
  });
  return f;
}
