// The page: wires the form to session.ts. State for tests and tools is mirrored in data-* attributes:
// body[data-state] (idle | loading | ready | generating | done | error), #generated[data-ids], #memory[data-memory]
// and [data-full] (the exact memory() reports), #backend-status[data-backend].
import * as tf from '@tensorflow/tfjs-core';
import wasmPlain from '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm?url';
import wasmSimd from '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm?url';
import wasmThreaded from '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm?url';
import type { LoadedModel, ModelInput } from '@xquant/models';
import type { KvMemoryReport } from '@xquant/tfjs';
import { fullMemory, openModel, parsePlanJson, presetChoice, runGeneration, startBackend, type BackendChoice, type CacheChoice, type RunStats } from './session.js';

tf.enableProdMode();

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};
const input = (id: string) => $<HTMLInputElement>(id);

let loaded: { model: LoadedModel; backend: BackendChoice; what: string } | undefined;
let running: AbortController | undefined;
let plan: CacheChoice | undefined;

function setState(state: 'idle' | 'loading' | 'ready' | 'generating' | 'done' | 'error'): void {
  document.body.dataset.state = state;
  $<HTMLButtonElement>('generate').disabled = state === 'loading' || state === 'generating';
  $<HTMLButtonElement>('load').disabled = state === 'loading' || state === 'generating';
  $<HTMLButtonElement>('stop').disabled = state !== 'generating';
}

function status(id: string, text: string, error = false): void {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle('error', error);
}

function fail(where: string, e: unknown): void {
  const err = e as { name?: string; code?: string; message?: string };
  status(where, `${err?.name ?? 'Error'}${err?.code ? ` [${err.code}]` : ''}: ${err?.message ?? String(e)}`, true);
  setState('error');
  console.error(e);
}

const bytes = (n: number) => n.toLocaleString('en-US');
const bits = (x: number) => x.toFixed(3);

/** Fill the memory panel from the chosen cache's memory() and what full would hold. */
function showMemory(name: string, m: KvMemoryReport, full: KvMemoryReport, tokensPerSecond: number | undefined, residualLength: number | undefined): void {
  $('m-name').textContent = name;
  const table = $('memory');
  table.dataset.memory = JSON.stringify(m);
  table.dataset.full = JSON.stringify(full);
  const cells: [string, string][] = [
    ['m-tokens', String(m.tokens)],
    ['m-total', bytes(m.totalBytes)],
    ['m-codes', bytes(m.codeBytes)],
    ['m-meta', bytes(m.metadataBytes)],
    ['m-residual', bytes(m.residualBytes)],
    ['m-paper', bits(m.paperBitsPerElement)],
    ['m-true', bits(m.trueBitsPerElement)],
    ['m-tps', tokensPerSecond === undefined ? '–' : tokensPerSecond.toFixed(1)],
    ['f-tokens', String(full.tokens)],
    ['f-total', bytes(full.totalBytes)],
    ['f-residual', bytes(full.residualBytes)],
    ['f-paper', bits(full.paperBitsPerElement)],
    ['f-true', bits(full.trueBitsPerElement)],
  ];
  for (const [id, text] of cells) $(id).textContent = text;
  let note = '';
  if (m.tokens > 0 && m.codeBytes === 0 && residualLength !== undefined) {
    note =
      `Nothing is quantized yet: all ${m.tokens} tokens are still in the float32 residual window (R = ${residualLength}); keys are quantized in blocks of R tokens, values once they are R tokens old. ` +
      `Until then the cache holds more than full precision would: its buffers are allocated ahead (keys 8 tokens at a time, values R + 1).`;
  } else if (m.totalBytes > 0 && full.totalBytes > 0) {
    note = `The cache holds ${(full.totalBytes / m.totalBytes).toFixed(2)}× less than full precision would.`;
  }
  status('memory-note', note);
}

function modelInput(): { input: ModelInput; what: string } {
  const kind = document.querySelector<HTMLInputElement>('input[name="model"]:checked')?.value ?? 'demo';
  if (kind === 'dir') {
    const files = input('model-dir').files;
    if (!files?.length) throw new Error('choose a model directory first');
    return { input: files, what: `${files.length} files from ${files[0]!.webkitRelativePath.split('/')[0] || 'a directory'}` };
  }
  if (kind === 'gguf') {
    const file = input('model-gguf').files?.[0];
    if (!file) throw new Error('choose a .gguf file first');
    return { input: file, what: file.name };
  }
  return { input: new URL('models/xq-demo/', location.href), what: 'xq-demo' };
}

