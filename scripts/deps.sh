#!/usr/bin/env bash
# Installs the Debian packages kcache's tests and demo start for real (on loopback).
# Idempotent: installs only what is missing. Needs root (or sudo) on Debian 12.
set -euo pipefail
# openssl, debian-archive-keyring: test CAs and scripts/debian-peer.sh.
# rpm, lintian, rpmlint, help2man, jq: scripts/build-packages.sh and plugin/tests/packages.rs.
pkgs=(docker-registry ca-certificates containerd runc busybox-static systemd skopeo podman
      rpm lintian rpmlint help2man jq binutils openssl debian-archive-keyring)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's package starts a registry service on :5000 where systemd runs; tests start their own.
command -v docker-registry >/dev/null
# scripts/triton-caches.sh makes a venv with the triton wheel: python3 >= 3.10 with venv + ensurepip.
if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  echo "deps: installing python3 python3-venv (for scripts/triton-caches.sh)" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends python3 python3-venv
fi
