# kcache tasks. `make test` is what CI runs; `make demo` is the one-command demo.
CARGO ?= cargo

.PHONY: deps build release packages test test-hook-static test-unit lint demo demo-verify bench triton-caches

DIST ?= $(or $(CARGO_TARGET_DIR),target)/dist

deps:
	bash scripts/deps.sh

build:
	$(CARGO) build --workspace --locked

release:
	bash scripts/build-release.sh $(DIST)

# kcache_<version>_amd64.deb and kcache-<version>-1.x86_64.rpm into $(CARGO_TARGET_DIR)/packages
# (ARCH=aarch64 names the other target; it needs a cross toolchain).
ARCH ?= x86_64
packages: deps
	bash scripts/build-packages.sh --arch $(ARCH)

test: deps triton-caches
	$(CARGO) test --workspace --locked
	$(MAKE) test-hook-static

# Real Triton caches (PyPI wheel, no GPU), cached under ~/.cache/kcache-test/triton-<version>:
# the version the tests' containers run, and another one (a cache that must miss).
triton-caches:
	bash scripts/triton-caches.sh 3.9.0 >/dev/null
	bash scripts/triton-caches.sh 3.8.0 >/dev/null

# The runc suite again, against the hook as it ships (release, statically linked).
test-hook-static:
	bash scripts/build-release.sh --hook-only $(DIST)
	KCACHE_HOOK_BIN=$(abspath $(DIST))/kcache-hook $(CARGO) test --locked -p kcache-hook --test runc

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
