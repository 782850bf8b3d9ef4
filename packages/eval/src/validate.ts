import { XqFormatError } from '@xquant/quant';
import { BENCH_FORMAT, type BenchResults } from './bench.js';
import type { CodebookPlanResult } from './codebook-planner.js';
import type { PlanResult } from './planner.js';
import { RESULTS_FORMAT, type EvalResults } from './results.js';

/** The shape a JSON value must have (only what readers of results files use). */
type Shape =
  | 'string'
  | 'number'
  | 'integer'
  | 'boolean'
  | 'any'
  | { nullable: Shape }
  | { array: Shape }
  | { record: Shape }
  | { object: Record<string, Shape>; optional?: readonly string[] }
  | { literal: string };

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}

function shapeName(s: Shape): string {
  if (typeof s === 'string') return s === 'integer' ? 'an integer' : `a ${s}`;
  if ('nullable' in s) return `${shapeName(s.nullable)} or null`;
  if ('array' in s) return 'an array';
  if ('literal' in s) return JSON.stringify(s.literal);
  return 'an object';
}

/** Check `v` against `s`; throws XqFormatError naming `path` (e.g. `configs[2].storedBits`) and what is there. */
function check(v: unknown, s: Shape, path: string, where: string): void {
  const fail = (): never => {
    throw new XqFormatError(`${where}: ${path} must be ${shapeName(s)}, got ${v === undefined ? 'nothing (missing)' : describe(v)}`);
  };
  if (s === 'any') return;
  if (s === 'string') {
    if (typeof v !== 'string') fail();
    return;
  }
  if (s === 'number') {
    if (typeof v !== 'number') fail();
    return;
  }
  if (s === 'integer') {
    if (typeof v !== 'number' || !Number.isInteger(v)) fail();
    return;
  }
  if (s === 'boolean') {
    if (typeof v !== 'boolean') fail();
    return;
  }
  if ('literal' in s) {
    if (v !== s.literal) fail();
    return;
  }
  if ('nullable' in s) {
    if (v !== null) check(v, s.nullable, path, where);
    return;
  }
  if ('array' in s) {
    if (!Array.isArray(v)) fail();
    (v as unknown[]).forEach((x, i) => check(x, s.array, `${path}[${i}]`, where));
    return;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail();
  const o = v as Record<string, unknown>;
  if ('record' in s) {
    for (const [k, x] of Object.entries(o)) check(x, s.record, `${path}[${JSON.stringify(k)}]`, where);
    return;
  }
  for (const [k, sub] of Object.entries(s.object)) {
    if (o[k] === undefined && s.optional?.includes(k)) continue;
    check(o[k], sub, path ? `${path}.${k}` : k, where);
  }
}

const SUMS: Shape = { object: { n: 'number', nll: 'number', nllExclFirst: 'number', kl: 'number', top1: 'number' } };
const OUTCOME: Shape = { object: { ids: { array: 'integer' }, text: 'string', correct: 'boolean' } };
const CONFIG: Shape = {
  object: {
    id: 'string',
    method: 'string',
    strategy: 'string',
    options: 'any',
    residualLength: { nullable: 'integer' },
    groupSize: { nullable: 'integer' },
    paperBits: 'number',
    storedBits: 'number',
    heldBits: 'number',
    tokens: 'integer',
  },
};

/** What {@link validateEvalResults} requires of a results file. */
const RESULTS: Shape = {
  object: {
    format: { literal: RESULTS_FORMAT },
    model: { object: { name: 'string', path: 'string', architecture: 'string', layers: 'integer', kvHeads: 'integer', headDim: 'integer', vocabSize: 'integer' } },
    backend: 'string',
    protocol: {
      object: { prosePrefill: 'integer', passkeyTail: 'integer', passkeyMaxNew: 'integer', eosIds: { array: 'integer' }, sharedPrefill: 'boolean', batched: 'boolean' },
      optional: ['batched'],
    },
    files: { array: { object: { name: 'string', kind: 'string', records: 'integer', selected: 'integer' } } },
    limit: { nullable: 'integer' },
    sample: { nullable: 'integer' },
    shards: { array: { object: { index: 'integer', count: 'integer' } } },
    configs: { array: CONFIG },
    prose: { array: { object: { file: 'string', index: 'integer', id: 'string', perCache: { record: SUMS } } } },
    passkey: { array: { object: { file: 'string', index: 'integer', id: 'string', length: 'integer', answer: 'string', perCache: { record: OUTCOME } } } },
    timing: { record: { object: { seconds: 'number', steps: 'number', records: 'number' } } },
    layerErrors: { object: { promptTokens: 'integer', queryRows: 'integer', perCache: { record: { array: { object: { layer: 'integer', attention: 'number' } } } } } },
  },
  optional: ['sample', 'layerErrors'],
};

/**
 * Check that `json` (a parsed `xquant eval` results file) has every field the readers of results use, with the right
 * types, and that its records refer to its files and configurations. Returns it typed; throws `XqFormatError` naming
 * the field (`prose[3].perCache["kivi-2/R32/g32"].kl must be a number, got "x"`). `where` names the file in messages.
 */
export function validateEvalResults(json: unknown, where = 'results'): EvalResults {
  if (typeof json !== 'object' || json === null || (json as { format?: unknown }).format !== RESULTS_FORMAT) {
    throw new XqFormatError(`${where}: not an xquant eval result (format ${describe((json as { format?: unknown } | null)?.format)}, expected ${RESULTS_FORMAT})`);
  }
  check(json, RESULTS, '', where);
  const r = json as EvalResults;
  const files = new Set(r.files.map((f) => f.name));
  const configs = new Set(r.configs.map((c) => c.id));
  for (const [list, name] of [
    [r.prose, 'prose'],
    [r.passkey, 'passkey'],
  ] as const) {
    list.forEach((rec, i) => {
      if (!files.has(rec.file)) throw new XqFormatError(`${where}: ${name}[${i}].file ${JSON.stringify(rec.file)} is not one of the result's files`);
      for (const id of Object.keys(rec.perCache)) {
        if (!configs.has(id)) throw new XqFormatError(`${where}: ${name}[${i}].perCache has configuration ${JSON.stringify(id)}, which is not in configs`);
      }
    });
  }
  return r;
}

const BENCH: Shape = {
  object: {
    format: { literal: BENCH_FORMAT },
    model: 'string',
    backend: 'string',
    steps: 'integer',
    speed: {
      array: {
        object: {
          config: 'string',
          method: 'string',
          residualLength: { nullable: 'integer' },
          groupSize: { nullable: 'integer' },
          context: 'integer',
          msPerStep: 'number',
          bytes: 'number',
        },
      },
    },
    memory: {
      array: { object: { config: 'string', method: 'string', context: 'integer', heldBytes: 'number', heldBits: 'number', storedBits: 'number', paperBits: 'number' } },
    },
  },
};

/** As {@link validateEvalResults}, for an `xquant bench` results file. */
export function validateBenchResults(json: unknown, where = 'bench results'): BenchResults {
  check(json, BENCH, '', where);
  return json as BenchResults;
}

const LAYER_PLAN: Shape = { object: { bits: 'number', codesFrom: { nullable: 'integer' } } };
const CANDIDATE = { name: 'string', storedBits: 'number', paperBits: 'number', kl: 'number', top1: 'number', predicted: 'number' } as const;
const PLAN: Shape = {
  object: {
    format: { literal: 'xquant-plan/v1' },
    model: 'string',
    preset: { object: { name: 'string' } },
    best: { object: { options: { object: { keys: { array: LAYER_PLAN }, values: { array: LAYER_PLAN } } } } },
    candidates: { array: { object: CANDIDATE } },
  },
  optional: ['model'],
};
/** A codebook plan (`xquant plan --codebook`): a `turboquant` preset and the verified families, no `best`. */
const CODEBOOK_PLAN: Shape = {
  object: {
    format: { literal: 'xquant-plan/v1' },
    model: 'string',
    preset: { object: { name: 'string', strategy: { literal: 'turboquant' }, options: { object: {} } } },
    candidates: { array: { object: { ...CANDIDATE, options: { object: {} } } } },
  },
  optional: ['model'],
};

/**
 * As {@link validateEvalResults}, for an `xquant plan --out` file (`format: "xquant-plan/v1"`): a plan of the `planned`
 * strategy (`planForBudget`) or, when its preset's strategy is `turboquant`, a codebook plan (`planCodebookBudget`).
 */
export function validatePlanResult(json: unknown, where = 'plan'): (PlanResult | CodebookPlanResult) & { model?: string } {
  const codebook = (json as { preset?: { strategy?: unknown } } | null)?.preset?.strategy === 'turboquant';
  check(json, codebook ? CODEBOOK_PLAN : PLAN, '', where);
  if (codebook) return json as CodebookPlanResult;
  const p = json as PlanResult;
  if (p.best.options.keys.length !== p.best.options.values.length) {
    throw new XqFormatError(`${where}: best.options has ${p.best.options.keys.length} key layers but ${p.best.options.values.length} value layers`);
  }
  return p;
}
