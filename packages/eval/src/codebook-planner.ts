import { XqConfigError, lloydMaxCodebook } from '@xquant/quant';
import { DEFAULT_RESIDUAL_LENGTH, TURBOQUANT_BITS, turboquantBits, type KvCacheShape, type TurboQuantOptions } from '@xquant/tfjs';
import { FULL_SPEC, cacheSpec, type PresetFile } from './configs.js';
import { runEval, type EvalModel } from './protocol.js';
import type { EvalFile } from './records.js';
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
  /** Token ids of the calibration prompt (≥ prefill + 32). */
  calibrationPrompt: readonly number[];
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
  /** Progress lines. */
  log?: (line: string) => void;
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
 * 3. verify every family's plan by its KL on the calibration prompt and return the best.
 * @throws `XqConfigError` for a bad budget, a short prompt, or a budget below every family's cheapest plan.
 */
export async function planCodebookBudget(options: CodebookPlanOptions): Promise<CodebookPlanResult> {
  const { model, budgetBits } = options;
  const log = options.log ?? (() => {});
  if (!Number.isFinite(budgetBits) || budgetBits <= 0) throw new XqConfigError('E_CONFIG', `budgetBits must be a positive number; got ${String(budgetBits)}`);
  const R = options.residualLength ?? DEFAULT_RESIDUAL_LENGTH;
  const tokens = options.tokens ?? 2048;
  const prefill = options.prefill ?? 64;
  const widths = [...(options.widths ?? TURBOQUANT_BITS)].sort((a, b) => a - b);
  for (const w of widths) if (!TURBOQUANT_BITS.includes(w)) throw new XqConfigError('E_BITS', `width ${w} is not one of ${TURBOQUANT_BITS.join(', ')}`);
  const families = options.families ?? DEFAULT_CODEBOOK_FAMILIES;
  const ids = [...options.calibrationPrompt];
  if (ids.length < prefill + 32) throw new XqConfigError('E_CONFIG', `calibrationPrompt: need at least ${prefill + 32} tokens (prefill ${prefill} + 32 scored); got ${ids.length}`);
  const shape: KvCacheShape = model.cacheShape;
  const L = shape.layers;
  const D = shape.headDim;
  const evalFile: EvalFile = { path: 'calibration', name: 'calibration', kind: 'prose', records: [{ kind: 'prose', id: 'calibration', inputIds: ids }] };
  const klOf = async (specs: { name: string; options: TurboQuantOptions }[]) => {
    const caches = [FULL_SPEC, ...specs.map((s) => ({ ...cacheSpec(s.name, 'turboquant', s.options as Record<string, unknown>, shape), id: s.name }))];
    const res = await runEval({ model, tokenizer: { decode: () => '' }, files: [evalFile], caches, prosePrefill: prefill, bitsTokens: tokens });
    const sums = summarize(res);
    return specs.map((s) => sums.find((x) => x.config.id === s.name)!.prose!);
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
  const best = out[0]!;
  return { preset: { name: `tqplan-${budgetBits}b-R${R}`, strategy: 'turboquant', options: best.options as Record<string, unknown> }, candidates: out, sensitivity: sens };
}
