#!/usr/bin/env bash
# Packs the kernel benchmark (bench/gpu-bench.mjs: the raw and tfjs WGSL kernels against float32 tfjs attention) for the
# GPU machine: the same carry as scripts/gpu-carry.sh, with this bench in the bundle. Usage: bash packages/webgpu/bench/pack-carry.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BENCH=packages/webgpu/bench/gpu-bench.mjs exec bash "$ROOT/scripts/gpu-carry.sh"
