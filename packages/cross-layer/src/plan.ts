import { SUPPORTED_BITS, XqConfigError, type Bits } from '@xquant/quant';
import type { CrossLayerPlan, LayerStorage } from './types.js';

/** A per-layer storage width: a quantizer bit width, or 16 for full precision. */
export type LayerBits = Bits | 16;

/** One width for every layer, or one per layer. */
export type BitsSpec = LayerBits | readonly LayerBits[];

/** Options of {@link validatePlan}. */
export interface ValidatePlanOptions {
  /**
   * Allow a layer to borrow codes from a *later* layer (donor index > layer index), as {@link groupedPlan} produces
   * when the dominant layer is not the first of its group. A cache can serve such a plan only if it reads a borrowed
   * block after the donor layer has written it (from the next decode step on). Default `false`: rejected with `E_PLAN`.
   */
  allowForwardDonors?: boolean;
}

function isLayerBits(b: unknown): b is LayerBits {
  return b === 16 || (SUPPORTED_BITS as readonly unknown[]).includes(b);
}

function validateSide(side: readonly LayerStorage[], name: 'keys' | 'values', opts: ValidatePlanOptions): void {
  const L = side.length;
  for (let l = 0; l < L; l++) {
    const s = side[l];
    const at = `${name}[${l}]`;
    if (typeof s !== 'object' || s === null) throw new XqConfigError('E_PLAN', `${at} must be { bits, codesFrom }; got ${String(s)}`);
    if (!isLayerBits(s.bits)) {
      throw new XqConfigError('E_BITS', `${at}.bits must be one of ${SUPPORTED_BITS.join(', ')} or 16; got ${String(s.bits)}`);
    }
    const d = s.codesFrom;
    if (d === null) continue;
    if (typeof d !== 'number' || !Number.isInteger(d)) {
      throw new XqConfigError('E_PLAN', `${at}.codesFrom must be a layer index or null; got ${String(d)}`);
    }
    if (d < 0 || d >= L) throw new XqConfigError('E_PLAN', `${at}.codesFrom = ${d} is out of range (layers 0..${L - 1})`);
    if (d === l) throw new XqConfigError('E_PLAN', `${at}.codesFrom = ${d} refers to the layer itself`);
    if (d > l && !opts.allowForwardDonors) {
      throw new XqConfigError(
        'E_PLAN',
        `${at}.codesFrom = ${d} is a forward reference (the donor comes after the layer); pass { allowForwardDonors: true } if your cache supports it`,
      );
    }
    const donor = side[d]!;
    if (typeof donor !== 'object' || donor === null) throw new XqConfigError('E_PLAN', `${name}[${d}] must be { bits, codesFrom }`);
    if (donor.codesFrom !== null) {
      throw new XqConfigError(
        'E_PLAN',
        `${at} borrows codes from layer ${d}, which itself borrows from layer ${String(donor.codesFrom)}; a donor must store its own codes`,
      );
    }
    if (donor.bits === 16) {
      throw new XqConfigError('E_PLAN', `${at} borrows codes from layer ${d}, which is full precision (bits 16) and has no codes`);
    }
    if (s.bits !== donor.bits) {
      throw new XqConfigError(
        'E_SHARE_BITS_MISMATCH',
        `${at} is ${s.bits}-bit but borrows codes from ${name}[${d}], which is ${donor.bits}-bit; a sharing group must use one bit width (the reference would silently unpack the donor's words with the wrong width)`,
      );
    }
  }
}

/**
 * Checks a plan and returns it. Throws {@link @xquant/quant!XqConfigError}:
 * - `E_SHARE_BITS_MISMATCH` when a layer's bits differ from its donor's (the reference silently corrupts codes then);
 * - `E_PLAN` for a donor that itself borrows, a donor index out of range or equal to the layer, a forward reference
 *   (unless `allowForwardDonors`), a full-precision donor, keys/values of different lengths or an empty plan;
 * - `E_BITS` for a width other than 1, 2, 4, 8 or 16.
 */
