import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { XqError } from '@xquant/quant';
import { accountBits, fullPrecisionPlan, groupedPlan, planFromAnnotation, xquantPlan } from '@xquant/cross-layer';

const RESULTS = '../shared/eval/reference-fidelity/results.json';

describe.skipIf(!existsSync(RESULTS))('reference-fidelity bit columns (8 layers, 2 KV heads, headDim 64, gs 32, T 2048) — needs ../shared/eval', () => {
  const results = existsSync(RESULTS) ? JSON.parse(readFileSync(RESULTS, 'utf8')) : { models: {} };
  const rows: [string, number, string, { annotation: string | null; paper_bits: number; stored_bits_T2048: number }][] = [];
  for (const [model, m] of Object.entries<any>(results.models)) {
    for (const R of [32, 128]) {
      for (const [config, r] of Object.entries<any>(m[`R${R}`] ?? {})) rows.push([model, R, config, r]);
    }
  }
  test('all 8 configs × R ∈ {32, 128} are present', () => {
    expect(rows.length).toBeGreaterThanOrEqual(16);
    expect(new Set(rows.map((r) => r[2])).size).toBe(8);
  });
  test.each(rows)('%s R=%i %s', (_model, R, _config, ref) => {
    const plan = ref.annotation === null ? fullPrecisionPlan(8) : planFromAnnotation(ref.annotation, 8).plan;
    const acc = accountBits({ plan, kvHeads: 2, headDim: 64, tokens: 2048, residualLength: R, groupSize: 32 });
    expect(Math.abs(acc.paperBits - ref.paper_bits)).toBeLessThan(1e-12);
    expect(Math.abs(acc.storedBitsPerElement - ref.stored_bits_T2048)).toBeLessThan(1e-12);
  });
});

describe('accountBits', () => {
  test('KIVI-2 by hand: keys 2048 quantized, values 2048 − R quantized + R residual', () => {
    const plan = xquantPlan({ layers: 2, keyBits: 2, valueBits: 2 });
    const acc = accountBits({ plan, kvHeads: 2, headDim: 64, tokens: 2048, residualLength: 32, groupSize: 32 });
    const E = 128;
    // per layer: key codes 2048·E·2 bits; key meta (2048/32)·E·32 bits; value codes 2016·E·2; value meta 2016·(64/32)·2·32; residual 32·E·16
    expect(acc.perLayer[0]!.keys).toEqual({ codeBytes: (2048 * E * 2) / 8, metadataBytes: (64 * E * 32) / 8, residualBytes: 0, quantizedTokens: 2048 });
    expect(acc.perLayer[0]!.values).toEqual({
      codeBytes: (2016 * E * 2) / 8,
      metadataBytes: (2016 * 2 * 2 * 32) / 8,
      residualBytes: (32 * E * 16) / 8,
      quantizedTokens: 2016,
    });
    expect(acc.totalBytes).toBe(acc.codeBytes + acc.metadataBytes + acc.residualBytes);
    expect(acc.elements).toBe(2 * 2 * 2048 * E);
    expect(acc.storedBitsPerElement).toBeCloseTo((3 + (2016 * 3 + 32 * 16) / 2048) / 2, 12);
    expect(acc.paperBits).toBe(2);
  });

  test('keys are quantized in whole multiples of R only', () => {
    const plan = xquantPlan({ layers: 1, keyBits: 1, valueBits: 1 });
    const acc = accountBits({ plan, kvHeads: 1, headDim: 32, tokens: 300, residualLength: 128, groupSize: 32 });
    expect(acc.perLayer[0]!.keys.quantizedTokens).toBe(256);
    expect(acc.perLayer[0]!.values.quantizedTokens).toBe(172);
    expect(acc.perLayer[0]!.keys.residualBytes).toBe((44 * 32 * 16) / 8);
    // short context: nothing quantized yet
    const short = accountBits({ plan, kvHeads: 1, headDim: 32, tokens: 100, residualLength: 128, groupSize: 32 });
    expect(short.codeBytes).toBe(0);
    expect(short.storedBitsPerElement).toBe(16);
    expect(short.paperBits).toBe(1); // the paper figure ignores the residual window
  });

  test('groups larger than two: borrowing layers pay scale/zero but no codes', () => {
    const plan = groupedPlan({ layers: 8, keyBits: 2, valueBits: 2, groupSize: 4, dominant: 3 });
    const acc = accountBits({ plan, kvHeads: 2, headDim: 64, tokens: 4096, residualLength: 128, groupSize: 32 });
    expect(acc.paperBits).toBe(0.5); // 2 bits on 1 of every 4 layers
    expect(acc.perLayer.map((p) => p.keys.codeBytes > 0)).toEqual([false, false, false, true, false, false, false, true]);
    expect(acc.perLayer.every((p) => p.values.metadataBytes > 0)).toBe(true);
    const unshared = accountBits({ plan: xquantPlan({ layers: 8, keyBits: 2, valueBits: 2 }), kvHeads: 2, headDim: 64, tokens: 4096, residualLength: 128, groupSize: 32 });
    expect(unshared.codeBytes).toBe(4 * acc.codeBytes);
    expect(unshared.metadataBytes).toBe(acc.metadataBytes);
    expect(unshared.residualBytes).toBe(acc.residualBytes);
  });

  test('custom metadata and residual widths (fp32 statistics and window)', () => {
    const plan = xquantPlan({ layers: 1, keyBits: 4, valueBits: 4 });
    const acc = accountBits({ plan, kvHeads: 1, headDim: 64, tokens: 64, residualLength: 0, groupSize: 64, metadataBits: 32, residualBits: 32 });
    expect(acc.residualBytes).toBe(0);
    expect(acc.storedBitsPerElement).toBe(4 + (2 * 32) / 64);
  });

  test('full precision plan: 16 paper bits and 16 stored bits (or residualBits)', () => {
    const acc = accountBits({ plan: fullPrecisionPlan(3), kvHeads: 4, headDim: 128, tokens: 77, residualLength: 32, groupSize: 32 });
    expect(acc.paperBits).toBe(16);
    expect(acc.storedBitsPerElement).toBe(16);
    expect(accountBits({ plan: fullPrecisionPlan(1), kvHeads: 1, headDim: 32, tokens: 5, residualLength: 32, groupSize: 32, residualBits: 32 }).storedBitsPerElement).toBe(32);
  });

  test('typed errors on bad inputs', () => {
    const plan = xquantPlan({ layers: 2, keyBits: 2, valueBits: 2 });
    const base = { plan, kvHeads: 2, headDim: 64, tokens: 128, residualLength: 32, groupSize: 32 };
    const codeOf = (o: object) => {
      try {
        accountBits({ ...base, ...o });
      } catch (e) {
        return XqError.isInstance(e) ? e.code : 'untyped';
      }
      return 'none';
    };
    expect(codeOf({ residualLength: 48 })).toBe('E_RESIDUAL');
    expect(codeOf({ residualLength: -32 })).toBe('E_RESIDUAL');
    expect(codeOf({ headDim: 48 })).toBe('E_GROUP_SIZE');
    expect(codeOf({ tokens: 0 })).toBe('E_CONFIG');
    expect(codeOf({ kvHeads: 1.5 })).toBe('E_CONFIG');
    expect(codeOf({ metadataBits: NaN })).toBe('E_CONFIG');
    expect(codeOf({ plan: { keys: [{ bits: 2, codesFrom: null }], values: [{ bits: 1, codesFrom: null }, { bits: 1, codesFrom: 0 }] } })).toBe('E_PLAN');
  });
});
