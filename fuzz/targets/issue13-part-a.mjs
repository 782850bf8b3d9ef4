// Adapter: the quantizer and cache targets of issue 13 part A (fuzz/factories/targets-*.mjs: factories over the
// libraries whose check throws a FuzzFailure) in this runner's shape. Long run only: their bounded runs are
// packages/quant/test/fuzz.test.ts and packages/tfjs/test/fuzz.test.ts. Absent files add no targets.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';

const dir = new URL('../factories/', import.meta.url);
const has = (f) => existsSync(new URL(f, dir));

/** One part-A target by name, built in setup from the packages the runner loaded. */
function adapt(name, packages, make) {
  let t;
  return {
    name,
    description: `issue 13 part A: ${name} (fuzz/factories)`,
    packages,
    longRunOnly: true,
    async setup(pkgs) {
      t = (await make(pkgs)).find((x) => x.name === name);
      if (!t) throw new Error(`fuzz/factories has no target named ${name}`);
    },
    arbitrary: () => t.arbitrary,
    async check(input) {
      await t.check(input);
      return 'ok';
    },
  };
}

const targets = [];
if (has('targets-quant.mjs')) {
  const make = async ({ quant, calibration }) => (await import(new URL('targets-quant.mjs', dir).href)).quantTargets({ quant, calibration });
  for (const name of ['quant-rows', 'quant-kv-kernels']) targets.push(adapt(name, ['quant', 'calibration'], make));
}
if (has('targets-cache.mjs')) {
  const make = async ({ quant, tfjs }) => {
    // the tfjs-core instance @xquant/tfjs uses (its package's dependency), on the cpu backend
    const fromTfjs = createRequire(new URL('../../packages/tfjs/package.json', import.meta.url));
    const tf = fromTfjs('@tensorflow/tfjs-core');
    fromTfjs('@tensorflow/tfjs-backend-cpu');
    await tf.setBackend('cpu');
    return (await import(new URL('targets-cache.mjs', dir).href)).cacheTargets({ tf, tfjs, quant });
  };
  targets.push(adapt('cache-state-machine', ['quant', 'tfjs'], make));
}
export default targets;
