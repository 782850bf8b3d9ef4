import { XqConfigError, lloydMaxCodebook } from '@xquant/quant';
import { DEFAULT_RESIDUAL_LENGTH, TURBOQUANT_BITS, turboquantBits, type KvCacheShape, type TurboQuantOptions } from '@xquant/tfjs';
import { FULL_SPEC, cacheSpec, type PresetFile } from './configs.js';
import { DEFAULT_CALIBRATION_TEXT, calibrationPrompts } from './planner.js';
import { runEval, type EvalModel, type EvalTokenizer } from './protocol.js';
import type { EvalFile, PasskeyRecord } from './records.js';
import { summarize } from './results.js';

/** The format dimensions of a codebook plan (everything of `TurboQuantOptions` except the widths). */
export type CodebookFamily = Pick<TurboQuantOptions, 'rotation' | 'scaleFormat' | 'scaleRule' | 'split' | 'recode' | 'seed'>;

/** Families {@link planCodebookBudget} searches by default: rotation × metadata format × scale rule × split. */
export const DEFAULT_CODEBOOK_FAMILIES: readonly CodebookFamily[] = Object.freeze([
  { split: 'rotated', scaleFormat: 'log8', scaleRule: 'lsq' },
  { split: 'rotated', scaleFormat: 'fp16', scaleRule: 'lsq' },
  { split: 'outliers', scaleFormat: 'log8', scaleRule: 'lsq' },
  { split: 'outliers', scaleFormat: 'fp16', scaleRule: 'norm' },
  { split: 'rotated', scaleFormat: 'log8', scaleRule: 'lsq', rotation: 'none' },
]);

/** Options of {@link planCodebookBudget}. */
export interface CodebookPlanOptions {
  /** The model. */
  model: EvalModel;
  /** Budget in true stored bits per K/V element at `tokens` (codes + scales + fp16 residual window). */
  budgetBits: number;
  /**
   * Token ids of the calibration prompt (≥ prefill + 32), or several prompts (e.g. {@link CALIBRATION_SET_TEXTS}
   * encoded): every KL the planner measures is then pooled over all their predictions.
   */
  calibrationPrompt: readonly number[] | readonly (readonly number[])[];
  /** Residual length R. Default 128 (`DEFAULT_RESIDUAL_LENGTH`). */
  residualLength?: number;
  /** Context length of the accounting. Default 2048. */
  tokens?: number;
  /** Widths a tensor may get. Default `TURBOQUANT_BITS` (1 … 4 in half bits). */
  widths?: readonly number[];
  /** Format families to plan and verify (one plan each). Default {@link DEFAULT_CODEBOOK_FAMILIES}. */
  families?: readonly CodebookFamily[];
  /** Prefill before teacher forcing. Default 64. */
  prefill?: number;
  /** Per-tensor sensitivity from an earlier run (`CodebookPlanResult.sensitivity`, same model and prompt): skips step 1. */
  sensitivity?: CodebookPlanResult['sensitivity'];
  /**
   * Rounds of measured local search on the best verified plan (default 0: none). Each round measures the calibration KL
   * of every tensor one width step down and one step up (≤ 4·layers runs; a step skips widths that store as many bits
   * as a wider one), then verifies the most promising budget-neutral
   * pairs (one tensor down, another up, their measured changes added) and the single upgrades that fit, and keeps the
   * best if it lowers the KL; it stops early when nothing does. About 2·layers + {@link REFINE_PAIRS} runs per round.
   * The greedy's sensitivities are measured one tensor at a time with the rest at the top width, so they miss how
   * low-width tensors compound; these steps are measured at the plan itself.
   */
  refine?: number;
  /**
   * Passkey prompts that guard `refine` (e.g. {@link syntheticPasskeys}; never the eval set): a move is kept only if its
   * plan answers at least as many of them as the plan before it (the lowest-KL move that does wins the round). Prose
   * KL alone trades retrieval away: on xq-llama-20m at 2.0 bits an unguarded search lowered the held-out KL to 0.89×
   * kivi-2's but answered 7 of 10 passkey prompts at 1024 tokens.
   */
  passkeys?: { records: readonly PasskeyRecord[]; tokenizer: EvalTokenizer };
  /**
   * Tag in the preset's name, `tqplan-{budget}b-R{R}[-{tag}][-refined]` (e.g. `'set'` for a plan made on a calibration
   * set), so plans of one budget made differently can be evaluated side by side. Letters, digits and `-` only.
   */
  nameTag?: string;
  /** Progress lines. */
  log?: (line: string) => void;
}

