import { accountBits, bestDonors, codeAgreement, type CodeAgreement, type LayerStorage } from '@xquant/cross-layer';
import { XqConfigError, type Bits } from '@xquant/quant';
import { DEFAULT_RESIDUAL_LENGTH, planned, type CalibrationChoice, type KvCacheShape, type PlannedOptions } from '@xquant/tfjs';
import { FULL_SPEC, cacheSpec, type PresetFile } from './configs.js';
import { captureLayers, layerErrors } from './layer-error.js';
import { runEval, type EvalModel } from './protocol.js';
import type { EvalFile } from './records.js';
import { summarize } from './results.js';

/** Keys or values. */
export type Kind = 'keys' | 'values';
/** A tensor's code width, or 16 = kept in full precision. */
export type TensorBits = Bits | 16;

/** Options of {@link planForBudget}. */
export interface PlanOptions {
  /** The model (a `DecoderModel` fits). */
  model: EvalModel;
  /** Budget in true stored bits per K/V element (codes + fp16 scale/zero + fp16 residual window) at `tokens`. */
  budgetBits: number;
  /**
   * Token ids of a short calibration prompt (starts with BOS; ≥ prefill + 32 tokens; ~300 is plenty), or several
   * prompts: the K/V capture (code agreement, per-layer error) uses the first, every KL is pooled over all.
   */
  calibrationPrompt: readonly number[] | readonly (readonly number[])[];
  /** Residual length R (fixed, part of the budget). Default `DEFAULT_RESIDUAL_LENGTH` of `@xquant/tfjs` (128). */
  residualLength?: number;
  /** Context length at which the budget is accounted. Default 2048. */
  tokens?: number;
  /** Key group sizes to try (tokens per key scale/zero; one per plan; must divide R). Default [32, 64]. */
  groupSizes?: number[];
  /**
   * Value group sizes to try (channels per value scale/zero; one per plan, combined with every key group size; must
   * divide headDim, independent of R). Default: the key group sizes and 64.
   */
  valueGroupSizes?: number[];
  /** Bit widths a tensor may get (16 = full precision). Default [1, 2, 4, 16]. */
  bitChoices?: TensorBits[];
  /** Calibrations a tensor may get. Default ['none', 'eta', 'least-squares']. */
  calibrations?: CalibrationChoice[];
  /** Try cross-layer code sharing (donors chosen by measured code agreement). Default true. */
  sharing?: boolean;
  /** Weigh each tensor's attention error by the KL it causes alone (one KL run per tensor). Default true. */
  sensitivity?: boolean;
  /** Plans verified by their KL on the calibration prompt (at most this many; an integer ≥ 1). Default 6. */
  maxVerify?: number;
  /** Prefill before teacher forcing on the calibration prompt. Default 64. */
  prefill?: number;
  /** Progress messages (one line each). */
  log?: (line: string) => void;
}

/** One verified candidate. */
export interface PlanCandidate {
  /** Which search branch produced it (`g32`, `g32-v64` = keys group 32 / values group 64, `g32-shared`, `…-all-eta`). */
  name: string;
  /** The plan, as options of the `planned` strategy. */
  options: PlannedOptions;
  /** True stored bits per element at the budget's context length. */
  storedBits: number;
  /** Paper-style bits. */
  paperBits: number;
  /** Predicted Σ weighted squared attention errors (what the search minimised). */
  predicted: number;
  /** Mean KL(full ‖ plan) on the calibration prompt. */
  kl: number;
  /** Top-1 agreement with full on the calibration prompt. */
  top1: number;
}

/** Sensitivity of one tensor. */
export interface TensorSensitivity {
  /** Layer index. */
  layer: number;
  /** Keys or values. */
  kind: Kind;
  /** KL on the calibration prompt with only this tensor at 1 bit. */
  kl: number;
  /** Its layer's relative attention error in that setting. */
  error: number;
}

/** What {@link planForBudget} returns. */
export interface PlanResult {
  /** The chosen plan as a reusable preset (`xquant eval --caches @plan.json`, or `planned(preset.options)`). */
  preset: PresetFile;
  /** Its KL, top-1 and bits. */
  best: PlanCandidate;
  /** Every verified candidate, best first. */
  candidates: PlanCandidate[];
  /** Per tensor, KL on the calibration prompt when only it is 1-bit (if sensitivity ran), and its attention error. */
  sensitivity: TensorSensitivity[];
  /** Inter-layer code agreement (1-bit) on the calibration prompt. */
  agreement: {
    /** Of keys. */
    keys: CodeAgreement;
    /** Of values. */
    values: CodeAgreement;
  };
  /** Cheapest plan considered, in stored bits (when the budget is below it, planning fails with this figure). */
  minimumBits: number;
}

