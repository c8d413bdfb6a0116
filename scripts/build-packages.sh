#!/usr/bin/env bash
# The kcache node packages: a .deb (dpkg-deb) and an .rpm (rpmbuild, Debian's `rpm` package),
# with name, version, summary, description, license and homepage from Cargo metadata
# (kcache-plugin's [package] and [package.metadata.deb]).
#
#   scripts/build-packages.sh [--arch x86_64|aarch64] [--version V] [--bin-dir DIR]
#                             [--out DIR] [--fast]
#
# --arch      the target: x86_64 (default, this machine) or aarch64 (cross: needs the
#             aarch64-unknown-linux-gnu Rust target and a cross linker; not built in CI)
# --version   package version (default: Cargo's); the tests bump it to check upgrades
# --bin-dir   package these binaries (kcached, kcache, kcache-image-verifier, kcache-hook)
#             instead of running scripts/build-release.sh
# --out       where the packages go (default: $CARGO_TARGET_DIR/packages)
# --fast      gzip instead of xz (the tests build packages twice)
#
# What goes in (both formats; the unit is under /lib/systemd/system in the deb):
#   /usr/bin/{kcache,kcached,kcache-image-verifier}, /usr/libexec/kcache/kcache-hook,
#   /usr/lib/systemd/system/kcached.service, /usr/lib/tmpfiles.d/kcache.conf,
#   /usr/share/containers/oci/hooks.d/kcache.json (CRI-O and podman), conffiles
#   /etc/kcache/{config.toml,policy.yaml}, /usr/share/kcache/trusted_root.public-good.json,
#   man pages (kcache's from clap_mangen: `kcache generate man`; kcached's from help2man),
#   bash/zsh/fish completions (`kcache generate completions`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

arch=x86_64 version="" bin_dir="" fast=false
target_dir=${CARGO_TARGET_DIR:-$root/target}
out=$target_dir/packages
while (($#)); do
    case $1 in
    --arch) arch=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fast) fast=true; shift ;;
    *) echo "build-packages: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $arch in
x86_64) deb_arch=amd64 ;;
aarch64) deb_arch=arm64 ;;
*) echo "build-packages: --arch x86_64 or aarch64, not $arch" >&2; exit 2 ;;
esac
for tool in dpkg-deb rpmbuild help2man jq gzip; do
    command -v "$tool" >/dev/null || { echo "build-packages: $tool missing (scripts/deps.sh)" >&2; exit 1; }
done

# 1. Metadata, from Cargo.
meta=$(cargo metadata --no-deps --format-version 1 --locked |
    jq -c '.packages[] | select(.name == "kcache-plugin")')
field() { jq -r "$1 // empty" <<<"$meta"; }
version=${version:-$(field .version)}
summary=$(field .description)
license=$(field .license)
homepage=$(field .repository)
maintainer=$(field '.metadata.deb.maintainer')
section=$(field '.metadata.deb.section')
priority=$(field '.metadata.deb.priority')
recommends=$(field '.metadata.deb.recommends')
description=$(field '.metadata.deb["extended-description"]')
for v in version summary license homepage maintainer section priority description; do
    [ -n "${!v}" ] || { echo "build-packages: no $v in kcache-plugin's Cargo metadata" >&2; exit 1; }
done

# 2. Binaries.
if [ -z "$bin_dir" ]; then
    bin_dir=$target_dir/dist
    if [ "$arch" = x86_64 ]; then
        bash scripts/build-release.sh "$bin_dir"
    else
        bin_dir=$target_dir/dist-$arch
        CARGO_BUILD_TARGET=$arch-unknown-linux-gnu bash scripts/build-release.sh "$bin_dir"
    fi
fi
for b in kcached kcache kcache-image-verifier kcache-hook; do
    [ -x "$bin_dir/$b" ] || { echo "build-packages: $bin_dir/$b missing" >&2; exit 1; }
done

