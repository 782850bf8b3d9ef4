import { XqConfigError } from './errors.js';

/**
 * A fixed scalar codebook (Lloyd-Max quantizer) for one coordinate of a randomly rotated unit vector: `2^bits`
 * ascending reconstruction levels and the `2^bits − 1` decision boundaries between them (midpoints of adjacent levels).
 * A coordinate y is coded as the index of the cell of `boundaries` it falls in and reconstructed as `levels[code]`.
 */
export interface ScalarCodebook {
  /** Bits per code (1–4). */
  readonly bits: number;
  /** Dimension d of the sphere whose coordinate distribution the codebook fits; `null` for the Gaussian limit N(0, 1). */
  readonly dim: number | null;
  /** Reconstruction levels, ascending, `2^bits` of them (symmetric about 0). */
  readonly levels: Float64Array;
  /** Decision boundaries, ascending, `2^bits − 1` of them: boundary i = (levels[i] + levels[i+1]) / 2. */
  readonly boundaries: Float64Array;
  /** Expected squared error per coordinate, E[(y − ŷ)²], under the fitted distribution. */
  readonly mse: number;
  /** Lloyd iterations run until the levels moved less than the tolerance. */
  readonly iterations: number;
}

/** Bit widths {@link lloydMaxCodebook} computes. */
export const CODEBOOK_BITS: readonly number[] = [1, 2, 3, 4];

/**
 * Log of the (unnormalized) density of one coordinate x of a uniformly random unit vector in d ≥ 3 dimensions:
 * f(x) ∝ (1 − x²)^((d−3)/2) on (−1, 1), i.e. (x + 1)/2 ~ Beta((d−1)/2, (d−1)/2). For large d this tends to
 * N(0, 1/d). `d = null` gives the standard normal's log density (up to a constant).
 */
export function sphereCoordinateLogDensity(x: number, d: number | null): number {
  if (d === null) return -0.5 * x * x;
  if (x <= -1 || x >= 1) return -Infinity;
  return d === 3 ? 0 : ((d - 3) / 2) * Math.log1p(-x * x);
}

interface Tables {
  x: Float64Array;
  mass: Float64Array; // cumulative ∫ f
  first: Float64Array; // cumulative ∫ x f
  second: Float64Array; // cumulative ∫ x² f
}

const GRID = 1 << 17;

/** Cumulative mass / first / second moment tables of the density on a fine grid (Simpson per pair of intervals). */
function tables(d: number | null): Tables {
  // support that holds all but ~1e-30 of the mass: ±1 on the sphere when d is small, else ±14 standard deviations
  const half = d === null ? 14 : Math.min(1, 14 / Math.sqrt(d));
  const n = GRID;
  const h = (2 * half) / n;
  const x = new Float64Array(n + 1);
  const f = new Float64Array(n + 1);
  for (let i = 0; i <= n; i++) {
    x[i] = -half + i * h;
    const lf = sphereCoordinateLogDensity(x[i]!, d);
    f[i] = Number.isFinite(lf) ? Math.exp(lf) : 0;
  }
  const mass = new Float64Array(n + 1);
  const first = new Float64Array(n + 1);
  const second = new Float64Array(n + 1);
  for (let i = 1; i <= n; i++) {
    // trapezoid on the interval with a midpoint correction (Simpson on [x_{i-1}, x_i] using the midpoint density)
    const xm = (x[i - 1]! + x[i]!) / 2;
    const lm = sphereCoordinateLogDensity(xm, d);
    const fm = Number.isFinite(lm) ? Math.exp(lm) : 0;
    const a = f[i - 1]!;
    const b = f[i]!;
    const x0 = x[i - 1]!;
    const x1 = x[i]!;
    mass[i] = mass[i - 1]! + (h / 6) * (a + 4 * fm + b);
    first[i] = first[i - 1]! + (h / 6) * (x0 * a + 4 * xm * fm + x1 * b);
    second[i] = second[i - 1]! + (h / 6) * (x0 * x0 * a + 4 * xm * xm * fm + x1 * x1 * b);
  }
  const z = mass[n]!;
  for (let i = 0; i <= n; i++) {
    mass[i] = mass[i]! / z;
    first[i] = first[i]! / z;
    second[i] = second[i]! / z;
  }
  return { x, mass, first, second };
}

/** A cumulative table at `t` (linear interpolation between grid points; clamped to the support). */
function at(tab: Tables, arr: Float64Array, t: number): number {
  const { x } = tab;
  const n = x.length - 1;
  if (t <= x[0]!) return 0;
  if (t >= x[n]!) return arr[n]!;
  const h = x[1]! - x[0]!;
  const u = (t - x[0]!) / h;
  const i = Math.min(n - 1, Math.floor(u));
  const w = u - i;
  return arr[i]! * (1 - w) + arr[i + 1]! * w;
}

const cache = new Map<string, ScalarCodebook>();

