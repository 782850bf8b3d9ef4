import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { runGoldenFile, type CaseResult } from '@xquant/conformance';
import { getKernelBackend, wasmKernelsAvailable } from '@xquant/quant';

/** One-line description shown by `xquant --help`. */
export const summary = 'check xquant-ts against reference golden files (bit-exact codes/stats/deq, attention tolerance)';

const USAGE = `usage: xquant verify FILE... [--json OUT]

Runs every case of each golden file (families a–g of the XQuant reference vectors) against xquant-ts and prints
one line per case: name, max abs error, mismatched codes, PASS/FAIL. Ends with 'N passed, N failed'; the exit
code is 1 if any case fails or a file cannot be read or is corrupt. Attention cases (family g) run the kernels a
quantized cache runs, on the golden block and on the cache's storage layout.

options:
  --json OUT   also write per-case figures as JSON to OUT ('-' = stdout; the text lines then go to stderr)
  -h, --help   show this help`;

/** Per-file outcome written by `--json`. */
interface FileReport {
  file: string;
  family: string | null;
  /** Set when the file could not be read or is not a valid golden file. */
  error: string | null;
  cases: CaseResult[];
}

function formatError(e: unknown): string {
  const err = e as { name?: string; code?: string; message?: string };
  return `${err?.name ?? 'Error'}${err?.code ? ` [${err.code}]` : ''}: ${err?.message ?? String(e)}`;
}

function formatNumber(v: number): string {
  if (v === 0) return '0';
  if (!Number.isFinite(v)) return String(v);
  return v.toExponential(2);
}

/** `xquant verify FILE... [--json OUT]`; returns the exit code (0 all passed, 1 a failure, 2 usage error). */
export async function run(argv: string[]): Promise<number> {
  let values: { json?: string; help?: boolean };
  let files: string[];
  try {
    const parsed = parseArgs({
      args: argv,
      options: { json: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
    });
    values = parsed.values;
    files = parsed.positionals;
  } catch (e) {
    console.error(`xquant verify: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (files.length === 0) {
    console.error(`xquant verify: no golden file given\n\n${USAGE}`);
    return 2;
  }
  const jsonToStdout = values.json === '-';
  const print = jsonToStdout ? (s: string) => process.stderr.write(`${s}\n`) : (s: string) => process.stdout.write(`${s}\n`);

  const reports: FileReport[] = [];
  let passed = 0;
  let failed = 0;
  for (const file of files) {
    let results: CaseResult[];
    try {
      results = await runGoldenFile(file);
    } catch (e) {
      failed++;
      print(`${file}: ERROR ${formatError(e)}`);
      reports.push({ file, family: null, error: formatError(e), cases: [] });
      continue;
    }
    print(`# ${file} (${results[0]?.family ?? '?'}, ${results.length} cases)`);
    if (results[0]?.family === 'g_attention') {
      const simd = wasmKernelsAvailable() && getKernelBackend() !== 'js' ? 'WebAssembly SIMD where it applies, else JS' : 'JS';
      print(`# kernels: @xquant/quant packedKeyScores / packedValueMix (${simd}), the cache's kernels, also on its layout`);
    }
    const width = Math.max(...results.map((r) => r.name.length));
    for (const r of results) {
      const line = `${r.name.padEnd(width)}  maxAbsErr ${formatNumber(r.maxAbsError).padEnd(8)}  mismatchedCodes ${String(r.mismatchedCodes).padEnd(5)}  ${r.passed ? 'PASS' : 'FAIL'}`;
      print(r.passed ? line : `${line}  ${r.detail}`);
      if (r.passed) passed++;
      else failed++;
    }
    reports.push({ file, family: results[0]?.family ?? null, error: null, cases: results });
  }
  print(`${passed} passed, ${failed} failed`);

  if (values.json !== undefined) {
    const json = `${JSON.stringify({ passed, failed, files: reports }, null, 2)}\n`;
    if (jsonToStdout) process.stdout.write(json);
    else {
      try {
        writeFileSync(values.json, json);
      } catch (e) {
        console.error(`xquant verify: cannot write ${values.json}: ${(e as Error).message}`);
        return 1;
      }
    }
  }
  return failed > 0 ? 1 : 0;
}
