import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

interface Manifest {
  name: string;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

/**
 * The names in a "depends on" cell: bare workspace names (`quant` → `@xquant/quant`) and backticked npm names, where
 * `-x` abbreviates `@tensorflow/tfjs-x`; parentheses are comments. Names after "optional peers" are peers.
 */
function parseCell(cell: string, workspace: ReadonlySet<string>): { dependencies: string[]; peerDependencies: string[] } {
  const names = (text: string): string[] => {
    const plain = text.replace(/\([^)]*\)/g, ' ');
    const external = [...plain.matchAll(/`([^`]+)`/g)]
      .map((m) => m[1]!)
      .filter((n) => /^(@[a-z0-9-]+\/[a-z0-9.-]+|-[a-z0-9-]+|[a-z][a-z0-9-]*)$/.test(n))
      .map((n) => (n.startsWith('-') ? `@tensorflow/tfjs${n}` : n));
    const bare = plain.replace(/`[^`]*`/g, ' ').split(/[^a-z-]+/).filter((w) => workspace.has(w)).map((w) => `@xquant/${w}`);
    return [...bare, ...external].sort();
  };
  const [deps = '', peers = ''] = cell.split(/optional peers/);
  return { dependencies: names(deps), peerDependencies: names(peers) };
}

describe("the README's package table", () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const rows = [...readme.matchAll(/^\| \[`(@xquant\/[a-z-]+)`\]\(([^)]+)\)[^|]*\|[^|]*\| ([^|]+) \|$/gm)];
  const workspace = new Set(rows.map((r) => r[1]!.slice('@xquant/'.length)));

  it('lists every package of the workspace', () => {
    expect(rows.map((r) => r[1]).sort()).toEqual(
      ['apps/cli', 'packages/calibration', 'packages/conformance', 'packages/cross-layer', 'packages/eval', 'packages/models', 'packages/quant', 'packages/tfjs', 'packages/webgpu']
        .map((dir) => (JSON.parse(readFileSync(join(root, dir, 'package.json'), 'utf8')) as Manifest).name)
        .sort(),
    );
  });

  it('names exactly the dependencies and peers of each package.json in its "depends on" column', () => {
    for (const [, name, link, cell] of rows) {
      const dir = link!.replace(/\/README\.md$/, '');
      const manifest = JSON.parse(readFileSync(join(root, dir, 'package.json'), 'utf8')) as Manifest;
      expect(manifest.name).toBe(name);
      const want = {
        dependencies: Object.keys(manifest.dependencies ?? {}).sort(),
        peerDependencies: Object.keys(manifest.peerDependencies ?? {}).sort(),
      };
      expect({ name, ...parseCell(cell === '—' ? '' : cell!, workspace) }).toEqual({ name, ...want });
    }
  });
});
