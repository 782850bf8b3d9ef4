// The fuzz runner shared by the bounded test (scripts/fuzz.test.ts) and the long run (scripts/fuzz-long.mjs).
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The directory whose `*.mjs` files are the fuzz targets (see fuzz/README.md). */
export const TARGETS_DIR = join(dirname(fileURLToPath(import.meta.url)), 'targets');

/** Paths of the target modules: every `*.mjs` of `TARGETS_DIR`, plus the files or directories in `extra`. */
export function targetFiles(extra = []) {
  const files = [];
  for (const entry of [TARGETS_DIR, ...extra]) {
    let names;
    try {
      names = readdirSync(entry);
    } catch {
      files.push(entry); // a file
      continue;
    }
    for (const n of names.sort()) if (n.endsWith('.mjs')) files.push(join(entry, n));
  }
  return files;
}

/** Import a target module (its default export: one target or an array of them) and check their shape. */
export async function loadTargets(file) {
  const mod = await import(pathToFileURL(file).href);
  const list = [mod.default ?? mod].flat();
  return list.map((t) => {
    for (const k of ['name', 'arbitrary', 'check']) {
      if (!(k in t)) throw new Error(`${file}: a fuzz target exports { name, arbitrary(fc), check(input, packages) }; '${k}' is missing`);
    }
    return { packages: [], ...t, file };
  });
}

/** The one target of a module (see {@link loadTargets}). */
export async function loadTarget(file) {
  const [t] = await loadTargets(file);
  return t;
}

/**
 * Run `target` for `runs` generated cases (in chunks; a failure is recorded with its seed, path and shrunk
 * counterexample, and the run goes on with the next seed until `maxFailures`). Returns counts and failures.
 * `packages` maps the names a target lists in `packages` to the loaded modules.
 */
export async function runTarget(target, { fc, packages, runs, seed = 1, chunk = 10_000, maxFailures = 20, timeLimitMs = Infinity, onChunk }) {
  const outcomes = {};
  const failures = [];
  let cases = 0;
  let round = 0;
  const t0 = performance.now();
  await target.setup?.(packages);
  const arb = target.arbitrary(fc);
  try {
    while (cases < runs && failures.length < maxFailures && performance.now() - t0 < timeLimitMs) {
      const n = Math.min(chunk, runs - cases);
      const roundSeed = (seed + round++ * 7919) | 0;
      const details = await fc.check(
        fc.asyncProperty(arb, async (input) => {
          const outcome = await target.check(input, packages);
          outcomes[outcome ?? 'ok'] = (outcomes[outcome ?? 'ok'] ?? 0) + 1;
        }),
        { numRuns: n, seed: roundSeed, interruptAfterTimeLimit: Number.isFinite(timeLimitMs) ? Math.max(1, timeLimitMs - (performance.now() - t0)) : undefined },
      );
      cases += details.numRuns;
      if (details.failed) {
        failures.push({
          seed: roundSeed,
          path: details.counterexamplePath,
          counterexample: fc.stringify(details.counterexample),
          error: String(details.errorInstance?.message ?? details.error ?? 'failed').slice(0, 2000),
        });
      }
      onChunk?.({ cases, failures: failures.length, seconds: (performance.now() - t0) / 1000 });
      if (details.interrupted) break;
    }
  } finally {
    await target.teardown?.(packages);
  }
  return { name: target.name, file: target.file, cases, outcomes, failures, seconds: (performance.now() - t0) / 1000 };
}
