#!/usr/bin/env bash
# Runs on the GPU machine after scripts/gpu-run.sh (which unpacked the carry and wrote the checkpoints): end-to-end rows
# of the quantized caches with an int8 tuning (default: the int8 value mix), into $OUT/int8.
#   TUNING=256x8x8x8x0x0x0x2 MODELS=llama-3.2-1b bash scripts/gpu-int8-e2e.sh [--contexts …]
set -uo pipefail
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json XDG_RUNTIME_DIR=/tmp
W=/tmp/xq
M=/tmp/models
OUT=${OUT:-$W/out}
mkdir -p "$OUT/int8"
LIST=""
MODELS=${MODELS:-llama-3.2-1b}
for m in ${MODELS//,/ }; do LIST="$LIST${LIST:+,}$m=$M/$m"; done
(cd "$W" && ./node bench.mjs --out "$OUT/int8" --models "$LIST" --plan plan.json --attention '' --caches "${CACHES:-xquant-1.38,kivi-2}" \
  --tuning "quantized=${TUNING:-256x8x8x8x0x0x0x2}" "$@") 2>&1 | grep -v 'Warning: max\|DEP0137\|trace-warnings\|file descriptor' | tee "$OUT/int8/bench.log"