/** Pairs (one tensor a step down, another a step up) each round of {@link CodebookPlanOptions.refine} verifies. */
export const REFINE_PAIRS = 6;

/** Moves (lowest KL first) whose passkey answers a round of `refine` checks when `passkeys` guard it. */
const GUARD_TRIES = 4;

/**
 * Passkey prompts built from the calibration text (never from an eval set): filler sentences of `text` cycled to each
 * length, `The pass key is NNNNN. Remember it. NNNNN is the pass key.` at a seeded depth, and the question `What is
 * the pass key? The pass key is`; for {@link CodebookPlanOptions.passkeys}.
 * @param encode - the model's tokenizer (its BOS handling as for the calibration prompt)
 */
export function syntheticPasskeys(
  encode: (text: string) => number[],
  options: { lengths?: readonly number[]; perLength?: number; seed?: number; text?: string } = {},
): PasskeyRecord[] {
  const lengths = options.lengths ?? [256, 512, 1024, 2048];
  const perLength = options.perLength ?? 3;
  if (!Number.isInteger(perLength) || perLength < 1) throw new XqConfigError('E_CONFIG', `perLength must be a positive integer; got ${String(perLength)}`);
  const sentences = (options.text ?? DEFAULT_CALIBRATION_TEXT).split(/(?<=[.!?])\s+/).filter((x) => x.length > 0);
  if (sentences.length < 2) throw new XqConfigError('E_CONFIG', 'syntheticPasskeys: the text needs at least two sentences');
  const cost = sentences.map((x) => Math.max(1, encode(` ${x}`).length - encode('').length));
  let state = (options.seed ?? 1) >>> 0;
  const rand = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0), state / 2 ** 32);
  const out: PasskeyRecord[] = [];
  for (const length of lengths) {
    if (!Number.isInteger(length) || length < 64) throw new XqConfigError('E_CONFIG', `passkey lengths must be integers ≥ 64; got ${String(length)}`);
    for (let k = 0; k < perLength; k++) {
      const key = String(10000 + Math.floor(rand() * 90000));
      const needle = `The pass key is ${key}. Remember it. ${key} is the pass key.`;
      const question = 'What is the pass key? The pass key is';
      const room = length - encode(`${needle} ${question}`).length - 8;
      const filler: string[] = [];
      let used = 0;
      for (let i = Math.floor(rand() * sentences.length); used + cost[i % sentences.length]! <= room; i++) {
        filler.push(sentences[i % sentences.length]!);
        used += cost[i % sentences.length]!;
      }
      const at = Math.floor(rand() * (filler.length + 1));
      const text = [...filler.slice(0, at), needle, ...filler.slice(at), question].join(' ');
      out.push({ kind: 'passkey', id: `synthetic-${length}-${k}`, length, answer: key, inputIds: encode(text) });
    }
  }
  return out;
}

/** One verified plan. */
export interface CodebookPlanCandidate {
  /** Family name, e.g. `rotated-log8-lsq-hadamard`. */
  name: string;
  /** Options of the `turboquant` strategy. */
  options: TurboQuantOptions;
  /** True stored bits at `tokens`. */
  storedBits: number;
  /** Mean code bits. */
  paperBits: number;
  /** Predicted Σ sensitivity-weighted distortion (what the greedy search minimised). */
  predicted: number;
  /** KL(full ‖ plan) on the calibration prompt. */
  kl: number;
  /** Top-1 agreement on the calibration prompt. */
  top1: number;
  /** Accepted moves of the measured local search (`refine`), in order, e.g. `keys3 3→2, values0 1→2`; absent without it. */
  refined?: string[];
}

