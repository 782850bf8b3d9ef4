import { expect, test } from 'vitest';
import { ETA_GRID } from '@xquant/calibration';
import { ANNOTATION_ETA_GRID, planFromAnnotation } from '@xquant/cross-layer';

test('the annotation η grids of @xquant/cross-layer equal the calibration presets', () => {
  expect(ANNOTATION_ETA_GRID).toEqual(ETA_GRID);
  expect(planFromAnnotation('8_0_8_4_2_2', 8).etaByBits).toEqual({ 1: ETA_GRID[1][2], 2: ETA_GRID[2][2] });
});
