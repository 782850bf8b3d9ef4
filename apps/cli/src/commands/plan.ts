import { readFileSync, writeFileSync } from 'node:fs';
import { checkOutputPath, parseCommandArgs, sharedOptions } from '../args.js';
import { CALIBRATION_SET_TEXTS, DEFAULT_CALIBRATION_TEXT, codebookFamily, openEvalModel, planCodebookBudget, planForBudget, syntheticPasskeys, type CodebookPlanResult } from '@xquant/eval';
import { XqError, XqFormatError } from '@xquant/quant';
import { DEFAULT_RESIDUAL_LENGTH, type BackendName } from '@xquant/tfjs';

/** One-line description shown by `xquant --help`. */
export const summary = 'search a per-layer KV-cache plan for the best KL within a true-stored-bits budget';

const USAGE = `usage: xquant plan --model DIR --budget BITS [options]

Searches bits per layer (keys and values apart), group size, cross-layer sharing (donors chosen by measured code
agreement) and calibration (none / η / least squares) for the lowest KL(full ‖ cache) on a short calibration
prompt, within BITS true stored bits per K/V element (codes + fp16 scale/zero + fp16 residual window, at --tokens).
Writes a reusable preset: 'xquant eval --caches @plan.json' evaluates it.

options:
  --model DIR          model directory
  --budget BITS        true stored bits per element (e.g. 2.49 = xquant-1.38 at R=32)
  --residual-length R  residual length (default ${DEFAULT_RESIDUAL_LENGTH})
  --tokens T           context length of the budget (default 2048)
  --group-size LIST    key group sizes to try (must divide R; default 32,64)
  --value-group-size LIST
                       value group sizes to try (must divide headDim, any R; default: the key group sizes and 64)
  --calibration FILE   calibration prompt: a text file (one prompt), or JSON/JSONL records with input_ids or
                       text (one prompt each; KL pooled over all) (default: a built-in English paragraph,
                       ~370 tokens)
  --calibration-set    the built-in set of four prompts in different registers (~1,500 tokens; the first is
                       the default paragraph) instead; with --refine the guard's passkey prompts use all four;
                       with --codebook the preset is named tqplan-<B>b-R<R>-set[-refined]
  --codebook           plan the 'turboquant' strategy instead: per-tensor widths 1…4 in half bits, over the
                       format families (rotation, scale format fp16/log8, norm/least-squares scale, half-bit split);
                       writes a 'turboquant' preset (issue 14); --budget may be a list (one sensitivity run,
                       one plan per budget; --out FILE gets .b<BUDGET> before .json for each)
  --sensitivity-from FILE
                       with --codebook: reuse the per-tensor sensitivity of an earlier plan result (same model
                       and calibration prompt) instead of measuring it
  --refine N           with --codebook: N rounds of measured local search on the best plan (one tensor a
                       width step down, another up; ≈ 2·layers + 6 calibration runs per round; default 0); a move
                       is kept only if the plan still answers as many of 12 passkey prompts built from the
                       calibration text (3 each at 256/512/1024/2048 tokens) as before
  --no-passkey-guard   with --refine: prose KL alone decides (it can trade retrieval away)
  --families LIST      with --codebook: families to plan, e.g. rotated-log8-lsq,outliers-fp16-norm-hadamard
  --no-sharing         do not try cross-layer code sharing
  --no-sensitivity     skip the per-tensor KL runs (faster, cruder)
  --max-verify N       plans verified by KL (default 6)
  --backend NAME       tensorflow, wasm or cpu
  --out FILE           write the plan result (JSON, usable with --caches @FILE)
  --json               print the plan result JSON on stdout
  -h, --help           show this help`;

function calibrationIds(path: string, encode: (t: string) => number[]): number[][] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new XqError('E_IO', `${path}: cannot read calibration file (${(e as Error).message})`, { cause: e });
  }
  if (/\.jsonl?$/i.test(path)) {
    let records: unknown[];
    try {
      records = path.toLowerCase().endsWith('.jsonl') ? text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as unknown) : [JSON.parse(text) as unknown].flat();
    } catch (e) {
      throw new XqFormatError(`${path}: not JSON (${(e as Error).message})`, { cause: e });
    }
    if (records.length === 0) throw new XqFormatError(`${path}: no records`);
    return records.map((r, i) => {
      const rec = r as { input_ids?: unknown; text?: unknown } | null;
      if (Array.isArray(rec?.input_ids)) return rec.input_ids as number[];
      if (typeof rec?.text === 'string') return encode(rec.text);
      throw new XqFormatError(`${path}: record ${i} has neither input_ids nor text`);
    });
  }
  return [encode(text)];
}

