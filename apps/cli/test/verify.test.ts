import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, test } from 'vitest';

const CLI = resolve('apps/cli/dist/cli.js');
const GOLDEN = resolve('../shared/golden/f_packing.json');
const built = existsSync(CLI) && existsSync(resolve('packages/conformance/dist/index.js'));

function xquant(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(!built)('xquant verify (built CLI) — needs `pnpm build` first', () => {
  test('usage errors exit 2; --help exits 0', () => {
    expect(xquant('verify').code).toBe(2);
    const bad = xquant('verify', '--frobnicate', 'x.json');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/usage: xquant verify/);
    const help = xquant('verify', '--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--json OUT/);
  });

  test('an unreadable or non-golden file is reported and fails the run', () => {
    const dir = mkdtempSync(join(tmpdir(), 'xq-verify-'));
    writeFileSync(join(dir, 'broken.json'), '{"family": "a_keys", "cases": [');
    const r = xquant('verify', join(dir, 'broken.json'), join(dir, 'missing.json'));
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/broken\.json: ERROR XqFormatError \[E_FORMAT\]: .*not valid JSON/);
    expect(r.stdout).toMatch(/missing\.json: ERROR XqError \[E_IO\]: cannot read golden file/);
    expect(r.stdout.trim().split('\n').at(-1)).toBe('0 passed, 2 failed');
  });

  describe.skipIf(!existsSync(GOLDEN))('on golden files — needs ../shared/golden', () => {
    test('a golden file: one PASS line per case, summary, exit 0, --json file', () => {
      const dir = mkdtempSync(join(tmpdir(), 'xq-verify-'));
      const out = join(dir, 'report.json');
      const r = xquant('verify', GOLDEN, '--json', out);
      expect(r.code).toBe(0);
      const lines = r.stdout.trim().split('\n');
      const caseLines = lines.filter((l) => /PASS|FAIL/.test(l));
      expect(caseLines).toHaveLength(8);
      for (const l of caseLines) expect(l).toMatch(/^\S+_pack_D64_T64_gs\d+_b\d\s+maxAbsErr 0\s+mismatchedCodes 0\s+PASS$/);
      expect(lines.at(-1)).toBe('8 passed, 0 failed');
      const report = JSON.parse(readFileSync(out, 'utf8'));
      expect(report).toMatchObject({ passed: 8, failed: 0 });
      expect(report.files[0]).toMatchObject({ family: 'f_packing', error: null });
      expect(report.files[0].cases[0]).toMatchObject({ passed: true, maxAbsError: 0, mismatchedCodes: 0 });
      expect(report.files[0].cases[0].detail).toMatch(/bit-exact: codes, packed, packed_pack_tensor/);
    });

    test('a corrupted copy: the altered case fails with its figures, exit 1; --json - writes JSON to stdout', () => {
      const dir = mkdtempSync(join(tmpdir(), 'xq-verify-'));
      const copy = join(dir, 'f_corrupt.json');
      copyFileSync(GOLDEN, copy);
      const file = JSON.parse(readFileSync(copy, 'utf8'));
      const codes = file.cases[2].arrays.codes;
      const buf = Buffer.from(codes.b64, 'base64');
      const data = new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
      for (const i of [10, 11, 12]) data[i] = (data[i]! + 1) % 16; // case 2 is 4-bit
      codes.b64 = Buffer.from(new Uint8Array(data.buffer)).toString('base64');
      writeFileSync(copy, JSON.stringify(file));

      const r = xquant('verify', copy);
      expect(r.code).toBe(1);
      const failLine = r.stdout.split('\n').find((l) => l.includes('FAIL'));
      expect(failLine).toMatch(new RegExp(`^${file.cases[2].name}\\s+maxAbsErr 0\\s+mismatchedCodes 3\\s+FAIL\\s+codes: 3/8192 differ; first at \\[0,0,0,10\\]`));
      expect(r.stdout.trim().split('\n').at(-1)).toBe('7 passed, 1 failed');

      const j = xquant('verify', copy, '--json', '-');
      expect(j.code).toBe(1);
      const report = JSON.parse(j.stdout);
      expect(report).toMatchObject({ passed: 7, failed: 1 });
      expect(report.files[0].cases.filter((c: { passed: boolean }) => !c.passed).map((c: { name: string }) => c.name)).toEqual([file.cases[2].name]);
      expect(j.stderr).toMatch(/7 passed, 1 failed/);
    });
  });
});
