import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
// @ts-expect-error -- a plain .mjs script without declarations
import { checkDependencies } from './check-deps.mjs';

const check = checkDependencies as (root: string) => string[];

function workspace(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'xq-deps-'));
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

describe('the dependency picture (scripts/check-deps.mjs)', () => {
  it('holds for this workspace: package rules, manifests that match the imports, no runtime import cycle', () => {
    expect(check(join(dirname(fileURLToPath(import.meta.url)), '..'))).toEqual([]);
  });

  it('reports a forbidden import, an undeclared and an unused dependency, and a runtime cycle (not a type-only one)', () => {
    const pkg = (name: string, deps: string[] = []) => JSON.stringify({ name, dependencies: Object.fromEntries(deps.map((d) => [d, 'workspace:^'])) });
    const root = workspace({
      'packages/quant/package.json': pkg('@xquant/quant'),
      'packages/quant/src/index.ts': "export * from './a.js';",
      'packages/quant/src/a.ts': "import { b } from './b.js';\nexport const a = () => b;",
      'packages/quant/src/b.ts': "import { a } from './a.js';\nexport const b = () => a;",
      'packages/tfjs/package.json': pkg('@xquant/tfjs', ['@xquant/webgpu', '@xquant/quant']),
      'packages/tfjs/src/index.ts': "import type { T } from './t.js';\nexport type { T };\nexport const w = () => import('@xquant/webgpu/kv-cache');\nexport { x } from 'left-pad';",
      'packages/tfjs/src/t.ts': "import type { U } from './index.js';\nexport type T = U;",
    });
    expect(check(root).sort()).toEqual(
      [
        'import cycle: packages/quant/src/a.ts → packages/quant/src/b.ts → packages/quant/src/a.ts',
        'packages/tfjs/src/index.ts: imports @xquant/webgpu/kv-cache (tfjs imports no models, eval, webgpu or CLI)',
        "packages/tfjs/src/index.ts: imports left-pad, which @xquant/tfjs's package.json does not declare",
        'packages/tfjs/package.json: declares @xquant/quant, which no source file imports',
      ].sort(),
    );
  });
});