/**
 * The Lloyd-Max codebook (minimum mean squared error scalar quantizer with `2^bits` levels) for one coordinate of a
 * uniformly random unit vector in `dim` dimensions — the distribution every coordinate has after a random orthogonal
 * rotation of a unit vector, as in TurboQuant (Zandieh et al., arXiv 2504.19874, data-free). `dim: null` gives the
 * codebook of the Gaussian limit N(0, 1) (for large d a coordinate is ≈ N(0, 1/d): scale those levels by 1/√d).
 *
 * Computed here, not tabulated: the density f(x) ∝ (1 − x²)^((d−3)/2) is integrated on a fine grid (2^17 Simpson
 * panels) into cumulative mass and moment tables, and Lloyd's two conditions are iterated from Gaussian-quantile
 * starting levels until no level moves by more than 1e-12 of the distribution's standard deviation: every boundary
 * is the midpoint of its two levels (nearest-level coding) and every level is the conditional mean of its cell.
 * Results are cached per (bits, dim).
 * @throws {@link XqConfigError} `E_BITS` unless bits ∈ 1…4; `E_CONFIG` unless dim is an integer ≥ 3 or null.
 * @example
 * const cb = lloydMaxCodebook(2, 64);      // levels ≈ ±0.0566, ±0.1884 (≈ ±0.4528/√64, ±1.510/√64)
 */
export function lloydMaxCodebook(bits: number, dim: number | null): ScalarCodebook {
  if (!CODEBOOK_BITS.includes(bits)) throw new XqConfigError('E_BITS', `codebook bits must be one of ${CODEBOOK_BITS.join(', ')}; got ${String(bits)}`);
  if (dim !== null && !(Number.isInteger(dim) && dim >= 3)) {
    throw new XqConfigError('E_CONFIG', `codebook dimension must be an integer ≥ 3 (or null for the Gaussian limit); got ${String(dim)}`);
  }
  const key = `${bits}/${dim ?? 'gauss'}`;
  const hit = cache.get(key);
  if (hit) return hit;
  const tab = tables(dim);
  const L = 1 << bits;
  const sd = dim === null ? 1 : 1 / Math.sqrt(dim);
  // start: Gaussian-quantile-ish spread levels (the iteration converges to the unique symmetric optimum)
  const levels = new Float64Array(L);
  const spread = dim === null ? 2.5 : Math.min(2.5 * sd, 1); // inside the support, so no cell starts empty
  for (let i = 0; i < L; i++) levels[i] = spread * ((2 * i + 1) / L - 1);
  const boundaries = new Float64Array(L - 1);
  let it = 0;
  const tol = 1e-12 * sd;
  for (; it < 100000; it++) {
    for (let i = 0; i < L - 1; i++) boundaries[i] = (levels[i]! + levels[i + 1]!) / 2;
    let moved = 0;
    for (let i = 0; i < L; i++) {
      const lo = i === 0 ? -Infinity : boundaries[i - 1]!;
      const hi = i === L - 1 ? Infinity : boundaries[i]!;
      const m = at(tab, tab.mass, hi) - at(tab, tab.mass, lo);
      const c = m > 0 ? (at(tab, tab.first, hi) - at(tab, tab.first, lo)) / m : levels[i]!;
      moved = Math.max(moved, Math.abs(c - levels[i]!));
      levels[i] = c;
    }
    if (moved < tol) break;
  }
  // symmetrize (the density is even; removes grid asymmetry at the 1e-15 level)
  for (let i = 0; i < L / 2; i++) {
    const a = (levels[L - 1 - i]! - levels[i]!) / 2;
    levels[i] = -a;
    levels[L - 1 - i] = a;
  }
  for (let i = 0; i < L - 1; i++) boundaries[i] = (levels[i]! + levels[i + 1]!) / 2;
  let mse = 0;
  for (let i = 0; i < L; i++) {
    const lo = i === 0 ? -Infinity : boundaries[i - 1]!;
    const hi = i === L - 1 ? Infinity : boundaries[i]!;
    const m0 = at(tab, tab.mass, hi) - at(tab, tab.mass, lo);
    const m1 = at(tab, tab.first, hi) - at(tab, tab.first, lo);
    const m2 = at(tab, tab.second, hi) - at(tab, tab.second, lo);
    const c = levels[i]!;
    mse += m2 - 2 * c * m1 + c * c * m0;
  }
  const cb: ScalarCodebook = Object.freeze({ bits, dim, levels, boundaries, mse, iterations: it });
  cache.set(key, cb);
  return cb;
}

/** Index of the codebook cell `y` falls in (nearest level): binary search over the boundaries. */
export function codebookEncode(cb: Pick<ScalarCodebook, 'boundaries'>, y: number): number {
  const b = cb.boundaries;
  let lo = 0;
  let hi = b.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (y > b[mid]!) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
