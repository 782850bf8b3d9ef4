// Publish readiness, checked on what npm would receive: every publishable package is packed (pnpm pack), each tarball
// is checked (LICENSE, README whose links work on npm, repository/keywords/homepage; publint; attw for every entry
// under node10, node16 CJS/ESM and bundler resolution), then the tarballs are installed with npm in a directory outside
// the workspace and used from ESM, CJS and TypeScript (nodenext), the example strategy package runs its own tests, and
// the installed CLI runs it as a plug-in.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { checkPackage, createPackageFromTarballData } from '@arethetypeswrong/core';
import { publint } from 'publint';
import { formatMessage } from 'publint/utils';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generate, loadModel } from '@xquant/models';
import { createKvCache, selectBackend } from '@xquant/tfjs';
import { sandwich } from '../examples/strategy-sandwich/src/index.js';

const ROOT = resolve('.');
const PACKAGES = [...readdirSync('packages').map((d) => `packages/${d}`), 'apps/cli', 'examples/strategy-sandwich'].filter((d) => existsSync(join(d, 'package.json')));
const root = JSON.parse(readFileSync('package.json', 'utf8')) as { repository: { url: string } };
const REPO = root.repository.url.replace(/^git\+/, '').replace(/\.git$/, '');
const built = PACKAGES.every((d) => existsSync(join(d, 'dist')));
const pnpm = spawnSync('pnpm', ['--version'], { encoding: 'utf8' }).status === 0;
const tarballs = new Map<string, string>(); // package dir → tarball path
let work = '';

const manifest = (d: string) => JSON.parse(readFileSync(join(d, 'package.json'), 'utf8')) as Record<string, any>;
const list = (tgz: string) => execFileSync('tar', ['-tzf', tgz], { encoding: 'utf8' }).split('\n').filter(Boolean);
const read = (tgz: string, file: string) => execFileSync('tar', ['-xzOf', tgz, `package/${file}`], { encoding: 'utf8' });

beforeAll(() => {
  if (!built || !pnpm) return;
  work = mkdtempSync(join(tmpdir(), 'xq-pack-'));
  mkdirSync(join(work, 'tarballs'));
  for (const d of PACKAGES) {
    const out = execFileSync('pnpm', ['pack', '--pack-destination', join(work, 'tarballs')], { cwd: d, encoding: 'utf8' });
    const file = out.trim().split('\n').pop()!.trim();
    tarballs.set(d, file.startsWith('/') ? file : join(work, 'tarballs', file));
  }
}, 300_000);

const skipReason = !built ? 'the packages are not built (pnpm build)' : !pnpm ? 'pnpm is not on PATH' : undefined;

