#!/usr/bin/env bash
# Packs what the GPU machine (no node, no registry) needs to run bench/gpu-bench.mjs into one xz tarball:
# the node binary, dawn.node and an esbuild bundle of the bench with @xquant/*, tfjs-core and tfjs-backend-webgpu.
# Output: <repo>/.gpu-carry/carry.tar.xz (git-ignored through .git/info/exclude). Also fetches the Vulkan/GL loader
# debs into <repo>/.gl per the device notes. Usage: bash packages/webgpu/bench/pack-carry.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >> .git/info/exclude
pnpm --filter @xquant/quant --filter @xquant/webgpu build >/dev/null
STAGE=.gpu-carry/stage
rm -rf "$STAGE" && mkdir -p "$STAGE/dist/linux-x64"
pnpm exec esbuild packages/webgpu/bench/gpu-bench.mjs --bundle --platform=node --format=esm --target=node20 \
  --outfile="$STAGE/bench.mjs" --log-level=warning \
  --banner:js="import { createRequire as __xqRequire } from 'node:module'; const require = __xqRequire(import.meta.url);"
DAWN=$(node -e "const p=require('path');console.log(p.join(p.dirname(require.resolve('webgpu/package.json',{paths:['packages/webgpu']})),'dist/linux-x64/dawn.node'))")
cp "$DAWN" "$STAGE/dist/linux-x64/dawn.node"
cp "$(command -v node)" "$STAGE/node"
tar -C "$STAGE" -cf - . | xz -6 -T2 > .gpu-carry/carry.tar.xz
rm -rf "$STAGE"
if [ ! -d .gl ] || [ -z "$(ls .gl/*.deb 2>/dev/null)" ]; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update >/dev/null
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)
fi
ls -la .gpu-carry/carry.tar.xz .gl
