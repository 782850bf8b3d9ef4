import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, test } from 'vitest';
import { SafetensorsFile } from '@xquant/models';

// XQ_CLI may point at another build of the dispatcher (same argv: `generate …`)
const CLI = resolve(process.env.XQ_CLI ?? 'apps/cli/dist/cli.js');
const MODEL = resolve('../shared/models/xq-llama-20m');
const REF = resolve('../shared/eval/refs/xq-llama-20m.safetensors');
const PROMPTS = resolve('../shared/eval/prompts.json');
// a CLI built before `generate` existed cannot run these tests: skip rather than fail on a stale dist/
const built = existsSync(CLI) && /\bgenerate\b/.test(spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8', timeout: 60_000 }).stdout ?? '');

function xquant(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, 'generate', ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(!built)('xquant generate (built CLI) — needs a `pnpm build` that includes generate', () => {
  test('usage errors exit 2 and name the option; --help exits 0', () => {
    const help = xquant('--help');
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--cache PRESET .*xquant-1\.38/);
    expect(xquant('--prompt', 'x').stderr).toMatch(/--model is required/);
    const bad = xquant('--model', 'm', '--prompt', 'x', '--cache', 'kivi-3');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--cache must be one of full, kivi-2/);
    expect(xquant('--model', 'm', '--prompt', 'x', '--top-p', '0').stderr).toMatch(/--top-p must be in \(0, 1\], got '0'/);
    expect(xquant('--model', 'm', '--prompt', 'x', '--backend', 'tpu').code).toBe(2);
    expect(xquant('--model', 'm', '--prompt', 'x', '--frobnicate').code).toBe(2);
  });

  test('wrong path, unsupported architecture and missing tokenizer fail with exit 1 and a clear message', () => {
    const missing = xquant('--model', '/nonexistent/model', '--prompt', 'x', '--backend', 'cpu');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/XqError \[E_IO\]: \/nonexistent\/model: no such file or directory/);
    const dir = mkdtempSync(join(tmpdir(), 'xq-gen-'));
    const config = { model_type: 'llama', hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 4, intermediate_size: 64, vocab_size: 300 };
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, model_type: 'mistral', architectures: ['MistralForCausalLM'] }));
    const arch = xquant('--model', dir, '--prompt', 'x', '--backend', 'cpu');
    expect(arch.code).toBe(1);
    expect(arch.stderr).toMatch(/XqConfigError \[E_CONFIG\]: .*unsupported architecture .*"mistral".*supported: llama/);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    const tok = xquant('--model', dir, '--prompt', 'x', '--backend', 'cpu');
    expect(tok.code).toBe(1);
    expect(tok.stderr).toMatch(/tokenizer\.json not found/);
  });

  describe.skipIf(!existsSync(MODEL) || !existsSync(REF))('on xq-llama-20m — needs ../shared/models and ../shared/eval/refs', () => {
    const short = existsSync(PROMPTS) ? (JSON.parse(readFileSync(PROMPTS, 'utf8')) as { text: string; input_ids: number[] }[])[0]! : undefined;

    test('greedy --json: ids equal the reference greedy continuation of the short prompt', async () => {
      const ref = await SafetensorsFile.open(REF);
      const want = Array.from(await ref.readRaw('short.greedy_ids'), Number);
      await ref.close();
      const r = xquant('--model', MODEL, '--prompt', short!.text, '--max-new-tokens', '32', '--ignore-eos', '--backend', 'wasm', '--json');
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as Record<string, any>;
      expect(out.promptIds).toEqual(short!.input_ids);
      expect(out.ids).toEqual(want);
      expect(out).toMatchObject({ backend: 'wasm', cache: 'full', architecture: 'llama', stopReason: 'length' });
      expect(out.memory).toMatchObject({ tokens: 20 + 31, residualBytes: out.memory.totalBytes, paperBitsPerElement: 16 });
      expect(out.timings.tokensPerSecond).toBeGreaterThan(0);
      expect(typeof out.text).toBe('string');
    });

    test('--cache @preset.json runs a preset file (a codebook plan here); a missing file exits 2 naming it', () => {
      const plan = resolve('docs/report/plans14/xq-llama-20m.tqplan-R32.b2.set-refine4.json');
      const r = xquant('--model', MODEL, '--prompt', short!.text, '--max-new-tokens', '24', '--ignore-eos', '--residual-length', '8', '--cache', `@${plan}`, '--backend', 'wasm', '--json');
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as Record<string, any>;
      expect(out.ids).toHaveLength(24);
      // the plan's mean code width, and codes stored past the 8-token window
      expect(out.memory.paperBitsPerElement).toBeCloseTo(1.625, 6);
      expect(out.memory.codeBytes).toBeGreaterThan(0);
      const streamed = xquant('--model', MODEL, '--prompt', short!.text, '--max-new-tokens', '2', '--cache', `@${plan}`, '--backend', 'cpu');
      expect(streamed.stderr).toMatch(/cache: tqplan-2b-R32-set-refined \(turboquant, from .*set-refine4\.json\) \(residual length 32/);
      const missing = xquant('--model', MODEL, '--prompt', 'x', '--cache', '@/nonexistent/plan.json');
      expect(missing.code).toBe(2);
      expect(missing.stderr).toMatch(/\/nonexistent\/plan\.json: preset file not found/);
      const corrupt = join(mkdtempSync(join(tmpdir(), 'xq-gen-')), 'plan.json');
      writeFileSync(corrupt, '{"strategy": "turboquant", "options": ');
      const broken = xquant('--model', MODEL, '--prompt', 'x', '--cache', `@${corrupt}`);
      expect(broken.code).toBe(2);
      expect(broken.stderr).toMatch(/plan\.json: not a JSON preset file/);
    });

    test('streaming mode: text on stdout; backend, tokens/s and cache memory with both bit counts on stderr', () => {
      const r = xquant('--model', MODEL, '--prompt', short!.text, '--max-new-tokens', '8', '--cache', 'kivi-2', '--residual-length', '32', '--backend', 'cpu');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim().length).toBeGreaterThan(0);
      expect(r.stderr).toMatch(/^backend: cpu \(/m);
      expect(r.stderr).toMatch(/cache: kivi-2 \(residual length 32\)/);
      expect(r.stderr).toMatch(/8 tokens \(length\) after a 20-token prompt: .* tokens\/s overall/);
      expect(r.stderr).toMatch(/cache memory: \d+ bytes for 27 tokens .*; 2\.000 paper bits, [\d.]+ stored bits per element/);
    });
  });
});
