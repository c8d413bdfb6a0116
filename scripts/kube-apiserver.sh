#!/usr/bin/env bash
# kube-apiserver.sh: the real (upstream) Kubernetes API server that kcache-controller's tests run against,
# built from Debian packages into a version-keyed cache that later runs reuse.
# Made from ../shared/recipes/kube-test-apiserver.sh (same build and start steps).
#
# What it is: k8s.io/apiextensions-apiserver (the CRD half of kube-apiserver, Kubernetes 1.36.x) built with
# Go from the Debian sid `golang-k8s-*-dev` source packages, plus etcd 3.5 from Debian trixie
# (scripts/debian-peer.sh etcd-3.5), all on 127.0.0.1. It serves /apis/apiextensions.k8s.io and every CRD
# group (SSA, /status, schema validation, 409s, watch). It does NOT serve /api/v1 (no Namespaces,
# ConfigMaps, Events, Nodes), coordination.k8s.io (Leases), /openapi/v2, or OpenAPI for custom resources.
# Nothing is installed into the system.
#
#   kube-apiserver.sh path                     # print the build dir (the cache dir below)
#   kube-apiserver.sh build [DIR]              # download + build into DIR (no-op if DIR/bin/* exist)
#   kube-apiserver.sh start RUNDIR [DIR]       # fresh certs+data, etcd + apiserver on free loopback ports
#                                              # (no-op if RUNDIR already runs a healthy one)
#   kube-apiserver.sh stop RUNDIR              # kill exactly the PIDs in RUNDIR/pids
#   kube-apiserver.sh env RUNDIR               # print "export KUBECONFIG=..."
#
# DIR defaults to ${KCACHE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kcache-test}/kube-apiserver-$KUBE_VERSION
# (KUBE_VERSION=1.36 by default; a sid that moved to another minor is an error, never a silent upgrade).
#
# After start: RUNDIR/kubeconfig (admin client cert, O=system:masters, certs embedded), RUNDIR/pids
# ("etcd PID" / "apiserver PID"), RUNDIR/server (URL), RUNDIR/{etcd,apiserver}.log.
#
# Needs: bash, apt-get/apt-cache, dpkg-deb, curl, openssl, base64, flock; network access to deb.debian.org.
# Build needs ~4.5 GB temporary disk (DIR/work, deleted afterwards unless KTA_KEEP_WORK=1), ~4-7 min on 2 cores.
# Environment knobs:
#   KUBE_VERSION=1.36        the Kubernetes minor expected from sid's golang-k8s-apiextensions-apiserver-dev
#   KTA_GO_VERSION=1.26      Go toolchain (golang-1.NN-go from sid); default: whatever sid's golang-go depends on
#   KTA_PATCH_DISCOVERY=0    build pristine upstream (no /apis discovery => kubectl apply / kube Discovery fail)
#   KTA_ETCD=/usr/bin/etcd   use this etcd instead of scripts/debian-peer.sh etcd-3.5
#   KTA_KEEP_WORK=1          keep DIR/work (debs, extracted tree, Go build cache)
#   KTA_SUITE=sid            suite for the golang-k8s-* closure and Go (default sid)
#   KTA_MIRROR=http://deb.debian.org/debian
#   KTA_STARTUP_TIMEOUT=60   seconds to wait for /healthz
set -euo pipefail

