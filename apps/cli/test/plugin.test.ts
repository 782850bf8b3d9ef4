import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, test } from 'vitest';
import { generate, loadModel } from '@xquant/models';
import { createKvCache, defineQuantizedStrategy, registerStrategy, selectBackend, strategyIds } from '@xquant/tfjs';

const CLI = resolve('apps/cli/dist/cli.js');
const built = existsSync(CLI) && /--plugin/.test(spawnSync(process.execPath, [CLI, 'generate', '--help'], { encoding: 'utf8', timeout: 60_000 }).stdout ?? '');
const DEMO = resolve('models/xq-demo');

function xquant(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 240_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The plugin under test: registers `k4v2-edge` (keys 4-bit, values 2-bit, the first layer in full precision) through the API it is given. */
const PLUGIN = `
export default function register({ defineQuantizedStrategy, registerStrategy }) {
  const k4v2 = defineQuantizedStrategy({
    id: 'k4v2-edge',
    layout: (_o, shape) => ({
      keys: Array.from({ length: shape.layers }, (_, l) => ({ bits: l === 0 ? 16 : 4, codesFrom: null })),
      values: Array.from({ length: shape.layers }, (_, l) => ({ bits: l === 0 ? 16 : 2, codesFrom: null })),
    }),
  });
  registerStrategy('k4v2-edge', (o) => k4v2(o));
}
`;

function writePlugin(text: string, name = 'plugin.mjs'): string {
  const file = join(mkdtempSync(join(tmpdir(), 'xq-plugin-')), name);
  writeFileSync(file, text);
  return file;
}

describe.skipIf(!built)('xquant generate / eval / bench --plugin (built CLI) — needs `pnpm build` first', () => {
  test('generate --plugin: the registered strategy runs, with the same ids and memory as the library in-process', async () => {
    const plugin = writePlugin(PLUGIN);
    const r = xquant('generate', '--plugin', plugin, '--model', DEMO, '--prompt', 'The configuration file', '--cache', 'k4v2-edge', '--residual-length', '32', '--max-new-tokens', '40', '--backend', 'wasm', '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`plugin ${plugin}: registered k4v2-edge`);
    const out = JSON.parse(r.stdout) as { ids: number[]; cache: string; memory: { paperBitsPerElement: number; codeBytes: number } };
    expect(out.cache).toBe('k4v2-edge');
    expect(out.memory.paperBitsPerElement).toBeCloseTo((5 * 4 + 5 * 2 + 2 * 16) / 12, 12); // 6 layers, layer 0 at 16 bits
    expect(out.memory.codeBytes).toBeGreaterThan(0);
    // the same strategy through the library, in this process
    if (!strategyIds().includes('k4v2-edge')) {
      const k4v2 = defineQuantizedStrategy({
        id: 'k4v2-edge',
        layout: (_o, shape) => ({
          keys: Array.from({ length: shape.layers }, (_, l) => ({ bits: l === 0 ? 16 : 4, codesFrom: null })),
          values: Array.from({ length: shape.layers }, (_, l) => ({ bits: l === 0 ? 16 : 2, codesFrom: null })),
        }),
      });
      registerStrategy('k4v2-edge', (o) => k4v2(o));
    }
    await selectBackend({ prefer: 'wasm' });
    const m = await loadModel(DEMO);
    const cache = createKvCache('k4v2-edge', m.model.cacheShape, { residualLength: 32 });
    const want = await generate({ model: m.model, tokenizer: m.tokenizer, cache, prompt: 'The configuration file', maxNewTokens: 40 });
    expect(out.ids).toEqual(want.ids);
    expect(out.memory).toEqual(cache.memory());
    cache.dispose();
    m.model.dispose();
  });

  test('without the plugin the id is unknown (exit 2); a missing or throwing plugin exits 1 naming it', () => {
    const plain = xquant('generate', '--model', DEMO, '--prompt', 'x', '--cache', 'k4v2-edge');
    expect(plain.code).toBe(2);
    expect(plain.stderr).toMatch(/--cache must be one of full, kivi-2.*got 'k4v2-edge'/);
    const missing = xquant('generate', '--plugin', '/nonexistent/plugin.mjs', '--model', DEMO, '--prompt', 'x');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/XqError \[E_IO\]: \/nonexistent\/plugin\.mjs: cannot load plugin/);
    const throwing = writePlugin('export default () => { throw new Error("boom"); };');
    const t = xquant('generate', '--plugin', throwing, '--model', DEMO, '--prompt', 'x');
    expect(t.code).toBe(1);
    expect(t.stderr).toMatch(/XqConfigError \[E_CONFIG\]: .*plugin\.mjs: plugin registration failed \(boom\)/);
  });

  test('bench and eval --plugin run the registered strategy beside full', () => {
    const plugin = writePlugin(PLUGIN);
    const b = xquant('bench', '--plugin', plugin, '--model', DEMO, '--caches', 'k4v2-edge', '--residual-length', '32', '--contexts', '64', '--memory-contexts', '128', '--steps', '2', '--backend', 'wasm', '--json');
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toContain('registered k4v2-edge');
    const bench = JSON.parse(b.stdout) as { memory: { config: string; paperBits: number }[]; speed: { config: string }[] };
    expect(bench.memory.map((m) => m.config)).toEqual(['full', 'k4v2-edge/R32/g32']);
    expect(bench.memory[1]!.paperBits).toBeCloseTo(32 / 12 + 30 / 12, 12);
    expect(bench.speed.some((s) => s.config === 'k4v2-edge/R32/g32')).toBe(true);
    const e = xquant('eval', '--plugin', plugin, '--model', DEMO, '--data', join(DEMO, 'eval/prose_256.jsonl'), '--caches', 'k4v2-edge', '--residual-length', '32', '--limit', '1', '--backend', 'wasm', '--json');
    expect(e.code, e.stderr).toBe(0);
    const results = JSON.parse(e.stdout) as { configs: { id: string; strategy: string }[]; prose: { perCache: Record<string, { kl: number; n: number }> }[] };
    expect(results.configs.map((c) => c.id)).toEqual(['full', 'k4v2-edge/R32/g32']);
    const kl = results.prose[0]!.perCache['k4v2-edge/R32/g32']!;
    expect(kl.n).toBeGreaterThan(0);
    expect(kl.kl).toBeGreaterThan(0); // a quantized cache differs from full
  });
});