async function load(): Promise<LoadedModel> {
  const backend = $<HTMLSelectElement>('backend').value as BackendChoice;
  const { input: source, what } = modelInput();
  if (loaded && loaded.backend === backend && loaded.what === what) return loaded.model;
  loaded?.model.model.dispose();
  loaded = undefined;
  setState('loading');
  status('model-status', `loading ${what}…`);
  // the wasm binaries are assets of this build (before the backend starts; the backend itself is loaded on demand)
  const { setWasmPaths } = await import('@tensorflow/tfjs-backend-wasm');
  setWasmPaths({ 'tfjs-backend-wasm.wasm': wasmPlain, 'tfjs-backend-wasm-simd.wasm': wasmSimd, 'tfjs-backend-wasm-threaded-simd.wasm': wasmThreaded });
  const sel = await startBackend(backend);
  $('backend-status').dataset.backend = sel.backend;
  status('backend-status', `${sel.backend}: ${sel.reason}`);
  const progress = $<HTMLProgressElement>('load-progress');
  const t0 = performance.now();
  const model = await openModel(source, (p) => {
    progress.value = p.total > 0 ? p.loaded / p.total : 0;
    status('model-status', `loading ${what}: ${(p.loaded / 1e6).toFixed(1)} of ${(p.total / 1e6).toFixed(1)} MB`);
  });
  progress.value = 1;
  const c = model.config;
  status(
    'model-status',
    `${what}: ${c.architecture}, ${c.numLayers} layers, ${c.numHeads} heads / ${c.numKvHeads} KV heads, head_dim ${c.headDim}, vocab ${c.vocabSize} (${model.source.format}, ${((performance.now() - t0) / 1000).toFixed(2)} s)`,
  );
  loaded = { model, backend, what };
  showMemory('chosen cache', fullMemory(model.model.cacheShape, 0), fullMemory(model.model.cacheShape, 0), undefined, undefined);
  setState('ready');
  return model;
}

function cacheChoice(): CacheChoice {
  const preset = $<HTMLSelectElement>('cache').value;
  const R = Number(input('residual').value);
  if (!Number.isInteger(R) || R < 1) throw new Error(`residual length R must be a positive integer; got '${input('residual').value}'`);
  if (preset === 'plan') {
    if (!plan) throw new Error('choose a plan JSON file (written by xquant plan --out)');
    return plan;
  }
  return presetChoice(preset, R);
}

async function run(): Promise<void> {
  try {
    const choice = cacheChoice();
    const model = await load();
    const prompt = $<HTMLTextAreaElement>('prompt').value;
    const maxNewTokens = Number(input('max-new-tokens').value);
    if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) throw new Error('new tokens must be a positive integer');
    running = new AbortController();
    setState('generating');
    $('prompt-echo').textContent = prompt;
    const out = $('generated');
    out.textContent = '';
    out.dataset.ids = '[]';
    status('run-status', 'generating…');
    const R = typeof choice.options.residualLength === 'number' ? choice.options.residualLength : choice.strategy === 'full' ? undefined : 128;
    const show = (s: RunStats, tps?: number) => showMemory(choice.label, s.memory, s.full, tps ?? s.tokensPerSecond, R);
    const r = await runGeneration({
      model,
      cache: choice,
      prompt,
      maxNewTokens,
      signal: running.signal,
      onToken: async (text, s) => {
        out.textContent += text;
        out.dataset.ids = JSON.stringify(s.ids);
        show(s);
        await yieldToPage();
      },
    });
    out.dataset.ids = JSON.stringify(r.result.ids);
    show(r.stats, r.result.timings.tokensPerSecond);
    const t = r.result.timings;
    status(
      'run-status',
      `${r.result.ids.length} tokens (${r.result.stopReason}) after a ${r.result.promptIds.length}-token prompt through ${r.strategyId}: ` +
        `prefill ${t.prefillMs.toFixed(0)} ms, ${t.tokensPerSecond.toFixed(1)} tokens/s overall, ${t.decodeTokensPerSecond.toFixed(1)} tokens/s decoding`,
    );
    $('run-status').dataset.tensorDelta = String(r.tensorDelta);
    if (r.kernel) {
      $('run-status').dataset.kernel = JSON.stringify(r.kernel);
      $('run-status').textContent += r.kernel.codebook > 0 ? `; WGSL codebook kernels: ${r.kernel.codebook} key-score calls` : `; WGSL packed-code kernel: ${r.kernel.packed} decode calls, ${r.kernel.prefill} prefill, ${r.kernel.fallback} fallback`;
    }
    setState('done');
  } catch (e) {
    fail('run-status', e);
  } finally {
    running = undefined;
  }
}

/** Let the page paint between tokens (a message, not a timer: no 4 ms clamp). */
function yieldToPage(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => resolve();
    ch.port2.postMessage(null);
  });
}

$('load').addEventListener('click', () => {
  load().catch((e: unknown) => fail('model-status', e));
});
$('generate').addEventListener('click', () => void run());
$('stop').addEventListener('click', () => running?.abort());
$('cache').addEventListener('change', () => {
  $('plan-field').hidden = $<HTMLSelectElement>('cache').value !== 'plan';
});
input('plan').addEventListener('change', async () => {
  const file = input('plan').files?.[0];
  plan = undefined;
  if (!file) return;
  try {
    plan = parsePlanJson(await file.text(), file.name);
    status('cache-status', `plan ${plan.label}: strategy ${plan.strategy}`);
  } catch (e) {
    fail('cache-status', e);
  }
});
for (const id of ['model-dir', 'model-gguf']) {
  input(id).addEventListener('change', () => {
    const radio = document.querySelector<HTMLInputElement>(`input[name="model"][value="${id === 'model-dir' ? 'dir' : 'gguf'}"]`);
    if (radio) radio.checked = true;
  });
}
setState('idle');