interface Choice {
  bits: TensorBits;
  cal: CalibrationChoice;
  donor: number | null;
  /** Relative attention error of the layer with only this tensor quantized this way. */
  err: number;
}

interface Plan {
  /** Key group size. */
  gk: number;
  /** Value group size. */
  gv: number;
  keys: Choice[];
  values: Choice[];
}

function fp(layers: number): LayerStorage[] {
  return Array.from({ length: layers }, () => ({ bits: 16 as const, codesFrom: null }));
}

function calKey(c: CalibrationChoice): string {
  return typeof c === 'string' ? c : 'eta' in c ? `eta=${c.eta}` : JSON.stringify(c);
}

function plannedOptions(plan: Plan, R: number): PlannedOptions {
  const st = (c: Choice): LayerStorage => ({ bits: c.bits, codesFrom: c.donor });
  return {
    residualLength: R,
    groupSize: plan.gk,
    valueGroupSize: plan.gv,
    keys: plan.keys.map(st),
    values: plan.values.map(st),
    keyCalibration: plan.keys.map((c) => c.cal),
    valueCalibration: plan.values.map((c) => c.cal),
  };
}

/**
 * Search a per-tensor KV-cache plan for the best fidelity within a budget of true stored bits per element.
 *
 * 1. Prefill the calibration prompt at full precision and capture every layer's K, V and last queries.
 * 2. For every tensor (layer × K/V), bit width, group size (of its kind) and calibration, measure the layer's relative
 *    attention error with only that tensor quantized; optionally weigh tensors by the KL each causes alone (sensitivity).
 * 3. Per pair of key and value group sizes, start from the cheapest widths and greedily upgrade the tensor with the best predicted gain per
 *    stored bit until the budget is spent; then try cross-layer sharing with the donors the measured code agreement
 *    suggests, re-spending the saved bits, and keep a share only if the prediction improves.
 * 4. Verify the best few plans (and their all-η, all-least-squares and η-own / least-squares-borrowed variants) by their real KL on the calibration
 *    prompt through the model, and return the best as a reusable preset of the `planned` strategy of `@xquant/tfjs`.
 */
