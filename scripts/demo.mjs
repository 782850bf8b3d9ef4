// The README's main job: verify the reference vectors (when ../shared is beside the repo), then generate text and run a
// short fidelity eval on the checkpoint that ships with the repo (models/xq-demo). Nothing is downloaded.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const cli = join(root, 'apps/cli/dist/cli.js');
const demoModel = join(root, 'models/xq-demo');
const golden = join(root, '../shared/golden');

function xquant(args) {
  console.log(`\n$ xquant ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [cli, ...args], { stdio: 'inherit', cwd: root });
  if (r.status !== 0) {
    console.error(`xquant ${args[0]} failed (exit ${r.status})`);
    process.exit(r.status ?? 1);
  }
}

if (existsSync(golden)) {
  const files = readdirSync(golden).filter((f) => f.endsWith('.json')).map((f) => join(golden, f));
  xquant(['verify', ...files]);
} else {
  console.log('(skipping xquant verify: ../shared/golden is not beside the repo)');
}

xquant(['generate', '--model', demoModel, '--cache', 'xquant-1.38', '--residual-length', '32', '--prompt', 'The configuration file', '--max-new-tokens', '96']);

const evalDir = join(demoModel, 'eval');
const data = readdirSync(evalDir).filter((f) => f.endsWith('.jsonl')).map((f) => join(evalDir, f));
xquant(['eval', '--model', demoModel, '--data', ...data, '--caches', 'full,kivi-2,asymkv-1.5,xquant-1.38', '--residual-length', '32', '--limit', '4']);
