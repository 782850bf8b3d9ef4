import { XqConfigError, XqFormatError } from '@xquant/quant';
import type { ConfigRecord, SpecBits } from './configs.js';
import type { LayerError } from './layer-error.js';
import { summarizeProse, type ProseSummary, type ProseSums } from './metrics.js';

/** Format tag of results files written by {@link runEval} and {@link mergeResults}. */
export const RESULTS_FORMAT = 'xquant-eval/v1';

/** A configuration as evaluated (see `configRecord`), with its bit accounting. */
export interface ConfigResult extends ConfigRecord, SpecBits {}

/** Per-cache outcome of one prose record. */
export interface ProseRecordResult {
  /** Eval file name. */
  file: string;
  /** Index of the record in its file (0-based). */
  index: number;
  /** Record id. */
  id: string;
  /** Sums per configuration id. */
  perCache: Record<string, ProseSums>;
}

/** What one cache generated for a passkey prompt. */
export interface PasskeyOutcome {
  /** Generated ids before EOS. */
  ids: number[];
  /** Their decoded text (special tokens skipped). */
  text: string;
  /** First run of digits equals the answer. */
  correct: boolean;
}

/** Per-cache outcome of one passkey prompt. */
export interface PasskeyRecordResult {
  /** Eval file name. */
  file: string;
  /** Index of the record in its file (0-based). */
  index: number;
  /** Record id. */
  id: string;
  /** Length bucket. */
  length: number;
  /** Expected digits. */
  answer: string;
  /** Outcome per configuration id. */
  perCache: Record<string, PasskeyOutcome>;
}

/** Shard of the record list: this process handles records whose position p in the list has `p % count === index`. */
export interface Shard {
  /** This shard, 0 ≤ index < count. */
  index: number;
  /** Number of shards. */
  count: number;
}

/** Everything an eval run (or a merge of shards) produced. */
export interface EvalResults {
  /** Always {@link RESULTS_FORMAT}. */
  format: typeof RESULTS_FORMAT;
  /** The model evaluated. */
  model: {
    /** Directory name. */
    name: string;
    /** Path as given. */
    path: string;
    /** `llama`, `qwen2`, … */
    architecture: string;
    /** Decoder layers. */
    layers: number;
    /** KV heads per layer. */
    kvHeads: number;
    /** Channels per head. */
    headDim: number;
    /** Vocabulary size. */
    vocabSize: number;
  };
  /** tfjs backend the numbers were computed on. */
  backend: string;
  /** Protocol constants used. */
  protocol: {
    /** Prose: tokens prefilled at full precision before teacher forcing. */
    prosePrefill: number;
    /** Passkey: prompt tokens fed one at a time after the prefill. */
    passkeyTail: number;
    /** Passkey: most tokens generated. */
    passkeyMaxNew: number;
    /** Generation stops at these ids. */
    eosIds: number[];
    /** The full-precision prefill's K/V were computed once and copied into every cache (identical state). */
    sharedPrefill: boolean;
    /** All configurations of a record ran in lockstep through `forwardBatch` (absent in results of older versions). */
    batched?: boolean;
  };
  /** Files evaluated, in order (records are sorted by this order, then by index). */
  files: {
    /** File name. */
    name: string;
    /** Record kind. */
    kind: 'prose' | 'passkey';
    /** Records in the file. */
    records: number;
    /** Records evaluated. */
    selected: number;
  }[];
  /** `--limit` (records per file), or null. */
  limit: number | null;
  /** `--sample` (evenly spaced records per file), or null. */
  sample?: number | null;
  /** Shards merged into this result (one entry for a single sharded run; empty when unsharded). */
  shards: Shard[];
  /** Configurations evaluated, `full` first. */
  configs: ConfigResult[];
  /** Prose records, canonical order. */
  prose: ProseRecordResult[];
  /** Passkey records, canonical order. */
  passkey: PasskeyRecordResult[];
  /** Wall time and decode steps spent per configuration (summed over records and shards). */
  timing: Record<
    string,
    {
      /** Wall seconds. */
      seconds: number;
      /** Decode steps (forwards). */
      steps: number;
      /** Records. */
      records: number;
    }
  >;
  /** Per-layer error diagnostic of every configuration on one prompt (each layer in isolation), if computed. */
  layerErrors?: {
    /** Prompt length. */
    promptTokens: number;
    /** Query rows compared per layer. */
    queryRows: number;
    /** Per configuration id, one entry per layer. */
    perCache: Record<string, LayerError[]>;
  };
}

