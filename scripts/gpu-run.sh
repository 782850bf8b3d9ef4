#!/usr/bin/env bash
# Runs on the GPU machine, from the repo root, after scripts/gpu-carry.sh made .gpu-carry/carry.tar.xz and .gl here:
# unpacks the Vulkan loader and the carry, runs the torch fp16 peer, writes the random-weight checkpoints, runs the
# benchmark. Results go to $OUT (the device tool brings that folder back). Extra arguments go to the benchmark.
#   bash scripts/gpu-run.sh [--contexts 4096,32768,131072] [--caches full,kivi-2,xquant-1.38,plan] …
# CEIL_ARGS: extra arguments of the WGSL ceilings benchmark (e.g. --dawn-flags …); LOADS_ARGS: of the load-pattern one.
# SKIP_LOADS=1 leaves out the load-pattern benchmark (the packed loops' loads alone, layouts before/now; ~10 s).
# PREFILL_PEER=1 also times a plain-PyTorch fp16 prefill of the Llama-3.2-1B shape (docs/gpu/torch_prefill.py).
# SKIP_SGM=1 leaves out the subgroup-matrix probe (run last, 120 s at most: it needs Dawn's unsafe APIs). SGM_FLAGS:
# '|'-separated --dawn-flags values, one probe each ($OUT/sgm-N; e.g. with and without disable_robustness).
# EXTRA_RUNS: '|'-separated argument lists of more decode-benchmark processes after the main one ($OUT/extra-N).
# PACK=1: the results are written to a work folder and packed into $OUT/results.tgz at the end (the device tool returns
# at most 8 files a call; with PACK=1 one file holds them all).
# CODEBOOK=1 also runs the codebook (turboquant layout) attention benchmark (CODEBOOK_ARGS: its options).
# HOST_ENCODE=1 also runs the host-encode benchmark on the same models (HOST_ARGS: its options, e.g. --contexts 4096).
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json XDG_RUNTIME_DIR=/tmp
W=/tmp/xq
mkdir -p "$W" && tar -xJf .gpu-carry/carry.tar.xz -C "$W"
OUT=${OUT:-$W/out}
if [ "${PACK:-0}" = 1 ]; then PACKED=$OUT; OUT=$W/results; fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$OUT/nvidia-smi.csv" 2>&1
if [ "${SKIP_TORCH:-0}" != 1 ]; then
  (cd "$W" && PYTHONUNBUFFERED=1 timeout 240 python3 torch_peer.py "$OUT/torch-peer.json" 32768 131072) > "$OUT/torch.log" 2>&1
  tail -12 "$OUT/torch.log"
fi
# PREFILL_PEER=1: plain-PyTorch fp16 prefill of the Llama-3.2-1B shape (PREFILL_TOKENS, default "512 4096")
if [ "${PREFILL_PEER:-0}" = 1 ]; then
  (cd "$W" && PYTHONUNBUFFERED=1 timeout 180 python3 torch_prefill.py "$OUT/torch-prefill.json" ${PREFILL_TOKENS:-512 4096}) > "$OUT/torch-prefill.log" 2>&1
  tail -4 "$OUT/torch-prefill.log"
fi
M=/tmp/models
MODELS=${MODELS:-llama-3.2-1b,qwen2.5-0.5b,xq-llama-20m,xq-qwen2-30m}
LIST=""
# MODELS=none: the attention and ceiling benchmarks only
[ "$MODELS" = none ] && MODELS=""
for m in ${MODELS//,/ }; do
  case $m in
    xq-*) (cd "$W" && ./node random-checkpoint.mjs --config "configs/$m.json" --out "$M/$m" --tokenizer tokenizer.json) ;;
    *) (cd "$W" && ./node random-checkpoint.mjs --shape "$m" --out "$M/$m" --tokenizer tokenizer.json) ;;
  esac
  LIST="$LIST${LIST:+,}$m=$M/$m"
