#!/usr/bin/env bash
# Packs what the full study (scripts/study.sh) needs on a machine without node or a registry — the device machine of
# this workplace, whose calls carry at most 64 MiB with the working tree: node (xz), the CLI as one esbuild bundle with
# the tfjs-backend-wasm binaries, the eval data and both checkpoints, as one tar cut into parts that each fit a call:
# .study-carry/p0, p1, … A warm machine keeps what earlier calls stored: carry p0 and run
# `scripts/study-remote.sh stage 0`, then p1 with `stage 1`, … (each within the machine's idle window); the last stage
# unpacks. Then `start`, then `poll`. Usage: SHARED=../shared bash scripts/study-carry.sh (MODELS="xq-qwen2-30m": one
# checkpoint only, fewer parts)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
LIMIT=${LIMIT:-40000000}   # bytes per part: 64 MiB minus the working tree (≈ 20 MB), with room to spare
EX=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$EX")"; grep -qx '/.study-carry/' "$EX" 2>/dev/null || echo '/.study-carry/' >> "$EX"
pnpm -s build >/dev/null
S=.study-carry
rm -rf "$S" && mkdir -p "$S/tmp/pay/xqb"
npx esbuild apps/cli/dist/cli.js --bundle --platform=node --format=cjs --target=node20 --outfile="$S/tmp/pay/xqb/cli.cjs" \
  --external:@tensorflow/tfjs-node --external:@tensorflow/tfjs-node-gpu --external:webgpu --log-level=error
WASM=$(node -e "const p=require('path');console.log(p.join(p.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json',{paths:['packages/tfjs']})),'dist'))")
cp "$WASM"/tfjs-backend-wasm.wasm "$WASM"/tfjs-backend-wasm-simd.wasm "$S/tmp/pay/xqb/"
P="$S/tmp/pay"
xz -9 -T2 -c "$(command -v node)" > "$P/node.xz"
tar -C "$P" -cf - xqb | xz -6 -T2 > "$P/cli.tar.xz" && rm -rf "$P/xqb"
tar -C "$SHARED" -cf - eval/prose_512.jsonl eval/passkey_256.jsonl eval/passkey_512.jsonl eval/passkey_1024.jsonl \
  eval/passkey_2048.jsonl eval/reference-fidelity | xz -6 -T2 > "$P/eval.tar.xz"
for m in ${MODELS:-xq-llama-20m xq-qwen2-30m}; do tar -C "$SHARED/models" -cf - "$m" | xz -6 -T2 > "$P/$m.tar.xz"; done
tar -C "$P" -cf "$S/tmp/payload.tar" .
sha256sum "$S/tmp/payload.tar" | cut -d' ' -f1 > "$S/tmp/sha256"
split -b "$LIMIT" -d -a 1 "$S/tmp/payload.tar" "$S/tmp/part"
n=$(ls "$S"/tmp/part* | wc -l)
for i in $(seq 0 $((n - 1))); do
  mkdir -p "$S/p$i" && mv "$S/tmp/part$i" "$S/p$i/part" && cp "$S/tmp/sha256" "$S/p$i/sha256" && echo "$n" > "$S/p$i/count"
done
rm -rf "$S/tmp"
du -b "$S"/p*/part
