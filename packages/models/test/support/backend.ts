import * as tf from '@tensorflow/tfjs-core';

/** Activate a tfjs backend for a test file ('wasm' for the heavy conformance tests, 'cpu' elsewhere). */
export async function useBackend(name: 'cpu' | 'wasm'): Promise<string> {
  tf.env().set('IS_TEST', true);
  if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  else await import('@tensorflow/tfjs-backend-cpu');
  if (!(await tf.setBackend(name))) throw new Error(`backend ${name} failed to initialise`);
  await tf.ready();
  return tf.getBackend();
}