# 3. The tree.
work=$(mktemp -d "${TMPDIR:-/tmp}/kcache-pkg.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/root
umask 022
install -d "$stage"/usr/bin "$stage"/usr/libexec/kcache "$stage"/usr/lib/systemd/system \
    "$stage"/usr/lib/tmpfiles.d "$stage"/usr/share/containers/oci/hooks.d "$stage"/usr/share/kcache \
    "$stage"/usr/share/man/man1 "$stage"/usr/share/man/man8 "$stage"/etc/kcache \
    "$stage"/usr/share/bash-completion/completions "$stage"/usr/share/zsh/site-functions \
    "$stage"/usr/share/fish/vendor_completions.d "$stage"/usr/share/doc/kcache "$stage"/usr/share/licenses/kcache
strip_to() { # src dst
    install -m 0755 "$1" "$2"
    if [ "$arch" = x86_64 ]; then strip --strip-unneeded --remove-section=.comment --remove-section=.note "$2"; fi
}
for b in kcached kcache kcache-image-verifier; do strip_to "$bin_dir/$b" "$stage/usr/bin/$b"; done
strip_to "$bin_dir/kcache-hook" "$stage/usr/libexec/kcache/kcache-hook"
install -m 0644 systemd/kcached.service "$stage"/usr/lib/systemd/system/kcached.service
install -m 0644 systemd/tmpfiles.d/kcache.conf "$stage"/usr/lib/tmpfiles.d/kcache.conf
install -m 0644 packaging/crio/hooks.d/kcache.json "$stage"/usr/share/containers/oci/hooks.d/kcache.json
install -m 0644 packaging/node/config.toml packaging/node/policy.yaml "$stage"/etc/kcache/
install -m 0644 core/data/trusted_root.public-good.json packaging/node/next-steps.txt "$stage"/usr/share/kcache/

# Man pages and completions come from the binaries (this machine's: the aarch64 ones cannot
# run here, and the pages do not depend on the architecture).
gen=$stage/usr/bin
if [ "$arch" != x86_64 ]; then
    gen=$work/gen
    cargo build --release --locked -p kcache-plugin --bin kcache --bin kcached
    mkdir -p "$gen" && cp "$target_dir/release/kcache" "$target_dir/release/kcached" "$gen/"
fi
"$gen/kcache" generate man --out "$work/man1" >/dev/null
install -m 0644 "$work"/man1/*.1 "$stage"/usr/share/man/man1/
help2man --no-info --section 8 --name "kcache node daemon (verified pulls, kernel caches)" \
    --version-string "$version" --output "$stage/usr/share/man/man8/kcached.8" "$gen/kcached"
install -m 0644 packaging/man/kcache-image-verifier.8 packaging/man/kcache-hook.8 "$stage"/usr/share/man/man8/
gzip -9n "$stage"/usr/share/man/man1/*.1 "$stage"/usr/share/man/man8/*.8
"$gen/kcache" generate completions bash >"$stage/usr/share/bash-completion/completions/kcache"
"$gen/kcache" generate completions zsh >"$stage/usr/share/zsh/site-functions/_kcache"
"$gen/kcache" generate completions fish >"$stage/usr/share/fish/vendor_completions.d/kcache.fish"

date_rfc=$(date -u -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
cat >"$work/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kcache
Source: $homepage

Files: *
Copyright: 2026 the kcache authors
License: $license

License: $license
 Licensed under the Apache License, Version 2.0 (the "License"); you may not use this
 software except in compliance with the License. You may obtain a copy of the License at
 https://www.apache.org/licenses/LICENSE-2.0
 .
 On Debian systems, the complete text of the Apache License, Version 2.0 can be found in
 "/usr/share/common-licenses/Apache-2.0".
EOF
mkdir -p "$out"

# 4. The deb. Debian bookworm keeps units in /lib/systemd/system (dpkg's /usr-merge aliasing).
deb=$work/deb
cp -a "$stage" "$deb"
mkdir -p "$deb/lib/systemd/system" "$deb/DEBIAN"
mv "$deb/usr/lib/systemd/system/kcached.service" "$deb/lib/systemd/system/"
rm -rf "$deb/usr/lib/systemd" "$deb/usr/share/licenses"
install -m 0644 "$work/copyright" "$deb/usr/share/doc/kcache/copyright"
printf 'kcache (%s) unstable; urgency=medium\n\n  * Built from kcache %s by scripts/build-packages.sh.\n\n -- %s  %s\n' \
    "$version" "$version" "$maintainer" "$date_rfc" | gzip -9n >"$deb/usr/share/doc/kcache/changelog.gz"
libc=$(objdump -T "$stage"/usr/bin/* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
deb_depends=libc6${libc:+ (>= $libc)}
installed_size=$(du -sk --exclude=DEBIAN "$deb" | cut -f1)
{
    echo "Package: kcache"
    echo "Version: $version"
    echo "Architecture: $deb_arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $installed_size"
    echo "Depends: $deb_depends"
    [ -z "$recommends" ] || echo "Recommends: $recommends"
    echo "Section: $section"
    echo "Priority: $priority"
    echo "Homepage: $homepage"
    echo "Description: $summary"
    sed 's/^$/./; s/^/ /' <<<"$description"
} >"$deb/DEBIAN/control"
printf '/etc/kcache/config.toml\n/etc/kcache/policy.yaml\n' >"$deb/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$deb/DEBIAN/"
install -d "$deb/usr/share/lintian/overrides"
install -m 0644 packaging/deb/lintian-overrides "$deb/usr/share/lintian/overrides/kcache"
(cd "$deb" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$deb/DEBIAN/md5sums" "$deb/DEBIAN/control" "$deb/DEBIAN/conffiles"
deb_file=$out/kcache_${version}_${deb_arch}.deb
compress=(-Zxz)
$fast && compress=(-Zgzip -z1)
dpkg-deb --root-owner-group "${compress[@]}" --build "$deb" "$deb_file" >/dev/null
echo "build-packages: $deb_file"

# 5. The rpm: the same tree (unit in /usr/lib/systemd/system).
rpmstage=$work/rpmroot
cp -a "$stage" "$rpmstage"
rm -rf "$rpmstage/usr/share/doc/kcache"
install -m 0644 "$work/copyright" "$rpmstage/usr/share/licenses/kcache/copyright"
date_rpm=$(LC_ALL=C date -u -d "$date_rfc" '+%a %b %d %Y')
desc_rpm=$(sed 's/^\.$//' <<<"$description")
spec=$work/kcache.spec
VERSION=$version SUMMARY=$summary LICENSE=$license HOMEPAGE=$homepage RPM_ARCH=$arch \
    STAGE=$rpmstage DATE=$date_rpm MAINTAINER=$maintainer DESCRIPTION=$desc_rpm \
    python3 - packaging/rpm/kcache.spec.in "$spec" <<'PY'
import os, sys
s = open(sys.argv[1]).read()
for k in ["VERSION", "SUMMARY", "LICENSE", "HOMEPAGE", "RPM_ARCH", "STAGE", "DATE", "MAINTAINER", "DESCRIPTION"]:
    s = s.replace("@" + k + "@", os.environ[k])
open(sys.argv[2], "w").write(s)
PY
payload=w9.xzdio
$fast && payload=w1.gzdio
rpmbuild -bb --quiet --target "$arch-linux" \
    --define "_topdir $work/rpmbuild" --define "_rpmdir $work/rpms" \
    --define "_binary_payload $payload" --define "_build_id_links none" \
    --define "source_date_epoch_from_changelog 1" --define "use_source_date_epoch_as_buildtime 1" \
    "$spec"
rpm_file=$(find "$work/rpms" -name '*.rpm' | head -1)
cp "$rpm_file" "$out/"
echo "build-packages: $out/$(basename "$rpm_file")"

# 6. The rpmlint filters for this rpm: packaging/rpm/kcache.rpmlintrc, plus the static hook's
# when the hook is static (the release build's; rpmlint fails a filter that matches nothing, so
# a debug build's dynamic hook must not get it).
{
    cat packaging/rpm/kcache.rpmlintrc
    if ! readelf -l "$bin_dir/kcache-hook" | grep -q 'program interpreter'; then
        echo
        cat packaging/rpm/static-hook.rpmlintrc
    fi
} >"$out/kcache.rpmlintrc"
echo "build-packages: $out/kcache.rpmlintrc (rpmlint --config packaging/rpm/rpmlint.toml --rpmlintrc it)"
