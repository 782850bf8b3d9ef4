import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, test } from 'vitest';

// issue 13 (reliability), CLI part: limits on numbers (8b) and a closed stdout pipe (8c)
const CLI = resolve('apps/cli/dist/cli.js');
const MODEL = resolve('../shared/models/xq-llama-20m');
const PASSKEY = resolve('../shared/eval/passkey_256.jsonl');
const built = existsSync(CLI) && existsSync(resolve('packages/eval/dist/index.js'));

function xquant(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(!built)('xquant reliability (built CLI) — needs `pnpm build` first', () => {
  test('issue 13 item 8b: numbers above their named limit are usage errors before anything is loaded', () => {
    // the model path does not exist: a limit checked after loading would report E_IO (exit 1) instead
    const steps = xquant('bench', '--model', '/nonexistent/model', '--steps', '1e9');
    expect(steps.code).toBe(2);
    expect(steps.stderr).toMatch(/--steps must be at most 100000 \(CLI_INT_LIMITS\['steps'\]\); got 1e9/);
    expect(steps.stderr).not.toMatch(/E_IO/);
    const ctx = xquant('bench', '--model', '/nonexistent/model', '--contexts', '256,99999999');
    expect([ctx.code, ctx.stderr]).toEqual([2, expect.stringMatching(/--contexts must be at most 65536/)]);
    const many = xquant('bench', '--model', '/nonexistent/model', '--contexts', Array.from({ length: 300 }, (_, i) => i + 1).join(','));
    expect([many.code, many.stderr]).toEqual([2, expect.stringMatching(/--contexts takes at most 256 values/)]);
    const gen = xquant('generate', '--model', '/nonexistent/model', '--prompt', 'x', '--max-new-tokens', '1e12');
    expect([gen.code, gen.stderr]).toEqual([2, expect.stringMatching(/--max-new-tokens must be at most 1048576/)]);
    const res = xquant('eval', '--model', '/nonexistent/model', '--data', 'x.jsonl', '--residual-length', String(2 ** 30));
    expect([res.code, res.stderr]).toEqual([2, expect.stringMatching(/--residual-length must be at most 65536/)]);
    // at the limit the flag is accepted (the run then fails on the missing model, exit 1)
    expect(xquant('bench', '--model', '/nonexistent/model', '--steps', '100000').code).toBe(1);
  });

  test.skipIf(!existsSync(MODEL))('issue 13 item 8c: `xquant generate … | head -c 1` exits 0 quietly and stops generating (needs ../shared/models)', () => {
    const cmd = `"${process.execPath}" "${CLI}" generate --model "${MODEL}" --prompt "The configuration file" --max-new-tokens 400 --ignore-eos --backend cpu | head -c 1; echo "rc=\${PIPESTATUS[0]}" >&2`;
    const t0 = performance.now();
    const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8', timeout: 120_000 });
    const seconds = (performance.now() - t0) / 1000;
    expect(r.stdout).toBe('T');
    expect(r.stderr).toMatch(/rc=0\s*$/);
    expect(r.stderr).not.toMatch(/EPIPE|Error|at /);
    // it stops at the first token after the pipe closed: no "400 tokens" summary line
    expect(r.stderr).not.toMatch(/tokens \(length\)/);
    expect(seconds).toBeLessThan(60);
  });

  test('issue 13 item 10: unwritable --out fails before the run with E_IO naming the flag and the directory', () => {
    // the data and model do not exist either: an output check after them would report those instead
    const t0 = performance.now();
    const r = xquant('eval', '--model', '/nonexistent/model', '--data', '/nonexistent.jsonl', '--out', '/missing/dir/x.json');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/XqError \[E_IO\]: --out \/missing\/dir\/x\.json: the directory \/missing\/dir does not exist/);
    const dir = mkdtempSync(join(tmpdir(), 'xq-out-'));
    expect(xquant('eval', '--model', '/nonexistent/model', '--data', 'x.jsonl', '--out', dir).stderr).toMatch(/is a directory; name a file/);
    expect(xquant('bench', '--model', '/nonexistent/model', '--out', '/missing/dir/b.json').stderr).toMatch(/--out \/missing\/dir\/b\.json: the directory/);
    expect(xquant('plan', '--model', '/nonexistent/model', '--budget', '2', '--out', '/missing/p.json/x').stderr).toMatch(/E_IO.*--out/);
    expect(xquant('eval', 'merge', join(dir, 'a.json'), '--out', '/missing/dir/m.json').stderr).toMatch(/--out \/missing\/dir\/m\.json: the directory/);
    expect(xquant('eval', '--model', 'm', '--data', 'd', '--resume').code).toBe(2);
    expect(performance.now() - t0).toBeLessThan(60_000);
  });

  test('issue 13 item 10: xquant report on malformed results is E_FORMAT naming the field, not a TypeError', () => {
    const dir = mkdtempSync(join(tmpdir(), 'xq-report-'));
    const cases: [unknown, RegExp][] = [
      [{ format: 'xquant-eval/v1', model: { name: 'm', path: 'm', architecture: 'llama', layers: 1, kvHeads: 1, headDim: 8, vocabSize: 9 } }, /backend must be a string, got nothing \(missing\)/],
      [{ format: 'xquant-bench/v1', model: 'm', backend: 'cpu', steps: 2, speed: [{ config: 'full' }], memory: [] }, /speed\[0\]\.method must be a string/],
      [{ format: 'xquant-plan/v1', preset: { name: 'p' }, best: { options: { keys: [], values: 3 } }, candidates: [] }, /best\.options\.values must be an array, got number 3/],
      [null, /not an xquant eval, bench or plan result/],
    ];
    for (const [json, message] of cases) {
      const f = join(dir, 'in.json');
      writeFileSync(f, JSON.stringify(json));
      const r = xquant('report', '--in', f, '--out', join(dir, 'r.html'));
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/XqFormatError \[E_FORMAT\]/);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toMatch(/TypeError/);
    }
  });

  test.skipIf(!existsSync(MODEL) || !existsSync(PASSKEY))(
    'issue 13 item 10: an eval killed after its first record (of 2) resumes with --resume and equals the uninterrupted run (needs ../shared)',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'xq-resume-'));
      const args = (out: string) => ['eval', '--model', MODEL, '--data', PASSKEY, '--limit', '2', '--caches', 'kivi-2', '--backend', 'wasm', '--json', '--out', out];
      const ref = xquant(...args(join(dir, 'ref.json')));
      expect(ref.code, ref.stderr).toBe(0);
      expect(existsSync(join(dir, 'ref.json.partial.jsonl'))).toBe(false);
      // run again and kill it (SIGKILL: no clean-up) as soon as the checkpoint holds one finished record
      const out = join(dir, 'run.json');
      const checkpoint = `${out}.partial.jsonl`;
      const child = spawn(process.execPath, [CLI, ...args(out)], { stdio: 'ignore' });
      const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
      for (let waited = 0; ; waited += 50) {
        if (existsSync(checkpoint) && readFileSync(checkpoint, 'utf8').split('\n').filter(Boolean).length >= 2) break;
        if (waited > 100_000) throw new Error('no record was checkpointed');
        await new Promise((r) => setTimeout(r, 50));
      }
      child.kill('SIGKILL');
      await exited;
      expect(existsSync(out)).toBe(false);
      const saved = readFileSync(checkpoint, 'utf8').split('\n').filter(Boolean);
      expect(saved.length).toBeGreaterThanOrEqual(2);
      expect(saved.length).toBe(2); // the header and record 0, not both records
      // without --resume the checkpoint is not overwritten
      const refused = xquant(...args(out));
      expect([refused.code, refused.stderr]).toEqual([1, expect.stringMatching(/E_STATE.*pass --resume to continue it/)]);
      // a checkpoint of another run is refused, naming what differs
      const other = xquant(...args(out).map((a) => (a === '2' ? '1' : a)), '--resume');
      expect([other.code, other.stderr]).toEqual([1, expect.stringMatching(/E_CONFIG.*its limit is 2, this run's 1/)]);
      // a torn last line (killed while writing) is dropped
      writeFileSync(checkpoint, `${saved.join('\n')}\n{"kind":"pass`);
      const resumed = xquant(...args(out), '--resume');
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.stderr).toMatch(new RegExp(`resuming .*: ${saved.length - 1} records already done`));
      expect(existsSync(checkpoint)).toBe(false);
      const a = JSON.parse(readFileSync(join(dir, 'ref.json'), 'utf8')) as Record<string, unknown>;
      const b = JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>;
      const strip = (r: Record<string, unknown>) => ({ ...r, timing: undefined, model: { ...(r.model as object), path: undefined } });
      expect(strip(b)).toEqual(strip(a));
      expect((b.passkey as unknown[]).length).toBe(2);
    },
    300_000,
  );
});
