import { describe, expect, test } from 'vitest';
import { XqConfigError, XqError } from '@xquant/quant';
import {
  ANNOTATION_ETA_GRID,
  donorLayers,
  fullPrecisionPlan,
  groupedPlan,
  parseAnnotation,
  planFromAnnotation,
  validatePlan,
  xquantPlan,
  type CrossLayerPlan,
} from '@xquant/cross-layer';

const donors = (side: { codesFrom: number | null }[]) => side.map((s) => s.codesFrom);
const bits = (side: { bits: number }[]) => side.map((s) => s.bits);

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (XqError.isInstance(e)) return e.code;
    throw e;
  }
  return undefined;
}

describe('xquantPlan (reference pairs)', () => {
  test('odd layers ≥ shareFrom read layer l − 1', () => {
    const plan = xquantPlan({ layers: 8, keyBits: 2, valueBits: 1, keyShareFrom: 4, valueShareFrom: 3 });
    expect(donors(plan.keys)).toEqual([null, null, null, null, null, 4, null, 6]);
    expect(donors(plan.values)).toEqual([null, null, null, 2, null, 4, null, 6]);
    expect(bits(plan.keys)).toEqual(Array(8).fill(2));
    expect(bits(plan.values)).toEqual(Array(8).fill(1));
  });

  test('no sharing when shareFrom is absent or beyond the last layer', () => {
    const plan = xquantPlan({ layers: 4, keyBits: [2, 2, 1, 1], valueBits: 16, valueShareFrom: 4 });
    expect(donors(plan.keys)).toEqual([null, null, null, null]);
    expect(donors(plan.values)).toEqual([null, null, null, null]);
    expect(bits(plan.keys)).toEqual([2, 2, 1, 1]);
  });

  test('groupSizeOfShare generalizes the pairs: non-first layers of each group read the first', () => {
    const plan = xquantPlan({ layers: 9, keyBits: 2, valueBits: 2, keyShareFrom: 0, groupSizeOfShare: 3 });
    expect(donors(plan.keys)).toEqual([null, 0, 0, null, 3, 3, null, 6, 6]);
  });

  test('a pair with different widths throws E_SHARE_BITS_MISMATCH (the reference silently corrupts codes)', () => {
    // keys 1-bit from layer 5 (odd) and shared from 4: layer 5 (1-bit) would read layer 4's 2-bit words
    const kq = Array.from({ length: 8 }, (_, l) => (l >= 5 ? 1 : 2) as 1 | 2);
    expect(code(() => xquantPlan({ layers: 8, keyBits: kq, valueBits: 2, keyShareFrom: 4 }))).toBe('E_SHARE_BITS_MISMATCH');
    expect(() => xquantPlan({ layers: 8, keyBits: kq, valueBits: 2, keyShareFrom: 4 })).toThrow(/keys\[5\] is 1-bit.*keys\[4\], which is 2-bit/);
  });

  test('bad options throw typed errors', () => {
    expect(code(() => xquantPlan({ layers: 0, keyBits: 2, valueBits: 2 }))).toBe('E_PLAN');
    expect(code(() => xquantPlan({ layers: 2, keyBits: 3 as never, valueBits: 2 }))).toBe('E_BITS');
    expect(code(() => xquantPlan({ layers: 2, keyBits: [2], valueBits: 2 }))).toBe('E_PLAN');
    expect(code(() => xquantPlan({ layers: 2, keyBits: 2, valueBits: 2, keyShareFrom: -1 }))).toBe('E_PLAN');
    expect(code(() => xquantPlan({ layers: 2, keyBits: 2, valueBits: 2, groupSizeOfShare: 1 }))).toBe('E_PLAN');
    expect(code(() => xquantPlan({ layers: 4, keyBits: 16, valueBits: 2, keyShareFrom: 0 }))).toBe('E_PLAN');
  });
});