describe('packed tarballs — needs a pnpm build', () => {
  it('every package: LICENSE, README, repository / homepage / keywords / bugs, links that work on npm', (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    const license = readFileSync('LICENSE', 'utf8');
    for (const [d, tgz] of tarballs) {
      const files = list(tgz);
      for (const f of ['package/LICENSE', 'package/README.md', 'package/package.json']) expect(files, `${d}: ${f}`).toContain(f);
      expect(read(tgz, 'LICENSE'), `${d}: LICENSE`).toBe(license);
      const m = JSON.parse(read(tgz, 'package.json')) as Record<string, any>;
      expect(m.license, d).toBe('MIT');
      expect(m.repository, d).toEqual({ type: 'git', url: root.repository.url, directory: d });
      expect(m.homepage, d).toBe(`${REPO}/tree/main/${d}#readme`);
      expect(m.bugs, d).toEqual({ url: `${REPO}/issues` });
      expect(Array.isArray(m.keywords) && m.keywords.length >= 4, d).toBe(true);
      expect(JSON.stringify(m), `${d}: workspace: ranges must be replaced when packing`).not.toMatch(/workspace:/);
      // on npm a README link must be absolute; links into this repository must name a path that exists
      const readme = read(tgz, 'README.md');
      for (const [, target] of readme.matchAll(/\]\(([^)\s]+)\)/g)) {
        expect(target, `${d}/README.md link ${target}`).toMatch(/^(https?:\/\/|#|mailto:)/);
        if (target!.startsWith(`${REPO}/`)) {
          const path = target!.slice(REPO.length + 1).replace(/^(tree|blob)\/main\//, '').replace(/#.*$/, '');
          expect(existsSync(path), `${d}/README.md links to ${path}, which is not in the repository`).toBe(true);
        }
      }
    }
    expect(tarballs.size).toBe(PACKAGES.length);
  });

  it('publint: no error, warning or suggestion on any tarball', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    const problems: string[] = [];
    for (const [d, tgz] of tarballs) {
      const buf = readFileSync(tgz);
      const { messages, pkg } = await publint({ pack: { tarball: buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) as ArrayBuffer }, level: 'suggestion', strict: true });
      for (const m of messages) problems.push(`${d}: ${m.type}: ${formatMessage(m, pkg) ?? m.code}`);
    }
    expect(problems).toEqual([]);
  });

  it('attw: every entry point of every library resolves, with matching types, under node10, node16 (CJS and ESM) and bundler', async (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    const problems: string[] = [];
    let entries = 0;
    for (const [d, tgz] of tarballs) {
      const analysis = await checkPackage(createPackageFromTarballData(new Uint8Array(readFileSync(tgz))));
      if (!analysis.types) {
        // only the CLI ships no types: it has no library entry, just the `xquant` command
        expect(d).toBe('apps/cli');
        expect(manifest(d).exports).toBeUndefined();
        continue;
      }
      entries += Object.keys(analysis.entrypoints).length;
      for (const p of analysis.problems) problems.push(`${d}: ${JSON.stringify(p)}`);
      for (const [entry, info] of Object.entries(analysis.entrypoints)) {
        for (const kind of ['node10', 'node16-cjs', 'node16-esm', 'bundler'] as const) {
          const r = info.resolutions[kind];
          if (!r?.resolution?.fileName) problems.push(`${d} ${entry}: no resolution under ${kind}`);
        }
      }
    }
    expect(problems).toEqual([]);
    expect(entries).toBeGreaterThanOrEqual(15); // ., ./package.json and the subpaths of 9 libraries
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Consumers installed from the tarballs, outside the workspace

const PROMPT = 'The configuration file';
const DEMO = join(ROOT, 'models/xq-demo');

/** The same run from ESM and CJS: load the demo model, generate through the sandwich strategy, print ids + memory. */
const consumerBody = (load: string) => `${load}
async function main() {
  const tf = tfcore;
  tf.enableProdMode();
  await tf.setBackend('cpu');
  const entries = { quant, calibration, crossLayer, tfjs, testing, models, modelsBrowser, webgpu, webgpuTfjs, webgpuKv, evalPkg, conformance, example };
  const missing = Object.entries(entries).filter(([, m]) => !m || Object.keys(m).length === 0).map(([k]) => k);
  if (missing.length) throw new Error('empty entries: ' + missing.join(', '));
  if (typeof models.loadModel !== 'function' || typeof modelsBrowser.loadModel !== 'function' || typeof testing.strategyInvariants !== 'function') throw new Error('exports missing');
  example.register();
  const m = await models.loadModel(${JSON.stringify(DEMO)});
  const cache = tfjs.createKvCache('sandwich', m.model.cacheShape, { residualLength: 32 });
  const r = await models.generate({ model: m.model, tokenizer: m.tokenizer, cache, prompt: ${JSON.stringify(PROMPT)}, maxNewTokens: 36 });
  console.log(JSON.stringify({ ids: r.ids, memory: cache.memory() }));
  cache.dispose();
  m.model.dispose();
}
main().catch((e) => { console.error(e); process.exit(1); });
`;

const ESM = consumerBody(`import '@tensorflow/tfjs-backend-cpu';
import * as tfcore from '@tensorflow/tfjs-core';
import * as quant from '@xquant/quant';
import * as calibration from '@xquant/calibration';
import * as crossLayer from '@xquant/cross-layer';
import * as tfjs from '@xquant/tfjs';
import * as testing from '@xquant/tfjs/testing';
import * as models from '@xquant/models';
import * as modelsBrowser from '@xquant/models/browser';
import * as webgpu from '@xquant/webgpu';
import * as webgpuTfjs from '@xquant/webgpu/tfjs';
import * as webgpuKv from '@xquant/webgpu/kv-cache';
import * as evalPkg from '@xquant/eval';
import * as conformance from '@xquant/conformance';
import * as example from 'xquant-strategy-sandwich';`);

const CJS = consumerBody(`require('@tensorflow/tfjs-backend-cpu');
const tfcore = require('@tensorflow/tfjs-core');
const quant = require('@xquant/quant');
const calibration = require('@xquant/calibration');
const crossLayer = require('@xquant/cross-layer');
const tfjs = require('@xquant/tfjs');
const testing = require('@xquant/tfjs/testing');
const models = require('@xquant/models');
const modelsBrowser = require('@xquant/models/browser');
const webgpu = require('@xquant/webgpu');
const webgpuTfjs = require('@xquant/webgpu/tfjs');
const webgpuKv = require('@xquant/webgpu/kv-cache');
const evalPkg = require('@xquant/eval');
const conformance = require('@xquant/conformance');
const example = require('xquant-strategy-sandwich');`);

/** TypeScript consumers: types must be real (a @ts-expect-error that is not needed fails the compile). */
const TS_ESM = `import { loadModel, generate, UrlSource, type LoadedModel, type ModelInput, type ByteSource } from '@xquant/models';
import { loadModel as loadInBrowser } from '@xquant/models/browser';
import { createKvCache, type KvCache, type KvMemoryReport } from '@xquant/tfjs';
import { strategyInvariants, StrategyInvariantError, type StrategyInvariant } from '@xquant/tfjs/testing';
import { registerWebGpuKernels } from '@xquant/webgpu/kv-cache';
import { XqError } from '@xquant/quant';
import register, { sandwich, type SandwichOptions } from 'xquant-strategy-sandwich';

// never called: compiled for its types (the emitted file is then run to check the imports resolve at run time)
export function typeChecks() {
  const input: ModelInput = new Uint8Array(8);
  const loading: Promise<LoadedModel> = loadModel('models/xq-demo');
  const inBrowser: typeof loadModel = loadInBrowser;
  // @ts-expect-error loadModel takes no number
  void loadModel(42);
  const options: SandwichOptions = { residualLength: 32, valueBits: 1 };
  // @ts-expect-error valueBits is 1, 2, 4 or 8
  const bad: SandwichOptions = { valueBits: 3 };
  const cache: KvCache = sandwich(options).createCache({ layers: 2, kvHeads: 1, headDim: 32 });
  const memory: KvMemoryReport = cache.memory();
  const invariants: StrategyInvariant[] = strategyInvariants('sandwich');
  const source: Promise<ByteSource> = UrlSource.open('https://example.invalid/model.gguf');
  const e: XqError = new StrategyInvariantError('x', 'y');
  return { input, loading, inBrowser, bad, memory, invariants, source, e, register, generate, createKvCache, registerWebGpuKernels };
}
`;

const TS_CJS = `import models = require('@xquant/models');
import tfjs = require('@xquant/tfjs');
import testing = require('@xquant/tfjs/testing');
import example = require('xquant-strategy-sandwich');

// never called: compiled for its types
function typeChecks() {
  const loading: Promise<models.LoadedModel> = models.loadModel('models/xq-demo');
  // @ts-expect-error createKvCache needs a shape
  tfjs.createKvCache('kivi-2');
  const report: Promise<testing.StrategyCheckReport> = testing.checkStrategy(example.sandwich({ residualLength: 32 }));
  return { loading, report };
}
export = { typeChecks };
`;

describe('consumers of the tarballs, outside the workspace (npm install) — needs a pnpm build and the npm registry', () => {
  let consumer = '';
  let installError: string | undefined;
  let want: { ids: number[]; memory: unknown } | undefined;

  beforeAll(async () => {
    if (skipReason) return;
    const ping = spawnSync('npm', ['ping', '--loglevel=error'], { encoding: 'utf8', timeout: 30_000 });
    if (ping.status !== 0) {
      installError = `the npm registry is unreachable (npm ping: ${(ping.stderr || ping.stdout || '').trim().split('\n')[0]})`;
      return;
    }
    consumer = join(work, 'consumer');
    mkdirSync(consumer);
    writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'xquant-consumer', private: true, version: '0.0.0' }));
    const install = spawnSync(
      'npm',
      ['install', '--no-audit', '--no-fund', '--loglevel=error', '--ignore-scripts', ...tarballs.values(), '@tensorflow/tfjs-core@4.22.0', '@tensorflow/tfjs-backend-cpu@4.22.0'],
      { cwd: consumer, encoding: 'utf8', timeout: 600_000 },
    );
    expect(install.status, `npm install failed: ${install.stderr}`).toBe(0);
    // the same run in this process (workspace sources), to compare with
    await selectBackend({ prefer: 'cpu' });
    const m = await loadModel(DEMO);
    const cache = sandwich({ residualLength: 32 }).createCache(m.model.cacheShape);
    const r = await generate({ model: m.model, tokenizer: m.tokenizer, cache, prompt: PROMPT, maxNewTokens: 36 });
    want = { ids: r.ids, memory: cache.memory() };
    cache.dispose();
    m.model.dispose();
  }, 700_000);

  afterAll(() => {
    if (process.env.XQ_KEEP_PACK) console.log(`packaging work directory kept: ${work}`);
  });

  const run = (file: string, args: string[] = []) => spawnSync(process.execPath, [file, ...args], { cwd: consumer, encoding: 'utf8', timeout: 300_000 });

  it('ESM and CJS: every entry loads; both generate the same ids and memory as the workspace', (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    if (installError) return ctx.skip(installError);
    writeFileSync(join(consumer, 'esm.mjs'), ESM);
    writeFileSync(join(consumer, 'cjs.cjs'), CJS);
    for (const f of ['esm.mjs', 'cjs.cjs']) {
      const r = run(f);
      expect(r.status, `${f}: ${r.stderr}`).toBe(0);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ids: number[]; memory: unknown };
      expect(out.ids, f).toEqual(want!.ids);
      expect(out.memory, f).toEqual(want!.memory);
    }
    expect(readFileSync(join(consumer, 'node_modules/@xquant/models/package.json'), 'utf8')).not.toMatch(/workspace:/);
  });

  it('TypeScript with module/moduleResolution nodenext: an ESM and a CJS file compile against the installed types, then run', (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    if (installError) return ctx.skip(installError);
    writeFileSync(join(consumer, 'consumer.mts'), TS_ESM);
    writeFileSync(join(consumer, 'consumer.cts'), TS_CJS);
    writeFileSync(
      join(consumer, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022', 'dom'], strict: true, skipLibCheck: true, outDir: 'out', types: [] },
        files: ['consumer.mts', 'consumer.cts'],
      }),
    );
    const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: consumer, encoding: 'utf8', timeout: 300_000 });
    expect(tsc.status, tsc.stdout + tsc.stderr).toBe(0);
    // emitted: out/consumer.mjs and out/consumer.cjs resolve the same packages at run time
    for (const f of ['out/consumer.mjs', 'out/consumer.cjs']) {
      const r = spawnSync(process.execPath, ['-e', `import(${JSON.stringify(join(consumer, f))}).then(() => console.log('ok'), (e) => { console.error(e); process.exit(1); })`], { cwd: consumer, encoding: 'utf8', timeout: 120_000 });
      expect(r.status, `${f}: ${r.stderr}`).toBe(0);
    }
  });

  it('the example strategy package passes its own invariant tests (node --test on the shipped test/)', (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    if (installError) return ctx.skip(installError);
    const r = spawnSync(process.execPath, ['--test', 'node_modules/xquant-strategy-sandwich/test/'], { cwd: consumer, encoding: 'utf8', timeout: 300_000 });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/# pass 8\b/);
    expect(r.stdout).toMatch(/# fail 0\b/);
  });

  it('the installed xquant CLI runs the example as a --plugin: same ids and memory as the workspace', (ctx) => {
    if (skipReason) return ctx.skip(skipReason);
    if (installError) return ctx.skip(installError);
    const plugin = 'node_modules/xquant-strategy-sandwich/dist/index.js';
    const r = run('node_modules/@xquant/cli/dist/cli.js', ['generate', '--plugin', plugin, '--cache', 'sandwich', '--residual-length', '32', '--model', DEMO, '--prompt', PROMPT, '--max-new-tokens', '36', '--backend', 'cpu', '--json']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(`plugin ${plugin}: registered sandwich`);
    const out = JSON.parse(r.stdout) as { ids: number[]; memory: unknown };
    expect(out.ids).toEqual(want!.ids);
    expect(out.memory).toEqual(want!.memory);
  });
});
