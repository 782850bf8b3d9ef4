/**
 * @packageDocumentation
 * Cross-layer code sharing for XQuant: plans saying which layer stores its own codes and which borrows a donor
 * layer's codes (keeping only its own scale and zero-point), builders for the reference's pairs, the authors'
 * annotation strings and larger groups, validation, the storage configuration every cache resolves, the paper's vs
 * the true stored bit accounting, and inter-layer code agreement (which layers are worth sharing).
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
export { accountBits, type AccountBitsOptions, type BitAccount, type LegacyAccountBitsOptions, type TensorBytes } from './bits.js';
export { resolveStorageConfig, type StorageConfig, type StorageInput } from './storage.js';
export { bestDonors, codeAgreement, type CodeAgreement, type DonorChoice, type LayerKv } from './similarity.js';