describe('planFromAnnotation', () => {
  test('8_0_8_4_1_1 (xquant-1.38): keys 2-bit, values 1-bit, values 5←4 and 7←6, η {1: 1/6, 2: 0.045}', () => {
    const { plan, etaByBits, annotation } = planFromAnnotation('8_0_8_4_1_1', 8);
    expect(annotation).toEqual({ kq: 8, vq: 0, km: 8, vm: 4, e1: 1, e2: 1 });
    expect(bits(plan.keys)).toEqual(Array(8).fill(2));
    expect(bits(plan.values)).toEqual(Array(8).fill(1));
    expect(donors(plan.keys)).toEqual(Array(8).fill(null));
    expect(donors(plan.values)).toEqual([null, null, null, null, null, 4, null, 6]);
    expect(etaByBits).toEqual({ 1: 1 / 6, 2: 0.045 });
  });

  test('the other reference configurations', () => {
    expect(bits(planFromAnnotation('8_8_8_8_0_0', 8).plan.values)).toEqual(Array(8).fill(2));
    expect(bits(planFromAnnotation('0_0_8_8_0_0', 8).plan.keys)).toEqual(Array(8).fill(1));
    const kShare = planFromAnnotation('8_0_4_4_1_1', 8).plan;
    expect(donors(kShare.keys)).toEqual([null, null, null, null, null, 4, null, 6]);
    expect(donors(kShare.values)).toEqual([null, null, null, null, null, 4, null, 6]);
    // mixed widths per layer: keys 1-bit from layer 4
    const mixed = planFromAnnotation('4_2_8_8_2_2', 8);
    expect(bits(mixed.plan.keys)).toEqual([2, 2, 2, 2, 1, 1, 1, 1]);
    expect(bits(mixed.plan.values)).toEqual([2, 2, 1, 1, 1, 1, 1, 1]);
    expect(mixed.etaByBits).toEqual({ 1: ANNOTATION_ETA_GRID[1][2], 2: 0.09 });
  });

  test('an odd bit threshold inside the sharing range is rejected instead of corrupting codes', () => {
    expect(code(() => planFromAnnotation('5_0_4_8_1_1', 8))).toBe('E_SHARE_BITS_MISMATCH');
    // the same threshold without key sharing is fine
    expect(bits(planFromAnnotation('5_0_8_8_1_1', 8).plan.keys)).toEqual([2, 2, 2, 2, 2, 1, 1, 1]);
  });

  test('malformed annotations throw E_CONFIG', () => {
    for (const bad of ['8_0_8_4_1', '8_0_8_4_1_1_1', '8_0_8_x_1_1', '8_0_8_-4_1_1', '8_0_8_4_3_1', '']) {
      expect(code(() => parseAnnotation(bad))).toBe('E_CONFIG');
    }
    expect(code(() => planFromAnnotation('8_0_8_4_1_1', 0))).toBe('E_PLAN');
  });
});

