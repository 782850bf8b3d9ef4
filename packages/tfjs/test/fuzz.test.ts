// Bounded run of the cache state-machine fuzz target (fuzz/factories/targets-cache.mjs; the long run is scripts/fuzz-long.mjs).
import * as tf from '@tensorflow/tfjs-core';
import fc from 'fast-check';
import { beforeAll, describe, test } from 'vitest';
import * as quant from '@xquant/quant';
import * as tfjs from '@xquant/tfjs';
import { cacheTargets } from '../../../fuzz/factories/targets-cache.mjs';
import { useCpu } from './helpers.js';

beforeAll(useCpu);

describe('fuzz (bounded): cache state machine against a float64 model, sync and async', () => {
  for (const target of cacheTargets({ tf, tfjs, quant })) {
    test(target.name, async () => {
      await fc.assert(fc.asyncProperty(target.arbitrary, (input) => target.check(input)), { numRuns: 60, seed: 1313 });
    });
  }
});