export async function planForBudget(options: PlanOptions): Promise<PlanResult> {
  const { model, budgetBits } = options;
  const log = options.log ?? (() => {});
  if (!Number.isFinite(budgetBits) || budgetBits <= 0) throw new XqConfigError('E_CONFIG', `budgetBits must be a positive number; got ${String(budgetBits)}`);
  const maxVerify = options.maxVerify ?? 6;
  if (!Number.isInteger(maxVerify) || maxVerify < 1) throw new XqConfigError('E_CONFIG', `maxVerify must be an integer ≥ 1; got ${String(maxVerify)}`);
  const R = options.residualLength ?? DEFAULT_RESIDUAL_LENGTH;
  const tokens = options.tokens ?? 2048;
  const shape: KvCacheShape = model.cacheShape;
  const L = shape.layers;
  const prefill = options.prefill ?? 64;
  const prompts = calibrationPrompts(options.calibrationPrompt, prefill + 32);
  const ids = prompts[0]!;
  const bitChoices = options.bitChoices ?? [1, 2, 4, 16];
  const cals = options.calibrations ?? ['none', 'eta', 'least-squares'];
  const requested = options.groupSizes ?? [32, 64];
  const groupSizes = requested.filter((g) => {
    const ok = Number.isInteger(g) && g > 0 && R % g === 0 && R % 32 === 0;
    if (!ok) log(`plan: key group size ${g} skipped (must divide R ${R}; 1-bit keys need R a multiple of 32)`);
    return ok;
  });
  if (groupSizes.length === 0) throw new XqConfigError('E_GROUP_SIZE', `no usable key group size for R ${R} among ${requested.join(', ')}`);
  const requestedV = options.valueGroupSizes ?? [...new Set([...requested, 64])];
  const valueGroupSizes = requestedV.filter((g) => {
    const ok = Number.isInteger(g) && g > 0 && shape.headDim % g === 0;
    if (!ok) log(`plan: value group size ${g} skipped (must divide headDim ${shape.headDim})`);
    return ok;
  });
  if (valueGroupSizes.length === 0) throw new XqConfigError('E_GROUP_SIZE', `no usable value group size for headDim ${shape.headDim} among ${requestedV.join(', ')}`);
  const gsOf = (kind: Kind) => (kind === 'keys' ? groupSizes : valueGroupSizes);

  log(`plan: capturing K/V/queries of ${ids.length} calibration tokens`);
  const cap = await captureLayers(model, ids, { queryRows: 32 });
  const agreement = { keys: codeAgreement(cap, 'keys', { bits: 1, groupSize: 32 }), values: codeAgreement(cap, 'values', { bits: 1, groupSize: 32 }) };

  // ---- bytes per tensor (additive over tensors) -------------------------------------------------------------
  const elements = 2 * L * tokens * shape.kvHeads * shape.headDim;
  const byteCache = new Map<string, number>();
  /** Bytes of one layer's keys or values stored as `bits` (`gs`: the group size of that kind). */
  const tensorBytes = (kind: Kind, bits: TensorBits, shared: boolean, gs: number): number => {
    const key = `${kind}/${bits}/${shared}/${gs}`;
    let b = byteCache.get(key);
    if (b === undefined) {
      const keys = fp(2);
      const values = fp(2);
      (kind === 'keys' ? keys : values)[1] = { bits, codesFrom: shared ? 0 : null };
      (kind === 'keys' ? keys : values)[0] = { bits, codesFrom: null };
      const groups = kind === 'keys' ? { groupSize: gs, valueGroupSize: valueGroupSizes[0]! } : { groupSize: groupSizes[0]!, valueGroupSize: gs };
      const acct = accountBits({ config: { keys, values, residualLength: R, ...groups }, kvHeads: shape.kvHeads, headDim: shape.headDim, tokens });
      const t = acct.perLayer[1]![kind];
      b = t.codeBytes + t.metadataBytes + t.residualBytes;
      byteCache.set(key, b);
    }
    return b;
  };
  const planBits = (p: Plan): number => {
    let bytes = 0;
    for (const kind of ['keys', 'values'] as const) for (const c of p[kind]) bytes += tensorBytes(kind, c.bits, c.donor !== null, kind === 'keys' ? p.gk : p.gv);
    return (8 * bytes) / elements;
  };

  // ---- per-tensor errors ------------------------------------------------------------------------------------
  const errCache = new Map<string, number>();
  /** Attention error of layer l with tensor (l, kind) stored as `c` (and, if shared, its donor at the same bits, own codes); `gs`: that kind's group size. */
  const tensorError = (l: number, kind: Kind, bits: TensorBits, cal: CalibrationChoice, donor: number | null, gs: number, donorCal: CalibrationChoice = 'eta'): number => {
    if (bits === 16) return 0;
    const key = `${l}/${kind}/${bits}/${calKey(cal)}/${donor}/${gs}/${calKey(donorCal)}`;
    let e = errCache.get(key);
    if (e === undefined) {
      const keys = fp(L);
      const values = fp(L);
      const kc: CalibrationChoice[] = Array.from({ length: L }, () => 'none');
      const vc: CalibrationChoice[] = Array.from({ length: L }, () => 'none');
      const st = kind === 'keys' ? keys : values;
      const cc = kind === 'keys' ? kc : vc;
      st[l] = { bits, codesFrom: donor };
      cc[l] = cal;
      if (donor !== null) {
        st[donor] = { bits, codesFrom: null };
        cc[donor] = donorCal;
      }
      const groups = kind === 'keys' ? { groupSize: gs, valueGroupSize: valueGroupSizes[0]! } : { groupSize: groupSizes[0]!, valueGroupSize: gs };
      const strat = planned({ residualLength: R, ...groups, keys, values, keyCalibration: kc, valueCalibration: vc });
      e = layerErrors(cap, (s) => strat.createCache(s), [l])[0]!.attention;
      errCache.set(key, e);
    }
    return e;
  };
  const bestOwn = (l: number, kind: Kind, bits: TensorBits, gs: number): Choice => {
    let best: Choice = { bits, cal: 'none', donor: null, err: Infinity };
    for (const cal of bits === 16 ? (['none'] as CalibrationChoice[]) : cals) {
      const err = tensorError(l, kind, bits, cal, null, gs);
      if (err < best.err) best = { bits, cal, donor: null, err };
    }
    return best;
  };

  log(`plan: measuring per-tensor attention errors (${L} layers × ${bitChoices.length} widths × ${cals.length} calibrations × (keys at ${groupSizes.length} + values at ${valueGroupSizes.length} group sizes))`);
  /** Per kind and group size: per layer, the best own-codes choice for every bit width. */
  const table = { keys: new Map<number, Choice[][]>(), values: new Map<number, Choice[][]>() };
  for (const kind of ['keys', 'values'] as const) {
    for (const gs of gsOf(kind)) {
      const rows: Choice[][] = [];
      for (let l = 0; l < L; l++) rows.push(bitChoices.map((b) => bestOwn(l, kind, b, gs)));
      table[kind].set(gs, rows);
    }
  }

  // ---- sensitivity: KL when a single tensor is 1-bit --------------------------------------------------------
  const weights = { keys: new Array<number>(L).fill(1), values: new Array<number>(L).fill(1) };
  const sensitivity: PlanResult['sensitivity'] = [];
  const evalFile: EvalFile = { path: 'calibration', name: 'calibration', kind: 'prose', records: prompts.map((p, i) => ({ kind: 'prose' as const, id: `calibration-${i}`, inputIds: p })) };
  const klOf = async (specs: { name: string; options: PlannedOptions }[]) => {
    const caches = [FULL_SPEC, ...specs.map((s) => ({ ...cacheSpec(s.name, 'planned', s.options as unknown as Record<string, unknown>, shape), id: s.name }))];
    const res = await runEval({ model, tokenizer: { decode: () => '' }, files: [evalFile], caches, prosePrefill: prefill, bitsTokens: tokens });
    const sums = summarize(res);
    return specs.map((s) => sums.find((x) => x.config.id === s.name)!.prose!);
  };
  if (options.sensitivity ?? true) {
    const gs0 = groupSizes[0]!;
    const gv0 = valueGroupSizes.includes(gs0) ? gs0 : valueGroupSizes[0]!;
    const specs: { name: string; options: PlannedOptions }[] = [];
    for (const kind of ['keys', 'values'] as const) {
      for (let l = 0; l < L; l++) {
        const keys = fp(L);
        const values = fp(L);
        (kind === 'keys' ? keys : values)[l] = { bits: 1, codesFrom: null };
        specs.push({ name: `${kind}${l}`, options: { residualLength: R, groupSize: gs0, valueGroupSize: gv0, keys, values, keyCalibration: 'eta', valueCalibration: 'eta' } });
      }
    }
    log(`plan: sensitivity — KL of each of ${specs.length} tensors alone at 1 bit on the calibration prompt`);
    const kls = await klOf(specs);
    specs.forEach((s, i) => {
      const kind: Kind = s.name.startsWith('keys') ? 'keys' : 'values';
      const l = Number(s.name.slice(kind.length));
      const err = tensorError(l, kind, 1, 'eta', null, kind === 'keys' ? gs0 : gv0);
      const kl = kls[i]!.kl;
      sensitivity.push({ layer: l, kind, kl, error: err });
      weights[kind][l] = err > 0 ? Math.max(kl, 1e-6) / (err * err) : 1;
    });
  }
  const contribution = (kind: Kind, l: number, c: Choice) => weights[kind][l]! * c.err * c.err;
  const predicted = (p: Plan) => {
    let s = 0;
    for (const kind of ['keys', 'values'] as const) p[kind].forEach((c, l) => (s += contribution(kind, l, c)));
    return s;
  };

  // ---- greedy allocation ------------------------------------------------------------------------------------
  const frozen = (p: Plan, kind: Kind, l: number) => p[kind][l]!.donor !== null || p[kind].some((c) => c.donor === l);
  const gsIn = (p: Plan, kind: Kind) => (kind === 'keys' ? p.gk : p.gv);
  const spend = (p: Plan): Plan => {
    const t = { keys: table.keys.get(p.gk)!, values: table.values.get(p.gv)! };
    const cur = { ...p, keys: [...p.keys], values: [...p.values] };
    for (;;) {
      const used = planBits(cur);
      let best: { kind: Kind; l: number; c: Choice; ratio: number } | null = null;
      for (const kind of ['keys', 'values'] as const) {
        for (let l = 0; l < L; l++) {
          if (frozen(cur, kind, l)) continue;
          const now = cur[kind][l]!;
          for (const c of t[kind][l]!) {
            if (c.bits <= now.bits) continue;
            const gs = gsIn(p, kind);
            const dBits = ((8 * (tensorBytes(kind, c.bits, false, gs) - tensorBytes(kind, now.bits, false, gs))) / elements);
            if (used + dBits > budgetBits + 1e-12) continue;
            const gain = contribution(kind, l, now) - contribution(kind, l, c);
            const ratio = gain / dBits;
            if (gain > 0 && (!best || ratio > best.ratio)) best = { kind, l, c, ratio };
          }
        }
      }
      if (!best) return cur;
      cur[best.kind][best.l] = best.c;
    }
  };

  const donorsFor = { keys: bestDonors(agreement.keys), values: bestDonors(agreement.values) };
  const share = (p: Plan, kind: Kind, l: number, d: number): Plan | null => {
    if (d === l || frozen(p, kind, l) || p[kind][d]!.donor !== null) return null;
    const bits = p[kind][d]!.bits;
    if (bits === 16) return null;
    const next = { ...p, keys: [...p.keys], values: [...p.values] };
    let best: Choice | null = null;
    for (const cal of cals) {
      const err = tensorError(l, kind, bits, cal, d, gsIn(p, kind), p[kind][d]!.cal);
      if (!best || err < best.err) best = { bits, cal, donor: d, err };
    }
    next[kind][l] = best!;
    return next;
  };

  const minimal = (gk: number, gv: number): Plan => {
    const minBits = Math.min(...bitChoices);
    const pick = (rows: Choice[][]) => rows.map((row) => row.find((c) => c.bits === minBits)!);
    return { gk, gv, keys: pick(table.keys.get(gk)!), values: pick(table.values.get(gv)!) };
  };
  const pairs = groupSizes.flatMap((gk) => valueGroupSizes.map((gv) => ({ gk, gv, name: gk === gv ? `g${gk}` : `g${gk}-v${gv}` })));

  const plans: { name: string; plan: Plan }[] = [];
  let minimumBits = Infinity;
  for (const { gk, gv, name: branch } of pairs) {
    let p = minimal(gk, gv);
    // Over budget even at the cheapest widths: share codes (least harm per saved bit first) until it fits.
    while (planBits(p) > budgetBits && options.sharing !== false) {
      let best: { plan: Plan; cost: number } | null = null;
      for (const kind of ['keys', 'values'] as const) {
        for (const { layer, donor } of donorsFor[kind]) {
          for (const d of new Set([donor, layer - 1])) {
            const q = share(p, kind, layer, d);
            if (!q) continue;
            const saved = planBits(p) - planBits(q);
            const cost = (predicted(q) - predicted(p)) / Math.max(saved, 1e-9);
            if (!best || cost < best.cost) best = { plan: q, cost };
          }
        }
      }
      if (!best) break;
      p = best.plan;
    }
    minimumBits = Math.min(minimumBits, planBits(p));
    if (planBits(p) > budgetBits + 1e-12) {
      log(`plan: ${branch} (key group ${gk}, value group ${gv}): even the cheapest plan needs ${planBits(p).toFixed(3)} bits > budget ${budgetBits}`);
      continue;
    }
    p = spend(p);
    plans.push({ name: branch, plan: p });
    if (options.sharing !== false) {
      // Sharing pass: accept a share when re-spending the saved bits lowers the prediction.
      let improved = true;
      let q = p;
      while (improved) {
        improved = false;
        let best: Plan | null = null;
        for (const kind of ['keys', 'values'] as const) {
          for (const { layer, donor } of donorsFor[kind]) {
            for (const d of new Set([donor, layer - 1])) {
              const s = share(q, kind, layer, d);
              if (!s) continue;
              const r = spend(s);
              if (predicted(r) < predicted(best ?? q) - 1e-12) best = r;
            }
          }
        }
        if (best) {
          q = best;
          improved = true;
        }
      }
      if (q !== p) plans.push({ name: `${branch}-shared`, plan: q });
    }
  }
  if (plans.length === 0) {
    throw new XqConfigError('E_CONFIG', `budget ${budgetBits} bits per element is below the cheapest plan (${minimumBits.toFixed(3)} bits at ${tokens} tokens, R = ${R}); raise the budget or R`);
  }

  // ---- verification by KL -----------------------------------------------------------------------------------
  plans.sort((a, b) => predicted(a.plan) - predicted(b.plan));
  // the best predicted plans, then the top plan with each calibration everywhere: maxVerify candidates in all
  const top = plans[0]!;
  const variants: { name: string; plan: Plan }[] = [];
  for (const cal of ['eta', 'least-squares'] as const) {
    const v = (cs: Choice[]) => cs.map((c) => ({ ...c, cal: c.bits === 16 ? ('none' as const) : cal }));
    variants.push({ name: `${top.name}-all-${cal}`, plan: { ...top.plan, keys: v(top.plan.keys), values: v(top.plan.values) } });
  }
  if ([...top.plan.keys, ...top.plan.values].some((c) => c.donor !== null)) {
    // η for tensors with their own codes, least squares (the code-aware fit) for tensors reading a donor's codes
    const v = (cs: Choice[]) => cs.map((c) => ({ ...c, cal: c.bits === 16 ? ('none' as const) : c.donor === null ? ('eta' as const) : ('least-squares' as const) }));
    variants.push({ name: `${top.name}-eta-own-lsq-borrowed`, plan: { ...top.plan, keys: v(top.plan.keys), values: v(top.plan.values) } });
  }
  const verify = [...plans.slice(0, Math.max(1, maxVerify - variants.length)), ...variants].slice(0, maxVerify);
  log(`plan: verifying ${verify.length} plans by KL on the calibration prompt`);
  const kls = await klOf(verify.map((v) => ({ name: v.name, options: plannedOptions(v.plan, R) })));
  const candidates: PlanCandidate[] = verify.map((v, i) => {
    const options = plannedOptions(v.plan, R);
    const acct = accountBits({ config: { keys: options.keys, values: options.values, residualLength: R, groupSize: v.plan.gk, valueGroupSize: v.plan.gv }, kvHeads: shape.kvHeads, headDim: shape.headDim, tokens });
    return { name: v.name, options, storedBits: acct.storedBitsPerElement, paperBits: acct.paperBits, predicted: predicted(v.plan), kl: kls[i]!.kl, top1: kls[i]!.top1 };
  });
  candidates.sort((a, b) => a.kl - b.kl);
  const best = candidates[0]!;
  const name = `plan-${budgetBits}b-R${R}`;
  return {
    preset: { name, strategy: 'planned', options: best.options as unknown as Record<string, unknown> },
    best,
    candidates,
    sensitivity,
    agreement,
    minimumBits,
  };
}

