import * as tf from '@tensorflow/tfjs-core';
import { boundedInt, parseCommandArgs, sharedOptions } from '../args.js';
import { generate, loadModel } from '@xquant/models';
import { readPresetFile, type PresetFile } from '@xquant/eval';
import { BACKEND_ORDER, createKvCache, PRESETS, strategyIds, type BackendName } from '@xquant/tfjs';
import { backendLine, cliBackend } from '../backend.js';
import { loadPlugins } from '../plugins.js';

/** One-line description shown by `xquant --help`. */
export const summary = 'generate text with a Llama/Qwen2 model (HF directory, .safetensors or .gguf) through a chosen KV cache';

const USAGE = `usage: xquant generate --model DIR|FILE --prompt TEXT [options]

Loads the model (Hugging Face directory, .safetensors with config.json beside it, or .gguf), runs the prompt
through a KV cache of the chosen preset and streams the generated text to stdout. Backend, speed and cache
memory go to stderr.

options:
  --model DIR|FILE        model directory, .safetensors or .gguf file (required)
  --prompt TEXT           prompt text; the tokenizer adds BOS (required)
  --cache PRESET          KV cache preset (default full): ${PRESETS.map((p) => p.id).join(', ')},
                          @FILE.json (a preset file, e.g. what xquant plan writes),
                          or a strategy id registered by a --plugin
  --plugin FILE           a module that registers strategies (its default export is called with @xquant/tfjs);
                          may be repeated
  --residual-length R     residual window of quantized presets (default: the preset's)
  --max-new-tokens N      tokens to generate (default 32)
  --temperature T         0 = greedy (default 0)
  --top-k K               keep the K most likely tokens (default 0 = off)
  --top-p P               nucleus sampling mass in (0, 1] (default 1 = off)
  --seed S                sampler seed (default: from the clock; printed)
  --ignore-eos            keep generating after an end-of-sequence token
  --backend NAME          tfjs backend: ${BACKEND_ORDER.join(', ')} (default: first available in that order)
  --tokenizer PATH        tokenizer.json to use instead of the model's
  --no-echo               stream only the generated text (by default the prompt is printed first)
  --json                  print one JSON object (text, ids, timings, memory) instead of streaming
  -h, --help              show this help`;

class UsageError extends Error {}

function num(v: string | undefined, name: string, check: (x: number) => boolean, rule: string): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (v.trim() === '' || !Number.isFinite(x) || !check(x)) throw new UsageError(`--${name} must be ${rule}, got '${v}'`);
  return x;
}

/**
 * Write to stdout and wait until it is handed to the OS: a closed pipe (`| head -c 1`) then surfaces as an EPIPE
 * 'error' event (handled in cli.ts) after this token rather than after the whole generation.
 */
function flushed(text: string): Promise<void> {
  return new Promise((resolve) => process.stdout.write(text, () => resolve()));
}

function formatError(e: unknown): string {
  const err = e as { name?: string; code?: string; message?: string };
  return `${err?.name ?? 'Error'}${err?.code ? ` [${err.code}]` : ''}: ${err?.message ?? String(e)}`;
}

