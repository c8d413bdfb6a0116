# kcache tasks. `make test` is what CI runs; `make demo` is the one-command demo.
CARGO ?= cargo

.PHONY: deps kube-apiserver build release packages test test-hook-static test-containerd-matrix test-unit lint demo demo-verify bench triton-caches

DIST ?= $(or $(CARGO_TARGET_DIR),target)/dist

deps:
	bash scripts/deps.sh

# The real Kubernetes API server (apiextensions-apiserver 1.36 + etcd) kcache-controller's tests
# run against; built once into ~/.cache/kcache-test/kube-apiserver-1.36 (4-7 min), then reused.
kube-apiserver:
	bash scripts/kube-apiserver.sh build

build:
	$(CARGO) build --workspace --locked

release:
	bash scripts/build-release.sh $(DIST)

# kcache_<version>_amd64.deb and kcache-<version>-1.x86_64.rpm into $(CARGO_TARGET_DIR)/packages
# (ARCH=aarch64 names the other target; it needs a cross toolchain).
ARCH ?= x86_64
packages: deps
	bash scripts/build-packages.sh --arch $(ARCH)

test: deps triton-caches kube-apiserver
	$(CARGO) test --workspace --locked
	$(MAKE) test-hook-static
	$(MAKE) test-containerd-matrix

# Real Triton caches (PyPI wheel, no GPU), cached under ~/.cache/kcache-test/triton-<version>:
# the version the tests' containers run, and another one (a cache that must miss).
triton-caches:
	bash scripts/triton-caches.sh 3.9.0 >/dev/null
	bash scripts/triton-caches.sh 3.8.0 >/dev/null

# The runc suite again, against the hook as it ships (release, statically linked).
test-hook-static:
	bash scripts/build-release.sh --hook-only $(DIST)
	KCACHE_HOOK_BIN=$(abspath $(DIST))/kcache-hook $(CARGO) test --locked -p kcache-hook --test runc

# The version-sensitive containerd suites again on Debian's containerd 1.7 (trixie) and 2.1 (sid),
# fetched into the test cache by scripts/debian-peer.sh (the workspace run above covers 1.6 in full;
# cri_nri, the NRI route for kcache-hook, needs 1.7+ and runs only here).
CONTAINERD_MATRIX ?= 1.7 2.1
CONTAINERD_SUITES ?= --test cri_e2e --test snapshotter_containerd --test install_containerd --test cri_nri
test-containerd-matrix:
	@for v in $(CONTAINERD_MATRIX); do \
	  bash scripts/debian-peer.sh containerd-$$v >/dev/null || exit 1; \
	  echo "== containerd $$v"; \
	  KCACHE_CONTAINERD=$$v $(CARGO) test --locked -p kcache-plugin $(CONTAINERD_SUITES) || exit 1; \
	done

test-unit:
	$(CARGO) test --workspace --locked --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The main job on one machine: containerd + kcached + kcache-hook, signed and unsigned pods, a
# signed kernel cache mounted into a pod (tests/examples/demo.rs).
demo: deps
	$(CARGO) build --locked -p kcache-plugin -p kcache-hook --bins
	$(CARGO) run --locked -q -p kcache-tests --example demo -- --bin-dir $(or $(CARGO_TARGET_DIR),target)/debug

# The verify-only demo: a loopback registry, kcache sign and kcache verify.
demo-verify: deps
	bash scripts/demo.sh

bench: deps
	bench/run