export function validatePlan<P extends CrossLayerPlan>(plan: P, options: ValidatePlanOptions = {}): P {
  if (typeof plan !== 'object' || plan === null || !Array.isArray(plan.keys) || !Array.isArray(plan.values)) {
    throw new XqConfigError('E_PLAN', 'a plan must be { keys: LayerStorage[], values: LayerStorage[] }');
  }
  if (plan.keys.length === 0) throw new XqConfigError('E_PLAN', 'a plan needs at least one layer');
  if (plan.keys.length !== plan.values.length) {
    throw new XqConfigError('E_PLAN', `keys has ${plan.keys.length} layers but values has ${plan.values.length}`);
  }
  validateSide(plan.keys, 'keys', options);
  validateSide(plan.values, 'values', options);
  return plan;
}

function assertLayers(layers: number): void {
  if (!Number.isInteger(layers) || layers <= 0) {
    throw new XqConfigError('E_PLAN', `layers must be a positive integer; got ${String(layers)}`);
  }
}

function bitsPerLayer(spec: BitsSpec, layers: number, what: string): LayerBits[] {
  const arr = typeof spec === 'number' ? Array.from({ length: layers }, () => spec) : Array.from(spec ?? []);
  if (arr.length !== layers) throw new XqConfigError('E_PLAN', `${what}: expected ${layers} per-layer widths, got ${arr.length}`);
  arr.forEach((b, l) => {
    if (!isLayerBits(b)) throw new XqConfigError('E_BITS', `${what}[${l}] must be one of ${SUPPORTED_BITS.join(', ')} or 16; got ${String(b)}`);
  });
  return arr;
}

function assertShareFrom(v: number | null | undefined, what: string): void {
  if (v === null || v === undefined) return;
  if (!Number.isInteger(v) || v < 0) throw new XqConfigError('E_PLAN', `${what} must be a non-negative layer index or null; got ${String(v)}`);
}

function assertGroupSize(g: number, what: string): void {
  if (!Number.isInteger(g) || g < 2) throw new XqConfigError('E_PLAN', `${what} must be an integer ≥ 2; got ${String(g)}`);
}

/** A plan with every layer's keys and values in full precision (bits 16), i.e. no quantization. */
export function fullPrecisionPlan(layers: number): CrossLayerPlan {
  assertLayers(layers);
  const side = (): LayerStorage[] => Array.from({ length: layers }, () => ({ bits: 16 as const, codesFrom: null }));
  return { keys: side(), values: side() };
}

/** Options of {@link xquantPlan}. */
export interface XQuantPlanOptions {
  /** Number of decoder layers. */
  layers: number;
  /** Key bits: one width for all layers or one per layer (16 = full precision). */
  keyBits: BitsSpec;
  /** Value bits: one width for all layers or one per layer. */
  valueBits: BitsSpec;
  /** Keys: layers `l ≥ keyShareFrom` that are not first in their group borrow codes; `null`/absent = no key sharing. */
  keyShareFrom?: number | null;
  /** Values: same as `keyShareFrom`. */
  valueShareFrom?: number | null;
  /** Layers per sharing group; default 2 (the reference's pairs `(2i, 2i+1)`). */
  groupSizeOfShare?: number;
}

function sharedSide(bits: LayerBits[], shareFrom: number | null | undefined, g: number): LayerStorage[] {
  return bits.map((b, l) => ({
    bits: b,
    codesFrom: shareFrom !== null && shareFrom !== undefined && l >= shareFrom && l % g !== 0 ? l - (l % g) : null,
  }));
}

/**
 * The reference's cross-layer plan: layers form groups `(G·i, …, G·i+G−1)` (pairs by default); a layer `l ≥ shareFrom`
 * that is not first in its group stores only its own scale and zero-point and reads the codes of the group's first
 * layer (for pairs: odd `l ≥ k_m` / `v_m` reads layer `l − 1`). The plan is validated: a borrowing layer whose width
 * differs from its donor's throws `E_SHARE_BITS_MISMATCH`.
 * @example
 * // 8 layers, keys 2-bit, values 1-bit, values shared from layer 4: layers 5←4 and 7←6 (the "1.375-bit" config)
 * const plan = xquantPlan({ layers: 8, keyBits: 2, valueBits: 1, valueShareFrom: 4 });
 */
