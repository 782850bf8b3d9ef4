/**
 * Nibble lookup tables shared by the packed key and value kernels.
 *
 * A sum Σ_j w_j·c_j over four codes of 1 or 2 bits is split into bit planes, c_j = Σ_p 2^p·b_jp, so
 * Σ_j w_j·c_j = Σ_p 2^p·T[n_p] where n_p = Σ_j b_jp·2^j is a 4-bit index and T[n] = Σ_{j ∈ n} w_j is a 16-entry
 * subset-sum table (11 additions). One table lookup replaces four multiply-adds per plane; one table serves every
 * element of a group (gs tokens for keys, gs channels for values).
 * @internal
 */

/**
 * Writes the nibble offsets of four packed words (four reduction rows `x0..x3`, same column range) into `offs`:
 * for column `e` (0 … 32/bits−1) and plane `p` (0 … bits−1), `offs[o0 + e·colStride + p] = base + n_p(e)`.
 * bits must be 1 or 2.
 */
export function writeNibbles(
  bits: number,
  x0: number,
  x1: number,
  x2: number,
  x3: number,
  offs: Int32Array,
  o0: number,
  colStride: number,
  base: number,
): void {
  // P/Q: 2-bit fields (row0|row1, row2|row3) at bit 2e of column e (plane 0 for 2-bit, even columns for 1-bit)
  const P = (x0 & 0x55555555) | ((x1 & 0x55555555) << 1);
  const Q = (x2 & 0x55555555) | ((x3 & 0x55555555) << 1);
  const P2 = ((x0 >>> 1) & 0x55555555) | (x1 & 0xaaaaaaaa);
  const Q2 = ((x2 >>> 1) & 0x55555555) | (x3 & 0xaaaaaaaa);
  const E = (P & 0x33333333) | ((Q & 0x33333333) << 2);
  const O = ((P >>> 2) & 0x33333333) | (Q & 0xcccccccc);
  const E2 = (P2 & 0x33333333) | ((Q2 & 0x33333333) << 2);
  const O2 = ((P2 >>> 2) & 0x33333333) | (Q2 & 0xcccccccc);
  if (bits === 2) {
    // nibble n of E/O: column 2n / 2n+1, plane 0; E2/O2: plane 1
    const s2 = 2 * colStride;
    for (let sh = 0, o = o0; sh < 32; sh += 4, o += s2) {
      offs[o] = base + ((E >>> sh) & 15);
      offs[o + 1] = base + ((E2 >>> sh) & 15);
      offs[o + colStride] = base + ((O >>> sh) & 15);
      offs[o + colStride + 1] = base + ((O2 >>> sh) & 15);
    }
  } else {
    // 1-bit: nibble n of E, E2, O, O2 is column 4n, 4n+1, 4n+2, 4n+3
    const s4 = 4 * colStride;
    for (let sh = 0, o = o0; sh < 32; sh += 4, o += s4) {
      offs[o] = base + ((E >>> sh) & 15);
      offs[o + colStride] = base + ((E2 >>> sh) & 15);
      offs[o + 2 * colStride] = base + ((O >>> sh) & 15);
      offs[o + 3 * colStride] = base + ((O2 >>> sh) & 15);
    }
  }
}

/**
 * Builds `count` 16-entry subset-sum tables per head: `T_h[16·i + n] = Σ_{j: bit j of n} w[(4i + j)·nh + h]`.
 */
export function buildTables(
  nh: number,
  w: Float64Array,
  count: number,
  T0: Float64Array,
  T1: Float64Array,
  T2: Float64Array,
  T3: Float64Array,
): void {
  for (let h = 0; h < nh; h++) {
    const T = h === 0 ? T0 : h === 1 ? T1 : h === 2 ? T2 : T3;
    for (let i = 0, wi = h, t = 0; i < count; i++, wi += 4 * nh, t += 16) {
      const a = w[wi]!, b = w[wi + nh]!, c = w[wi + 2 * nh]!, d = w[wi + 3 * nh]!;
      const ab = a + b;
      const ac = a + c, bc = b + c, abc = ab + c;
      T[t] = 0; T[t + 1] = a; T[t + 2] = b; T[t + 3] = ab;
      T[t + 4] = c; T[t + 5] = ac; T[t + 6] = bc; T[t + 7] = abc;
      T[t + 8] = d; T[t + 9] = a + d; T[t + 10] = b + d; T[t + 11] = ab + d;
      T[t + 12] = c + d; T[t + 13] = ac + d; T[t + 14] = bc + d; T[t + 15] = abc + d;
    }
  }
}

