import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

// apps/web compiles with the DOM library, so it has its own tsconfig (the root one leaves it out)
describe('apps/web tsconfig (DOM + vite/client types)', () => {
  it('type-checks the page, its logic and its tests without errors', () => {
    const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
    const r = spawnSync(process.execPath, [tsc, '--noEmit', '-p', resolve('apps/web/tsconfig.json')], { encoding: 'utf8', timeout: 300_000 });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  }, 300_000);
});