export function xquantPlan(options: XQuantPlanOptions): CrossLayerPlan {
  const { layers, keyShareFrom, valueShareFrom } = options;
  assertLayers(layers);
  const g = options.groupSizeOfShare ?? 2;
  assertGroupSize(g, 'groupSizeOfShare');
  assertShareFrom(keyShareFrom, 'keyShareFrom');
  assertShareFrom(valueShareFrom, 'valueShareFrom');
  return validatePlan({
    keys: sharedSide(bitsPerLayer(options.keyBits, layers, 'keyBits'), keyShareFrom, g),
    values: sharedSide(bitsPerLayer(options.valueBits, layers, 'valueBits'), valueShareFrom, g),
  });
}

/** Options of {@link groupedPlan}. */
export interface GroupedPlanOptions {
  /** Number of decoder layers. */
  layers: number;
  /** Key bits: one width for all layers or one per layer. */
  keyBits: BitsSpec;
  /** Value bits: one width for all layers or one per layer. */
  valueBits: BitsSpec;
  /** Layers per group (≥ 2). Groups are `[G·i, G·i+G)`; a last, shorter group is allowed. */
  groupSize: number;
  /** Position of the dominant layer inside each group (0 = first, the paper's best); clamped to a short last group. */
  dominant?: number;
  /** Which tensors share codes; default both. */
  share?: {
    /** Share key codes (default true). */
    keys?: boolean;
    /** Share value codes (default true). */
    values?: boolean;
  };
  /** Only groups whose first layer is ≥ this index share (default 0). */
  shareFrom?: number;
}

/**
 * Cross-layer groups of any size with any dominant layer (the paper's general scheme with weight 1 on the dominant):
 * every other layer of a group reads the dominant layer's codes and keeps its own scale and zero-point.
 * A dominant that is not first in its group makes earlier layers borrow forward; the plan is validated with
 * `allowForwardDonors` in that case.
 * @example
 * // groups of 4 layers, the last layer of each group dominant, values only
 * const plan = groupedPlan({ layers: 8, keyBits: 2, valueBits: 2, groupSize: 4, dominant: 3, share: { keys: false } });
 */
export function groupedPlan(options: GroupedPlanOptions): CrossLayerPlan {
  const { layers, groupSize } = options;
  assertLayers(layers);
  assertGroupSize(groupSize, 'groupSize');
  const dominant = options.dominant ?? 0;
  if (!Number.isInteger(dominant) || dominant < 0 || dominant >= groupSize) {
    throw new XqConfigError('E_PLAN', `dominant must be an integer in [0, ${groupSize - 1}]; got ${String(dominant)}`);
  }
  const shareFrom = options.shareFrom ?? 0;
  assertShareFrom(shareFrom, 'shareFrom');
  const share = { keys: options.share?.keys ?? true, values: options.share?.values ?? true };
  const side = (bits: LayerBits[], on: boolean): LayerStorage[] =>
    bits.map((b, l) => {
      const start = l - (l % groupSize);
      const end = Math.min(start + groupSize, layers);
      const donor = Math.min(start + dominant, end - 1);
      return { bits: b, codesFrom: on && start >= shareFrom && l !== donor && end - start > 1 ? donor : null };
    });
  return validatePlan(
    {
      keys: side(bitsPerLayer(options.keyBits, layers, 'keyBits'), share.keys),
      values: side(bitsPerLayer(options.valueBits, layers, 'valueBits'), share.values),
    },
    { allowForwardDonors: dominant > 0 },
  );
}

/** The reference's η grids indexed by the annotation's last two fields: `g1` (1-bit) and `g2` (2-bit). */
export const ANNOTATION_ETA_GRID: Readonly<{
  /** `g1`: η of 1-bit tensors. */
  1: readonly number[];
  /** `g2`: η of 2-bit tensors. */
  2: readonly number[];
}> = Object.freeze({
  1: Object.freeze([0, 1 / 6, 2 / 6]),
  2: Object.freeze([0, 0.045, 0.09]),
});

