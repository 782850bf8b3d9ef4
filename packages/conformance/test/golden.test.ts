import { existsSync, readdirSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import type { PackedKvView } from '@xquant/quant';
import { GOLDEN_FAMILIES, readGoldenFile, runGoldenFile, summarizeResults, type CaseResult } from '../src/index.js';

const DIR = '../shared/golden';
const files = existsSync(DIR) ? readdirSync(DIR).filter((f) => f.endsWith('.json')).sort() : [];

describe.skipIf(files.length === 0)('every case of every golden file passes — needs ../shared/golden', () => {
  test('all seven families are present', () => {
    expect(files.map((f) => readGoldenFile(`${DIR}/${f}`).family).sort()).toEqual([...GOLDEN_FAMILIES].sort());
  });

  for (const f of files) {
    describe(f, async () => {
      const results: CaseResult[] = await runGoldenFile(`${DIR}/${f}`);
      test('file summary', () => {
        expect(summarizeResults(results)).toEqual({ total: results.length, passed: results.length, failed: 0 });
      });
      test.each(results.map((r) => [r.name, r] as const))('%s', (_name, r) => {
        expect(r.passed, r.detail).toBe(true);
        expect(r.mismatchedCodes).toBe(0);
        if (r.family === 'g_attention') {
          expect(r.checks.find((c) => c.array === 'ref_f64')?.mismatches).toBe(0);
          const cached = r.checks.find((c) => c.array === 'ref_f64 (cache layout)');
          expect(cached).toMatchObject({ criterion: 'tolerance', mismatches: 0, passed: true });
          expect(cached!.compared).toBeGreaterThan(0);
          expect(cached!.note).toMatch(/\d+ (key blocks|token-major chunks) of \d+ tokens, .*kernel path (wasm-simd|js)/);
        } else {
          expect(r.maxAbsError).toBe(0);
          expect(r.detail).toMatch(/^bit-exact: /);
          expect(r.checks.every((c) => c.criterion === 'exact' && c.mismatches === 0 && c.compared > 0)).toBe(true);
        }
      });
    });
  }
});

describe.skipIf(files.length === 0)('golden runner catches wrong implementations — needs ../shared/golden', () => {
  test('attention that drops the zero-point fails family g', async () => {
    const results = await runGoldenFile(`${DIR}/g_attention.json`, {
      target: {
        packedKeyScores: async (q, keys) => {
          const drop = (k: PackedKvView): PackedKvView => ({ ...k, zero: new (k.zero.constructor as Float32ArrayConstructor)(k.zero.length) });
          return (await import('@xquant/quant')).packedKeyScores(q, Array.isArray(keys) ? keys.map(drop) : drop(keys as PackedKvView));
        },
      },
    });
    const keyCases = results.filter((r) => r.name.startsWith('attn_keys'));
    expect(keyCases.length).toBeGreaterThan(10);
    expect(keyCases.every((r) => !r.passed && /outside 0.002·absum/.test(r.detail))).toBe(true);
    expect(results.filter((r) => r.name.startsWith('attn_values')).every((r) => r.passed)).toBe(true);
  });

  test('calibration without the reference fp16 order (one rounding) is caught on family c', async () => {
    const { roundHalf } = await import('@xquant/quant');
    const results = await runGoldenFile(`${DIR}/c_calibration.json`, {
      target: {
        calibrateStats: (s, eta) => {
          const m = (1 << s.bits) - 1;
          return { ...s, scale: s.scale.map((v) => roundHalf(v * (1 - 2 * eta))), zero: s.zero.map((z, i) => roundHalf(z + eta * s.scale[i]! * m)) };
        },
      },
    });
    expect(results.some((r) => !r.passed)).toBe(true);
    expect(results.filter((r) => r.name.includes('_g0_')).every((r) => r.passed)).toBe(true);
  });

  test('cross-layer cases flag the reference model slice when group_size ≠ 32', async () => {
    const results = await runGoldenFile(`${DIR}/d_crosslayer.json`);
    const partial = results.filter((r) => /keep only/.test(r.detail));
    expect(partial.map((r) => r.name).sort()).toEqual(['keys_xlayer_D128_T64_gs64_b1_g1', 'keys_xlayer_D128_T64_gs64_b2_g1']);
  });
});
