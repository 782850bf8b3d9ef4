/**
 * @packageDocumentation
 * Conformance kit for XQuant ports: reads the reference golden vectors (JSON, base64 arrays) and checks an
 * implementation against them case by case — xquant-ts by default, or your own operations through
 * {@link ConformanceTarget}. Used by the tests and by `xquant verify`.
 */
export {
  GOLDEN_FAMILIES,
  MAX_ARRAY_ELEMENTS,
  MAX_ARRAY_RANK,
  decodeGoldenArray,
  loadGolden,
  parseGoldenFile,
  readGoldenFile,
  type GoldenArray,
  type GoldenCase,
  type GoldenFamily,
  type GoldenFile,
  type GoldenSource,
} from './format.js';
export { quantizeRowsAnno2Quirk } from './anno2.js';
export { xquantTarget, type ConformanceTarget, type MaybePromise } from './target.js';
export {
  DEFAULT_ATTENTION_TOLERANCE,
  runGoldenCase,
  runGoldenFile,
  summarizeResults,
  type ArrayCheck,
  type AttentionTolerance,
  type CaseResult,
  type RunOptions,
} from './runner.js';