/** `xquant generate …`; returns the exit code (0 ok, 1 runtime error, 2 usage error). */
export async function run(argv: string[]): Promise<number> {
  let presetFile: PresetFile | undefined;
  let o: {
    model?: string;
    prompt?: string;
    cache: string;
    backend?: BackendName;
    tokenizer?: string;
    json: boolean;
    ignoreEos: boolean;
    maxNewTokens: number;
    temperature: number;
    topK: number;
    topP: number;
    seed?: number;
    residualLength?: number;
  };
  const parsed = parseCommandArgs('generate', USAGE, argv, {
    ...sharedOptions('model', 'residual-length', 'backend', 'json', 'plugin'),
    prompt: { type: 'string' },
    cache: { type: 'string', default: 'full' },
    'max-new-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-k': { type: 'string' },
    'top-p': { type: 'string' },
    seed: { type: 'string' },
    'ignore-eos': { type: 'boolean', default: false },
    'no-echo': { type: 'boolean', default: false },
    tokenizer: { type: 'string' },
  }, { ints: { 'residual-length': 'one' } });
  if (typeof parsed === 'number') return parsed;
  const v = parsed.values as {
    [flag: string]: string | undefined;
  } & { json?: boolean; 'ignore-eos'?: boolean; 'no-echo'?: boolean; plugin?: string[] };
  try {
    await loadPlugins(v.plugin ?? [], (line) => console.error(line));
  } catch (e) {
    console.error(`xquant generate: ${formatError(e)}`);
    return 1;
  }
  try {
    if (!v.model) throw new UsageError('--model is required');
    if (v.prompt === undefined) throw new UsageError('--prompt is required');
    const presets = PRESETS.map((p) => p.id);
    const registered = strategyIds().filter((id) => !presets.includes(id));
    if (v.cache!.startsWith('@')) presetFile = readPresetFile(v.cache!.slice(1));
    else if (!presets.includes(v.cache!) && !registered.includes(v.cache!)) {
      throw new UsageError(`--cache must be one of ${presets.join(', ')}, @preset.json (or a registered strategy: ${registered.join(', ')}); got '${v.cache}'`);
    }
    if (v.backend !== undefined && !(BACKEND_ORDER as readonly string[]).includes(v.backend)) {
      throw new UsageError(`--backend must be one of ${BACKEND_ORDER.join(', ')}; got '${v.backend}'`);
    }
    o = {
      model: v.model,
      prompt: v.prompt,
      cache: v.cache!,
      backend: v.backend as BackendName | undefined,
      tokenizer: v.tokenizer,
      json: v.json ?? false,
      ignoreEos: v['ignore-eos']!,
      maxNewTokens: boundedInt(v['max-new-tokens'], 'max-new-tokens') ?? 32,
      temperature: num(v.temperature, 'temperature', (x) => x >= 0, 'a number ≥ 0') ?? 0,
      topK: boundedInt(v['top-k'], 'top-k') ?? 0,
      topP: num(v['top-p'], 'top-p', (x) => x > 0 && x <= 1, 'in (0, 1]') ?? 1,
      seed: num(v.seed, 'seed', (x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32, 'an integer in [0, 2^32)'),
      residualLength: parsed.values['residual-length'] as number | undefined,
    };
  } catch (e) {
    const msg = e instanceof UsageError ? e.message : (e as Error).message;
    console.error(`xquant generate: ${msg}\n\n${USAGE}`);
    return 2;
  }

  const info = (line: string) => {
    if (!o.json) console.error(line);
  };
  let cache: ReturnType<typeof createKvCache> | undefined;
  let dispose: (() => void) | undefined;
  try {
    tf.enableProdMode();
    const sel = await cliBackend(o.backend);
    info(backendLine(sel));
    const t0 = performance.now();
    const loaded = await loadModel(o.model!, o.tokenizer ? { tokenizerPath: o.tokenizer } : {});
    dispose = () => loaded.model.dispose();
    const c = loaded.config;
    info(
      `model: ${c.architecture}, ${c.numLayers} layers, ${c.numHeads} heads / ${c.numKvHeads} KV heads, head_dim ${c.headDim}, vocab ${c.vocabSize} (${loaded.source.format}, loaded in ${((performance.now() - t0) / 1000).toFixed(2)} s)`,
    );
    const sizes = o.residualLength ? { residualLength: o.residualLength } : undefined;
    cache = presetFile ? createKvCache(presetFile.strategy, loaded.model.cacheShape, { ...presetFile.options, ...sizes }) : createKvCache(o.cache, loaded.model.cacheShape, sizes);
    const R = cache.config?.residualLength ?? (presetFile?.options.residualLength as number | undefined);
    info(`cache: ${presetFile ? `${presetFile.name} (${presetFile.strategy}, from ${o.cache.slice(1)})` : o.cache}${R !== undefined ? ` (residual length ${R}${o.residualLength ? '' : ', the default'})` : ''}`);
    if (!o.json && !v['no-echo']) process.stdout.write(o.prompt!);
    const result = await generate({
      model: loaded.model,
      tokenizer: loaded.tokenizer,
      cache,
      prompt: o.prompt!,
      maxNewTokens: o.maxNewTokens,
      temperature: o.temperature,
      topK: o.topK,
      topP: o.topP,
      ...(o.seed !== undefined ? { seed: o.seed } : {}),
      stopOnEos: !o.ignoreEos,
      onToken: o.json ? undefined : (t) => flushed(t.text),
    });
    const mem = cache.memory();
    if (o.json) {
      console.log(
        JSON.stringify({
          model: o.model,
          format: loaded.source.format,
          architecture: c.architecture,
          backend: sel.backend,
          backendReason: sel.reason,
          backendSkipped: sel.skipped,
          cache: o.cache,
          residualLength: o.residualLength ?? null,
          prompt: o.prompt,
          promptIds: result.promptIds,
          ids: result.ids,
          text: result.text,
          stopReason: result.stopReason,
          seed: result.seed,
          sampling: { temperature: o.temperature, topK: o.topK, topP: o.topP },
          timings: result.timings,
          memory: mem,
        }),
      );
    } else {
      process.stdout.write('\n');
      const t = result.timings;
      info(
        `${result.ids.length} tokens (${result.stopReason}) after a ${result.promptIds.length}-token prompt: prefill ${t.prefillMs.toFixed(0)} ms, ${t.tokensPerSecond.toFixed(2)} tokens/s overall, ${t.decodeTokensPerSecond.toFixed(2)} tokens/s decoding${o.temperature > 0 ? `, seed ${result.seed}` : ''}`,
      );
      info(
        `cache memory: ${mem.totalBytes} bytes for ${mem.tokens} tokens (codes ${mem.codeBytes}, scales/zeros ${mem.metadataBytes}, full precision ${mem.residualBytes}); ${mem.paperBitsPerElement.toFixed(3)} paper bits, ${mem.trueBitsPerElement.toFixed(3)} stored bits per element`,
      );
      if (R !== undefined && mem.codeBytes === 0 && mem.metadataBytes === 0 && mem.tokens > 0) {
        info(
          `note: nothing is quantized yet: all ${mem.tokens} tokens are still in the float32 residual window (R = ${R}; keys are quantized in blocks of R tokens, values once they are R tokens old), ` +
            `and the window's buffers are allocated ahead (values for R + 1 tokens), so the cache holds more than full precision would (32 bits per element). ` +
            `Generate past ${R} tokens, or set a smaller --residual-length, to see the quantized storage.`,
        );
      }
    }
    return 0;
  } catch (e) {
    console.error(`xquant generate: ${formatError(e)}`);
    if (process.env.XQ_DEBUG) console.error(e);
    return 1;
  } finally {
    cache?.dispose();
    dispose?.();
  }
}
