import { loadGpuDecoder } from '@xquant/models/gpu';
import { PRESETS, resolveCacheConfig } from '@xquant/tfjs';
import { requestNodeDevice } from '@xquant/webgpu';
import { boundedInt, parseCommandArgs, sharedOptions } from '../args.js';

/** One-line description shown by `xquant --help`. */
export const summary = 'generate on the GPU with the device-resident decoder (raw WebGPU: fp16 weights, KV cache on the device)';

const USAGE = `usage: xquant gpu --model DIR|FILE --prompt TEXT [options]

Runs every decode step on the GPU (WebGPU through Dawn): fp16 weights, the KV cache kept and quantized on the
device, sampling on the device, one token id read back per step. Prints the text, then ms/token, the attention
kernel's geometry and key scoring (float, or the int8 dot product that packed keys without GQA use) and the cache's
bytes to stderr. Needs a WebGPU adapter (a GPU with Vulkan, or Mesa's lavapipe: scripts/setup-webgpu.sh).

options:
  --model DIR|FILE        model directory, .safetensors or .gguf file (required)
  --prompt TEXT           prompt text; the tokenizer adds BOS (required)
  --cache PRESET          full (fp16 rows) or a quantized preset: ${PRESETS.filter((p) => p.id !== 'full').map((p) => p.id).join(', ')}
  --residual-length R     residual window of quantized presets (a multiple of 16; default 32)
  --max-new-tokens N      tokens to generate (default 32)
  --temperature T         0 = greedy (default 0); > 0 samples on the device (Gumbel-max)
  --seed S                sampler seed (default 0)
  --context N             positions to allocate (default: prompt + new tokens)
  --value-mix f32|f16     arithmetic of the packed value mix (default f32); f16 needs a GPU with shader-f16
  --subgroups             reduce with subgroup operations in the matrix-vector products (row sums, norms) and the
                          attention's softmax and value lanes (needs a GPU with the subgroups feature and one
                          subgroup size; not yet timed on a GPU, off by default)
  --prefetch-weights      keep the matrix-vector products' weight loads one batch ahead, the first before the norm
                          (not yet timed on a GPU, off by default)
  --matrix                run the attention of quantized layers on the GPU's matrix units (tensor cores) through
                          Chromium's experimental subgroup matrices: needs a GPU with subgroup matrices, shader-f16
                          and 32-wide subgroups, and Dawn's unsafe APIs, e.g. --dawn-flags
                          enable-dawn-features=allow_unsafe_apis,vulkan_enable_f16_on_nvidia (measured 8-22x slower
                          than the default kernel on an H100: an experiment, off by default)
  --prefill-matrix        run the prefill batches' larger matrix products (256 or more workgroups per batch, e.g.
                          gate/up) on the matrix units (each input split into two f16 parts; needs what --matrix
                          needs; gate/up 1.8x faster on an H100, off by default)
  --prefill-batch N       prompt positions per command buffer (1-256, default 32): each layer's matrix-vector
                          products run once over the batch, attention over fp16 rows as one causal dispatch, packed
                          layers position by position; 1 = one at a time
  --prefill-attention full-precision|cache
                          what prompt positions attend over with a quantized cache (default full-precision: their
                          fp16 K/V, as the reference implementation's prefill; cache: the quantized cache, as decoding)
  --dawn-flags FLAGS      Dawn flags, ';'-separated, e.g. enable-dawn-features=vulkan_enable_f16_on_nvidia
                          (shader-f16 on NVIDIA) or enable-dawn-features=skip_validation (less host time per
                          token; invalid API use is no longer caught)
  --json                  print one JSON object instead of text
  -h, --help              show this help`;

