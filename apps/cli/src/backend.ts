import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { BACKEND_ORDER, selectBackend, type BackendName, type BackendSelection } from '@xquant/tfjs';

/**
 * Whether Dawn (the optional `webgpu` package) offers a hardware adapter, asked in a child process: Dawn prints its
 * own warnings ("Couldn't load Vulkan", limits "artificially reduced") straight to stderr while it looks, so the CLI
 * loads it in-process only when there is a GPU to use. Returns null when there is one, else why not.
 */
function webgpuUnusable(): string | null {
  let entry: string;
  try {
    // resolved from @xquant/tfjs, which is what imports it
    const fromTfjs = createRequire(createRequire(import.meta.url).resolve('@xquant/tfjs'));
    entry = pathToFileURL(fromTfjs.resolve('webgpu')).href;
  } catch {
    return "the optional 'webgpu' package is not installed";
  }
  const probe = `const { create, globals } = await import(${JSON.stringify(entry)});
Object.assign(globalThis, globals);
const a = await create([]).requestAdapter();
const i = a?.info ?? {};
process.stdout.write(JSON.stringify(a ? { fallback: !!a.isFallbackAdapter, text: [i.architecture, i.device, i.description].join(' ') } : null));
process.exit(0);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', probe], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' } });
  let adapter: { fallback: boolean; text: string } | null;
  try {
    adapter = JSON.parse(r.stdout) as typeof adapter;
  } catch {
    return 'Dawn could not be started';
  }
  if (!adapter) return 'no WebGPU adapter';
  if (adapter.fallback || /software|llvmpipe|lavapipe|swiftshader/i.test(adapter.text)) return 'only a software adapter (slower than wasm)';
  return null;
}

/**
 * The backend of a CLI command: the one asked for, or the first that loads of {@link BACKEND_ORDER}, where WebGPU is
 * tried in-process only when a child process found a hardware adapter (keeps Dawn's warnings off the terminal).
 */
export async function cliBackend(requested: BackendName | undefined): Promise<BackendSelection> {
  if (requested) return selectBackend({ prefer: requested });
  const why = webgpuUnusable();
  if (why === null) return selectBackend();
  const sel = await selectBackend({ prefer: BACKEND_ORDER.filter((b) => b !== 'webgpu') });
  // as in the default order: webgpu counts as skipped when a backend after it runs
  const passed = BACKEND_ORDER.indexOf(sel.backend) > BACKEND_ORDER.indexOf('webgpu');
  return passed ? { ...sel, skipped: [...sel.skipped, { name: 'webgpu', why }] } : sel;
}

/** One line for the terminal: the backend, its reason, and each skipped backend with a short why. */
export function backendLine(sel: BackendSelection): string {
  const short = (why: string) => {
    if (/^not tried/.test(why)) return 'not tried';
    if (/native binding .*missing/.test(why)) return 'no native binding';
    if (/is not installed/.test(why)) return 'not installed';
    if (/software (WebGPU )?adapter/.test(why)) return 'software adapter only';
    if (/no WebGPU adapter/.test(why)) return 'no adapter';
    return why.length > 48 ? `${why.slice(0, 47)}…` : why;
  };
  const skipped = sel.skipped.map((s) => `${s.name} (${short(s.why)})`).join(', ');
  return `backend: ${sel.backend} (${sel.reason})${skipped ? `; skipped ${skipped}` : ''}`;
}
