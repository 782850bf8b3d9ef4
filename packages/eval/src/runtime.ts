import { basename, resolve } from 'node:path';
import { loadModel, type LoadedModel } from '@xquant/models';
import { selectBackend, type BackendName, type BackendSelection } from '@xquant/tfjs';

/**
 * Backends the eval tools try by default: native tfjs-node, then wasm, then plain JS. WebGPU is left out because the
 * model runtime reads K/V synchronously, which WebGPU tensors do not allow.
 */
export const EVAL_BACKENDS: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu'];

/** A model ready for evaluation on an active backend. */
export interface EvalRuntime extends LoadedModel {
  /** Which tfjs backend runs and why. */
  backend: BackendSelection;
  /** Directory (or file) name, used as the model's name in results. */
  name: string;
  /** Path as given. */
  path: string;
}

/** Activate a tfjs backend (default {@link EVAL_BACKENDS} order, or the one named) and load a model. */
export async function openEvalModel(path: string, options: { backend?: BackendName } = {}): Promise<EvalRuntime> {
  const backend = await selectBackend({ prefer: options.backend ?? EVAL_BACKENDS });
  const loaded = await loadModel(path);
  return { ...loaded, backend, name: basename(resolve(path)), path };
}
