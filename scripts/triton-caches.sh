#!/usr/bin/env bash
# Real Triton kernel caches for the tests and bench/run, made by the `triton` wheel from PyPI
# without a GPU (scripts/triton_caches.py says how), cached between runs:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/kcache-test/triton-<version>/
#     venv/                      python3 -m venv + pip install triton==<version> (~1.1 GB)
#     caches-<hash>/             <hash>: of triton_caches.py and this script
#       <set>/                   a Triton cache dir (TRITON_CACHE_DIR), one per set in triton_caches.py
#       <set>.expected.json      what triton.compile wrote there: kernel id, target, key, files
#       all.compiled-in          the dir `all` was compiled in (then copied away and removed, so
#                                its __grp__ files name a path that no longer exists: the
#                                relocation case)
#
# Usage: scripts/triton-caches.sh [VERSION]    (default 3.9.0; prints the caches-<hash> dir)
# Needs python3 >= 3.10 with venv (Debian: python3-venv) and PyPI. Concurrent runs are serialised
# with flock; a half-made venv is never left under its final name, a half-made caches dir has no
# .done and is made again.
set -euo pipefail
version="${1:-3.9.0}"
here="$(cd "$(dirname "$0")" && pwd)"
py_src="$here/triton_caches.py"
base="${XDG_CACHE_HOME:-$HOME/.cache}/kcache-test/triton-$version"
mkdir -p "$base"
exec 9>"$base/.lock"
flock 9

venv="$base/venv"
if [ ! -x "$venv/bin/python" ]; then
  python="${PYTHON:-python3}"
  "$python" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' ||
    { echo "triton-caches: $python is older than 3.10 (triton $version needs 3.10+)" >&2; exit 1; }
  rm -rf "$venv.tmp"
  echo "triton-caches: installing triton==$version from PyPI into $venv (~300 MB download)" >&2
  "$python" -m venv "$venv.tmp"
  "$venv.tmp/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "triton==$version" >&2
  mv "$venv.tmp" "$venv"
fi

hash="$(cat "$py_src" "$0" | sha256sum | cut -c1-16)"
out="$base/caches-$hash"
if [ ! -f "$out/.done" ]; then
  # Compiled where they stay (their __grp__ files name these paths); .done marks a complete set.
  rm -rf "$out"
  mkdir -p "$out"
  cp "$py_src" "$out/triton_caches.py"
  for set in $(PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" "$py_src" sets); do
    echo "triton-caches: compiling set $set with triton $version" >&2
    dir="$out/$set"
    # `all` is compiled in one dir and copied to another (as `cp -r ~/.triton/cache` before
    # `kcache cache build` would), the first one removed.
    [ "$set" = all ] && dir="$out/compiled-in/all"
    mkdir -p "$dir"
    TRITON_CACHE_DIR="$dir" PYTHONDONTWRITEBYTECODE=1 \
      "$venv/bin/python" "$py_src" build "$set" >"$out/$set.expected.json"
  done
  cp -r "$out/compiled-in/all" "$out/all"
  echo "$out/compiled-in/all" >"$out/all.compiled-in"
  rm -rf "$out/compiled-in"
  touch "$out/.done"
fi
echo "$out"