/** What {@link planCodebookBudget} returns. */
export interface CodebookPlanResult {
  /** The best plan as a preset of the `turboquant` strategy (`xquant eval --caches @plan.json`). */
  preset: PresetFile;
  /** Every verified plan, best first. */
  candidates: CodebookPlanCandidate[];
  /** Per tensor: KL on the calibration prompt when only it is 1-bit (the others 4-bit), minus the all-4-bit KL. */
  sensitivity: { layer: number; kind: 'keys' | 'values'; kl: number }[];
}

/** Relative MSE of a rotated unit vector's coordinates coded at width `b` over `d` channels (half bits: half each). */
export function codebookDistortion(b: number, d: number): number {
  const at = (w: number) => lloydMaxCodebook(w, d).mse * d;
  return Number.isInteger(b) ? at(b) : (at(Math.ceil(b)) + at(Math.floor(b))) / 2;
}

/** Name of a family: `split-scaleFormat-scaleRule-rotation` (e.g. `rotated-log8-lsq-hadamard`); {@link codebookFamily} parses it. */
export function codebookFamilyName(f: CodebookFamily): string {
  return familyName(f);
}

/**
 * The family a name describes: `split-format-rule[-rotation]`, e.g. `rotated-log8-lsq` or `outliers-fp16-norm-none`.
 * @throws `XqConfigError` for an unknown part.
 */
export function codebookFamily(name: string): CodebookFamily {
  const [split, scaleFormat, scaleRule, rotation = 'hadamard'] = name.split('-');
  const ok = (split === 'rotated' || split === 'outliers') && ['fp16', 'e4m3', 'e5m2', 'log8'].includes(scaleFormat ?? '') && (scaleRule === 'norm' || scaleRule === 'lsq') && (rotation === 'hadamard' || rotation === 'none');
  if (!ok) throw new XqConfigError('E_CONFIG', `codebook family '${name}': expected split-format-rule[-rotation] (rotated|outliers)-(fp16|e4m3|e5m2|log8)-(norm|lsq)[-(hadamard|none)]`);
  return { split, scaleFormat, scaleRule, rotation } as CodebookFamily;
}

function familyName(f: CodebookFamily): string {
  return [f.split ?? 'outliers', f.scaleFormat ?? 'fp16', f.scaleRule ?? 'norm', f.rotation ?? 'hadamard'].join('-');
}

/**
 * Plan per-tensor code widths of the `turboquant` strategy within a true-bit budget, over format families (rotation,
 * scale format, scale rule, half-bit split):
 * 1. sensitivity — the KL on the calibration prompt of each tensor alone at 1 bit, the others at 4 bits (one lockstep
 *    run), minus the all-4-bit KL;
 * 2. per family, start every tensor at the cheapest width and greedily upgrade the tensor with the largest predicted
 *    gain per stored bit (sensitivity × the codebook's distortion drop, {@link codebookDistortion}) while the
 *    accounting (`turboquantBits`) stays within the budget — the leftover budget is spent until no upgrade fits;
 * 3. verify every family's plan by its KL on the calibration prompt;
 * 4. with `refine`, improve the best one by measured single-step moves (see {@link CodebookPlanOptions.refine}),
 *    guarded by `passkeys` when given, and return the best.
 * @throws `XqConfigError` for a bad budget or `refine`, a short prompt, or a budget below every family's cheapest plan.
 */
