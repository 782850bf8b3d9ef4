/**
 * The `xquant` command. Each sub-command lives in `src/commands/<name>.ts` and exports `run(argv): Promise<number>`
 * (the exit code); add a new one by adding a file and one line to COMMANDS.
 */
type CommandModule = { run(argv: string[]): Promise<number>; summary: string };

const COMMANDS: Record<string, () => Promise<CommandModule>> = {
  verify: () => import('./commands/verify.js'),
  eval: () => import('./commands/eval.js'),
  bench: () => import('./commands/bench.js'),
  report: () => import('./commands/report.js'),
  plan: () => import('./commands/plan.js'),
  generate: () => import('./commands/generate.js'),
  gpu: () => import('./commands/gpu.js'),
};

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    const lines = await Promise.all(
      Object.entries(COMMANDS).map(async ([n, load]) => `  ${n.padEnd(10)} ${(await load()).summary}`),
    );
    console.log(`usage: xquant <command> [options]\n\ncommands:\n${lines.join('\n')}\n\nRun 'xquant <command> --help' for its options.`);
    return name ? 0 : 1;
  }
  const load = COMMANDS[name];
  if (!load) {
    console.error(`xquant: unknown command '${name}'. Commands: ${Object.keys(COMMANDS).join(', ')}`);
    return 2;
  }
  // the commands that run models use the WGSL packed-code kernels when `--backend webgpu` is chosen
  if (['generate', 'eval', 'bench', 'plan'].includes(name)) (await import('@xquant/webgpu/kv-cache')).registerWebGpuKernels();
  return (await load()).run(rest);
}

// A reader that stops early (`xquant generate … | head -c 1`) closes the pipe: the next write fails with EPIPE. Stop
// quietly with exit 0, as unix tools do, instead of an uncaught error; other stream errors are reported as errors.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    process.exitCode = 1;
    if (stream !== process.stderr) console.error(`xquant: cannot write output: ${err.message}`);
  });
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const e = err as { name?: string; code?: string; message?: string };
    console.error(`xquant: ${e?.name ?? 'Error'}${e?.code ? ` [${e.code}]` : ''}: ${e?.message ?? String(err)}`);
    if (process.env.XQ_DEBUG) console.error(err);
    process.exitCode = 1;
  },
);
