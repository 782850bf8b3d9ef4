import type { FuzzTarget } from './common.mjs';
export function cacheTargets(libs: {
  tf: typeof import('@tensorflow/tfjs-core');
  tfjs: typeof import('@xquant/tfjs');
  quant: typeof import('@xquant/quant');
}): FuzzTarget<unknown, Promise<void>>[];
