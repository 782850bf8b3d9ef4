import type { FuzzTarget } from './common.mjs';
export function quantTargets(libs: { quant: typeof import('@xquant/quant'); calibration: typeof import('@xquant/calibration') }): FuzzTarget<unknown, void>[];