export async function planCodebookBudget(options: CodebookPlanOptions): Promise<CodebookPlanResult> {
  const { model, budgetBits } = options;
  const log = options.log ?? (() => {});
  if (!Number.isFinite(budgetBits) || budgetBits <= 0) throw new XqConfigError('E_CONFIG', `budgetBits must be a positive number; got ${String(budgetBits)}`);
  const tag = options.nameTag;
  if (tag !== undefined && !/^[A-Za-z0-9-]+$/.test(tag)) throw new XqConfigError('E_CONFIG', `nameTag must be letters, digits and '-'; got ${JSON.stringify(tag)}`);
  const rounds = options.refine ?? 0;
  if (!Number.isInteger(rounds) || rounds < 0) throw new XqConfigError('E_CONFIG', `refine must be a non-negative integer; got ${String(options.refine)}`);
  const R = options.residualLength ?? DEFAULT_RESIDUAL_LENGTH;
  const tokens = options.tokens ?? 2048;
  const prefill = options.prefill ?? 64;
  const widths = [...(options.widths ?? TURBOQUANT_BITS)].sort((a, b) => a - b);
  for (const w of widths) if (!TURBOQUANT_BITS.includes(w)) throw new XqConfigError('E_BITS', `width ${w} is not one of ${TURBOQUANT_BITS.join(', ')}`);
  const families = options.families ?? DEFAULT_CODEBOOK_FAMILIES;
  const prompts = calibrationPrompts(options.calibrationPrompt, prefill + 32);
  const shape: KvCacheShape = model.cacheShape;
  const L = shape.layers;
  const D = shape.headDim;
  const evalFile: EvalFile = { path: 'calibration', name: 'calibration', kind: 'prose', records: prompts.map((ids, i) => ({ kind: 'prose' as const, id: `calibration-${i}`, inputIds: ids })) };
  /** `full` and one `turboquant` cache per named plan (the plan's name is its config id). */
  const cachesOf = (specs: { name: string; options: TurboQuantOptions }[]) => [FULL_SPEC, ...specs.map((s) => ({ ...cacheSpec(s.name, 'turboquant', s.options as Record<string, unknown>, shape), id: s.name }))];
  const klOf = async (specs: { name: string; options: TurboQuantOptions }[]) => {
    const caches = cachesOf(specs);
    const res = await runEval({ model, tokenizer: { decode: () => '' }, files: [evalFile], caches, prosePrefill: prefill, bitsTokens: tokens });
    const sums = summarize(res);
    return specs.map((s) => sums.find((x) => x.config.id === s.name)!.prose!);
  };
  const guard = options.passkeys;
  if (guard && guard.records.length === 0) throw new XqConfigError('E_CONFIG', 'passkeys: no records');
  /** Passkey prompts of the guard each plan answers (null without a guard). */
  const passkeysOf = async (specs: { name: string; options: TurboQuantOptions }[]): Promise<number[] | null> => {
    if (!guard) return null;
    const file: EvalFile = { path: 'calibration-passkeys', name: 'calibration-passkeys', kind: 'passkey', records: [...guard.records] };
    const caches = cachesOf(specs);
    const res = await runEval({ model, tokenizer: guard.tokenizer, files: [file], caches, bitsTokens: tokens });
    const sums = summarize(res);
    return specs.map((s) => Object.values(sums.find((x) => x.config.id === s.name)!.passkey ?? {}).reduce((a, p) => a + p.correct, 0));
  };

  const cheapest = (fam: CodebookFamily) => turboquantBits({ ...fam, residualLength: R, bits: widths[0]! }, shape, tokens).storedBitsPerElement;
  if (!families.some((f) => cheapest(f) <= budgetBits + 1e-12)) {
    throw new XqConfigError('E_CONFIG', `budget ${budgetBits} bits per element is below every family's cheapest plan (${Math.min(...families.map(cheapest)).toFixed(3)} bits; R = ${R}, ${tokens} tokens)`);
  }

  // ---- sensitivity -------------------------------------------------------------------------------------------
  const base = families[0] ?? {};
  const top = widths[widths.length - 1]!;
  const low = widths[0]!;
  const specs: { name: string; options: TurboQuantOptions }[] = [{ name: 'all-top', options: { ...base, residualLength: R, bits: top } }];
  for (const kind of ['keys', 'values'] as const) {
    for (let l = 0; l < L; l++) {
      const w = Array.from({ length: L }, (_, i) => (i === l ? low : top));
      specs.push({ name: `${kind}${l}`, options: { ...base, residualLength: R, keyBits: kind === 'keys' ? w : top, valueBits: kind === 'values' ? w : top } });
    }
  }
  let sensitivity = options.sensitivity;
  if (sensitivity && sensitivity.length !== 2 * L) throw new XqConfigError('E_CONFIG', `sensitivity: expected ${2 * L} entries (one per tensor); got ${sensitivity.length}`);
  if (!sensitivity) {
    log(`plan: sensitivity — KL of each of ${2 * L} tensors alone at ${low} bit(s), the rest at ${top}`);
    const kls = await klOf(specs);
    const floor = kls[0]!.kl;
    sensitivity = specs.slice(1).map((s, i) => {
      const kind = s.name.startsWith('keys') ? ('keys' as const) : ('values' as const);
      return { layer: Number(s.name.slice(kind.length)), kind, kl: Math.max(kls[i + 1]!.kl - floor, 1e-6) };
    });
  }
  const sens = sensitivity;
  const weight = (kind: 'keys' | 'values', l: number) => sens.find((s) => s.kind === kind && s.layer === l)!.kl / (codebookDistortion(low, D) - codebookDistortion(top, D));

  // ---- greedy per family ----------------------------------------------------------------------------------
  const candidates: { name: string; options: TurboQuantOptions; predicted: number }[] = [];
  for (const fam of families) {
    const bitsOf = (k: number[], v: number[]) => turboquantBits({ ...fam, residualLength: R, keyBits: k, valueBits: v }, shape, tokens).storedBitsPerElement;
    const k = Array.from({ length: L }, () => low);
    const v = Array.from({ length: L }, () => low);
    if (bitsOf(k, v) > budgetBits + 1e-12) {
      log(`plan: ${familyName(fam)}: the cheapest plan needs ${bitsOf(k, v).toFixed(3)} bits > budget ${budgetBits}`);
      continue;
    }
    for (;;) {
      const used = bitsOf(k, v);
      let best: { arr: number[]; l: number; w: number; ratio: number } | null = null;
      for (const [kind, arr] of [['keys', k], ['values', v]] as const) {
        for (let l = 0; l < L; l++) {
          for (const w of widths) {
            if (w <= arr[l]!) continue;
            const next = [...arr];
            next[l] = w;
            const dBits = (kind === 'keys' ? bitsOf(next, v) : bitsOf(k, next)) - used;
            if (used + dBits > budgetBits + 1e-12 || dBits <= 0) continue;
            const gain = weight(kind, l) * (codebookDistortion(arr[l]!, D) - codebookDistortion(w, D));
            const ratio = gain / dBits;
            if (!best || ratio > best.ratio) best = { arr, l, w, ratio };
          }
        }
      }
      if (!best) break;
      best.arr[best.l] = best.w;
    }
    let predicted = 0;
    for (let l = 0; l < L; l++) predicted += weight('keys', l) * codebookDistortion(k[l]!, D) + weight('values', l) * codebookDistortion(v[l]!, D);
    // without half-bit widths the split does not apply: a plan equal to an earlier one is verified once
    const same = (c: { options: TurboQuantOptions }) => {
      const norm = (o: TurboQuantOptions) => {
        const half = [o.keyBits, o.valueBits].flat().some((b) => !Number.isInteger(b));
        return JSON.stringify({ ...o, split: half ? o.split ?? 'outliers' : null, scaleRule: o.scaleRule ?? 'norm', scaleFormat: o.scaleFormat ?? 'fp16', rotation: o.rotation ?? 'hadamard' });
      };
      return norm(c.options) === norm({ ...fam, residualLength: R, keyBits: k, valueBits: v });
    };
    if (candidates.some(same)) {
      log(`plan: ${familyName(fam)}: same plan as an earlier family (no half-bit widths), not verified again`);
      continue;
    }
    candidates.push({ name: familyName(fam), options: { ...fam, residualLength: R, keyBits: k, valueBits: v }, predicted });
  }
  if (candidates.length === 0) throw new XqConfigError('E_CONFIG', `budget ${budgetBits} bits per element is below every family's cheapest plan (R = ${R}, ${tokens} tokens)`);

  // ---- verification ---------------------------------------------------------------------------------------
  log(`plan: verifying ${candidates.length} plans by KL on the calibration prompt`);
  const vk = await klOf(candidates);
  const out: CodebookPlanCandidate[] = candidates.map((c, i) => {
    const a = turboquantBits(c.options, shape, tokens);
    return { ...c, storedBits: a.storedBitsPerElement, paperBits: a.paperBits, kl: vk[i]!.kl, top1: vk[i]!.top1 };
  });
  out.sort((a, b) => a.kl - b.kl);
  if (rounds > 0) {
    const r = await refinePlan(out[0]!, rounds, { widths, budgetBits, shape, tokens, klOf, passkeysOf, log });
    if (r.kl < out[0]!.kl) out.unshift(r);
  }
  const best = out[0]!;
  return { preset: { name: `tqplan-${budgetBits}b-R${R}${tag ? `-${tag}` : ''}${best.refined ? '-refined' : ''}`, strategy: 'turboquant', options: best.options as Record<string, unknown> }, candidates: out, sensitivity: sens };
}

