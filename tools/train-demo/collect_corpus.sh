#!/usr/bin/env bash
# Build the xq-demo training corpus from Debian documentation packages.
#
#   tools/train-demo/collect_corpus.sh            # writes tools/train-demo/work/data/
#
# Needs: Debian 12 (bookworm) apt sources, apt-get, dpkg-deb, python3 (stdlib only).
# The packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
# work/unpack/ (nothing is installed into the system, no root needed beyond apt's cache).
# Output (git-ignored):
#   work/data/corpus_train.jsonl, corpus_eval.jsonl   {"id","package","text"} per line
#   work/data/corpus_stats.json                       per-package sizes, versions, licences
#   work/data/versions.tsv                            package <TAB> version actually used
#   work/data/copyright/<package>                     each package's Debian copyright file
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${WORK:-$HERE/work}"
mkdir -p "$WORK/debs" "$WORK/unpack" "$WORK/data/copyright"

mapfile -t PKGS < <(grep -v '^#' "$HERE/packages.tsv" | cut -f1 | grep -v '^$')
echo "fetching ${#PKGS[@]} packages"
(cd "$WORK/debs" && apt-get download "${PKGS[@]}")

: > "$WORK/data/versions.tsv"
for p in "${PKGS[@]}"; do
  deb="$(ls "$WORK/debs/${p}"_*.deb | head -n1)"
  ver="$(dpkg-deb -f "$deb" Version)"
  printf '%s\t%s\n' "$p" "$ver" >> "$WORK/data/versions.tsv"
  rm -rf "$WORK/unpack/$p" && mkdir -p "$WORK/unpack/$p"
  dpkg-deb -x "$deb" "$WORK/unpack/$p"
  if [ -f "$WORK/unpack/$p/usr/share/doc/$p/copyright" ]; then
    cp "$WORK/unpack/$p/usr/share/doc/$p/copyright" "$WORK/data/copyright/$p"
  fi
done
# two doc packages keep their copyright file in a sibling package: fetch just that file
declare -A COPYRIGHT_FROM=([cmake-doc]=cmake-data [zsh-doc]=zsh-common)
for p in "${!COPYRIGHT_FROM[@]}"; do
  src="${COPYRIGHT_FROM[$p]}"
  (cd "$WORK/debs" && apt-get download "$src")
  tmp="$(mktemp -d)"
  dpkg-deb -x "$(ls "$WORK/debs/${src}"_*.deb | head -n1)" "$tmp"
  cp "$tmp/usr/share/doc/$src/copyright" "$WORK/data/copyright/$p"
  rm -rf "$tmp"
done
cat "$WORK/data/versions.tsv"

python3 "$HERE/extract.py" "$HERE/packages.tsv" "$WORK/unpack" "$WORK/data"
