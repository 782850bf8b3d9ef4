#!/usr/bin/env bash
# Full fidelity study of issue 5, sharded over N processes (default: nproc).
#
#   scripts/study.sh                 # everything: plans, eval (all records), merge, bench, report, markdown
#   N=16 STEPS="eval merge report" scripts/study.sh
#
# For each model (xq-llama-20m, xq-qwen2-30m):
#   plan   — xquant plan at R=32 and R=128, budget = xquant-1.38's true stored bits at that R (2.486 / 2.820)
#   eval   — full, kivi-2, kivi-1, asymkv-1.5, xquant-1.38, xquant-nocal, xquant-noshare, xquant-k-share at
#            R ∈ {32,128}, group size 32, plus the two plan presets and docs/report/presets/{xquant-lsq-noshare,
#            xquant-cafit-1.38} at both R, on all 120 prose records and the 4×30 passkey
#            prompts of $SHARED/eval, in N shards (`--shard i/N`), one process per core
#   merge  — `xquant eval merge` of the shards → $OUT/<model>.json (+ .md)
#   bench  — `xquant bench` (decode step and memory per preset and context) → $OUT/<model>.bench.json (+ .md)
#   report — `xquant report` → docs/report/index.html and $OUT/study.md (tables + comparison with the anchor)
#
# Group size 128 (also named in issue 5) is not in the sweep: values are grouped along head_dim = 64 channels, so a
# value group of 128 does not exist for these models; key groups of 128 with value groups of 64 run with
# `xquant eval --residual-length 128 --group-size 128 --value-group-size 64` (docs/results.md §3.5).
# Expected time on 16 cores (wasm backend, one thread per process): about 1.5 h for the eval of both models
# (≈ 11 s (Llama) / 19 s (Qwen2) per config per prose record on a loaded core; see docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-$(nproc)}                        # processes
SHARD_COUNT=${SHARD_COUNT:-$N}          # shards of the records in all; this run evaluates shards
SHARD_FIRST=${SHARD_FIRST:-0}           #   SHARD_FIRST … SHARD_FIRST+N−1 (the rest may run on other machines)
SHARED=${SHARED:-../shared}
OUT=${OUT:-docs/report/study}
BACKEND=${BACKEND:-wasm}
MODELS=${MODELS:-"xq-llama-20m xq-qwen2-30m"}
STEPS=${STEPS:-"build plan eval merge bench report"}
CACHES=${CACHES:-full,kivi-2,kivi-1,asymkv-1.5,xquant-1.38,xquant-nocal,xquant-noshare,xquant-k-share}
# beyond the paper: least squares for every tensor, and the code-aware fit on borrowing layers only (PRESETS= to skip)
PRESETS=${PRESETS-",@docs/report/presets/xquant-lsq-noshare.json,@docs/report/presets/xquant-cafit-1.38.json"}
RESIDUALS=${RESIDUALS:-32,128}   # residual lengths of the preset sweep (and of the plans picked up from $OUT)
# per-model preset files, {m} = model name (issue 14: e.g. ",@docs/report/plans14/{m}.tqplan-2.0-R32.json")
MODEL_PRESETS=${MODEL_PRESETS:-}
LIMIT=${LIMIT:-}    # e.g. LIMIT=8: the first 8 records of each file
SAMPLE=${SAMPLE:-}  # e.g. SAMPLE=8: 8 evenly spaced records of each file (a quick reduced study)
XQ=${XQ:-"node apps/cli/dist/cli.js"}   # e.g. a bundled CLI on another machine (scripts/study-remote.sh)
# the data files (default: prose and the four passkey lengths); e.g. DATA="$SHARED/eval/prose_512.jsonl" for prose only
DATA=${DATA:-"$SHARED/eval/prose_512.jsonl $SHARED/eval/passkey_256.jsonl $SHARED/eval/passkey_512.jsonl $SHARED/eval/passkey_1024.jsonl $SHARED/eval/passkey_2048.jsonl"}

has() { [[ " $STEPS " == *" $1 "* ]]; }
[ -d "$SHARED/eval" ] || { echo "study: $SHARED/eval not found (set SHARED=...)" >&2; exit 1; }
mkdir -p "$OUT" "$OUT/logs" docs/report

if has build; then pnpm -s build >/dev/null; fi

if has plan; then
  echo "study: planning (budgets = xquant-1.38 stored bits: 2.486 at R=32, 2.820 at R=128)" >&2
  pids=()
  for m in $MODELS; do
    $XQ plan --model "$SHARED/models/$m" --budget 2.486 --residual-length 32 --backend "$BACKEND" --out "$OUT/$m.plan-R32.json" >"$OUT/logs/$m.plan-R32.log" 2>&1 & pids+=($!)
    $XQ plan --model "$SHARED/models/$m" --budget 2.820 --residual-length 128 --backend "$BACKEND" --out "$OUT/$m.plan-R128.json" >"$OUT/logs/$m.plan-R128.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
fi

for m in $MODELS; do
  extra="$PRESETS${MODEL_PRESETS//\{m\}/$m}"
  for r in ${RESIDUALS//,/ }; do [ -f "$OUT/$m.plan-R$r.json" ] && extra="$extra,@$OUT/$m.plan-R$r.json"; done
  if has eval; then
    echo "study: $m — shards $SHARD_FIRST…$((SHARD_FIRST + N - 1)) of $SHARD_COUNT ($(date +%T))" >&2
    pids=()
    for ((i = SHARD_FIRST; i < SHARD_FIRST + N; i++)); do
      layer=""; [ "$i" -eq 0 ] && layer="--layer-errors"
      # shellcheck disable=SC2086
      $XQ eval --model "$SHARED/models/$m" --data $DATA --caches "$CACHES$extra" --residual-length "$RESIDUALS" --group-size 32 \
        --shard "$i/$SHARD_COUNT" --backend "$BACKEND" ${LIMIT:+--limit $LIMIT} ${SAMPLE:+--sample $SAMPLE} $layer --out "$OUT/$m.shard-$i.json" \
        >/dev/null 2>"$OUT/logs/$m.shard-$i.log" & pids+=($!)
    done
    fail=0
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    [ "$fail" -eq 0 ] || { echo "study: a shard of $m failed, see $OUT/logs" >&2; exit 1; }
  fi
  if has merge; then
    shards=$(ls "$OUT/$m".shard-*.json)
    # shard 0 carries the per-layer errors: list it first so the merge keeps them
    # shellcheck disable=SC2086
    $XQ eval merge "$OUT/$m.shard-0.json" $(echo "$shards" | grep -v "shard-0.json") --out "$OUT/$m.json" >/dev/null
    rm -f "$OUT/$m".shard-*.json "$OUT/$m".shard-*.md
  fi
  if has bench; then
    $XQ bench --model "$SHARED/models/$m" --caches "$CACHES$extra" --residual-length 32,128 --backend "$BACKEND" --out "$OUT/$m.bench.json" >/dev/null 2>"$OUT/logs/$m.bench.log"
  fi
done

if has report; then
  inputs=$(ls "$OUT"/*.json)
  # shellcheck disable=SC2086
  $XQ report --in $inputs --anchor "$SHARED/eval/reference-fidelity/results.json" --out docs/report/index.html \
    --markdown "$OUT/study.md" --title "xquant-ts fidelity study (issue 5)" \
    --note "scripts/study.sh with N=$N, backend $BACKEND${LIMIT:+, limit $LIMIT records per file}${SAMPLE:+, $SAMPLE evenly spaced records per file}, $(date -u +%F)"
  echo "study: wrote docs/report/index.html and $OUT/study.md" >&2
fi
