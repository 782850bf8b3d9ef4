import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
// @ts-expect-error plain ESM module without types (shared with scripts/fuzz-long.mjs)
import { loadTargets, runTarget, targetFiles } from '../fuzz/run.mjs';

// Bounded runs of every fuzz target (fuzz/targets/*.mjs) on the sources; scripts/fuzz-long.mjs runs them for 10^6
// cases each on the built packages. XQ_FUZZ_RUNS / XQ_FUZZ_SEED change the budget and the seed.
const PACKAGES: Record<string, () => Promise<unknown>> = {
  quant: () => import('@xquant/quant'),
  models: () => import('@xquant/models'),
  tfjs: () => import('@xquant/tfjs'),
  'tfjs/testing': () => import('@xquant/tfjs/testing'),
  eval: () => import('@xquant/eval'),
  calibration: () => import('@xquant/calibration'),
  'cross-layer': () => import('@xquant/cross-layer'),
};

const files: string[] = targetFiles();
const seed = Number(process.env.XQ_FUZZ_SEED ?? 20261202);
// targets marked longRunOnly have their bounded runs elsewhere (issue 13 part A: packages/quant|tfjs/test/fuzz.test.ts)
const all = (await Promise.all(files.map(loadTargets))).flat().filter((t: { longRunOnly?: boolean }) => !t.longRunOnly);

describe('fuzz targets (bounded)', () => {
  test('there are targets for the safetensors, GGUF and tokenizer readers', async () => {
    const names = all.map((t: { name: string }) => t.name);
    expect(names).toEqual(expect.arrayContaining(['safetensors', 'gguf', 'tokenizer']));
  });

  for (const target of all) {
    test(`target ${target.name} (${String(target.file).replace(/^.*\/fuzz\//, 'fuzz/')})`, async () => {
      const file = target.file as string;
      const packages: Record<string, unknown> = {};
      for (const name of target.packages as string[]) {
        const load = PACKAGES[name];
        if (!load) throw new Error(`${file}: unknown package '${name}' (known: ${Object.keys(PACKAGES).join(', ')})`);
        packages[name] = await load();
      }
      const runs = Number(process.env.XQ_FUZZ_RUNS ?? target.testRuns ?? 300);
      const r = await runTarget(target, { fc, packages, runs, seed, maxFailures: 1, timeLimitMs: 60_000 });
      expect(r.failures, JSON.stringify(r.failures, null, 1)).toEqual([]);
      expect(r.cases).toBeGreaterThan(0);
    }, 120_000);
  }
});

// Counterexamples the fuzz runs found, kept as regression cases (each ran through its target's check).
const REGRESSIONS: { target: string; why: string; input: unknown }[] = [
  {
    target: 'safetensors',
    why: "a tensor named '__proto__' (own JSON key, not the prototype) reads back",
    input: { tensors: [{ name: '__proto__', dtype: 'F64', shape: [], seed: 0 }], metadata: undefined, mutations: [] },
  },
  {
    target: 'safetensors',
    why: 'a zero-size tensor at the same offset as a non-empty one tiles the data section',
    input: {
      tensors: [
        { name: 'a', dtype: 'F32', shape: [0], seed: 1 },
        { name: 'b', dtype: 'U8', shape: [3], seed: 2 },
        { name: 'c', dtype: 'F16', shape: [2, 0], seed: 3 },
      ],
      metadata: { k: 'v' },
      mutations: [],
    },
  },
  {
    target: 'tokenizer',
    why: 'a Split regex that matches the empty string at every position',
    input: { text: '  \n\t x', mode: 'regex', path: [0], value: null, regex: '(?:(?:[ab])?)?' },
  },
  // found by the first long run (seed 13): a malformed vocabulary built a tokenizer whose encode returned non-ids or
  // whose decode threw an untyped Error (now E_FORMAT); the intact round trip and the timing check were harness bugs
  {
    target: 'tokenizer',
    why: 'vocabulary values replaced by [] → encode is E_FORMAT, not non-ids',
    input: { text: 'the 12 he', mode: 'mutated', path: [1721792134, 1295848654, 888813823], value: [], regex: 'a' },
  },
  {
    target: 'tokenizer',
    why: 'vocabulary values replaced by {} → E_FORMAT',
    input: { text: '\u{D6EF9}', mode: 'mutated', path: [278954661, 1930261858, 1472255478], value: {}, regex: 'a' },
  },
  {
    target: 'tokenizer',
    why: 'decode of a mutated tokenizer throws an untyped Error → E_FORMAT',
    input: { text: 'Հ', mode: 'mutated', path: [33827359, 725173774, 1598808842], value: [], regex: 'a' },
  },
  {
    target: 'tokenizer',
    why: 'a subnormal where a vocabulary entry was',
    input: { text: 'ꀀ', mode: 'mutated', path: [736007271, 734217055, 1934922899], value: -5e-324, regex: 'a' },
  },
  {
    target: 'tokenizer',
    why: 'intact round trip of " !" (clean-up of tokenization spaces is off)',
    input: { text: ' !', mode: 'intact', path: [0], value: false, regex: 'a' },
  },
  {
    target: 'tokenizer',
    why: 'a linear regex timed on a busy machine is not taken for an exponential one',
    input: { text: 'x', mode: 'regex', path: [0], value: 'dE6KN', regex: '(?:(?: )+b(?:\\p{L})+|(?:\\s|[^\\s][^\\s]\\s| ))' },
  },
  {
    target: 'gguf',
    why: 'arrays of arrays of strings, a key named __proto__, 64-bit extremes',
    input: {
      metadata: [
        ['__proto__', { type: 'u64', value: 2n ** 64n - 1n }],
        ['nested', { type: 'arr', of: 'arr', value: [{ type: 'arr', of: 'str', value: [{ type: 'str', value: '\uFEFFé😀' }] }] }],
        ['version', { type: 'i64', value: -(2n ** 63n) }],
      ],
      tensors: [],
      mutations: [],
    },
  },
];

describe('fuzz regressions', () => {
  for (const r of REGRESSIONS) {
    test(`${r.target}: ${r.why}`, async () => {
      const target = all.find((t: { name: string }) => t.name === r.target);
      const packages = { quant: await PACKAGES.quant!(), models: await PACKAGES.models!() };
      expect(['ok', 'rejected']).toContain(await target.check(r.input, packages));
    });
  }
});
