import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const built = ['quant', 'tfjs', 'models'].every((p) => existsSync(`packages/${p}/dist/index.d.ts`));

describe('pnpm docs:build', () => {
  it('builds the API site of every package with 0 errors and 0 warnings (typedoc, warnings treated as errors)', (ctx) => {
    if (!built) return ctx.skip('the packages are not built (pnpm build): typedoc reads their types');
    const out = mkdtempSync(join(tmpdir(), 'xq-docs-'));
    const r = spawnSync(process.execPath, [resolve('node_modules/typedoc/bin/typedoc'), '--out', out], { encoding: 'utf8', timeout: 300_000 });
    const log = `${r.stdout}\n${r.stderr}`;
    expect(log).not.toMatch(/\[warning\]|\[error\]/);
    expect(r.status, log).toBe(0);
    // every package page, and the subpath entries' pages
    for (const page of ['_xquant_quant', '_xquant_models', '_xquant_tfjs.testing', '_xquant_webgpu.kv-cache']) expect(existsSync(join(out, 'modules', `${page}.html`)), page).toBe(true);
  }, 300_000);
});