/**
 * The prompts of a planner's `calibrationPrompt` (one prompt's token ids, or a list of prompts), checked and copied.
 * @internal
 */
export function calibrationPrompts(p: readonly number[] | readonly (readonly number[])[], minTokens: number): number[][] {
  if (!Array.isArray(p)) throw new XqConfigError('E_CONFIG', 'calibrationPrompt: expected token ids or a list of prompts');
  const many = p.length > 0 && Array.isArray(p[0]);
  const list = (many ? p : [p]) as unknown[];
  return list.map((ids, i) => {
    const name = `calibrationPrompt${many ? ` ${i}` : ''}`;
    if (!Array.isArray(ids) || !ids.every((t) => Number.isInteger(t) && (t as number) >= 0)) throw new XqConfigError('E_CONFIG', `${name}: expected non-negative integer token ids`);
    if (ids.length < minTokens) throw new XqConfigError('E_CONFIG', `${name}: need at least ${minTokens} tokens (the prefill + 32 scored); got ${ids.length}`);
    return [...(ids as number[])];
  });
}

/** Calibration text used when none is given (written for this project; not from any eval set). */
export const DEFAULT_CALIBRATION_TEXT = [
  'The committee met on a grey morning to decide what should be done with the old library building. Some members',
  'wanted to sell it, arguing that the town could no longer afford the repairs to the roof and the heating, while',
  'others insisted that a town without a library would soon become a town without readers. After two hours of',
  'discussion, the chairman proposed a compromise: the ground floor would stay open as a reading room, the upper',
  'floors would be rented to a small school of music, and the money from the rent would pay for the roof. The',
  'proposal was accepted by a narrow majority. In the weeks that followed, volunteers moved the books, repaired the',
  'shelves and painted the walls. When the reading room opened again in spring, more people came than anyone had',
  'expected, and the sound of pianos drifting down the stairs became part of the place. Years later, people would',
  'remember that winter as the time when the town learned that it could still make decisions together, slowly and',
  'with some noise, but in the end sensibly. The records of the meeting were kept in a box in the basement, where',
  'they were found by a student who was writing a short history of the town for her final examination. She read',
  'them carefully, copied the most interesting passages by hand, and asked the oldest members of the committee what',
  'they remembered. Their answers did not always agree with the records, and sometimes not with each other.',
].join(' ');

