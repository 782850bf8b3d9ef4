// The built web app (apps/web/dist) in Debian's headless chromium, served by a static file server on 127.0.0.1:
// greedy output equals the Node run of the same library token for token, and the memory panel equals cache.memory().
// Screenshots are kept in test-artifacts/. Skips with a one-line reason when chromium or the build is missing.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generate, loadModel, type LoadedModel } from '@xquant/models';
import { createKvCache, selectBackend, type KvMemoryReport } from '@xquant/tfjs';
import { startStaticServer, type StaticServer } from '../../../scripts/static-server.mjs';
import { tinyGguf, tinySpec, tinyWeights } from '../../../packages/models/test/support/tiny.js';

const DIST = resolve('apps/web/dist');
const ARTIFACTS = resolve('test-artifacts');
const CHROMIUM = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p): p is string => !!p && existsSync(p));
const built = existsSync(join(DIST, 'index.html')) && existsSync(join(DIST, 'models/xq-demo/model.safetensors'));
const missing = !CHROMIUM ? 'chromium is not installed (.ci/run installs Debian chromium; or set CHROMIUM_PATH)' : !built ? 'apps/web/dist is not built (pnpm build)' : undefined;

const PROMPT = 'The configuration file';
/** A plan JSON as `xquant plan --out` writes it, for the demo model's 6 layers. */
const PLAN = {
  name: 'test-plan-6',
  strategy: 'planned',
  options: {
    residualLength: 32,
    keys: [4, 2, 2, 2, 2, 4].map((bits) => ({ bits, codesFrom: null })),
    values: [2, 1, 1, 1, 1, 2].map((bits, l) => ({ bits, codesFrom: l === 2 ? 1 : null })),
    valueCalibration: 'least-squares',
  },
};

let server: StaticServer | undefined;
let browser: Browser | undefined;
let demo: LoadedModel | undefined;

beforeAll(async () => {
  if (missing) return;
  tf.enableProdMode();
  await selectBackend({ prefer: 'wasm' });
  demo = await loadModel('models/xq-demo');
  server = await startStaticServer({ root: DIST });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // as root in CI: no sandbox; no background traffic (the machine has no outside network); WebGPU exposed (a
    // software adapter, SwiftShader, when there is no GPU)
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--enable-unsafe-webgpu'],
  });
  mkdirSync(ARTIFACTS, { recursive: true });
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
  demo?.model.dispose();
});

/** The Node run: the same library, the same model, cache and settings as the page. */
async function nodeRun(model: LoadedModel, strategy: string, options: Record<string, unknown>, prompt: string, maxNewTokens: number) {
  const cache = createKvCache(strategy, model.model.cacheShape, options);
  try {
    const r = await generate({ model: model.model, tokenizer: model.tokenizer, cache, prompt, maxNewTokens, temperature: 0 });
    return { ids: r.ids, memory: cache.memory(), text: r.text };
  } finally {
    cache.dispose();
  }
}

/** What a real `full` cache holds for `tokens` tokens of the demo model. */
function realFullMemory(model: LoadedModel, tokens: number): KvMemoryReport {
  const shape = model.model.cacheShape;
  const cache = createKvCache('full', shape);
  for (let l = 0; l < shape.layers; l++) {
    const k = tf.zeros([shape.kvHeads, tokens, shape.headDim]) as tf.Tensor3D;
    cache.prefill(l, k, k);
    k.dispose();
  }
  const m = cache.memory();
  cache.dispose();
  return m;
}

async function openPage(): Promise<Page> {
  const page = await browser!.newPage({ viewport: { width: 1200, height: 1100 } });
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  (page as Page & { errors: string[] }).errors = errors;
  await page.goto(server!.url);
  return page;
}

/** A page with `preset` picked as a plan JSON from disk (as `xquant plan --out` writes it), once the page shows it. */
async function openPageWithPlan(preset: { name: string; strategy: string; options: Record<string, unknown> }): Promise<Page> {
  const file = join(mkdtempSync(join(tmpdir(), 'xq-web-')), 'plan.json');
  writeFileSync(file, JSON.stringify({ format: 'xquant-plan/v1', preset }));
  const page = await openPage();
  await page.selectOption('#cache', 'plan');
  await page.setInputFiles('#plan', file);
  await page.waitForFunction((name) => document.getElementById('cache-status')?.textContent?.includes(`plan ${name}`) ?? false, preset.name);
  return page;
}

/** Whether headless chromium offers a WebGPU adapter here (a software one, SwiftShader, without a GPU). */
async function hasWebGpuAdapter(): Promise<boolean> {
  const probe = await openPage();
  const found = await probe.evaluate(async () => Boolean(await (navigator as { gpu?: { requestAdapter(): Promise<unknown> } }).gpu?.requestAdapter()));
  await probe.close();
  return found;
}

