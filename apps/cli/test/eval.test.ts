import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, test } from 'vitest';

const CLI = resolve('apps/cli/dist/cli.js');
const built = existsSync(CLI) && existsSync(resolve('packages/eval/dist/index.js'));

function xquant(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A results file of one shard: record `index` of a 2-record prose file, configs full + kivi-2. */
function shard(index: number) {
  const sums = (kl: number) => ({ n: 448, nll: 448 * (3 + index / 10 + kl), nllExclFirst: 447 * (3 + index / 10 + kl), kl: 448 * kl, top1: 400 - index });
  return {
    format: 'xquant-eval/v1',
    model: { name: 'tiny', path: 'tiny', architecture: 'llama', layers: 2, kvHeads: 1, headDim: 32, vocabSize: 64 },
    backend: 'cpu',
    protocol: { prosePrefill: 64, passkeyTail: 16, passkeyMaxNew: 8, eosIds: [1], sharedPrefill: true },
    files: [{ name: 'prose.jsonl', kind: 'prose', records: 2, selected: 1 }],
    limit: null,
    shards: [{ index, count: 2 }],
    configs: [
      { id: 'full', method: 'full', strategy: 'full', options: {}, residualLength: null, groupSize: null, paperBits: 16, storedBits: 16, heldBits: 32, tokens: 2048 },
      { id: 'kivi-2/R32/g32', method: 'kivi-2', strategy: 'kivi-2', options: { residualLength: 32, groupSize: 32 }, residualLength: 32, groupSize: 32, paperBits: 2, storedBits: 3.1, heldBits: 3.3, tokens: 2048 },
    ],
    prose: [{ file: 'prose.jsonl', index, id: `r${index}`, perCache: { full: sums(0), 'kivi-2/R32/g32': sums(0.1) } }],
    passkey: [],
    timing: { full: { seconds: 1, steps: 448, records: 1 } },
  };
}

describe.skipIf(!built)('xquant eval / merge / report / bench / plan (built CLI) — needs `pnpm build` first', () => {
  test('plan: a budget list needs --codebook and positive numbers (exit 2); --codebook on a missing model is E_IO', () => {
    expect(xquant('plan', '--model', 'x', '--budget', '2,3').code).toBe(2);
    expect(xquant('plan', '--model', 'x', '--budget', '2,x', '--codebook').code).toBe(2);
    const dir = mkdtempSync(join(tmpdir(), 'xq-plan-'));
    const noModel = xquant('plan', '--codebook', '--model', join(dir, 'none'), '--budget', '2');
    expect(noModel.code).toBe(1);
    expect(noModel.stderr).toMatch(/E_IO/);
    expect(xquant('plan', '--model', 'x', '--budget', '2', '--calibration', 'c.txt', '--calibration-set').code).toBe(2);
    // a calibration JSONL is read record by record: a record without input_ids or text is named
    const cal = join(dir, 'cal.jsonl');
    writeFileSync(cal, `${JSON.stringify({ text: 'One prompt. Two sentences.' })}\n${JSON.stringify({ ids: [1, 2] })}\n`);
    const badRecord = xquant('plan', '--codebook', '--model', resolve('models/xq-demo'), '--budget', '2', '--calibration', cal, '--backend', 'cpu');
    expect([badRecord.code, badRecord.stderr]).toEqual([1, expect.stringMatching(/record 1 has neither input_ids nor text/)]);
  });
  test('usage errors exit 2, --help exits 0, a wrong model path exits 1 with E_IO', () => {
    expect(xquant('eval').code).toBe(2);
    expect(xquant('eval', '--model', 'x', '--data', 'y', '--limit', '0').code).toBe(2);
    const bad = xquant('eval', '--frobnicate');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/usage: xquant eval/);
    expect(xquant('eval', '--help').stdout).toMatch(/--shard i\/n/);
    const vg = xquant('eval', '--model', 'x', '--data', 'y', '--value-group-size', '32,64');
    expect(vg.code).not.toBe(0);
    expect(vg.stderr).toMatch(/--value-group-size takes one value/);
    const old = xquant('eval', '--model', 'x', '--data', 'y', '--residual', '0'); // the deprecated spelling maps to --residual-length
    expect([old.code, old.stderr]).toEqual([2, expect.stringMatching(/--residual is deprecated; use --residual-length[\s\S]*--residual-length must be a positive integer/)]);
    expect(xquant('eval', 'join').code).toBe(2);
    for (const cmd of ['bench', 'report', 'plan']) {
      expect(xquant(cmd, '--help').code).toBe(0);
      expect(xquant(cmd).code).toBe(2);
    }
    const dir = mkdtempSync(join(tmpdir(), 'xq-evalcli-'));
    writeFileSync(join(dir, 'p.jsonl'), '{"input_ids":[0,1,2]}\n');
    const missing = xquant('eval', '--model', join(dir, 'nope'), '--data', join(dir, 'p.jsonl'), '--backend', 'cpu');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/E_IO.*no such file or directory/);
    const unknown = xquant('eval', '--model', dir, '--data', join(dir, 'p.jsonl'), '--caches', 'kivi-3');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/E_STRATEGY_UNKNOWN.*kivi-3/);
  });

  test('eval merge: shards → one result (JSON + markdown), overlapping shards fail', () => {
    const dir = mkdtempSync(join(tmpdir(), 'xq-evalcli-'));
    writeFileSync(join(dir, 's1.json'), JSON.stringify(shard(1)));
    writeFileSync(join(dir, 's0.json'), JSON.stringify(shard(0)));
    const out = join(dir, 'merged.json');
    const r = xquant('eval', 'merge', join(dir, 's1.json'), join(dir, 's0.json'), '--out', out);
    expect(r.code, r.stderr).toBe(0);
    const merged = JSON.parse(readFileSync(out, 'utf8'));
    expect(merged.prose.map((p: { index: number }) => p.index)).toEqual([0, 1]);
    expect(merged.shards).toEqual([{ index: 0, count: 2 }, { index: 1, count: 2 }]);
    expect(merged.timing.full.records).toBe(2);
    const md = readFileSync(join(dir, 'merged.md'), 'utf8');
    // kivi-2: ppl = exp(mean NLL) = exp((3.1 + 3.2) / 2), KL 0.1, top-1 = 799/896
    expect(md).toContain(`| kivi-2 | 2.000 | 3.100 | 3.300 | ${Math.exp(3.15).toFixed(2)} |`);
    expect(md).toContain(`| 0.1000 | ${(799 / 896).toFixed(4)} |`);
    expect(r.stdout).toBe(`${md}`);
    const dup = xquant('eval', 'merge', join(dir, 's0.json'), join(dir, 's0.json'));
    expect(dup.code).toBe(1);
    expect(dup.stderr).toMatch(/appears in more than one input/);
  });

  test('report: eval + bench JSON → one HTML file with inline SVG; a foreign JSON fails', () => {
    const dir = mkdtempSync(join(tmpdir(), 'xq-evalcli-'));
    writeFileSync(join(dir, 'r.json'), JSON.stringify(shard(0)));
    const bench = {
      format: 'xquant-bench/v1', model: 'tiny', backend: 'cpu', steps: 2,
      speed: [{ config: 'full', method: 'full', residualLength: null, groupSize: null, context: 64, msPerStep: 3, bytes: 1000 }],
      memory: [256, 512].map((context) => ({ config: 'full', method: 'full', context, heldBytes: context * 512, heldBits: 32, storedBits: 16, paperBits: 16 })),
    };
    writeFileSync(join(dir, 'b.json'), JSON.stringify(bench));
    const html = join(dir, 'report.html');
    const r = xquant('report', '--in', join(dir, 'r.json'), join(dir, 'b.json'), '--out', html, '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).out).toBe(html);
    const page = readFileSync(html, 'utf8');
    expect(page).toMatch(/^<!DOCTYPE html>/);
    expect(page.match(/<svg /g)!.length).toBeGreaterThanOrEqual(4);
    expect(page).not.toMatch(/<script|src=/);
    writeFileSync(join(dir, 'x.json'), '{"hello": 1}');
    const bad = xquant('report', '--in', join(dir, 'x.json'), '--out', html);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/not an xquant eval, bench or plan result/);
  });
});
