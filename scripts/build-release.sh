#!/usr/bin/env bash
# Release binaries for a node, into $CARGO_TARGET_DIR/dist (default target/dist):
#   kcached, kcache, kcache-image-verifier   (release, as cargo builds them)
#   kcache-hook                              (release, statically linked: runc/CRI-O exec it twice
#                                             per container start, and a static binary skips the
#                                             dynamic loader, ~0.4 ms per exec; see bench/run)
# Usage: scripts/build-release.sh [--hook-only] [DIST_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

hook_only=false
if [ "${1:-}" = --hook-only ]; then
    hook_only=true
    shift
fi
target_dir=${CARGO_TARGET_DIR:-target}
dist=${1:-$target_dir/dist}
host=$(rustc -vV | sed -n 's/^host: //p')

$hook_only || cargo build --release --locked -p kcache-plugin --bins
# crt-static needs an explicit --target (build scripts and proc macros stay dynamic).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked -p kcache-hook --target "$host"

mkdir -p "$dist"
if ! $hook_only; then
    for bin in kcached kcache kcache-image-verifier; do
        install -m 0755 "$target_dir/release/$bin" "$dist/$bin"
    done
fi
install -m 0755 "$target_dir/$host/release/kcache-hook" "$dist/kcache-hook"
if ldd "$dist/kcache-hook" >/dev/null 2>&1 && ! ldd "$dist/kcache-hook" 2>&1 | grep -q 'statically linked'; then
    echo "build-release: $dist/kcache-hook is not statically linked" >&2
    exit 1
fi
echo "build-release: binaries in $dist"
