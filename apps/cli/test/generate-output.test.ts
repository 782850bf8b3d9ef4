import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, test } from 'vitest';

const CLI = resolve('apps/cli/dist/cli.js');
const built = existsSync(CLI) && /--no-echo/.test(spawnSync(process.execPath, [CLI, 'generate', '--help'], { encoding: 'utf8', timeout: 60_000 }).stdout ?? '');
const DEMO = resolve('models/xq-demo');
const PROMPT = 'The configuration file';

function generate(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, 'generate', '--model', DEMO, '--prompt', PROMPT, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(!built)('xquant generate output on the demo model (built CLI) — needs `pnpm build` first', () => {
  test('the default backend: one short backend line, skipped backends with a short why, no Dawn warnings', () => {
    const r = generate('--max-new-tokens', '4');
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stderr.split('\n').filter(Boolean);
    const backend = lines.filter((l) => l.startsWith('backend: '));
    expect(backend).toHaveLength(1);
    expect(backend[0]!.length).toBeLessThan(200);
    expect(backend[0]).toMatch(/^backend: (wasm|webgpu|tensorflow|tensorflow-gpu|cpu) \(/);
    // Dawn's own messages (Vulkan loader, adapter limits) stay in the probe's child process
    expect(r.stderr).not.toMatch(/Couldn't load Vulkan|artificially reduced|^Warning:/m);
    expect(lines[0]).toMatch(/^backend: /);
  });

  test('the prompt is echoed before the generated text; --no-echo streams only the continuation', () => {
    const echo = generate('--max-new-tokens', '6', '--backend', 'wasm');
    const plain = generate('--max-new-tokens', '6', '--backend', 'wasm', '--no-echo');
    expect(echo.code).toBe(0);
    expect(plain.code).toBe(0);
    expect(echo.stdout.startsWith(PROMPT)).toBe(true);
    expect(echo.stdout).toBe(PROMPT + plain.stdout);
    expect(plain.stdout.trim().length).toBeGreaterThan(0);
    const json = JSON.parse(generate('--max-new-tokens', '6', '--backend', 'wasm', '--json').stdout) as { text: string; backendSkipped: unknown[] };
    expect(`${json.text}\n`).toBe(plain.stdout);
    expect(Array.isArray(json.backendSkipped)).toBe(true);
  });

  test('a short run at the default R says why nothing is quantized and why it holds more than 32 bits; a longer one does not', () => {
    const short = generate('--max-new-tokens', '8', '--backend', 'wasm', '--cache', 'xquant-1.38');
    expect(short.code).toBe(0);
    expect(short.stderr).toMatch(/^cache: xquant-1\.38 \(residual length 128, the default\)$/m);
    const bits = Number(/([\d.]+) stored bits per element/.exec(short.stderr)![1]);
    expect(bits).toBeGreaterThan(32);
    expect(short.stderr).toMatch(/^note: nothing is quantized yet: all 11 tokens are still in the float32 residual window \(R = 128;.*buffers are allocated ahead/m);
    const long = generate('--max-new-tokens', '40', '--backend', 'wasm', '--cache', 'xquant-1.38', '--residual-length', '32');
    expect(long.stderr).toMatch(/^cache: xquant-1\.38 \(residual length 32\)$/m);
    expect(long.stderr).toMatch(/codes [1-9]\d*, /);
    expect(long.stderr).not.toMatch(/^note: /m);
    expect(generate('--max-new-tokens', '4', '--backend', 'wasm').stderr).not.toMatch(/^note: /m); // full: nothing to explain
  });
});