/** Passkey accuracy at one length. */
export interface PasskeyAccuracy {
  /** Prompts answered correctly. */
  correct: number;
  /** Prompts. */
  n: number;
  /** correct / n. */
  accuracy: number;
}

/** Aggregates of one configuration. */
export interface ConfigSummary {
  /** The configuration. */
  config: ConfigResult;
  /** Prose aggregates (null without prose records). */
  prose: ProseSummary | null;
  /** By length bucket. */
  passkey: Record<number, PasskeyAccuracy>;
}

/** What identifies a record: its file and index. */
export interface RecordKey {
  /** Eval file name. */
  file: string;
  /** Index in the file. */
  index: number;
}

/** Sort records canonically: by the file order of `files`, then by index. */
export function sortRecords<T extends RecordKey>(records: T[], files: readonly { name: string }[]): T[] {
  const order = new Map(files.map((f, i) => [f.name, i]));
  return [...records].sort((a, b) => (order.get(a.file)! - order.get(b.file)!) || a.index - b.index);
}

/** Per-configuration aggregates (prose sums added in canonical record order; passkey accuracy per length). */
export function summarize(results: EvalResults): ConfigSummary[] {
  const prose = sortRecords(results.prose, results.files);
  const passkey = sortRecords(results.passkey, results.files);
  return results.configs.map((config) => {
    const sums = prose.map((r) => r.perCache[config.id]).filter((s): s is ProseSums => s !== undefined);
    const byLength: Record<number, PasskeyAccuracy> = {};
    for (const r of passkey) {
      const o = r.perCache[config.id];
      if (!o) continue;
      const a = (byLength[r.length] ??= { correct: 0, n: 0, accuracy: 0 });
      a.n++;
      if (o.correct) a.correct++;
    }
    for (const a of Object.values(byLength)) a.accuracy = a.correct / a.n;
    return { config, prose: sums.length ? summarizeProse(sums) : null, passkey: byLength };
  });
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Merge results of shards (or of runs over different files) of the same model and configurations into one result.
 * Records are concatenated and sorted canonically, so merging all shards gives exactly the unsharded numbers.
 * The model must agree in everything but its path (shards may run on different machines); the result keeps input 0's.
 * Throws `E_FORMAT` for a foreign file, `E_CONFIG` when the model, protocol or configurations differ or a record
 * appears twice.
 */
export function mergeResults(parts: readonly EvalResults[]): EvalResults {
  if (parts.length === 0) throw new XqConfigError('E_CONFIG', 'mergeResults: nothing to merge (got 0 results)');
  for (const [i, p] of parts.entries()) {
    if (!p || p.format !== RESULTS_FORMAT) throw new XqFormatError(`mergeResults: input ${i} is not an xquant eval result (format ${JSON.stringify(p?.format)}, expected ${RESULTS_FORMAT})`);
  }
  const first = parts[0]!;
  const configIds = (r: EvalResults) => r.configs.map((c) => c.id);
  // the same model may sit at different paths on the machines that ran the shards: compare it without the path
  const modelKey = (r: EvalResults) => ({ ...r.model, path: undefined });
  for (const [i, p] of parts.entries()) {
    if (!sameJson(modelKey(p), modelKey(first))) throw new XqConfigError('E_CONFIG', `mergeResults: input ${i} is for model ${p.model.name} (${p.model.path}), input 0 for ${first.model.name} (${first.model.path})`);
    if (!sameJson(p.protocol, first.protocol)) throw new XqConfigError('E_CONFIG', `mergeResults: input ${i} used protocol ${JSON.stringify(p.protocol)}, input 0 ${JSON.stringify(first.protocol)}`);
    if (!sameJson(configIds(p), configIds(first))) {
      throw new XqConfigError('E_CONFIG', `mergeResults: input ${i} has configurations [${configIds(p).join(', ')}], input 0 [${configIds(first).join(', ')}]`);
    }
  }
  const files: EvalResults['files'] = [];
  for (const p of parts) {
    for (const f of p.files) {
      const have = files.find((x) => x.name === f.name);
      if (!have) files.push({ ...f });
      else if (have.kind !== f.kind || have.records !== f.records) {
        throw new XqConfigError('E_CONFIG', `mergeResults: file ${f.name} differs between inputs (${have.kind}, ${have.records} records vs ${f.kind}, ${f.records})`);
      }
    }
  }
  const seen = new Set<string>();
  const take = <T extends { file: string; index: number }>(list: T[]) => {
    for (const r of list) {
      const key = `${r.file}#${r.index}`;
      if (seen.has(key)) throw new XqConfigError('E_CONFIG', `mergeResults: record ${r.index} of ${r.file} appears in more than one input`);
      seen.add(key);
    }
    return list;
  };
  const prose = sortRecords(parts.flatMap((p) => take(p.prose)), files);
  const passkey = sortRecords(parts.flatMap((p) => take(p.passkey)), files);
  for (const f of files) {
    const pick = f.kind === 'prose' ? prose : passkey;
    f.selected = pick.filter((r) => r.file === f.name).length;
  }
  const timing: EvalResults['timing'] = {};
  for (const p of parts) {
    for (const [id, t] of Object.entries(p.timing)) {
      const acc = (timing[id] ??= { seconds: 0, steps: 0, records: 0 });
      acc.seconds += t.seconds;
      acc.steps += t.steps;
      acc.records += t.records;
    }
  }
  const shards = parts.flatMap((p) => p.shards).sort((a, b) => a.index - b.index);
  return {
    ...first,
    files,
    limit: parts.every((p) => p.limit === first.limit) ? first.limit : null,
    sample: parts.every((p) => p.sample === first.sample) ? (first.sample ?? null) : null,
    shards,
    prose,
    passkey,
    timing,
  };
}

/**
 * Join results of the same records under different configurations (e.g. a configuration added to a finished study)
 * into one result: configurations are the union (`full` from input 0, each other id from the one input that has it),
 * each record's per-configuration numbers are taken from the input that ran it. Each run scores against its own
 * `full` pass, so every number is unchanged. Throws `E_CONFIG` when the model (path aside) or protocol constants
 * differ, a configuration other than `full` appears twice, or the inputs do not cover the same records.
 */
export function joinResults(parts: readonly EvalResults[]): EvalResults {
  if (parts.length === 0) throw new XqConfigError('E_CONFIG', 'joinResults: nothing to join (got 0 results)');
  for (const [i, p] of parts.entries()) {
    if (!p || p.format !== RESULTS_FORMAT) throw new XqFormatError(`joinResults: input ${i} is not an xquant eval result (format ${JSON.stringify(p?.format)}, expected ${RESULTS_FORMAT})`);
  }
  const first = parts[0]!;
  const constants = (r: EvalResults) => ({ ...r.protocol, batched: undefined });
  const keys = (r: EvalResults) => [...r.prose, ...r.passkey].map((x) => `${x.file}#${x.index}`).sort().join(',');
  const configs = [...first.configs];
  for (const [i, p] of parts.entries()) {
    if (!sameJson({ ...p.model, path: undefined }, { ...first.model, path: undefined })) {
      throw new XqConfigError('E_CONFIG', `joinResults: input ${i} is for model ${p.model.name}, input 0 for ${first.model.name}`);
    }
    if (!sameJson(constants(p), constants(first))) throw new XqConfigError('E_CONFIG', `joinResults: input ${i} used protocol ${JSON.stringify(p.protocol)}, input 0 ${JSON.stringify(first.protocol)}`);
    if (keys(p) !== keys(first)) throw new XqConfigError('E_CONFIG', `joinResults: input ${i} covers other records than input 0 (join needs the same records; merge joins shards)`);
    if (i === 0) continue;
    for (const c of p.configs) {
      if (c.id === 'full') continue;
      if (configs.some((x) => x.id === c.id)) throw new XqConfigError('E_CONFIG', `joinResults: configuration ${c.id} appears in more than one input`);
      configs.push(c);
    }
  }
  const joinCaches = <T extends { file: string; index: number; perCache: Record<string, unknown> }>(pick: (r: EvalResults) => T[]): T[] => {
    const others = parts.slice(1).map((p) => new Map(pick(p).map((x) => [`${x.file}#${x.index}`, x])));
    return pick(first).map((rec) => {
      const perCache = { ...rec.perCache };
      for (const byKey of others) {
        for (const [id, v] of Object.entries(byKey.get(`${rec.file}#${rec.index}`)!.perCache)) if (id !== 'full') perCache[id] = v;
      }
      return { ...rec, perCache };
    });
  };
  const timing: EvalResults['timing'] = { ...first.timing };
  for (const p of parts.slice(1)) for (const [id, t] of Object.entries(p.timing)) if (id !== 'full') timing[id] = t;
  return { ...first, configs, prose: joinCaches((r) => r.prose), passkey: joinCaches((r) => r.passkey), timing };
}

function fmt(v: number | undefined | null, digits: number): string {
  return v === undefined || v === null || Number.isNaN(v) ? '–' : v.toFixed(digits);
}

/**
 * Markdown tables of a result: one table per residual length (full repeated in each), with paper bits, true stored
 * bits, held bits, ppl, ppl without the prefill position, KL, top-1 and passkey % per length.
 */
export function resultsMarkdown(results: EvalResults, options: { title?: string } = {}): string {
  const rows = summarize(results);
  const lengths = [...new Set(results.passkey.map((r) => r.length))].sort((a, b) => a - b);
  const groups = [...new Set(rows.filter((r) => r.config.residualLength !== null).map((r) => `${r.config.residualLength}/${r.config.groupSize}`))];
  if (groups.length === 0) groups.push('');
  const out: string[] = [];
  const nProse = results.prose.length;
  const nPass = lengths.map((L) => results.passkey.filter((r) => r.length === L).length);
  for (const g of groups) {
    const [R, G] = g.split('/');
    const counts = [nProse ? `${nProse} prose records` : '', lengths.length ? `passkey over ${nPass.join('/')} prompts per length` : ''].filter(Boolean).join('; ');
    const head = `**${options.title ?? results.model.name}${g ? `, R = ${R}, group size ${G}` : ''}** (${counts})`;
    out.push(head, '');
    const cols = ['config', 'paper bits', `stored bits @${rows[0]?.config.tokens ?? 2048}`, 'held bits', 'ppl', 'ppl excl. first', 'KL', 'top-1'];
    if (lengths.length) cols.push(`passkey ${lengths.join('/')}`);
    out.push(`| ${cols.join(' | ')} |`, `|${cols.map((_, i) => (i === 0 ? '---' : i === cols.length - 1 && lengths.length ? '---' : '---:')).join('|')}|`);
    for (const r of rows) {
      if (r.config.residualLength !== null && `${r.config.residualLength}/${r.config.groupSize}` !== g) continue;
      const p = r.prose;
      const cells = [
        r.config.method,
        fmt(r.config.paperBits, 3),
        fmt(r.config.storedBits, 3),
        fmt(r.config.heldBits, 3),
        fmt(p?.ppl, 2),
        fmt(p?.pplExclFirst, 2),
        fmt(p?.kl, 4),
        fmt(p?.top1, 4),
      ];
      if (lengths.length) cells.push(lengths.map((L) => (r.passkey[L] ? (r.passkey[L]!.accuracy * 100).toFixed(0) : '–')).join('/'));
      out.push(`| ${cells.join(' | ')} |`);
    }
    out.push('');
  }
  return out.join('\n');
}
