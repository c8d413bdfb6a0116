#!/usr/bin/env bash
# Fetches a real peer from Debian's trixie or sid suites without installing it: a private apt
# (own sources list, lists, cache and an empty dpkg status; the system's apt state is not touched),
# `apt-get download`, then `dpkg-deb -x` into a cache directory that later runs reuse.
#
#   scripts/debian-peer.sh PEER        prints the directory the peer's debs were extracted into
#   scripts/debian-peer.sh --list      the peers it knows
#
# Peers (name: suite package version-prefix):
#   cosign-2.5      trixie cosign     2.5.
#   cosign-3.1      sid    cosign     3.1.
#   containerd-1.7  trixie containerd 1.7.
#   containerd-2.1  sid    containerd 2.1.
#   etcd-3.5        trixie etcd-server 3.5.
# The binaries sit under DIR/usr/bin (and DIR/usr/sbin); they link only libc.
#
# Cache: ${KCACHE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kcache-test}/debian/<peer>/, keyed by
# the peer's name (suite + version prefix); a suite that moved past the prefix is an error, never a
# silent upgrade. Needs apt-get, dpkg-deb and the debian-archive-keyring.
set -euo pipefail

declare -A SUITE=([cosign-2.5]=trixie [cosign-3.1]=sid [containerd-1.7]=trixie [containerd-2.1]=sid [etcd-3.5]=trixie)
declare -A PKG=([cosign-2.5]=cosign [cosign-3.1]=cosign [containerd-1.7]=containerd [containerd-2.1]=containerd [etcd-3.5]=etcd-server)
declare -A PREFIX=([cosign-2.5]=2.5. [cosign-3.1]=3.1. [containerd-1.7]=1.7. [containerd-2.1]=2.1. [etcd-3.5]=3.5.)

die() { echo "debian-peer: $*" >&2; exit 1; }

peer=${1:?usage: debian-peer.sh PEER | --list}
if [[ $peer == --list ]]; then
  for p in "${!SUITE[@]}"; do echo "$p ${SUITE[$p]} ${PKG[$p]} ${PREFIX[$p]}"; done | sort
  exit 0
fi
[[ -n ${SUITE[$peer]:-} ]] || die "unknown peer '$peer' (known: ${!SUITE[*]})"
suite=${SUITE[$peer]} pkg=${PKG[$peer]} prefix=${PREFIX[$peer]}

cache=${KCACHE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kcache-test}/debian
out=$cache/$peer
if [[ -f $out/.done ]]; then echo "$out/root"; exit 0; fi

for t in apt-get dpkg-deb flock; do command -v "$t" >/dev/null || die "missing tool: $t"; done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -r $keyring ]] || die "$keyring missing (package debian-archive-keyring)"
mirror=${KCACHE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

mkdir -p "$cache"
# One fetch at a time per cache (parallel test binaries may ask for the same peer).
exec 9>"$cache/.lock"
flock 9
if [[ -f $out/.done ]]; then echo "$out/root"; exit 0; fi

apt=$cache/apt-$suite
mkdir -p "$apt"/{lists/partial,cache/archives/partial,etc/parts}
: > "$apt/status"
echo "deb [signed-by=$keyring] $mirror $suite main" > "$apt/etc/sources.list"
A=(-o Dir::Etc::sourcelist="$apt/etc/sources.list" -o Dir::Etc::sourceparts="$apt/etc/parts"
   -o Dir::Etc::preferences="$apt/etc/preferences" -o Dir::Etc::preferencesparts="$apt/etc/parts"
   -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" -o Dir::State::status="$apt/status"
   -o APT::Sandbox::User=root -o Acquire::Languages=none -o Acquire::Check-Valid-Until=false
   -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)

# Lists older than a day are refreshed; a failed refresh with usable lists goes on with them.
if [[ -z $(find "$apt/lists" -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null) ]]; then
  echo "debian-peer: apt-get update ($suite, private lists)" >&2
  apt-get "${A[@]}" -q update >"$apt/update.log" 2>&1 || {
    [[ -n $(find "$apt/lists" -maxdepth 1 -name '*Packages*') ]] || { tail -20 "$apt/update.log" >&2; die "apt-get update for $suite failed"; }
    echo "debian-peer: update failed, using the lists from an earlier run" >&2
  }
fi

tmp=$(mktemp -d "$cache/.$peer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "debian-peer: downloading $pkg/$suite" >&2
(cd "$tmp" && apt-get "${A[@]}" -q download "$pkg/$suite") >"$tmp/download.log" 2>&1 \
  || { tail -20 "$tmp/download.log" >&2; die "apt-get download $pkg/$suite failed"; }
deb=$(ls "$tmp"/*.deb)
version=$(dpkg-deb -f "$deb" Version)
upstream=${version#*:}
[[ $upstream == "$prefix"* ]] || die "$suite's $pkg is $version now, not $prefix*: update scripts/debian-peer.sh"
mkdir -p "$tmp/root"
dpkg-deb -x "$deb" "$tmp/root"
echo "$pkg $version ($suite)" > "$tmp/version"
rm -rf "$out"
mkdir -p "$out"
mv "$tmp/root" "$tmp/version" "$out/"
cp "$deb" "$out/"
touch "$out/.done"
echo "debian-peer: $pkg $version ($suite) in $out/root" >&2
echo "$out/root"
