import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, test } from 'vitest';
import { requestNodeDevice } from '@xquant/webgpu';

const CLI = resolve(process.env.XQ_CLI ?? 'apps/cli/dist/cli.js');
const MODEL = resolve('models/xq-demo');
process.env.XDG_RUNTIME_DIR ??= '/tmp';
const built = existsSync(CLI) && /\bgpu\b/.test(spawnSync(process.execPath, [CLI, '--help'], { encoding: 'utf8', timeout: 60_000 }).stdout ?? '');
let adapter = false;
try {
  const g = await requestNodeDevice();
  adapter = g !== null;
  g?.device.destroy();
} catch {
  adapter = false;
}

function xquant(command: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, command, ...args], { encoding: 'utf8', timeout: 300_000, env: { ...process.env, GALLIVM_PERF: 'nopt' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe.skipIf(!built || !adapter)(`xquant gpu (built CLI, WebGPU adapter) — ${!built ? 'needs a pnpm build with the gpu command' : !adapter ? 'no WebGPU adapter (scripts/setup-webgpu.sh)' : 'ready'}`, () => {
  test('usage errors exit 2; greedy ids with the full cache, with and without --subgroups --prefetch-weights, and with the prompt one position at a time (--prefill-batch 1), equal `xquant generate` on the bundled model', async () => {
    expect(xquant('gpu', '--prompt', 'x').code).toBe(2);
    expect(xquant('gpu', '--model', MODEL, '--prompt', 'x', '--max-new-tokens', '0').stderr).toMatch(/--max-new-tokens must be a positive integer/);
    const gpu = xquant('gpu', '--model', MODEL, '--prompt', 'The configuration file', '--max-new-tokens', '12', '--json');
    expect(gpu.code, gpu.stderr).toBe(0);
    const cpu = xquant('generate', '--model', MODEL, '--prompt', 'The configuration file', '--max-new-tokens', '12', '--ignore-eos', '--backend', 'wasm', '--json');
    expect(cpu.code, cpu.stderr).toBe(0);
    const g = JSON.parse(gpu.stdout.trim().split('\n').pop()!) as { ids: number[]; memory: { cache: { tokens: number } }; attention: { keyScores: string; geometry: string } };
    const c = JSON.parse(cpu.stdout.trim().split('\n').pop()!) as { ids: number[] };
    expect(g.ids).toEqual(c.ids);
    expect(g.memory.cache.tokens).toBeGreaterThan(12);
    // the prompt one position at a time instead of in one batch: the same ids; bad batch sizes exit 2
    const one = xquant('gpu', '--model', MODEL, '--prompt', 'The configuration file', '--max-new-tokens', '12', '--prefill-batch', '1', '--json');
    expect(one.code, one.stderr).toBe(0);
    // (the bundled model's products are small: none is split)
    expect(JSON.parse(one.stdout.trim().split('\n').pop()!)).toMatchObject({ ids: c.ids, prefillBatch: 1, matvecSplits: { qkv: 1, o: 1, gateUp: 1, down: 1, lmHead: 1 } });
    expect(xquant('gpu', '--model', MODEL, '--prompt', 'x', '--prefill-batch', '0').stderr).toMatch(/--prefill-batch must be a positive integer/);
    expect(xquant('gpu', '--model', MODEL, '--prompt', 'x', '--prefill-batch', '257').stderr).toMatch(/--prefill-batch must be at most 256/);
    expect(xquant('gpu', '--model', MODEL, '--prompt', 'x', '--prefill-attention', 'fp32').stderr).toMatch(/--prefill-attention must be full-precision or cache, got 'fp32'/);
    // the subgroup reductions (where the adapter has one subgroup size): the same greedy ids
    const probe = await requestNodeDevice();
    const sizes = [probe?.adapter.info?.subgroupMinSize, probe?.adapter.info?.subgroupMaxSize];
    const subgroups = (probe?.device.features.has('subgroups') ?? false) && sizes[0] !== undefined && sizes[0] === sizes[1];
    probe?.device.destroy();
    if (subgroups) {
      const sg = xquant('gpu', '--model', MODEL, '--prompt', 'The configuration file', '--max-new-tokens', '12', '--subgroups', '--prefetch-weights', '--json');
      expect(sg.code, sg.stderr).toBe(0);
      const s = JSON.parse(sg.stdout.trim().split('\n').pop()!) as { ids: number[]; subgroups: boolean; prefetchWeights: boolean; attention: { subgroups: boolean } };
      expect(s.subgroups).toBe(true);
      expect(s.prefetchWeights).toBe(true);
      expect(s.attention.subgroups).toBe(true);
      expect(s.ids).toEqual(c.ids);
    }
    // fp16 rows: no packed keys, so float key scores; the short prompt runs the short-context geometry
    expect(g.attention).toMatchObject({ keyScores: 'f32', geometry: 'short-context' });
    const text = xquant('gpu', '--model', MODEL, '--prompt', 'The configuration file', '--max-new-tokens', '4', '--cache', 'xquant-1.38');
    expect(text.code, text.stderr).toBe(0);
    expect(text.stderr).toMatch(/xquant-1\.38 · prefill \d+ tokens \d+ ms · .* ms\/token · attention short-context geometry, f32 key scores, f32 value mix · KV/);
  }, 600_000);

  test('--value-mix f16 runs the half-precision value mix (or is a typed error without shader-f16); --dawn-flags reach Dawn; bad values exit 2', async () => {
    expect(xquant('gpu', '--model', MODEL, '--prompt', 'x', '--value-mix', 'f8').stderr).toMatch(/--value-mix must be f32 or f16, got 'f8'/);
    const g = await requestNodeDevice();
    const f16 = g?.device.features.has('shader-f16') ?? false;
    g?.device.destroy();
    const args = ['--model', MODEL, '--prompt', 'The configuration file', '--max-new-tokens', '4', '--cache', 'xquant-1.38', '--json'];
    // --matrix / --prefill-matrix without subgroup matrices on the device (lavapipe has none): a typed error that says
    // what it needs
    const g2 = await requestNodeDevice();
    const sgm = g2?.device.features.has('chromium-experimental-subgroup-matrix' as GPUFeatureName) ?? false;
    g2?.device.destroy();
    if (!sgm) {
      for (const flag of ['--matrix', '--prefill-matrix']) {
        const m = xquant('gpu', ...args, flag);
        expect(m.code, flag).toBe(1);
        expect(m.stderr).toMatch(/allow_unsafe_apis/);
      }
    }
    const run = xquant('gpu', ...args, '--value-mix', 'f16', '--dawn-flags', 'enable-dawn-features=skip_validation');
    if (!f16) {
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/shader-f16/);
      return;
    }
    expect(run.code, run.stderr).toBe(0);
    const out = JSON.parse(run.stdout.trim().split('\n').pop()!) as { ids: number[]; attention: { valueMix: string } };
    expect(out.attention.valueMix).toBe('f16');
    expect(out.ids).toHaveLength(4);
    // the flags reach Dawn: asking for an adapter that does not exist leaves none
    const none = xquant('gpu', ...args, '--dawn-flags', 'adapter=no-such-adapter-xq');
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no suitable backends|no WebGPU adapter/);
  }, 600_000);
});
