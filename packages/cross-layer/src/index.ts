/**
 * @packageDocumentation
 * Cross-layer code sharing for XQuant: plans saying which layer stores its own codes and which borrows a donor
 * layer's codes (keeping only its own scale and zero-point), builders for the reference's pairs, the authors'
 * annotation strings and larger groups, validation, and the paper's vs the true stored bit accounting.
 */
export type { CrossLayerPlan, LayerStorage } from './types.js';
export {
  ANNOTATION_ETA_GRID,
  donorLayers,
  fullPrecisionPlan,
  groupedPlan,
  parseAnnotation,
  planFromAnnotation,
  validatePlan,
  xquantPlan,
  type AnnotatedPlan,
  type Annotation,
  type BitsSpec,
  type GroupedPlanOptions,
  type LayerBits,
  type ValidatePlanOptions,
  type XQuantPlanOptions,
} from './plan.js';
export { accountBits, type AccountBitsOptions, type BitAccount, type TensorBytes } from './bits.js';
