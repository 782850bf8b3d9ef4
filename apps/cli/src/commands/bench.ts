import { writeFileSync } from 'node:fs';
import { checkOutputPath, parseCommandArgs, sharedOptions } from '../args.js';
import { benchMarkdown, openEvalModel, resolveCacheSpecs, runBench, validateCacheNames } from '@xquant/eval';
import { DEFAULT_GROUP_SIZE, DEFAULT_RESIDUAL_LENGTH, type BackendName } from '@xquant/tfjs';
import { loadPlugins } from '../plugins.js';

/** One-line description shown by `xquant --help`. */
export const summary = 'decode-step speed and cache memory per cache preset and context length (JSON + table)';

const USAGE = `usage: xquant bench --model DIR [--caches LIST] [options]

Times single-token decode steps through each cache after a full-precision prefill of C random tokens (C from
--contexts), with 'full' as the baseline in the same run, and measures the memory each cache holds at each length
of --memory-contexts (random K/V, no model). Prints markdown tables; --out writes JSON (+ .md beside it).

options:
  --model DIR               model directory (or .safetensors / .gguf)
  --caches LIST             presets, @preset.json or strategy ids registered by --plugin
                            (default full,kivi-2,kivi-1,asymkv-1.5,xquant-1.38)
  --plugin FILE             a module that registers strategies (default export called with @xquant/tfjs)
  --residual-length R[,R]   residual length(s) (default ${DEFAULT_RESIDUAL_LENGTH})
  --group-size G[,G]        group size(s) (default ${DEFAULT_GROUP_SIZE})
  --contexts LIST           context lengths for speed (default 256,512,1024,2048)
  --memory-contexts LIST    context lengths for memory (default 256,…,16384)
  --steps N                 timed decode steps per run (default 16)
  --backend NAME            tensorflow, wasm or cpu (default: the first that loads), or webgpu
  --out FILE                write JSON to FILE and markdown to FILE with .md
  --json                    print the JSON on stdout (else the tables)
  -h, --help                show this help`;

/** `xquant bench …`; returns the exit code. */
export async function run(argv: string[]): Promise<number> {
  const parsed = parseCommandArgs('bench', USAGE, argv, {
    ...sharedOptions('model', 'caches', 'residual-length', 'group-size', 'backend', 'out', 'json', 'plugin'),
    contexts: { type: 'string' },
    'memory-contexts': { type: 'string' },
    steps: { type: 'string' },
  }, { ints: { 'residual-length': 'list', 'group-size': 'list', contexts: 'list', 'memory-contexts': 'list', steps: 'one' } });
  if (typeof parsed === 'number') return parsed;
  const values = parsed.values as { model?: string; caches?: string; backend?: string; out?: string; json?: boolean; plugin?: string[] } & Record<'residual-length' | 'group-size' | 'contexts' | 'memory-contexts', number[] | undefined> & { steps?: number };
  if (typeof values.model !== 'string') {
    console.error(`xquant bench: --model is required\n\n${USAGE}`);
    return 2;
  }
  if (typeof values.out === 'string') {
    checkOutputPath(values.out, '--out');
    checkOutputPath(values.out.replace(/\.json$/i, '') + '.md', '--out (markdown)');
  }
  await loadPlugins(values.plugin ?? [], (line) => process.stderr.write(`xquant bench: ${line}\n`));
  const sizes = { residualLengths: values['residual-length'], groupSizes: values['group-size'] };
  const names = String(values.caches ?? 'full,kivi-2,kivi-1,asymkv-1.5,xquant-1.38').split(',');
  validateCacheNames(names);
  const rt = await openEvalModel(values.model, { backend: values.backend as BackendName | undefined });
  const caches = resolveCacheSpecs(names, rt.model.cacheShape, sizes);
  process.stderr.write(`xquant bench: ${rt.name} on ${rt.backend.backend} (${rt.backend.reason}), ${caches.length} configs\n`);
  try {
    let last = 0;
    const result = await runBench({
      model: rt.model,
      modelName: rt.name,
      caches,
      contexts: values.contexts,
      memoryContexts: values['memory-contexts'],
      steps: values.steps,
      log: (line) => {
        const now = Date.now();
        if (now - last > 1000) {
          process.stderr.write(`${line}\n`);
          last = now;
        }
      },
    });
    const md = benchMarkdown(result);
    if (typeof values.out === 'string') {
      writeFileSync(values.out, `${JSON.stringify(result, null, 1)}\n`);
      writeFileSync(values.out.replace(/\.json$/i, '') + '.md', md);
    }
    process.stdout.write(values.json ? `${JSON.stringify(result)}\n` : md);
    return 0;
  } finally {
    rt.model.dispose();
  }
}
