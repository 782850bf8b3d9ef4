// Bounded run of the quantizer fuzz targets (fuzz/factories/targets-quant.mjs; the long run is scripts/fuzz-long.mjs).
import fc from 'fast-check';
import { describe, test } from 'vitest';
import * as quant from '@xquant/quant';
import * as calibration from '@xquant/calibration';
import { quantTargets } from '../../../fuzz/factories/targets-quant.mjs';

describe('fuzz (bounded): quantizers over the whole fp16/fp32 range', () => {
  for (const target of quantTargets({ quant, calibration })) {
    test(target.name, () => {
      fc.assert(fc.property(target.arbitrary, (input) => target.check(input)), { numRuns: 400, seed: 1313 });
    });
  }
});
