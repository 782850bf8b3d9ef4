import { appendFileSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { checkOutputPath, parseCommandArgs, readJsonFile, sharedOptions } from '../args.js';
import { ProgressBar } from '../progress.js';
import {
  joinResults,
  mergeResults,
  openEvalModel,
  parseShard,
  readEvalFile,
  resolveCacheSpecs,
  resultsMarkdown,
  runEval,
  summarize,
  validateCacheNames,
  validateEvalResults,
  type CompletedRecord,
  type EvalResults,
} from '@xquant/eval';
import { XqConfigError, XqError, XqFormatError } from '@xquant/quant';
import { DEFAULT_GROUP_SIZE, DEFAULT_RESIDUAL_LENGTH, type BackendName } from '@xquant/tfjs';
import { loadPlugins } from '../plugins.js';

/** One-line description shown by `xquant --help`. */
export const summary = 'fidelity of KV caches on a model: ppl, KL to full, top-1, passkey (reference protocol); merge shards';

const USAGE = `usage: xquant eval --model DIR --data FILE.jsonl... [--caches LIST] [options]
       xquant eval merge RESULTS.json... [--out FILE] [--json]
       xquant eval join RESULTS.json... [--out FILE] [--json]

Runs the reference-fidelity protocol with each cache actually in use. Prose files (prose_512.jsonl): prefill 64
tokens, feed tokens 64…510 one at a time (teacher forcing); ppl over the 448 predictions, mean KL(full ‖ cache)
and top-1 agreement with full. Passkey files (passkey_L.jsonl): prefill all but 16 tokens, feed those one at a
time, greedy-generate up to 8 tokens (stop at EOS); accuracy per length. Files are recognised by their records.

options:
  --model DIR          Hugging Face model directory (or .safetensors / .gguf file)
  --data FILE...       eval JSONL files (more files may follow as plain arguments)
  --caches LIST        comma-separated presets (full, kivi-2, kivi-1, asymkv-1.5, xquant-1.38, xquant-nocal,
                       xquant-noshare, xquant-k-share) or @preset.json (from 'xquant plan'); default
                       full,kivi-2,asymkv-1.5,xquant-1.38. full is always run (KL and top-1 need it); strategy ids
                       registered by --plugin work too
  --plugin FILE        a module that registers strategies (its default export is called with @xquant/tfjs);
                       may be repeated
  --residual-length R[,R]
                       residual length(s) R; each preset runs at each (default ${DEFAULT_RESIDUAL_LENGTH})
  --group-size G[,G]   group size(s) (default ${DEFAULT_GROUP_SIZE})
  --value-group-size V channels per value group for every quantized preset (default: the group size; e.g. 64 with
                       --group-size 128, since values are grouped along head_dim)
  --limit N            first N records of each file
  --sample N           N evenly spaced records of each file (a reduced run that spans the file)
  --shard i/n          evaluate records p with p % n == i (run n processes, then 'xquant eval merge')
                       ('xquant eval join' instead puts together runs of other configurations on the same records)
  --backend NAME       tfjs backend: tensorflow, wasm or cpu (default: the first that loads of these), or webgpu
  --no-shared-prefill  prefill every cache through the model instead of copying the full prefill's K/V
  --no-batch           run the configurations of a record one after another instead of in lockstep (one batched
                       forward per step for all of them; the default except on webgpu)
  --layer-errors       also measure each cache's per-layer attention/K/V error (each layer in isolation) on the
                       first prose record of the data (for the report's per-layer plot)
  --out FILE           write the results JSON to FILE and the markdown table to FILE with .md; while the run goes,
                       every finished record is appended to FILE.partial.jsonl (removed at the end)
  --resume             continue the interrupted run whose FILE.partial.jsonl is beside --out (same model, data,
                       configurations and selection), skipping the records it finished
  --json               print the results JSON on stdout (else the markdown table)
  -h, --help           show this help`;

/** Format tag of the first line of an eval checkpoint (\`--out FILE\` → FILE.partial.jsonl). */
const CHECKPOINT_FORMAT = 'xquant-eval-checkpoint/v1';

/** Where the checkpoint of \`--out FILE\` lives. */
function checkpointPath(out: string): string {
  return `${out}.partial.jsonl`;
}

/**
 * The records an interrupted run finished, from its checkpoint; throws when the checkpoint belongs to another run
 * (\`E_CONFIG\`, naming what differs) or is not a checkpoint (\`E_FORMAT\`). A torn last line (the run died while writing
 * it) is dropped.
 */
function readCheckpoint(path: string, run: Record<string, unknown>): CompletedRecord[] {
  const lines = readFileSync(path, 'utf8').split('\n');
  if (lines.at(-1) === '') lines.pop();
  let head: { format?: unknown; run?: Record<string, unknown> };
  try {
    head = JSON.parse(lines[0] ?? '') as typeof head;
  } catch {
    throw new XqFormatError(`${path}: not an xquant eval checkpoint (first line is not JSON)`);
  }
  if (head?.format !== CHECKPOINT_FORMAT || typeof head.run !== 'object' || head.run === null) {
    throw new XqFormatError(`${path}: not an xquant eval checkpoint (format ${JSON.stringify(head?.format)}, expected ${CHECKPOINT_FORMAT})`);
  }
  for (const key of new Set([...Object.keys(run), ...Object.keys(head.run)])) {
    if (JSON.stringify(head.run[key]) !== JSON.stringify(run[key])) {
      throw new XqConfigError('E_CONFIG', `${path}: the checkpoint is of another run: its ${key} is ${JSON.stringify(head.run[key])}, this run's ${JSON.stringify(run[key])}; resume with the same arguments, or delete it to start over`);
    }
  }
  const records: CompletedRecord[] = [];
  for (let i = 1; i < lines.length; i++) {
    let rec: CompletedRecord;
    try {
      rec = JSON.parse(lines[i]!) as CompletedRecord;
    } catch {
      if (i === lines.length - 1) break; // torn last line
      throw new XqFormatError(`${path}: line ${i + 1} is not JSON`);
    }
    if (typeof rec !== 'object' || rec === null || (rec.kind !== 'prose' && rec.kind !== 'passkey') || typeof rec.result !== 'object' || typeof rec.timing !== 'object') {
      throw new XqFormatError(`${path}: line ${i + 1} is not a finished record`);
    }
    records.push(rec);
  }
  return records;
}

function mdPath(out: string): string {
  return out.toLowerCase().endsWith('.json') ? `${out.slice(0, -5)}.md` : `${out}.md`;
}

function emit(results: EvalResults, out: string | undefined, json: boolean): void {
  const md = resultsMarkdown(results);
  if (out) {
    writeFileSync(out, `${JSON.stringify(results)}\n`);
    writeFileSync(mdPath(out), `${md}\n`);
  }
  if (json) process.stdout.write(`${JSON.stringify(results)}\n`);
  else process.stdout.write(`${md}\n`);
}

async function merge(argv: string[], join: boolean): Promise<number> {
  const command = `eval ${join ? 'join' : 'merge'}`;
  const parsed = parseCommandArgs(command, USAGE, argv, sharedOptions('out', 'json'), { positionals: true });
  if (typeof parsed === 'number') return parsed;
  if (parsed.positionals.length === 0) {
    console.error(`xquant ${command}: no results files given\n\n${USAGE}`);
    return 2;
  }
  const out = parsed.values.out as string | undefined;
  if (out) {
    checkOutputPath(out, '--out');
    checkOutputPath(mdPath(out), '--out (markdown)');
  }
  const merged = (join ? joinResults : mergeResults)(parsed.positionals.map((f) => validateEvalResults(readJsonFile(f, 'results file'), f)));
  emit(merged, parsed.values.out as string | undefined, (parsed.values.json as boolean | undefined) ?? false);
  return 0;
}

/** `xquant eval …` / `xquant eval merge …`; returns the exit code (0 ok, 1 error, 2 usage). */
export async function run(argv: string[]): Promise<number> {
  if (argv[0] === 'merge' || argv[0] === 'join') return merge(argv.slice(1), argv[0] === 'join');
  const parsed = parseCommandArgs('eval', USAGE, argv, {
    ...sharedOptions('model', 'caches', 'residual-length', 'group-size', 'value-group-size', 'backend', 'out', 'json', 'plugin'),
    data: { type: 'string', multiple: true },
    limit: { type: 'string' },
    sample: { type: 'string' },
    shard: { type: 'string' },
    'no-shared-prefill': { type: 'boolean' },
    'no-batch': { type: 'boolean' },
    'layer-errors': { type: 'boolean' },
    resume: { type: 'boolean' },
  }, { positionals: true, ints: { 'residual-length': 'list', 'group-size': 'list', 'value-group-size': 'one', limit: 'one', sample: 'one' } });
  if (typeof parsed === 'number') return parsed;
  const values = parsed.values as {
    model?: string; data?: string[]; caches?: string; shard?: string; backend?: string; out?: string; json?: boolean;
    'residual-length'?: number[]; 'group-size'?: number[]; 'value-group-size'?: number; limit?: number; sample?: number;
    'no-shared-prefill'?: boolean; 'no-batch'?: boolean; 'layer-errors'?: boolean; plugin?: string[]; resume?: boolean;
  };
  const { limit, sample } = values;
  const data = [...(values.data ?? []), ...parsed.positionals];
  if (!values.model || data.length === 0) {
    console.error(`xquant eval: --model and --data are required\n\n${USAGE}`);
    return 2;
  }
  if (values.resume && !values.out) {
    console.error(`xquant eval: --resume needs --out (the checkpoint is FILE.partial.jsonl beside it)\n\n${USAGE}`);
    return 2;
  }
  // outputs are checked before the run, not after it
  const checkpoint = values.out ? checkpointPath(values.out) : undefined;
  if (values.out) {
    checkOutputPath(values.out, '--out');
    checkOutputPath(mdPath(values.out), '--out (markdown)');
    checkOutputPath(checkpoint!, '--out (checkpoint)');
    if (existsSync(checkpoint!) && !values.resume) {
      throw new XqError('E_STATE', `${checkpoint}: an interrupted run left this checkpoint; pass --resume to continue it, or delete it to start over`);
    }
    if (values.resume && !existsSync(checkpoint!)) throw new XqError('E_IO', `--resume: no checkpoint ${checkpoint} to resume from`);
  }
  await loadPlugins(values.plugin ?? [], (line) => process.stderr.write(`xquant eval: ${line}\n`));
  const shard = values.shard === undefined ? undefined : parseShard(values.shard);
  const sizes = { residualLengths: values['residual-length'], groupSizes: values['group-size'], valueGroupSize: values['value-group-size'] };
  const names = (values.caches ?? 'full,kivi-2,asymkv-1.5,xquant-1.38').split(',');
  validateCacheNames(names);
  const files = [];
  for (const f of data) files.push(await readEvalFile(f));
  const rt = await openEvalModel(values.model, { backend: values.backend as BackendName | undefined });
  const caches = resolveCacheSpecs(names, rt.model.cacheShape, sizes);
  process.stderr.write(
    `xquant eval: ${rt.name} (${rt.config.architecture}, ${rt.config.numLayers} layers) on ${rt.backend.backend} (${rt.backend.reason}); ` +
      `${caches.length} configs × ${files.map((f) => `${f.name}${limit ? ` [≤${limit}]` : ''}${sample ? ` [${sample} spaced]` : ''}`).join(', ')}${shard ? `, shard ${shard.index}/${shard.count}` : ''}\n`,
  );
  // what identifies the run: a checkpoint resumes only the same one
  const identity = {
    model: values.model,
    architecture: rt.config.architecture,
    layers: rt.config.numLayers,
    configs: caches.map((c) => c.id),
    files: files.map((f) => ({ name: f.name, records: f.records.length })),
    limit: limit ?? null,
    sample: sample ?? null,
    shard: shard ?? null,
    sharedPrefill: !values['no-shared-prefill'],
    batch: !values['no-batch'],
    backend: rt.backend.backend,
  };
  let completed: CompletedRecord[] = [];
  if (checkpoint) {
    if (values.resume) {
      completed = readCheckpoint(checkpoint, identity);
      process.stderr.write(`xquant eval: resuming ${checkpoint}: ${completed.length} records already done\n`);
      // rewrite it without a torn last line, so appends start on a fresh line
      writeFileSync(checkpoint, [JSON.stringify({ format: CHECKPOINT_FORMAT, run: identity }), ...completed.map((r) => JSON.stringify(r))].join('\n') + '\n');
    } else writeFileSync(checkpoint, `${JSON.stringify({ format: CHECKPOINT_FORMAT, run: identity })}\n`);
  }
  let bar: ProgressBar | undefined;
  try {
    const results = await runEval({
      completed,
      onRecord: checkpoint ? (r) => appendFileSync(checkpoint, `${JSON.stringify(r)}\n`) : undefined,
      model: rt.model,
      tokenizer: rt.tokenizer,
      modelInfo: { name: rt.name, path: values.model },
      files,
      caches,
      limit,
      sample,
      shard,
      sharedPrefill: !values['no-shared-prefill'],
      batch: values['no-batch'] ? false : undefined,
      layerErrorPrompt: values['layer-errors'] ? files.find((f) => f.kind === 'prose')?.records[0]?.inputIds : undefined,
      onStep: (s) => (bar ??= new ProgressBar(s.total, { label: 'eval' })).tick(1, `${s.file}#${s.index} ${s.config} ${s.seconds.toFixed(1)}s`),
    });
    bar?.finish();
    emit(results, values.out, values.json ?? false);
    if (checkpoint) rmSync(checkpoint, { force: true });
    const secs = Object.values(results.timing).reduce((a, t) => a + t.seconds, 0);
    const rows = summarize(results).length;
    process.stderr.write(`xquant eval: ${rows} configs, ${results.prose.length} prose + ${results.passkey.length} passkey records in ${secs.toFixed(0)} s\n`);
    return 0;
  } finally {
    rt.model.dispose();
  }
}