/**
 * A calibration set of several prompts in different registers (narrative, encyclopedic, instructions, dialogue with
 * numbers), ≈ 1,500 tokens in all; the first is {@link DEFAULT_CALIBRATION_TEXT}. Written for this project; not from
 * any eval set. One 370-token prompt lets a measured search fit its noise (on xq-qwen2-30m the held-out KL rose while
 * the calibration KL fell 10 %); `xquant plan --calibration-set` pools the predictions of all four.
 */
export const CALIBRATION_SET_TEXTS: readonly string[] = Object.freeze([
  DEFAULT_CALIBRATION_TEXT,
  [
    'The river rises in a marsh on the northern slope of the hills and flows for about two hundred kilometres before it',
    'reaches the sea. In its upper course it is narrow and fast, cutting a deep valley through hard grey rock; several',
    'small waterfalls interrupt it, and the largest of them, near the village of Hollin, falls eleven metres in a single',
    'drop. Below the village the valley widens. The river slows, divides around a number of gravel islands and collects',
    'three tributaries, of which the longest drains the forest to the east. For centuries the lower valley was used',
    'mainly for grazing, because the river flooded almost every winter and left a layer of silt across the fields. In',
    'the nineteenth century a system of embankments and drainage channels was built, and the meadows were turned into',
    'arable land; wheat, barley and sugar beet are still the main crops. The town at the mouth of the river grew up',
    'around a harbour that was used by fishing boats and by ships carrying timber and coal. When the harbour silted up,',
    'trade moved to a larger port further along the coast, and the town became known instead for its market, its',
    'brick warehouses and a small museum of local history. Otters, which had disappeared from the river by the middle',
    'of the last century, returned after the water became cleaner, and salmon are again seen in the autumn.',
  ].join(' '),
  [
    'To replace the chain of a bicycle, first shift into the smallest sprocket at the back and the smallest ring at the',
    'front, so that the chain is as loose as possible. Find the joining link, or, if there is none, choose any pin and',
    'push it out with a chain tool until the chain separates. Lay the old chain next to the new one on a flat surface',
    'and count the links: the new chain should have the same number, so remove the extra links with the tool before you',
    'fit it. Thread the new chain through the rear derailleur, around the sprocket and over the front ring, making sure',
    'that it passes between the guide plates and the small pulley wheels and not outside them. Join the ends with the',
    'new joining link or with the special pin supplied with the chain, then turn the pedals backwards slowly and check',
    'that every link moves freely. A stiff link can usually be loosened by flexing it gently from side to side. Finally,',
    'put a drop of oil on each roller, wait a few minutes and wipe off whatever is left on the outside of the chain,',
    'because oil on the outer plates only collects dirt. Test the gears in a quiet street before riding in traffic,',
    'and check the chain again after the first fifty kilometres, when a new chain has settled.',
  ].join(' '),
  [
    '"How many tickets are left?" asked the woman at the counter. "Forty-two for the afternoon train," said the clerk,',
    '"and only six for the one at nine in the evening." She thought for a moment. "Then I will take two for the afternoon.',
    'My brother is coming from the airport, and his flight lands at twelve fifteen if it is on time." The clerk printed',
    'the tickets, and she paid with a note of fifty and counted the change: three coins and a receipt that said platform',
    'four, carriage seven, seats 31 and 32. Outside it had started to rain. She bought a newspaper and a cup of tea and',
    'sat down on a bench under the clock, which was, as always, four minutes fast. At half past twelve her telephone rang.',
    '"The plane was late," said her brother. "We waited almost an hour on the runway. I am in a taxi now, but the traffic',
    'is terrible. Do not wait for me at the station; go ahead, and I will take the next train." "There is no next train',
    'until nine," she said, "and there are only six seats on it. I will wait." He arrived at ten past two, wet and',
    'laughing, with a suitcase that had lost one wheel, and they ran together to platform four just as the doors closed.',
  ].join(' '),
]);
