#!/usr/bin/env bash
# The kcache demo: a loopback docker-registry, an image signed with kcache's own signer, and the
# real verification path allowing it and denying a tampered one (a tag moved to unsigned bytes,
# and a signature by a key the policy does not trust).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=$(mktemp -d /tmp/kcache-demo.XXXXXX)
reg_pid=""
trap '[ -z "$reg_pid" ] || kill "$reg_pid" 2>/dev/null; rm -rf "$work"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building kcache (release)"
cargo build --release --locked -p kcache-plugin
target=${CARGO_TARGET_DIR:-$root/target}
kcache() { "$target/release/kcache" "$@"; }

step "starting docker-registry on loopback"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
log: {level: error, accesslog: {disabled: true}}
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
reg=127.0.0.1:$port
echo "registry at $reg"

push_blob() { # file -> digest
  local f=$1 d loc
  d=sha256:$(sha256sum "$f" | cut -d' ' -f1)
  loc=$(curl -fsS -X POST -D - -o /dev/null "http://$reg/v2/demo/app/blobs/uploads/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case $loc in http*) ;; *) loc="http://$reg$loc" ;; esac
  case $loc in *\?*) sep='&' ;; *) sep='?' ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$f" "$loc${sep}digest=$d" >/dev/null
  echo "$d"
}
push_image() { # tag message
  local tag=$1 msg=$2
  printf '%s\n' "$msg" >"$work/layer"
  gzip -nc "$work/layer" >"$work/layer.gz"
  local layer diff config
  layer=$(push_blob "$work/layer.gz")
  diff=sha256:$(sha256sum "$work/layer" | cut -d' ' -f1)
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]},"config":{}}' "$diff" >"$work/config"
  config=$(push_blob "$work/config")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
    "$config" "$(stat -c %s "$work/config")" "$layer" "$(stat -c %s "$work/layer.gz")" >"$work/manifest"
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$work/manifest" "http://$reg/v2/demo/app/manifests/$tag" >/dev/null
  echo "sha256:$(sha256sum "$work/manifest" | cut -d' ' -f1)"
}

step "pushing demo/app:v1 and generating a signing key pair (cosign format)"
digest=$(push_image v1 "hello from a signed image")
echo "demo/app:v1 -> $digest"
export COSIGN_PASSWORD=demo
(cd "$work" && kcache generate-key-pair)
(cd "$work" && kcache generate-key-pair --output-key-prefix attacker >/dev/null)

step "signing $reg/demo/app:v1 with kcache sign (cosign v2 .sig + v3 bundle referrer)"
kcache sign --key "$work/cosign.key" --insecure-registry "$reg" --v3 "$reg/demo/app:v1"

cat >"$work/policy.yaml" <<YAML
mode: enforce
default: deny
rules:
  - name: demo-apps
    images: ["$reg/demo/**"]
    authorities:
      - key: {path: $work/cosign.pub}
    transparencyLog: off   # air-gapped key signing: no Rekor
YAML
echo; cat "$work/policy.yaml"

step "verify the signed image: allowed"
kcache verify --policy "$work/policy.yaml" --insecure-registry "$reg" "$reg/demo/app:v1"

step "tamper 1: move the tag v1 to unsigned bytes: denied"
bad=$(push_image v1 "evil payload")
echo "demo/app:v1 now -> $bad"
if kcache verify --policy "$work/policy.yaml" --insecure-registry "$reg" "$reg/demo/app:v1"; then
  echo "DEMO FAILED: a tampered image was allowed" >&2; exit 1
fi

step "tamper 2: sign it with a key the policy does not trust: still denied"
COSIGN_PASSWORD=demo kcache sign --key "$work/attacker.key" --insecure-registry "$reg" "$reg/demo/app:v1"
if kcache verify --policy "$work/policy.yaml" --insecure-registry "$reg" "$reg/demo/app:v1"; then
  echo "DEMO FAILED: an image signed by an untrusted key was allowed" >&2; exit 1
fi

step "the original digest is still allowed, by digest"
kcache verify --policy "$work/policy.yaml" --insecure-registry "$reg" --output json "$reg/demo/app@$digest"
echo; echo "demo OK"