/** Fill the form, generate, wait for the end; returns the page's ids, memory reports and status. */
async function generateInPage(page: Page, o: { backend: string; cache: string; residual?: number; tokens: number; prompt?: string; timeout?: number }) {
  await page.selectOption('#backend', o.backend);
  await page.selectOption('#cache', o.cache);
  if (o.residual !== undefined) await page.fill('#residual', String(o.residual));
  await page.fill('#max-new-tokens', String(o.tokens));
  await page.fill('#prompt', o.prompt ?? PROMPT);
  await page.click('#generate');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state ?? ''), null, { timeout: o.timeout ?? 120_000 });
  const state = await page.evaluate(() => document.body.dataset.state);
  const status = (await page.textContent('#run-status')) ?? '';
  expect(state, `${status} ${(await page.textContent('#model-status')) ?? ''} ${(page as Page & { errors: string[] }).errors.join('; ')}`).toBe('done');
  const attr = async (sel: string, name: string) => JSON.parse((await page.getAttribute(sel, name)) ?? 'null');
  return {
    ids: (await attr('#generated', 'data-ids')) as number[],
    memory: (await attr('#memory', 'data-memory')) as KvMemoryReport,
    full: (await attr('#memory', 'data-full')) as KvMemoryReport,
    kernel: (await attr('#run-status', 'data-kernel')) as { packed: number; prefill: number; fallback: number; codebook: number } | null,
    tensorDelta: Number(await page.getAttribute('#run-status', 'data-tensor-delta')),
    backend: await page.getAttribute('#backend-status', 'data-backend'),
    text: (await page.textContent('#generated')) ?? '',
    cell: async (id: string) => ((await page.textContent(`#${id}`)) ?? '').trim(),
  };
}

async function screenshot(page: Page, name: string): Promise<void> {
  const file = join(ARTIFACTS, name);
  await page.screenshot({ path: file, fullPage: true });
  expect(statSync(file).size).toBeGreaterThan(20_000); // a rendered page, not an empty one
}

