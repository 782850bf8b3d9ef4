#!/usr/bin/env bash
# The device side of scripts/study-carry.sh. Everything lives in /tmp/xq, which a warm machine keeps between calls.
#   stage I     store part I of the payload (.study-carry/pI); once all parts are here, check and unpack them
#   start       launch scripts/study.sh (eval + merge, N = nproc) detached, so it outlives the call
#   poll [S]    wait up to S seconds (default 540) for it to finish; print progress; copy results to $OUT when done
# The device machine goes back 30 s after a call returns, taking /tmp/xq and the running study with it: issue the
# stage, start and poll calls back to back, with nothing in between (a lapse cost one whole run here).
set -euo pipefail
cd "$(dirname "$0")/.."
X=/tmp/xq
case "${1:-}" in
  stage)
    mkdir -p "$X/parts"
    cp ".study-carry/p$2/part" "$X/parts/part$2"
    n=$(cat ".study-carry/p$2/count")
    have=$(ls "$X"/parts/part* | wc -l)
    echo "stored part $2 ($have of $n on this machine)"
    if [ "$have" -eq "$n" ]; then
      for i in $(seq 0 $((n - 1))); do cat "$X/parts/part$i"; done > "$X/payload.tar"
      [ "$(sha256sum "$X/payload.tar" | cut -d' ' -f1)" = "$(cat ".study-carry/p$2/sha256")" ] || { echo "payload corrupt" >&2; exit 1; }
      mkdir -p "$X/pay" "$X/shared/models" && tar -C "$X/pay" -xf "$X/payload.tar" && rm -rf "$X/parts" "$X/payload.tar"
      xz -dc "$X/pay/node.xz" > "$X/node" && chmod +x "$X/node"
      xz -dc "$X/pay/cli.tar.xz" | tar -C "$X" -xf -
      xz -dc "$X/pay/eval.tar.xz" | tar -C "$X/shared" -xf -
      for f in "$X"/pay/xq-*.tar.xz; do xz -dc "$f" | tar -C "$X/shared/models" -xf -; done
      rm -rf "$X/pay"
      "$X/node" --version && du -sh "$X/shared/models"/* && nproc
    fi ;;
  start)
    mkdir -p "$X/study"
    # the issue-5 plans join every run as extra configurations unless PLANS=0
    [ "${PLANS:-1}" = 0 ] || cp docs/report/plans/*.plan-R*.json "$X/study/"
    echo "start $(date -u +%FT%TZ) nproc $(nproc)" > "$X/study/status"
    # shellcheck disable=SC2016
    setsid nohup env SHARED="$X/shared" OUT="$X/study" STEPS="${STEPS:-eval merge}" XQ="$X/node $X/xqb/cli.cjs" \
      bash -c 'scripts/study.sh && echo "done $(date -u +%FT%TZ)" >> '"$X/study/status"' || echo "failed $(date -u +%FT%TZ)" >> '"$X/study/status" \
      > "$X/study/run.log" 2>&1 < /dev/null &
    sleep 20; cat "$X/study/status"; tail -3 "$X/study/run.log" ;;
  poll)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && ! grep -qE '^(done|failed)' "$X/study/status"; do sleep 10; done
    cat "$X/study/status"; tail -5 "$X/study/run.log"; uptime
    for f in "$X"/study/logs/*.log; do printf '%s: %s\n' "$(basename "$f")" "$(tr '\r' '\n' < "$f" | grep -v '^$' | tail -1 | cut -c1-150)"; done 2>/dev/null | head -40
    if grep -qE '^(done|failed)' "$X/study/status"; then
      cp "$X/study/status" "$OUT/"
      (cd "$X/study" && tar -czf "$OUT/results.tar.gz" ./*.json logs run.log)
    fi ;;
  *) echo "usage: study-remote.sh stage I | start | poll [seconds]" >&2; exit 2 ;;
esac