done
# OLD_ARGS (with a carry made with OLD_COMMIT): the old and the new decode benchmark with these arguments (attention rows,
# say), old-new-old-new in separate processes before the main run; scripts/gpu-ab.mjs compares them
if [ -n "${OLD_ARGS:-}" ] && [ -f "$W/bench-old.mjs" ]; then
  cat "$W/bench-old.txt" 2>/dev/null
  for r in 1 2; do
    for b in old new; do
      f=bench.mjs; [ $b = old ] && f=bench-old.mjs
      (cd "$W" && ./node $f --out "$OUT/ab-$b-$r" $OLD_ARGS) 2>&1 | grep 'attention T=' | sed "s/^/$b$r /"
    done
  done
fi
(cd "$W" && ./node bench.mjs --out "$OUT" --models "$LIST" --plan plan.json "$@") 2>&1 | grep -v 'Warning: max\|DEP0137\|trace-warnings\|file descriptor' | tee "$OUT/bench.log"
# EXTRA_RUNS: more processes of the decode benchmark after the main one, '|'-separated argument lists (models as above),
# into $OUT/extra-1, extra-2, … — e.g. the same end-to-end rows with other options, measured in the same call
# numbered PREFIX LIST FN: for each '|'-separated item of LIST, FN DIR ITEM with DIR = $OUT/PREFIX-1, PREFIX-2, … (made)
numbered() {
  local prefix=$1 fn=$3 i=0 item
  local -a items
  IFS='|' read -ra items <<< "$2"
  for item in "${items[@]}"; do
    i=$((i + 1))
    mkdir -p "$OUT/$prefix-$i"
    "$fn" "$OUT/$prefix-$i" "$item"
  done
}
extra_run() {
  echo "$2" > "$1/args.txt"
  (cd "$W" && ./node bench.mjs --out "$1" --models "$LIST" --plan plan.json $2) 2>&1 | grep -v 'Warning: max\|DEP0137\|trace-warnings\|file descriptor' | tee "$1/bench.log"
}
[ -n "${EXTRA_RUNS:-}" ] && numbered extra "$EXTRA_RUNS" extra_run
if [ "${HOST_ENCODE:-0}" = 1 ] && [ -n "$LIST" ]; then
  (cd "$W" && ./node host.mjs --out "$OUT" --models "$LIST" ${HOST_ARGS:-}) 2>&1 | grep -v 'Warning: max\|DEP0137\|trace-warnings\|file descriptor' > "$OUT/host-encode.log"
  tail -8 "$OUT/host-encode.log"
fi
if [ "${SKIP_LOADS:-0}" != 1 ]; then
  (cd "$W" && ./node loads.mjs --out "$OUT" ${LOADS_ARGS:-}) 2>&1 | grep -v 'Warning: max' > "$OUT/load-patterns.log"
  tail -14 "$OUT/load-patterns.log"
fi
if [ "${CODEBOOK:-0}" = 1 ]; then
  (cd "$W" && ./node cb.mjs --out "$OUT" ${CODEBOOK_ARGS:-}) 2>&1 | grep -v 'Warning: max' > "$OUT/codebook.log"
  tail -20 "$OUT/codebook.log"
fi
if [ "${SKIP_CEILINGS:-0}" != 1 ]; then
  (cd "$W" && ./node ceil.mjs --out "$OUT" --parts 131072 ${CEIL_ARGS:-}) 2>&1 | grep -v 'Warning: max' > "$OUT/ceilings.log"
  tail -16 "$OUT/ceilings.log"
fi
# the probe into DIR (with --dawn-flags FLAGS when given)
sgm_probe() {
  (cd "$W" && timeout 120 ./node sgm.mjs --out "$1" ${2:+--dawn-flags "$2"}) 2>&1 | grep -v 'Warning: max' > "$1/subgroup-matrix.log"
  echo "$1: ${2:-default flags}"; tail -8 "$1/subgroup-matrix.log"
}
if [ "${SKIP_SGM:-0}" != 1 ]; then
  if [ -n "${SGM_FLAGS:-}" ]; then numbered sgm "$SGM_FLAGS" sgm_probe; else sgm_probe "$OUT"; fi
fi
if [ -n "${PACKED:-}" ]; then tar -czf "$PACKED/results.tgz" -C "$OUT" . && echo "packed $(find "$OUT" -type f | wc -l) files into results.tgz"; fi