/** One tensor's width moved: which tensor and to which width. */
interface WidthMove {
  kind: 'keys' | 'values';
  layer: number;
  to: number;
}

/**
 * The measured local search of {@link CodebookPlanOptions.refine}: from `start`, per round measure every single-step
 * move, verify the best predicted budget-neutral pairs and the upgrades that fit, keep the best if it lowers the KL.
 */
async function refinePlan(
  start: CodebookPlanCandidate,
  rounds: number,
  ctx: {
    /** Widths a tensor may get, ascending. */
    widths: number[];
    budgetBits: number;
    shape: KvCacheShape;
    tokens: number;
    klOf: (specs: { name: string; options: TurboQuantOptions }[]) => Promise<{ kl: number; top1: number }[]>;
    passkeysOf: (specs: { name: string; options: TurboQuantOptions }[]) => Promise<number[] | null>;
    log: (line: string) => void;
  },
): Promise<CodebookPlanCandidate> {
  const { widths, budgetBits, shape, tokens, klOf, passkeysOf, log } = ctx;
  const L = shape.layers;
  let cur = start;
  const accepted: string[] = [];
  const arrays = (o: TurboQuantOptions) => ({
    keys: Array.isArray(o.keyBits) ? [...o.keyBits] : Array.from({ length: L }, () => (o.keyBits ?? o.bits) as number),
    values: Array.isArray(o.valueBits) ? [...o.valueBits] : Array.from({ length: L }, () => (o.valueBits ?? o.bits) as number),
  });
  const apply = (o: TurboQuantOptions, moves: WidthMove[]): TurboQuantOptions => {
    const a = arrays(o);
    for (const m of moves) a[m.kind][m.layer] = m.to;
    return { ...o, keyBits: a.keys, valueBits: a.values };
  };
  const label = (o: TurboQuantOptions, m: WidthMove) => `${m.kind}${m.layer} ${arrays(o)[m.kind][m.layer]}→${m.to}`;
  const bitsOf = (o: TurboQuantOptions) => turboquantBits(o, shape, tokens).storedBitsPerElement;
  // a width that stores as many bits as a wider one (codes rounded up to whole words) is never worth a step
  const useful = (kind: 'keys' | 'values') => {
    const cost = widths.map((w) => bitsOf(apply(start.options, [{ kind, layer: 0, to: w }])));
    return widths.filter((_, i) => !cost.some((c, j) => j > i && c <= cost[i]! + 1e-12));
  };
  const steps = { keys: useful('keys'), values: useful('values') };
  let curAnswered: number | null = null;
  for (let round = 0; round < rounds; round++) {
    const a = arrays(cur.options);
    const singles: WidthMove[] = [];
    for (const kind of ['keys', 'values'] as const) {
      for (let l = 0; l < L; l++) {
        const w = a[kind][l]!;
        const down = steps[kind].filter((x) => x < w).pop();
        const up = steps[kind].find((x) => x > w);
        if (down !== undefined) singles.push({ kind, layer: l, to: down });
        if (up !== undefined) singles.push({ kind, layer: l, to: up });
      }
    }
    log(`plan: refine round ${round + 1}: measuring ${singles.length} single-step moves`);
    const measured = await klOf(singles.map((m, j) => ({ name: `step${j}`, options: apply(cur.options, [m]) })));
    const delta = singles.map((m, j) => ({ m, d: measured[j]!.kl - cur.kl, up: m.to > a[m.kind][m.layer]! }));
    // measured already: the single upgrades that fit alone; to verify: the budget-neutral pairs (one down, one up)
    // with the lowest predicted KL (their measured changes added)
    const results: { moves: WidthMove[]; r: { kl: number; top1: number } }[] = [];
    delta.forEach((u, j) => {
      if (u.up && bitsOf(apply(cur.options, [u.m])) <= budgetBits + 1e-12) results.push({ moves: [u.m], r: measured[j]! });
    });
    const pairs: { moves: WidthMove[]; predicted: number }[] = [];
    for (const dn of delta.filter((x) => !x.up)) {
      for (const u of delta.filter((x) => x.up)) {
        if (dn.m.kind === u.m.kind && dn.m.layer === u.m.layer) continue;
        const moves = [dn.m, u.m];
        if (bitsOf(apply(cur.options, moves)) <= budgetBits + 1e-12) pairs.push({ moves, predicted: cur.kl + dn.d + u.d });
      }
    }
    pairs.sort((x, y) => x.predicted - y.predicted);
    const toVerify = pairs.slice(0, REFINE_PAIRS).filter((p) => p.predicted < cur.kl);
    const verified = toVerify.length > 0 ? await klOf(toVerify.map((t, j) => ({ name: `pair${j}`, options: apply(cur.options, t.moves) }))) : [];
    toVerify.forEach((t, j) => results.push({ moves: t.moves, r: verified[j]! }));
    results.sort((x, y) => x.r.kl - y.r.kl);
    const better = results.filter((x) => x.r.kl < cur.kl).slice(0, GUARD_TRIES);
    let win = better[0];
    if (win) {
      // the passkey guard: the lowest-KL move that answers at least as many prompts as the current plan
      // the current plan's count is measured once, then carried from the move that was kept
      const first = curAnswered === null ? [{ name: 'current', options: cur.options }] : [];
      const answered = await passkeysOf([...first, ...better.map((x, j) => ({ name: `try${j}`, options: apply(cur.options, x.moves) }))]);
      if (answered) {
        if (curAnswered === null) curAnswered = answered.shift()!;
        const floor = curAnswered;
        const j = answered.findIndex((a) => a >= floor);
        log(`plan: refine round ${round + 1}: passkeys answered ${floor} (current) / ${answered.join(', ')} (moves by KL)`);
        win = j >= 0 ? better[j] : undefined;
        if (j >= 0) curAnswered = answered[j]!;
      }
    }
    if (!win) {
      log(`plan: refine round ${round + 1}: no move lowers the KL (${cur.kl.toFixed(4)})${better.length ? ' and keeps the passkeys' : ''}; stopping`);
      break;
    }
    const options = apply(cur.options, win.moves);
    const moved = win.moves.map((m) => label(cur.options, m));
    accepted.push(...moved);
    log(`plan: refine round ${round + 1}: ${moved.join(', ')}: KL ${cur.kl.toFixed(4)} → ${win.r.kl.toFixed(4)}`);
    const acc = turboquantBits(options, shape, tokens);
    cur = { ...cur, name: `${start.name}+refined`, options, storedBits: acc.storedBitsPerElement, paperBits: acc.paperBits, kl: win.r.kl, top1: win.r.top1, refined: [...accepted] };
  }
  return cur;
}
