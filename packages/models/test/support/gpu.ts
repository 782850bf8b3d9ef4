/** Test support: one WebGPU device per test file (Dawn through `requestNodeDevice`), or why there is none. */
import { requestNodeDevice, type NodeGpu } from '@xquant/webgpu';

process.env.XDG_RUNTIME_DIR ??= '/tmp';
// lavapipe: skip LLVM optimization passes (the unrolled kernels compile faster; results are the same)
process.env.GALLIVM_PERF ??= 'nopt';

export async function openGpu(): Promise<{ gpu: NodeGpu | null; reason: string }> {
  try {
    const gpu = await requestNodeDevice();
    return { gpu, reason: gpu ? 'adapter found' : 'no WebGPU adapter (install lavapipe: scripts/setup-webgpu.sh)' };
  } catch (e) {
    return { gpu: null, reason: `WebGPU unavailable: ${String(e).split('\n')[0]}` };
  }
}