log() { printf '[kta %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
absdir() { mkdir -p "$1" && (cd "$1" && pwd); }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KUBE_VERSION=${KUBE_VERSION:-1.36}
default_dir() { echo "${KCACHE_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kcache-test}/kube-apiserver-$KUBE_VERSION"; }

APISERVER_FLAGS_ADMISSION=NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,MutatingAdmissionPolicy

# ---------------------------------------------------------------------------------------------------------------
cmd_build() {
  local dir; dir=$(absdir "${1:-$(default_dir)}")
  # One build at a time per DIR (parallel test binaries or a second shell may ask for it too).
  exec 9>"$dir/.lock"
  flock 9
  if [[ -x $dir/bin/apiextensions-apiserver && -x $dir/bin/etcd ]]; then
    log "already built: $dir/bin/apiextensions-apiserver ($(head -n1 "$dir/versions.txt" 2>/dev/null || echo '?')); nothing to do"
    return 0
  fi
  for t in apt-get apt-cache dpkg-deb curl openssl; do command -v $t >/dev/null || die "missing tool: $t"; done
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -r $keyring ]] || die "$keyring missing (package debian-archive-keyring)"
  local suite=${KTA_SUITE:-sid} mirror=${KTA_MIRROR:-http://deb.debian.org/debian}
  local work=$dir/work apt=$dir/work/apt t0 tall; tall=$(now)
  mkdir -p "$apt"/{lists/partial,cache/archives/partial,etc/parts} "$work/debs" "$dir/bin"
  : > "$apt/status"
  echo "deb [signed-by=$keyring] $mirror $suite main" > "$apt/etc/sources.list"
  # A private apt: own sources, lists, cache and an empty dpkg status; the system's apt state is not touched.
  local A=(-o Dir::Etc::sourcelist="$apt/etc/sources.list" -o Dir::Etc::sourceparts="$apt/etc/parts"
           -o Dir::Etc::preferences="$apt/etc/preferences" -o Dir::Etc::preferencesparts="$apt/etc/parts" -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache"
           -o Dir::State::status="$apt/status" -o APT::Sandbox::User=root -o Acquire::Languages=none
           -o Acquire::Check-Valid-Until=false  # some mirrors/proxies serve a frozen snapshot (expired Valid-Until)
           -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)

  t0=$(now); log "apt-get update (private lists: $suite)"
  apt-get "${A[@]}" -q update >"$work/apt-update.log" 2>&1 || { tail -20 "$work/apt-update.log" >&2; die "apt-get update failed"; }
  log "  update: $(since "$t0") s"

  t0=$(now)
  apt-cache "${A[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
      --no-enhances golang-k8s-apiextensions-apiserver-dev | grep -v '^[ <]' | sort -u > "$work/closure.txt"
  local gover=${KTA_GO_VERSION:-}
  if [[ -z $gover ]]; then
    gover=$(grep -oE '^golang-1\.[0-9]+-go$' "$work/closure.txt" | sed -E 's/^golang-(1\.[0-9]+)-go$/\1/' | sort -V | tail -n1)
    [[ -n $gover ]] || die "could not determine the Go version from the closure; set KTA_GO_VERSION"
  fi
  local pkgs; pkgs=$(grep -E '^golang-' "$work/closure.txt" | grep -vE '^golang-(go|src|doc|any)$|^golang-1\.[0-9]+-')
  log "downloading $(wc -w <<<"$pkgs") golang-* library debs + golang-$gover-go/src ($suite)"
  (cd "$work/debs" && apt-get "${A[@]}" -q download $pkgs "golang-$gover-go/$suite" "golang-$gover-src/$suite") \
      >"$work/download.log" 2>&1 || { tail -20 "$work/download.log" >&2; die "download failed (sid moved mid-download? rerun)"; }
  log "  download: $(since "$t0") s, $(du -sh "$work/debs" | cut -f1) in $(ls "$work/debs" | wc -l) debs"

  t0=$(now); log "extracting into $work/root"
  rm -rf "$work/root"; mkdir -p "$work/root"
  find "$work/debs" -name '*.deb' -print0 | xargs -0 -P "$(nproc)" -n 8 sh -c 'for d; do dpkg-deb -x "$d" "$0"; done' "$work/root"
  log "  extract: $(since "$t0") s, $(du -sh "$work/root" | cut -f1)"

  local R=$work/root src ver kv
  src=$R/usr/share/gocode/src/k8s.io/apiextensions-apiserver
  [[ -f $src/main.go ]] || die "k8s.io/apiextensions-apiserver/main.go not in the package any more"
  ver=$(dpkg-deb -f "$work"/debs/golang-k8s-apiextensions-apiserver-dev_*.deb Version)
  kv=${ver%%-*}; kv=${kv%%+*}                        # 0.36.4-1 -> 0.36.4 ; k8s.io/* 0.X.Y == Kubernetes 1.X.Y
  local kmin=${kv#0.}; kmin=${kmin%%.*}
  [[ 1.$kmin == "$KUBE_VERSION" ]] || die "sid has k8s.io/apiextensions-apiserver $ver (Kubernetes 1.$kmin), not $KUBE_VERSION: set KUBE_VERSION=1.$kmin"
  local overlay=()
  if [[ ${KTA_PATCH_DISCOVERY:-1} != 0 ]]; then
    # Upstream sets EnableDiscovery=false because kube-aggregator normally serves /apis. Standalone, that leaves
    # /apis 404 and breaks kubectl apply/get and kube-rs Discovery. A build overlay flips it (source untouched).
    local f=$src/pkg/apiserver/apiserver.go
    grep -q 'c.GenericConfig.EnableDiscovery = false' "$f" || die "discovery patch no longer applies ($f); set KTA_PATCH_DISCOVERY=0"
    mkdir -p "$work/overlay"
    sed 's/c.GenericConfig.EnableDiscovery = false/c.GenericConfig.EnableDiscovery = true/' "$f" > "$work/overlay/apiserver.go"
    printf '{"Replace":{"%s":"%s"}}\n' "$f" "$work/overlay/apiserver.go" > "$work/overlay/overlay.json"
    overlay=(-overlay="$work/overlay/overlay.json")
  fi

  t0=$(now); log "go build (Go $gover, k8s.io/apiextensions-apiserver $ver); takes ~4-5 min on 2 cores"
  local V=k8s.io/component-base/version
  env -i HOME="$work" PATH="$R/usr/lib/go-$gover/bin:/usr/bin:/bin" GOROOT="$R/usr/lib/go-$gover" \
      GOPATH="$R/usr/share/gocode" GO111MODULE=off GOTOOLCHAIN=local GOPROXY=off GOFLAGS= GOENV=off GOWORK=off \
      CGO_ENABLED=0 GOCACHE="$work/gocache" GOTMPDIR= \
    go build "${overlay[@]}" -trimpath -buildvcs=false \
      -ldflags "-s -w -X $V.gitMajor=1 -X $V.gitMinor=$kmin -X $V.gitVersion=v1.${kv#0.} -X $V.gitTreeState=clean -X $V.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
      -o "$dir/bin/apiextensions-apiserver.tmp" k8s.io/apiextensions-apiserver >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; die "go build failed (see $work/build.log; try KTA_GO_VERSION=1.26)"; }
  log "  build: $(since "$t0") s"

  local etcd_src=${KTA_ETCD:-}
  if [[ -z $etcd_src ]]; then
    etcd_src=$(bash "$HERE/debian-peer.sh" etcd-3.5)/usr/bin/etcd || die "etcd-3.5 from scripts/debian-peer.sh failed"
  fi
  [[ -x $etcd_src ]] || die "$etcd_src is not executable"
  cp "$etcd_src" "$dir/bin/etcd.tmp" && mv "$dir/bin/etcd.tmp" "$dir/bin/etcd"
  {
    echo "apiextensions-apiserver v1.${kv#0.} (golang-k8s-apiextensions-apiserver-dev $ver, $suite), discovery-patch=${KTA_PATCH_DISCOVERY:-1}"
    echo "go $(dpkg-deb -f "$work"/debs/golang-"$gover"-go_*.deb Version) (golang-$gover-go)"
    echo "etcd $("$dir/bin/etcd" --version | sed -n 's/^etcd Version: //p') ($etcd_src)"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "# all debs (Package Version):"
    for d in "$work"/debs/*.deb; do dpkg-deb -f "$d" Package Version | sed 's/^[^:]*: //' | paste -sd' '; done
  } > "$dir/versions.txt"
  mv "$dir/bin/apiextensions-apiserver.tmp" "$dir/bin/apiextensions-apiserver"
  if [[ ${KTA_KEEP_WORK:-0} != 1 ]]; then t0=$(now); rm -rf "$work"; log "  removed $work: $(since "$t0") s"; fi
  log "built $dir/bin/apiextensions-apiserver ($(du -h "$dir/bin/apiextensions-apiserver" | cut -f1)) in $(since "$tall") s total"
  head -n3 "$dir/versions.txt" >&2
}

# ---------------------------------------------------------------------------------------------------------------
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_ports() {   # print N distinct free loopback ports in 20000-59999
  local n=$1 got=() p tries=0
  while ((${#got[@]} < n)); do
    ((tries++ < 500)) || die "no free ports found"
    p=$((20000 + RANDOM % 40000))
    [[ " ${got[*]} " == *" $p "* ]] && continue
    port_in_use "$p" && continue
    got+=("$p")
  done
  echo "${got[@]}"
}
pid_ours() {    # pid is alive and its command line mentions RUNDIR (guards against PID reuse)
  local pid=$1 rundir=$2
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$rundir"
}
spawn() {       # spawn PIDFILE LOG CMD...: new session, and record the real PID (the exec'd process)
  local pidfile=$1 logf=$2; shift 2
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" >"$logf" 2>&1 </dev/null &
  local i; for i in $(seq 100); do [[ -s $pidfile ]] && break; sleep 0.02; done
  [[ -s $pidfile ]] || die "could not start $1"
}

cmd_start() {
  local dir rundir; rundir=$(absdir "${1:?usage: start RUNDIR [DIR]}"); dir=$(absdir "${2:-$(default_dir)}")
  local api=$dir/bin/apiextensions-apiserver etcd=$dir/bin/etcd
  [[ -x $api ]] || die "$api missing: run '$0 build $dir' first"
  [[ -x $etcd ]] || die "$etcd missing"
  if [[ -f $rundir/pids ]]; then
    local alive=0 name pid
    while read -r name pid; do pid_ours "$pid" "$rundir" && alive=1; done < "$rundir/pids"
    if ((alive)); then
      if [[ $(curl -s -o /dev/null -w '%{http_code}' --cacert "$rundir/pki/ca.crt" --cert "$rundir/pki/admin.crt" \
              --key "$rundir/pki/admin.key" "$(cat "$rundir/server")/healthz") == 200 ]]; then
        log "already running and healthy: $(cat "$rundir/server")  pids: $(paste -sd' ' "$rundir/pids")"
        echo "export KUBECONFIG=$rundir/kubeconfig"; return 0
      fi
      die "processes in $rundir/pids are alive but unhealthy; run '$0 stop $rundir' first"
    fi
    rm -f "$rundir/pids"
  fi
  local t0; t0=$(now)
  rm -rf "$rundir/pki" "$rundir/etcd-data" "$rundir"/*.pid "$rundir/kubeconfig"
  mkdir -p "$rundir/pki"
  # --- certificates (fresh each start) ---
  local P=$rundir/pki
  (
    cd "$P"; umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 7 -subj "/CN=kube-test-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 7 -extfile server.ext 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=kube-test-admin" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > client.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 7 -extfile client.ext 2>/dev/null
  ) || die "openssl failed"
  local tc; tc=$(since "$t0")
  # The delegated authn/authz options insist on a kubeconfig; point it at a closed loopback port.
  # Requests from users outside O=system:masters therefore get 500 (SubjectAccessReview unreachable).
  cat > "$rundir/delegate.kubeconfig" <<'EOF'
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: none, user: {}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
EOF
  local ports eport pport sport; ports=$(free_ports 3); read -r eport pport sport <<<"$ports"
  local b64="base64 -w0"
  cat > "$rundir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-test
  cluster:
    server: https://127.0.0.1:$sport
    certificate-authority-data: $($b64 < "$P/ca.crt")
users:
- name: kube-test-admin
  user:
    client-certificate-data: $($b64 < "$P/admin.crt")
    client-key-data: $($b64 < "$P/admin.key")
contexts:
- name: kube-test
  context: {cluster: kube-test, user: kube-test-admin, namespace: default}
current-context: kube-test
EOF
  chmod 600 "$rundir/kubeconfig"
  echo "https://127.0.0.1:$sport" > "$rundir/server"

  # --- etcd ---
  spawn "$rundir/etcd.pid" "$rundir/etcd.log" "$etcd" --name kube-test --data-dir "$rundir/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$eport" --advertise-client-urls "http://127.0.0.1:$eport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "kube-test=http://127.0.0.1:$pport" --unsafe-no-fsync
  echo "etcd $(cat "$rundir/etcd.pid")" > "$rundir/pids"
  local i
  for i in $(seq 300); do
    curl -sf "http://127.0.0.1:$eport/health" >/dev/null 2>&1 && break
    pid_ours "$(cat "$rundir/etcd.pid")" "$rundir" || { tail -20 "$rundir/etcd.log" >&2; cmd_stop "$rundir"; die "etcd exited"; }
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$eport/health" >/dev/null || { cmd_stop "$rundir"; die "etcd not healthy after 30 s"; }
  local te; te=$(since "$t0")

  # --- apiextensions-apiserver ---
  spawn "$rundir/apiserver.pid" "$rundir/apiserver.log" "$api" \
    --etcd-servers="http://127.0.0.1:$eport" --bind-address=127.0.0.1 --secure-port="$sport" \
    --tls-cert-file="$P/server.crt" --tls-private-key-file="$P/server.key" --client-ca-file="$P/ca.crt" \
    --authentication-skip-lookup --authentication-kubeconfig="$rundir/delegate.kubeconfig" \
    --authorization-kubeconfig="$rundir/delegate.kubeconfig" --kubeconfig="$rundir/delegate.kubeconfig" \
    --disable-admission-plugins="$APISERVER_FLAGS_ADMISSION" --enable-priority-and-fairness=false
  echo "apiserver $(cat "$rundir/apiserver.pid")" >> "$rundir/pids"
  local C=(--cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key") deadline code
  deadline=$(( $(date +%s) + ${KTA_STARTUP_TIMEOUT:-60} ))
  # /healthz, not /readyz: readyz stays 500 for ever (its core Services informer never syncs).
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${C[@]}" "https://127.0.0.1:$sport/healthz" || true)
    [[ $code == 200 ]] && break
    pid_ours "$(cat "$rundir/apiserver.pid")" "$rundir" || { tail -30 "$rundir/apiserver.log" >&2; cmd_stop "$rundir"; die "apiserver exited"; }
    (( $(date +%s) < deadline )) || { tail -30 "$rundir/apiserver.log" >&2; cmd_stop "$rundir"; die "no /healthz 200 in ${KTA_STARTUP_TIMEOUT:-60} s"; }
    sleep 0.05
  done
  log "up in $(since "$t0") s (certs $tc s, +etcd healthy $te s): $(cat "$rundir/server")  etcd=127.0.0.1:$eport  pids: $(paste -sd' ' "$rundir/pids")"
  echo "export KUBECONFIG=$rundir/kubeconfig"
}

cmd_stop() {
  local rundir; rundir=$(cd "${1:?usage: stop RUNDIR}" 2>/dev/null && pwd) || { log "no such RUNDIR: $1"; return 0; }
  [[ -f $rundir/pids ]] || { log "not running (no $rundir/pids)"; return 0; }
  local name pid live=() i
  # apiserver first, then etcd (reverse order of start)
  while read -r name pid; do
    if pid_ours "$pid" "$rundir"; then kill -TERM "$pid" 2>/dev/null && live+=("$pid"); else log "$name $pid already gone"; fi
  done < <(tac "$rundir/pids")
  for pid in ${live[@]+"${live[@]}"}; do
    for i in $(seq 100); do pid_ours "$pid" "$rundir" || break; sleep 0.1; done
    if pid_ours "$pid" "$rundir"; then log "pid $pid ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -f "$rundir/pids" "$rundir"/*.pid
  log "stopped${live[*]+: ${live[*]}}"
}

cmd_env() { local r; r=$(cd "${1:?usage: env RUNDIR}" && pwd); echo "export KUBECONFIG=$r/kubeconfig"; }

case "${1:-}" in
  path)  default_dir ;;
  build) shift; cmd_build "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop)  shift; cmd_stop "$@" ;;
  env)   shift; cmd_env "$@" ;;
  *) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; exit 2 ;;
esac