/**
 * For each of `nOut` outputs `e`, sums `perOut` consecutive offsets' table entries, weighting plane `p` (the offset's
 * position modulo `planes`) by 2^p: `res[e·nh + h] = Σ_k 2^(k mod planes)·T_h[offs[e·perOut + k]]`.
 */
export function gatherSums(
  planes: number,
  nh: number,
  offs: Int32Array,
  nOut: number,
  perOut: number,
  T0: Float64Array,
  T1: Float64Array,
  T2: Float64Array,
  T3: Float64Array,
  res: Float64Array,
): void {
  let k = 0;
  if (planes === 1) {
    if (nh === 4) {
      for (let e = 0, r = 0; e < nOut; e++, r += 4) {
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (const end = k + perOut; k < end; k++) {
          const o = offs[k]!;
          s0 += T0[o]!; s1 += T1[o]!; s2 += T2[o]!; s3 += T3[o]!;
        }
        res[r] = s0; res[r + 1] = s1; res[r + 2] = s2; res[r + 3] = s3;
      }
    } else if (nh === 2) {
      for (let e = 0, r = 0; e < nOut; e++, r += 2) {
        let s0 = 0, s1 = 0, u0 = 0, u1 = 0;
        const end = k + perOut;
        for (; k + 1 < end; k += 2) {
          const o = offs[k]!, v = offs[k + 1]!;
          s0 += T0[o]!; s1 += T1[o]!; u0 += T0[v]!; u1 += T1[v]!;
        }
        if (k < end) { const o = offs[k++]!; s0 += T0[o]!; s1 += T1[o]!; }
        res[r] = s0 + u0; res[r + 1] = s1 + u1;
      }
    } else {
      for (let e = 0; e < nOut; e++) {
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        const end = k + perOut;
        for (; k + 3 < end; k += 4) {
          s0 += T0[offs[k]!]!; s1 += T0[offs[k + 1]!]!; s2 += T0[offs[k + 2]!]!; s3 += T0[offs[k + 3]!]!;
        }
        for (; k < end; k++) s0 += T0[offs[k]!]!;
        res[e] = (s0 + s1) + (s2 + s3);
      }
    }
  } else if (nh === 4) {
    for (let e = 0, r = 0; e < nOut; e++, r += 4) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, u0 = 0, u1 = 0, u2 = 0, u3 = 0;
      for (const end = k + perOut; k < end; k += 2) {
        const o = offs[k]!, v = offs[k + 1]!;
        s0 += T0[o]!; s1 += T1[o]!; s2 += T2[o]!; s3 += T3[o]!;
        u0 += T0[v]!; u1 += T1[v]!; u2 += T2[v]!; u3 += T3[v]!;
      }
      res[r] = s0 + 2 * u0; res[r + 1] = s1 + 2 * u1; res[r + 2] = s2 + 2 * u2; res[r + 3] = s3 + 2 * u3;
    }
  } else if (nh === 2) {
    for (let e = 0, r = 0; e < nOut; e++, r += 2) {
      let s0 = 0, s1 = 0, u0 = 0, u1 = 0;
      for (const end = k + perOut; k < end; k += 2) {
        const o = offs[k]!, v = offs[k + 1]!;
        s0 += T0[o]!; s1 += T1[o]!; u0 += T0[v]!; u1 += T1[v]!;
      }
      res[r] = s0 + 2 * u0; res[r + 1] = s1 + 2 * u1;
    }
  } else {
    for (let e = 0; e < nOut; e++) {
      let s0 = 0, s1 = 0, u0 = 0, u1 = 0;
      const end = k + perOut;
      for (; k + 3 < end; k += 4) {
        s0 += T0[offs[k]!]!; u0 += T0[offs[k + 1]!]!; s1 += T0[offs[k + 2]!]!; u1 += T0[offs[k + 3]!]!;
      }
      for (; k < end; k += 2) { s0 += T0[offs[k]!]!; u0 += T0[offs[k + 1]!]!; }
      res[e] = (s0 + s1) + 2 * (u0 + u1);
    }
  }
}