describe('web app in headless chromium — needs chromium and a built apps/web', () => {
  it('wasm, xquant-1.38 (R = 32), 60 tokens: the same greedy ids as Node; the memory panel equals cache.memory()', async (ctx) => {
    if (missing) return ctx.skip(missing);
    const want = await nodeRun(demo!, 'xquant-1.38', { residualLength: 32 }, PROMPT, 60);
    const page = await openPage();
    const got = await generateInPage(page, { backend: 'wasm', cache: 'xquant-1.38', residual: 32, tokens: 60 });
    expect(got.backend).toBe('wasm');
    expect(got.ids).toEqual(want.ids);
    expect(got.text).toBe(want.text);
    // 63 tokens held: one block of 32 keys and 31 values are quantized, so the panel shows codes, scales and residual
    expect(got.memory).toEqual(want.memory);
    expect(want.memory.codeBytes).toBeGreaterThan(0);
    expect(await got.cell('m-total')).toBe(want.memory.totalBytes.toLocaleString('en-US'));
    expect(await got.cell('m-codes')).toBe(want.memory.codeBytes.toLocaleString('en-US'));
    expect(await got.cell('m-meta')).toBe(want.memory.metadataBytes.toLocaleString('en-US'));
    expect(await got.cell('m-residual')).toBe(want.memory.residualBytes.toLocaleString('en-US'));
    expect(await got.cell('m-paper')).toBe(want.memory.paperBitsPerElement.toFixed(3));
    expect(await got.cell('m-true')).toBe(want.memory.trueBitsPerElement.toFixed(3));
    expect(await got.cell('m-tokens')).toBe(String(want.memory.tokens));
    expect(Number(await got.cell('m-tps'))).toBeGreaterThan(0);
    // what full would hold = what a real full cache holds for as many tokens
    const full = realFullMemory(demo!, want.memory.tokens);
    expect(got.full).toEqual(full);
    expect(await got.cell('f-total')).toBe(full.totalBytes.toLocaleString('en-US'));
    expect(got.tensorDelta).toBe(0);
    await screenshot(page, 'web-app-wasm-xquant.png');
    await page.close();
  });

  it('wasm, a plan JSON picked from disk: the same greedy ids and memory as Node with the planned strategy', async (ctx) => {
    if (missing) return ctx.skip(missing);
    const want = await nodeRun(demo!, PLAN.strategy, PLAN.options, PROMPT, 40);
    const page = await openPageWithPlan(PLAN);
    // auto: no GPU here, so wasm (headless chromium's WebGPU adapter, if any, is a software one)
    const got = await generateInPage(page, { backend: 'auto', cache: 'plan', tokens: 40 });
    expect(got.backend).toBe('wasm');
    expect(await page.textContent('#backend-status')).toMatch(/^wasm: .*; WebGPU not used: (only a software WebGPU adapter|no WebGPU adapter|this browser has no WebGPU)/);
    expect(got.ids).toEqual(want.ids);
    expect(got.memory).toEqual(want.memory);
    expect(await got.cell('m-name')).toBe('test-plan-6');
    await page.close();
  });

  it('wasm, a .gguf file picked from disk (a Blob): the same greedy ids as Node loading the same bytes', async (ctx) => {
    if (missing) return ctx.skip(missing);
    const spec = tinySpec('llama');
    const bytes = tinyGguf(spec, tinyWeights(spec, 11), 'Q8_0');
    const file = join(mkdtempSync(join(tmpdir(), 'xq-web-')), 'tiny.gguf');
    writeFileSync(file, bytes);
    const tiny = await loadModel(file);
    const want = await nodeRun(tiny, 'full', {}, '1234 hi', 12);
    tiny.model.dispose();
    const page = await openPage();
    await page.setInputFiles('#model-gguf', file);
    expect(await page.isChecked('input[name="model"][value="gguf"]')).toBe(true);
    const got = await generateInPage(page, { backend: 'wasm', cache: 'full', tokens: 12, prompt: '1234 hi' });
    expect(await page.textContent('#model-status')).toMatch(/^tiny\.gguf: llama, .* \(gguf, /);
    expect(got.ids).toEqual(want.ids);
    expect(got.memory).toEqual(want.memory);
    await page.close();
  });

  it('wasm, a Hugging Face directory picked from disk (a FileList): the same greedy ids as Node loading the directory', async (ctx) => {
    if (missing) return ctx.skip(missing);
    const dir = mkdtempSync(join(tmpdir(), 'xq-web-dir-'));
    for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors']) copyFileSync(join('models/xq-demo', f), join(dir, f));
    const want = await nodeRun(demo!, 'kivi-2', { residualLength: 32 }, PROMPT, 40);
    const page = await openPage();
    await page.setInputFiles('#model-dir', dir);
    expect(await page.isChecked('input[name="model"][value="dir"]')).toBe(true);
    const got = await generateInPage(page, { backend: 'wasm', cache: 'kivi-2', residual: 32, tokens: 40 });
    expect(await page.textContent('#model-status')).toMatch(/^5 files from xq-web-dir-\w+: llama, 6 layers/);
    expect(got.ids).toEqual(want.ids);
    expect(got.memory).toEqual(want.memory);
    await page.close();
  });

  it('WebGPU (software adapter in headless chromium), xquant-1.38: WGSL packed kernel runs; ids and memory as on wasm', async (ctx) => {
    if (missing) return ctx.skip(missing);
    const probe = await openPage();
    const adapter = await probe.evaluate(async () => {
      const gpu = (navigator as { gpu?: { requestAdapter(): Promise<{ info?: { vendor?: string; architecture?: string } } | null> } }).gpu;
      const a = gpu ? await gpu.requestAdapter() : null;
      return a ? `${a.info?.vendor ?? '?'} ${a.info?.architecture ?? ''}`.trim() : null;
    });
    await probe.close();
    if (!adapter) return ctx.skip('headless chromium exposes no WebGPU adapter on this machine');
    // 4 prompt + 30 new tokens: past R = 32, so the decode steps attend over packed codes
    const want = await nodeRun(demo!, 'xquant-1.38', { residualLength: 32 }, PROMPT, 30);
    const page = await openPage();
    const got = await generateInPage(page, { backend: 'webgpu', cache: 'xquant-1.38', residual: 32, tokens: 30, timeout: 300_000 });
    expect(got.backend).toBe('webgpu');
    expect(got.ids).toEqual(want.ids);
    const { kernelBytes, ...held } = got.memory;
    const { kernelBytes: _, ...wantHeld } = want.memory;
    expect(held).toEqual(wantHeld);
    expect(kernelBytes).toBeGreaterThanOrEqual(0);
    expect(got.kernel!.packed).toBeGreaterThan(0); // decode steps read the packed codes on the device
    await screenshot(page, 'web-app-webgpu-xquant.png');
    await page.close();
  }, 400_000);

  it('WebGPU, a codebook plan JSON (turboquant): the WGSL codebook kernels run; ids and held bytes as in Node', async (ctx) => {
    if (missing) return ctx.skip(missing);
    if (!(await hasWebGpuAdapter())) return ctx.skip('headless chromium exposes no WebGPU adapter on this machine');
    // what `xquant plan --codebook` writes, for the demo model's 6 layers: per-layer widths, log8 least-squares scales
    const plan = { name: 'test-tqplan-6', strategy: 'turboquant', options: { residualLength: 16, keyBits: [2, 1.5, 2, 2, 1, 3], valueBits: [1, 1, 2, 1.5, 1, 2], split: 'rotated', scaleFormat: 'log8', scaleRule: 'lsq' } };
    const want = await nodeRun(demo!, plan.strategy, plan.options, PROMPT, 24);
    const page = await openPageWithPlan(plan);
    const got = await generateInPage(page, { backend: 'webgpu', cache: 'plan', tokens: 24, timeout: 300_000 });
    expect(got.backend).toBe('webgpu');
    expect(got.ids).toEqual(want.ids);
    const { kernelBytes, ...held } = got.memory;
    const { kernelBytes: _, ...wantHeld } = want.memory;
    expect(held).toEqual(wantHeld);
    expect(kernelBytes).toBeGreaterThan(0); // the device copies of the codes, and the rotation matrices
    // 4 prompt tokens + 24 new ones: every decode step after the first 16 positions attends over codes on the device
    expect(got.kernel!.codebook).toBeGreaterThan(0);
    await page.close();
  }, 400_000);
});