/** `xquant plan …`; returns the exit code. */
export async function run(argv: string[]): Promise<number> {
  const parsed = parseCommandArgs('plan', USAGE, argv, {
    ...sharedOptions('model', 'residual-length', 'group-size', 'value-group-size', 'backend', 'out', 'json'),
    budget: { type: 'string' },
    tokens: { type: 'string' },
    calibration: { type: 'string' },
    'calibration-set': { type: 'boolean' },
    'no-sharing': { type: 'boolean' },
    codebook: { type: 'boolean' },
    families: { type: 'string' },
    'sensitivity-from': { type: 'string' },
    'no-sensitivity': { type: 'boolean' },
    'max-verify': { type: 'string' },
    refine: { type: 'string' },
    'no-passkey-guard': { type: 'boolean' },
  }, { ints: { 'residual-length': 'one', tokens: 'one', 'group-size': 'list', 'value-group-size': 'list', 'max-verify': 'one', refine: 'one' } });
  if (typeof parsed === 'number') return parsed;
  const v = parsed.values as Record<string, string | boolean | undefined> & Record<'residual-length' | 'tokens' | 'max-verify' | 'refine', number | undefined> & Record<'group-size' | 'value-group-size', number[] | undefined>;
  const budgets = String(v.budget ?? '').split(',').map(Number);
  const budget = budgets[0]!;
  if (typeof v.model !== 'string' || !budgets.every((b) => b > 0) || (budgets.length > 1 && !v.codebook)) {
    console.error(`xquant plan: --model and a positive --budget are required\n\n${USAGE}`);
    return 2;
  }
  if (typeof v.calibration === 'string' && v['calibration-set']) {
    console.error(`xquant plan: --calibration and --calibration-set exclude each other\n\n${USAGE}`);
    return 2;
  }
  if (typeof v.out === 'string') checkOutputPath(v.out, '--out');
  const R = v['residual-length'] ?? DEFAULT_RESIDUAL_LENGTH;
  const { tokens, 'max-verify': maxVerify, 'group-size': groupSizes, 'value-group-size': valueGroupSizes } = v;
  const rt = await openEvalModel(v.model, { backend: v.backend as BackendName | undefined });
  try {
    const encode = (t: string) => rt.tokenizer.encode(t);
    const prompts = typeof v.calibration === 'string' ? calibrationIds(v.calibration, encode) : (v['calibration-set'] ? CALIBRATION_SET_TEXTS : [DEFAULT_CALIBRATION_TEXT]).map(encode);
    const calibrationTokens = prompts.reduce((a, p) => a + p.length, 0);
    const guardText = v['calibration-set'] ? CALIBRATION_SET_TEXTS.join(' ') : undefined;
    process.stderr.write(`xquant plan: ${rt.name} on ${rt.backend.backend}, budget ${budget} bits at ${tokens ?? 2048} tokens, R=${R}, ${calibrationTokens} calibration tokens in ${prompts.length} prompt(s)\n`);
    const t0 = Date.now();
    if (v.codebook) {
      const families = typeof v.families === 'string' ? v.families.split(',').map(codebookFamily) : undefined;
      let sensitivity: CodebookPlanResult['sensitivity'] | undefined;
      if (typeof v['sensitivity-from'] === 'string') {
        try {
          sensitivity = (JSON.parse(readFileSync(v['sensitivity-from'], 'utf8')) as { sensitivity?: CodebookPlanResult['sensitivity'] }).sensitivity;
        } catch (e) {
          throw new XqError('E_IO', `${String(v['sensitivity-from'])}: cannot read a plan result (${(e as Error).message})`, { cause: e });
        }
        if (!Array.isArray(sensitivity)) throw new XqFormatError(`${String(v['sensitivity-from'])}: no "sensitivity" array (expected an 'xquant plan --codebook' result)`);
      }
      for (const b of budgets) {
      const cb = await planCodebookBudget({
        model: rt.model,
        budgetBits: b,
        calibrationPrompt: prompts,
        residualLength: R,
        tokens,
        families,
        sensitivity,
        ...(v['calibration-set'] ? { nameTag: 'set' } : {}),
        ...(v.refine !== undefined ? { refine: v.refine } : {}),
        ...(v.refine !== undefined && !v['no-passkey-guard'] ? { passkeys: { records: syntheticPasskeys(encode, { text: guardText }), tokenizer: rt.tokenizer } } : {}),
        log: (line) => process.stderr.write(`${line} (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`),
      });
      sensitivity = cb.sensitivity;
      const out = { format: 'xquant-plan/v1', model: rt.name, budgetBits: b, residualLength: R, calibrationTokens, ...cb };
      if (typeof v.out === 'string') writeFileSync(budgets.length > 1 ? v.out.replace(/(\.json)?$/, `.b${b}.json`) : v.out, `${JSON.stringify(out, null, 1)}\n`);
      if (v.json) process.stdout.write(`${JSON.stringify(out)}\n`);
      else {
        const lines = ['| candidate | stored bits | paper bits | KL (calibration) | top-1 | key widths | value widths |', '|---|---:|---:|---:|---:|---|---|'];
        const w = (x: unknown) => (Array.isArray(x) ? x.join(' ') : String(x));
        for (const c of cb.candidates) lines.push(`| ${c.name} | ${c.storedBits.toFixed(3)} | ${c.paperBits.toFixed(3)} | ${c.kl.toFixed(4)} | ${c.top1.toFixed(4)} | ${w(c.options.keyBits)} | ${w(c.options.valueBits)} |`);
        lines.push('', `best: ${cb.candidates[0]!.name} → preset ${cb.preset.name}`);
        if (cb.candidates[0]!.refined) lines.push(`refined by: ${cb.candidates[0]!.refined.join(', ')}`);
        lines.push('');
        process.stdout.write(`${lines.join('\n')}\n`);
      }
      }
      return 0;
    }
    const result = await planForBudget({
      model: rt.model,
      budgetBits: budget,
      calibrationPrompt: prompts,
      residualLength: R,
      tokens,
      groupSizes,
      valueGroupSizes,
      sharing: !v['no-sharing'],
      sensitivity: !v['no-sensitivity'],
      maxVerify,
      log: (line) => process.stderr.write(`${line} (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`),
    });
    const out = { format: 'xquant-plan/v1', model: rt.name, budgetBits: budget, residualLength: R, calibrationTokens, ...result };
    if (typeof v.out === 'string') writeFileSync(v.out, `${JSON.stringify(out, null, 1)}\n`);
    if (v.json) {
      process.stdout.write(`${JSON.stringify(out)}\n`);
    } else {
      const lines = ['| candidate | stored bits | paper bits | KL (calibration) | top-1 |', '|---|---:|---:|---:|---:|'];
      for (const c of result.candidates) lines.push(`| ${c.name} | ${c.storedBits.toFixed(3)} | ${c.paperBits.toFixed(3)} | ${c.kl.toFixed(4)} | ${c.top1.toFixed(4)} |`);
      const o = result.best.options;
      lines.push('', `best: ${result.best.name} → preset ${result.preset.name} (key group ${o.groupSize}, value group ${o.valueGroupSize})`, '', '| layer | K bits | K donor | K cal | V bits | V donor | V cal |', '|---:|---:|---:|---|---:|---:|---|');
      o.keys.forEach((k, l) => {
        const vv = o.values[l]!;
        const cal = (c: unknown) => JSON.stringify(Array.isArray(c) ? c[l] : c).replace(/"/g, '');
        lines.push(`| ${l} | ${k.bits} | ${k.codesFrom ?? '–'} | ${cal(o.keyCalibration)} | ${vv.bits} | ${vv.codesFrom ?? '–'} | ${cal(o.valueCalibration)} |`);
      });
      lines.push('', 'inter-layer code agreement on the calibration prompt (1-bit codes; chance = agreement of independent codes):', '', '| layers | keys | keys chance | values | values chance |', '|---|---:|---:|---:|---:|');
      const { keys: ka, values: va } = result.agreement;
      for (let l = 1; l < ka.agreement.length; l++) {
        lines.push(`| ${l - 1}–${l} | ${ka.agreement[l]![l - 1]!.toFixed(3)} | ${ka.chance[l]![l - 1]!.toFixed(3)} | ${va.agreement[l]![l - 1]!.toFixed(3)} | ${va.chance[l]![l - 1]!.toFixed(3)} |`);
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    }
    return 0;
  } finally {
    rt.model.dispose();
  }
}
