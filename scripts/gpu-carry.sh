#!/usr/bin/env bash
# Packs what the GPU machine (no node, no registry) needs to run the GPU decode benchmark into .gpu-carry/carry.tar.xz:
# the node binary, dawn.node, one esbuild bundle of packages/models/bench/gpu-decode.bench.mjs (with @xquant/*, tfjs-core
# and the `webgpu` package), the random-checkpoint script, the torch peer, a tokenizer, the trained models' configs and
# the Llama R = 32 plan; and the Vulkan/GL loader debs into .gl (both git-ignored through .git/info/exclude).
# Usage (repo root, after `pnpm install`): bash scripts/gpu-carry.sh   — then see docs/gpu/README.md for the run.
# BENCH=path/to/other-bench.mjs bundles another benchmark instead (packages/webgpu/bench/pack-carry.sh does).
# OLD_COMMIT=<commit> adds that commit's decode benchmark for an old/new comparison in one call (see gpu-run.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
for d in /.gpu-carry/ /.gl/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
pnpm build >/dev/null
STAGE=.gpu-carry/stage
rm -rf "$STAGE" && mkdir -p "$STAGE/dist/linux-x64" "$STAGE/configs"
BENCH=${BENCH:-packages/models/bench/gpu-decode.bench.mjs}
pnpm exec esbuild "$BENCH" --bundle --platform=node --format=esm --target=node20 \
  --outfile="$STAGE/bench.mjs" --log-level=warning \
  --banner:js="import { createRequire as __xqRequire } from 'node:module'; const require = __xqRequire(import.meta.url);"
# the WGSL compute ceilings (FMA, decode+FMA, value loop) measured in the same call
pnpm exec esbuild packages/webgpu/bench/wgsl-ceilings.bench.mjs --bundle --platform=node --format=esm --target=node20 \
  --outfile="$STAGE/ceil.mjs" --log-level=warning \
  --banner:js="import { createRequire as __xqRequire } from 'node:module'; const require = __xqRequire(import.meta.url);"
# the packed loops' loads alone with the storage layouts before and after the coalesced ones (same run)
pnpm exec esbuild packages/webgpu/bench/load-patterns.bench.mjs --bundle --platform=node --format=esm --target=node20 \
  --outfile="$STAGE/loads.mjs" --log-level=warning \
  --banner:js="import { createRequire as __xqRequire } from 'node:module'; const require = __xqRequire(import.meta.url);"
# subgroup matrices (tensor cores through Chromium's experimental WGSL extension): configurations, one checked MMA, rate
pnpm exec esbuild packages/webgpu/bench/subgroup-matrix.bench.mjs --bundle --platform=node --format=esm --target=node20 \
  --outfile="$STAGE/sgm.mjs" --log-level=warning \
  --banner:js="import { createRequire as __xqRequire } from 'node:module'; const require = __xqRequire(import.meta.url);"
# where the host's time goes per decoded position (WebGPU calls, submit, GC), run after the main benchmark when HOST_ENCODE=1
pnpm exec esbuild packages/models/bench/host-encode.bench.mjs --bundle --platform=node --format=esm --target=node20 \
  --outfile="$STAGE/host.mjs" --log-level=warning \
  --banner:js="import { createRequire as __xqRequire } from 'node:module'; const require = __xqRequire(import.meta.url);"
# the codebook (turboquant layout) attention kernels, run after the main benchmark when CODEBOOK=1
pnpm exec esbuild packages/webgpu/bench/codebook.bench.mjs --bundle --platform=node --format=esm --target=node20 \
  --outfile="$STAGE/cb.mjs" --log-level=warning \
  --banner:js="import { createRequire as __xqRequire } from 'node:module'; const require = __xqRequire(import.meta.url);"
# OLD_COMMIT=<commit>: also bundle that commit's decode benchmark as bench-old.mjs (a worktree, installed and built
# apart), so gpu-run.sh can time the old and the new kernels in the same call (OLD_ARGS there)
if [ -n "${OLD_COMMIT:-}" ]; then
  OLDW=$(mktemp -d)/old
  git worktree add --detach "$OLDW" "$OLD_COMMIT" >/dev/null
  (cd "$OLDW" && pnpm install --frozen-lockfile --prefer-offline >/dev/null && pnpm build >/dev/null &&
    pnpm exec esbuild packages/models/bench/gpu-decode.bench.mjs --bundle --platform=node --format=esm --target=node20 \
      --outfile="$ROOT/$STAGE/bench-old.mjs" --log-level=warning \
      --banner:js="import { createRequire as __xqRequire } from 'node:module'; const require = __xqRequire(import.meta.url);")
  git worktree remove --force "$OLDW"
  echo "bench-old.mjs: $(git rev-parse --short "$OLD_COMMIT")" > "$STAGE/bench-old.txt"
fi
DAWN=$(node -e "const p=require('path');console.log(p.join(p.dirname(require.resolve('webgpu/package.json',{paths:['packages/webgpu']})),'dist/linux-x64/dawn.node'))")
cp "$DAWN" "$STAGE/dist/linux-x64/dawn.node"
cp "$(command -v node)" "$STAGE/node"
cp scripts/random-checkpoint.mjs docs/gpu/torch_peer.py docs/gpu/torch_prefill.py "$STAGE/"
cp models/xq-demo/tokenizer.json "$STAGE/tokenizer.json"
cp docs/report/plans/xq-llama-20m.plan-R32-v64.json "$STAGE/plan.json"
for m in xq-llama-20m xq-qwen2-30m; do
  [ -f "../shared/models/$m/config.json" ] && cp "../shared/models/$m/config.json" "$STAGE/configs/$m.json"
done
tar -C "$STAGE" -cf - . | xz -6 -T2 > .gpu-carry/carry.tar.xz
rm -rf "$STAGE"
if [ ! -d .gl ] || [ -z "$(ls .gl/*.deb 2>/dev/null)" ]; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update >/dev/null
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)
fi
ls -la .gpu-carry/carry.tar.xz .gl
