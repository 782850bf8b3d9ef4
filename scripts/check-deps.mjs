#!/usr/bin/env node
// The dependency picture, checked (`node scripts/check-deps.mjs`, and by scripts/check-deps.test.ts in `pnpm test`):
// the package rules of the README, every package a source file imports is declared in its manifest and every declared
// dependency is imported, and no runtime import cycle inside a package (type-only imports do not count).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/** Import rules between packages: `from` may not import a specifier matching `forbid`. */
export const RULES = [
  { from: /^@xquant\/quant$/, forbid: /^@xquant\//, why: 'quant imports no other package' },
  { from: /^@xquant\/tfjs$/, forbid: /^@xquant\/(models|eval|webgpu|cli)(\/|$)/, why: 'tfjs imports no models, eval, webgpu or CLI' },
  { from: /^@xquant\/models$/, forbid: /^@xquant\/(eval|cli)(\/|$)/, why: 'models imports no eval or CLI' },
  { from: /^@xquant\/(calibration|cross-layer)$/, forbid: /^(@xquant\/tfjs|@tensorflow\/)/, why: 'calibration and cross-layer import no tfjs' },
  { from: /^@xquant\/(?!cli$)/, forbid: /^@xquant\/cli(\/|$)/, why: 'the libraries know no CLI' },
];

const packageOf = (spec) => (spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]);

/** Runtime and type-only imports of one source file (static, re-exports and dynamic `import('…')` with a literal). */
export function importsOf(text, file = 'x.ts') {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, false, ts.ScriptKind.TS);
  const out = [];
  const visit = (node) => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      const clause = ts.isImportDeclaration(node) ? node.importClause : node;
      const named = ts.isImportDeclaration(node) ? clause?.namedBindings : node.exportClause;
      const typeOnly =
        !!clause?.isTypeOnly ||
        (!!named && ts.isNamedImports?.(named) && !clause?.name && named.elements.length > 0 && named.elements.every((e) => e.isTypeOnly)) ||
        (!!named && ts.isNamedExports?.(named) && named.elements.length > 0 && named.elements.every((e) => e.isTypeOnly));
      out.push({ spec: node.moduleSpecifier.text, typeOnly });
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword && node.arguments[0] && ts.isStringLiteral(node.arguments[0])) {
      out.push({ spec: node.arguments[0].text, typeOnly: false });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

function sourceFiles(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? sourceFiles(p) : /\.(ts|mts)$/.test(n) && !n.endsWith('.d.ts') ? [p] : [];
  });
}

/** Every violation in the workspace at `root` (packages/* and apps/*), as one line each. */
export function checkDependencies(root) {
  const problems = [];
  const dirs = ['packages', 'apps'].flatMap((d) => (existsSync(join(root, d)) ? readdirSync(join(root, d)).map((n) => join(root, d, n)) : []));
  const manifests = new Map();
  for (const dir of dirs.filter((d) => existsSync(join(d, 'package.json')))) {
    const m = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    manifests.set(m.name, { ...m, dir });
  }
  for (const manifest of manifests.values()) {
    const dir = manifest.dir;
    const name = manifest.name;
    const declared = new Set([...Object.keys(manifest.dependencies ?? {}), ...Object.keys(manifest.peerDependencies ?? {})]);
    // optional peers may be loaded by name at run time (tfjs-node) or only be needed beside the package (a backend);
    // a dependency may also be there to satisfy a workspace dependency's peer (the CLI installs the tfjs backends)
    const peersOfDeps = new Set([...declared].flatMap((d) => Object.keys(manifests.get(d)?.peerDependencies ?? {})));
    const required = [...declared].filter((d) => !manifest.peerDependenciesMeta?.[d]?.optional && !peersOfDeps.has(d));
    const used = new Set();
    const graph = new Map();
    for (const file of sourceFiles(join(dir, 'src'))) {
      const rel = relative(root, file);
      const edges = [];
      for (const { spec, typeOnly } of importsOf(readFileSync(file, 'utf8'), file)) {
        if (spec.startsWith('.')) {
          const target = resolve(dirname(file), spec).replace(/\.js$/, '.ts');
          if (!typeOnly) edges.push(existsSync(target) ? target : join(target.replace(/\.ts$/, ''), 'index.ts'));
          continue;
        }
        if (spec.startsWith('node:')) continue;
        const pkg = packageOf(spec);
        used.add(pkg);
        if (!declared.has(pkg) && pkg !== name) problems.push(`${rel}: imports ${spec}, which ${name}'s package.json does not declare`);
        for (const r of RULES) if (r.from.test(name) && r.forbid.test(spec)) problems.push(`${rel}: imports ${spec} (${r.why})`);
      }
      graph.set(file, edges);
    }
    for (const dep of required) if (!used.has(dep)) problems.push(`${relative(root, dir)}/package.json: declares ${dep}, which no source file imports`);
    // runtime cycles: depth-first search, each cycle reported once from its first file
    const state = new Map();
    const stack = [];
    const walk = (f) => {
      state.set(f, 1);
      stack.push(f);
      for (const g of graph.get(f) ?? []) {
        if (state.get(g) === 1) problems.push(`import cycle: ${[...stack.slice(stack.indexOf(g)), g].map((x) => relative(root, x)).join(' → ')}`);
        else if (!state.has(g)) walk(g);
      }
      stack.pop();
      state.set(f, 2);
    };
    for (const f of graph.keys()) if (!state.has(f)) walk(f);
  }
  return problems;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  const problems = checkDependencies(resolve(dirname(fileURLToPath(import.meta.url)), '..'));
  for (const p of problems) console.error(p);
  console.log(problems.length === 0 ? 'check-deps: the dependency picture holds' : `check-deps: ${problems.length} problem(s)`);
  process.exit(problems.length === 0 ? 0 : 1);
}
