#!/usr/bin/env bash
# Installs Mesa's software Vulkan driver (lavapipe) from bookworm-backports so Dawn (the `webgpu` package) finds an adapter.
# Bookworm's own Mesa 22.3 is rejected by Dawn. Needs root and Debian's apt; does nothing when already installed.
set -euo pipefail
if dpkg-query -W -f '${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q bpo; then exit 0; fi
[ "$(id -u)" = 0 ] || { echo "setup-webgpu: not root"; exit 1; }
command -v apt-get >/dev/null || { echo "setup-webgpu: no apt-get"; exit 1; }
if [ ! -f /etc/apt/sources.list.d/backports.sources ]; then
  awk 'BEGIN{RS="";ORS="\n\n"} NR==1' /etc/apt/sources.list.d/debian.sources \
    | sed 's/^Suites:.*/Suites: bookworm-backports/' > /etc/apt/sources.list.d/backports.sources
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
echo "setup-webgpu: $(dpkg-query -W -f '${Version}' mesa-vulkan-drivers)"
