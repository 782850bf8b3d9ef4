// GPU time of compute passes by timestamp queries, shared by the GPU benchmarks.
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

/**
 * Median and minimum GPU ms of `n` passes, each encoded by `encode(pass, i)` in its own timestamped pass, and the mean
 * per pass of the same `n` encoded back to back in one pass (`b2bMs`). Needs a device with `timestamp-query`.
 */
export async function timePasses(device, encode, n) {
  const qs = device.createQuerySet({ type: 'timestamp', count: 2 * n + 2 });
  const resolve = device.createBuffer({ size: 8 * (2 * n + 2), usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const staging = device.createBuffer({ size: 8 * (2 * n + 2), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  for (let i = 0; i < n; i++) {
    const pass = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
    encode(pass, i);
    pass.end();
  }
  const pass = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * n, endOfPassWriteIndex: 2 * n + 1 } });
  for (let i = 0; i < n; i++) encode(pass, i);
  pass.end();
  enc.resolveQuerySet(qs, 0, 2 * n + 2, resolve, 0);
  enc.copyBufferToBuffer(resolve, 0, staging, 0, 8 * (2 * n + 2));
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const t = new BigUint64Array(staging.getMappedRange().slice(0));
  staging.destroy();
  resolve.destroy();
  qs.destroy();
  const each = Array.from({ length: n }, (_, i) => Number(t[2 * i + 1] - t[2 * i]) / 1e6);
  return { ms: median(each), minMs: Math.min(...each), b2bMs: Number(t[2 * n + 1] - t[2 * n]) / 1e6 / n };
}
