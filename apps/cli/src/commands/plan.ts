import { readFileSync, writeFileSync } from 'node:fs';
import { parseCommandArgs } from '../args.js';
import { DEFAULT_CALIBRATION_TEXT, openEvalModel, planForBudget } from '@xquant/eval';
import { XqError, XqFormatError } from '@xquant/quant';
import type { BackendName } from '@xquant/tfjs';

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
  --residual R         residual length (default 128)
  --tokens T           context length of the budget (default 2048)
  --group-sizes LIST   key group sizes to try (must divide R; default 32,64)
  --value-group-sizes LIST
                       value group sizes to try (must divide headDim, any R; default: the key group sizes and 64)
  --calibration FILE   calibration prompt: a text file, or JSON/JSONL with input_ids (first record)
                       (default: a built-in English paragraph, ~370 tokens)
  --no-sharing         do not try cross-layer code sharing
  --no-sensitivity     skip the per-tensor KL runs (faster, cruder)
  --max-verify N       plans verified by KL (default 6)
  --backend NAME       tensorflow, wasm or cpu
  --out FILE           write the plan result (JSON, usable with --caches @FILE)
  --json               print the plan result JSON on stdout
  -h, --help           show this help`;

function calibrationIds(path: string, encode: (t: string) => number[]): number[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new XqError('E_IO', `${path}: cannot read calibration file (${(e as Error).message})`, { cause: e });
  }
  if (/\.jsonl?$/i.test(path)) {
    const first = path.toLowerCase().endsWith('.jsonl') ? text.split('\n').find((l) => l.trim()) : text;
    let j: unknown;
    try {
      j = JSON.parse(first ?? '');
    } catch (e) {
      throw new XqFormatError(`${path}: not JSON (${(e as Error).message})`, { cause: e });
    }
    const rec = (Array.isArray(j) ? j[0] : j) as { input_ids?: unknown; text?: unknown };
    if (Array.isArray(rec?.input_ids)) return rec.input_ids as number[];
    if (typeof rec?.text === 'string') return encode(rec.text);
    throw new XqFormatError(`${path}: the first record has neither input_ids nor text`);
  }
  return encode(text);
}

/** `xquant plan …`; returns the exit code. */
export async function run(argv: string[]): Promise<number> {
  let v: Record<string, string | boolean | undefined>;
  const parsed = parseCommandArgs('plan', USAGE, argv, {
    model: { type: 'string' },
    budget: { type: 'string' },
    residual: { type: 'string' },
    tokens: { type: 'string' },
    'group-sizes': { type: 'string' },
    'value-group-sizes': { type: 'string' },
    calibration: { type: 'string' },
    'no-sharing': { type: 'boolean' },
    'no-sensitivity': { type: 'boolean' },
    'max-verify': { type: 'string' },
    backend: { type: 'string' },
    out: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (typeof parsed === 'number') return parsed;
  v = parsed.values as typeof v;
  const budget = Number(v.budget);
  if (typeof v.model !== 'string' || !(budget > 0)) {
    console.error(`xquant plan: --model and a positive --budget are required\n\n${USAGE}`);
    return 2;
  }
  const num = (s: unknown, what: string): number | undefined => {
    if (s === undefined) return undefined;
    const n = Number(s);
    if (!Number.isInteger(n) || n <= 0) throw new XqError('E_CONFIG', `${what} must be a positive integer; got '${String(s)}'`);
    return n;
  };
  const rt = await openEvalModel(v.model, { backend: v.backend as BackendName | undefined });
  try {
    const encode = (t: string) => rt.tokenizer.encode(t);
    const ids = typeof v.calibration === 'string' ? calibrationIds(v.calibration, encode) : encode(DEFAULT_CALIBRATION_TEXT);
    const R = num(v.residual, '--residual') ?? 128;
    process.stderr.write(`xquant plan: ${rt.name} on ${rt.backend.backend}, budget ${budget} bits at ${num(v.tokens, '--tokens') ?? 2048} tokens, R=${R}, ${ids.length} calibration tokens\n`);
    const t0 = Date.now();
    const result = await planForBudget({
      model: rt.model,
      budgetBits: budget,
      calibrationPrompt: ids,
      residualLength: R,
      tokens: num(v.tokens, '--tokens'),
      groupSizes: typeof v['group-sizes'] === 'string' ? v['group-sizes'].split(',').map((s) => num(s, '--group-sizes')!) : undefined,
      valueGroupSizes: typeof v['value-group-sizes'] === 'string' ? v['value-group-sizes'].split(',').map((s) => num(s, '--value-group-sizes')!) : undefined,
      sharing: !v['no-sharing'],
      sensitivity: !v['no-sensitivity'],
      maxVerify: num(v['max-verify'], '--max-verify'),
      log: (line) => process.stderr.write(`${line} (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`),
    });
    const out = { format: 'xquant-plan/v1', model: rt.name, budgetBits: budget, residualLength: R, calibrationTokens: ids.length, ...result };
    if (typeof v.out === 'string') writeFileSync(v.out, `${JSON.stringify(out, null, 1)}\n`);
    if (v.json) {
      process.stdout.write(`${JSON.stringify(out)}\n`);
    } else {
      const lines = ['| candidate | stored bits | paper bits | KL (calibration) | top-1 |', '|---|---:|---:|---:|---:|'];
      for (const c of result.candidates) lines.push(`| ${c.name} | ${c.storedBits.toFixed(3)} | ${c.paperBits.toFixed(3)} | ${c.kl.toFixed(4)} | ${c.top1.toFixed(4)} |`);
      const o = result.best.options;
      lines.push('', `best: ${result.best.name} → preset ${result.preset.name} (key group ${o.groupSize}, value group ${o.valueGroupSize ?? o.groupSize})`, '', '| layer | K bits | K donor | K cal | V bits | V donor | V cal |', '|---:|---:|---:|---|---:|---:|---|');
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