describe('groupedPlan (groups larger than two, any dominant layer)', () => {
  test('groups of 4 with the first layer dominant', () => {
    const plan = groupedPlan({ layers: 8, keyBits: 2, valueBits: 1, groupSize: 4 });
    expect(donors(plan.keys)).toEqual([null, 0, 0, 0, null, 4, 4, 4]);
    expect(donors(plan.values)).toEqual([null, 0, 0, 0, null, 4, 4, 4]);
    expect(donorLayers(plan)).toEqual({ keys: [0, 4], values: [0, 4] });
  });

  test('groups of 3 with the middle layer dominant, a short last group, values only, from layer 3', () => {
    const plan = groupedPlan({ layers: 8, keyBits: 2, valueBits: 2, groupSize: 3, dominant: 1, share: { keys: false }, shareFrom: 3 });
    expect(donors(plan.keys)).toEqual(Array(8).fill(null));
    // groups [0,1,2] (before shareFrom), [3,4,5] → 4, [6,7] → 7
    expect(donors(plan.values)).toEqual([null, null, null, 4, null, 4, 7, null]);
  });

  test('a dominant that is not first produces forward donors, which validatePlan rejects unless allowed', () => {
    const plan = groupedPlan({ layers: 4, keyBits: 2, valueBits: 2, groupSize: 4, dominant: 3 });
    expect(donors(plan.keys)).toEqual([3, 3, 3, null]);
    expect(code(() => validatePlan(plan))).toBe('E_PLAN');
    expect(() => validatePlan(plan)).toThrow(/forward reference/);
    expect(validatePlan(plan, { allowForwardDonors: true })).toBe(plan);
  });

  test('mixed widths inside a group throw E_SHARE_BITS_MISMATCH', () => {
    expect(code(() => groupedPlan({ layers: 4, keyBits: [2, 2, 1, 2], valueBits: 2, groupSize: 4 }))).toBe('E_SHARE_BITS_MISMATCH');
  });

  test('bad group options', () => {
    expect(code(() => groupedPlan({ layers: 4, keyBits: 2, valueBits: 2, groupSize: 1 }))).toBe('E_PLAN');
    expect(code(() => groupedPlan({ layers: 4, keyBits: 2, valueBits: 2, groupSize: 2, dominant: 2 }))).toBe('E_PLAN');
  });
});

describe('validatePlan', () => {
  const side = (spec: [number, number | null][]) => spec.map(([b, d]) => ({ bits: b as 1 | 2 | 16, codesFrom: d }));
  const plan = (k: [number, number | null][], v: [number, number | null][] = k.map(([b]) => [b, null])): CrossLayerPlan => ({
    keys: side(k),
    values: side(v),
  });

  test('accepts and returns a valid plan (also the full-precision plan)', () => {
    const p = plan([[2, null], [2, 0], [1, null], [1, 2]]);
    expect(validatePlan(p)).toBe(p);
    expect(validatePlan(fullPrecisionPlan(3)).keys).toHaveLength(3);
  });

  test.each([
    ['donor that itself borrows', plan([[2, null], [2, 0], [2, 1]]), 'E_PLAN', /itself borrows from layer 0/],
    ['out-of-range donor', plan([[2, null], [2, 5]]), 'E_PLAN', /out of range/],
    ['negative donor', plan([[2, null], [2, -1]]), 'E_PLAN', /out of range/],
    ['self reference', plan([[2, null], [2, 1]]), 'E_PLAN', /the layer itself/],
    ['forward reference', plan([[2, 1], [2, null]]), 'E_PLAN', /forward reference/],
    ['full-precision donor', plan([[16, null], [2, 0]]), 'E_PLAN', /full precision/],
    ['full-precision borrower', plan([[2, null], [16, 0]]), 'E_SHARE_BITS_MISMATCH', /16-bit/],
    ['bit mismatch', plan([[2, null], [1, 0]]), 'E_SHARE_BITS_MISMATCH', /values|keys\[1\] is 1-bit/],
    ['values mismatch', plan([[2, null], [2, null]], [[1, null], [2, 0]]), 'E_SHARE_BITS_MISMATCH', /values\[1\] is 2-bit/],
    ['bad width', plan([[3, null]]), 'E_BITS', /keys\[0\]\.bits/],
    ['non-integer donor', plan([[2, null], [2, 0.5]]), 'E_PLAN', /layer index or null/],
    ['length mismatch', { keys: side([[2, null]]), values: side([[2, null], [2, null]]) }, 'E_PLAN', /1 layers but values has 2/],
    ['empty', { keys: [], values: [] }, 'E_PLAN', /at least one layer/],
    ['not a plan', null as never, 'E_PLAN', /keys: LayerStorage/],
  ] as const)('rejects %s', (_, p, c, msg) => {
    expect(code(() => validatePlan(p as CrossLayerPlan))).toBe(c);
    expect(() => validatePlan(p as CrossLayerPlan)).toThrow(XqConfigError);
    expect(() => validatePlan(p as CrossLayerPlan)).toThrow(msg);
  });
});