/** `xquant gpu …`; returns the exit code (0 ok, 1 runtime error, 2 usage error). */
export async function run(argv: string[]): Promise<number> {
  const parsed = parseCommandArgs('gpu', USAGE, argv, {
    ...sharedOptions('model', 'residual-length', 'json'),
    prompt: { type: 'string' },
    cache: { type: 'string', default: 'full' },
    'max-new-tokens': { type: 'string', default: '32' },
    temperature: { type: 'string', default: '0' },
    seed: { type: 'string', default: '0' },
    context: { type: 'string' },
    'value-mix': { type: 'string', default: 'f32' },
    subgroups: { type: 'boolean', default: false },
    'prefetch-weights': { type: 'boolean', default: false },
    matrix: { type: 'boolean', default: false },
    'prefill-matrix': { type: 'boolean', default: false },
    'prefill-batch': { type: 'string', default: '32' },
    'prefill-attention': { type: 'string', default: 'full-precision' },
    'dawn-flags': { type: 'string' },
  }, { ints: { 'residual-length': 'one' } });
  if (typeof parsed === 'number') return parsed;
  const v = parsed.values as Record<string, string | boolean | number | undefined>;
  const usage = (msg: string) => {
    console.error(`xquant gpu: ${msg}\n\n${USAGE}`);
    return 2;
  };
  if (typeof v.model !== 'string' || typeof v.prompt !== 'string') return usage('--model and --prompt are required');
  let maxNew: number;
  let contextFlag: number | undefined;
  let prefillBatch: number;
  try {
    maxNew = boundedInt(String(v['max-new-tokens']), 'max-new-tokens', 1)!;
    contextFlag = boundedInt(v.context as string | undefined, 'context', 1);
    prefillBatch = boundedInt(String(v['prefill-batch']), 'prefill-batch', 1)!;
  } catch (e) {
    return usage((e as Error).message);
  }
  const temperature = Number(v.temperature);
  const seed = Number(v.seed);
  if (!Number.isFinite(temperature) || temperature < 0) return usage(`--temperature must be a number ≥ 0, got '${String(v.temperature)}'`);
  if (!Number.isInteger(seed)) return usage(`--seed must be an integer, got '${String(v.seed)}'`);
  const valueMix = String(v['value-mix']);
  if (valueMix !== 'f32' && valueMix !== 'f16') return usage(`--value-mix must be f32 or f16, got '${valueMix}'`);
  const prefillAttention = String(v['prefill-attention']);
  if (prefillAttention !== 'full-precision' && prefillAttention !== 'cache') return usage(`--prefill-attention must be full-precision or cache, got '${prefillAttention}'`);
  const flags = typeof v['dawn-flags'] === 'string' ? v['dawn-flags'].split(';').filter((f) => f !== '') : [];
  process.env.XDG_RUNTIME_DIR ??= '/tmp';
  const gpu = await requestNodeDevice({ flags });
  if (!gpu) {
    console.error('xquant gpu: no WebGPU adapter found (a GPU with Vulkan, or lavapipe: scripts/setup-webgpu.sh)');
    return 1;
  }
  try {
    const cacheId = String(v.cache);
    // weights once (with a small full cache), then the requested cache sized for this prompt
    const { decoder, config, tokenizer } = await loadGpuDecoder(v.model, gpu.device, {
      cache: { kind: 'full' },
      capacity: 16,
      prefillBatch,
      prefillAttention,
      ...(v.subgroups === true ? { subgroups: true } : {}),
      ...(v['prefetch-weights'] === true ? { prefetchWeights: true } : {}),
      ...(v['prefill-matrix'] === true ? { prefillMatrix: true } : {}),
    });
    const ids = tokenizer.encode(v.prompt);
    const capacity = contextFlag ?? ids.length + maxNew;
    if (!Number.isInteger(capacity) || capacity < ids.length + maxNew) {
      decoder.dispose();
      return usage(`--context must be an integer ≥ prompt + new tokens (${ids.length + maxNew})`);
    }
    const shape = { layers: config.numLayers, kvHeads: config.numKvHeads, headDim: config.headDim };
    const spec = cacheId === 'full' ? ({ kind: 'full' } as const) : ({ kind: 'quantized', config: resolveCacheConfig(cacheId, shape, { residualLength: (v['residual-length'] as number | undefined) ?? 32 }) } as const);
    // (the decoder's subgroups option is the attention kernel's default)
    const tuning = { ...(valueMix === 'f16' ? { valueDot: 'f16' as const } : {}), ...(v.matrix === true ? { matrix: true } : {}) };
    await decoder.replaceCache(spec, capacity, Object.keys(tuning).length ? tuning : undefined);
    try {
      const out = await decoder.generate({ prompt: ids, maxNewTokens: maxNew, temperature, seed });
      const text = tokenizer.decode(out.tokens);
      const mem = decoder.memory();
      // the decode-attention kernel of the last position: geometry and how packed keys were scored (float or int8)
      const attention = decoder.cache.attentionDispatch(0);
      const info = { adapter: gpu.info, cache: cacheId, promptTokens: ids.length, ids: out.tokens, text, prefillMs: out.prefillMs, msPerToken: out.msPerToken, hostMsPerToken: out.hostMsPerToken, memory: mem, attention, subgroups: decoder.usesSubgroups, prefetchWeights: v['prefetch-weights'] === true, prefillBatch, prefillAttention, prefillMatrixProducts: decoder.prefillMatrixProducts, matvecSplits: decoder.matvecSplits };
      if (v.json) console.log(JSON.stringify(info));
      else {
        console.log(v.prompt + text);
        console.error(
          `gpu: ${gpu.info.vendor} ${gpu.info.device || gpu.info.description} · ${cacheId} · prefill ${ids.length} tokens ${out.prefillMs.toFixed(0)} ms · ${out.msPerToken.toFixed(2)} ms/token · ` +
            `attention ${attention.geometry} geometry, ${attention.keyScores} key scores, ${attention.valueMix} value mix${attention.matrix ? ', matrix units' : ''}${decoder.usesSubgroups ? ', subgroup reductions' : ''} · ` +
            `KV ${(mem.cache.usedBytes / 2 ** 20).toFixed(2)} MiB (${mem.cache.trueBitsPerElement.toFixed(2)} stored bits per element) · weights ${(mem.weightBytes / 2 ** 20).toFixed(0)} MiB`,
        );
      }
      return 0;
    } finally {
      decoder.dispose();
    }
  } finally {
    gpu.device.destroy();
  }
}