/** The parsed fields of an annotation string `KQ_VQ_KM_VM_E1_E2`. */
export interface Annotation {
  /** Keys are 1-bit in layers ≥ kq, 2-bit below. */
  kq: number;
  /** Values are 1-bit in layers ≥ vq, 2-bit below. */
  vq: number;
  /** Odd key layers ≥ km reuse layer l − 1's codes. */
  km: number;
  /** Odd value layers ≥ vm reuse layer l − 1's codes. */
  vm: number;
  /** Index into the 1-bit η grid. */
  e1: number;
  /** Index into the 2-bit η grid. */
  e2: number;
}

/** What {@link planFromAnnotation} returns. */
export interface AnnotatedPlan {
  /** The validated plan. */
  plan: CrossLayerPlan;
  /** η by bit width: `{ 1: g1[E1], 2: g2[E2] }` (usable as `etaCalibrator({ etaByBits })`). */
  etaByBits: {
    /** η of 1-bit tensors, `g1[E1]`. */
    1: number;
    /** η of 2-bit tensors, `g2[E2]`. */
    2: number;
  };
  /** The parsed annotation fields. */
  annotation: Annotation;
}

/** Parses the authors' annotation `KQ_VQ_KM_VM_E1_E2` (six `_`-separated non-negative integers, E1/E2 in 0..2). */
export function parseAnnotation(annotation: string): Annotation {
  const parts = typeof annotation === 'string' ? annotation.trim().split('_') : [];
  if (parts.length !== 6 || !parts.every((p) => /^\d+$/.test(p))) {
    throw new XqConfigError(
      'E_CONFIG',
      `annotation must be six '_'-separated non-negative integers KQ_VQ_KM_VM_E1_E2 (e.g. '8_0_8_4_1_1'); got '${String(annotation)}'`,
    );
  }
  const [kq, vq, km, vm, e1, e2] = parts.map(Number) as [number, number, number, number, number, number];
  if (e1 > 2 || e2 > 2) {
    throw new XqConfigError('E_CONFIG', `annotation η indices E1/E2 must be 0, 1 or 2 (grids have 3 entries); got ${e1} and ${e2}`);
  }
  return { kq, vq, km, vm, e1, e2 };
}

/**
 * Builds the plan and η of the authors' annotation string `KQ_VQ_KM_VM_E1_E2` for a model with `layers` layers:
 * keys 1-bit in layers ≥ KQ and 2-bit below (values likewise with VQ); odd layers ≥ KM (keys) / VM (values) read
 * layer l − 1's codes; η = g1[E1] for 1-bit tensors and g2[E2] for 2-bit tensors.
 * Unlike the reference, a pair with different widths (e.g. KQ odd and ≥ KM) throws `E_SHARE_BITS_MISMATCH`.
 * @example
 * const { plan, etaByBits } = planFromAnnotation('8_0_8_4_1_1', 8); // keys 2-bit, values 1-bit, V 5←4, 7←6; η {1: 1/6, 2: 0.045}
 */
export function planFromAnnotation(annotation: string, layers: number): AnnotatedPlan {
  const a = parseAnnotation(annotation);
  assertLayers(layers);
  const keyBits = Array.from({ length: layers }, (_, l): LayerBits => (l >= a.kq ? 1 : 2));
  const valueBits = Array.from({ length: layers }, (_, l): LayerBits => (l >= a.vq ? 1 : 2));
  const plan = xquantPlan({ layers, keyBits, valueBits, keyShareFrom: a.km, valueShareFrom: a.vm });
  return { plan, etaByBits: { 1: ANNOTATION_ETA_GRID[1][a.e1]!, 2: ANNOTATION_ETA_GRID[2][a.e2]! }, annotation: a };
}

/** Layers whose codes are borrowed by at least one other layer, for keys and values. */
export function donorLayers(plan: CrossLayerPlan): {
  /** Key donor layers, ascending. */
  keys: number[];
  /** Value donor layers, ascending. */
  values: number[];
} {
  const of = (side: readonly LayerStorage[]) => [...new Set(side.flatMap((s) => (s.codesFrom === null ? [] : [s.codesFrom])))].sort((a, b) => a - b);
  return { keys: of(plan.keys), values: of(plan.values) };
}
