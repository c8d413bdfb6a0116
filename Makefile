# kcache tasks. `make test` is what CI runs; `make demo` is the one-command demo.
CARGO ?= cargo

.PHONY: deps build release test test-hook-static test-containerd-matrix test-unit lint demo bench

DIST ?= $(or $(CARGO_TARGET_DIR),target)/dist

deps:
	bash scripts/deps.sh

build:
	$(CARGO) build --workspace --locked

release:
	bash scripts/build-release.sh $(DIST)

test: deps
	$(CARGO) test --workspace --locked
	$(MAKE) test-hook-static
	$(MAKE) test-containerd-matrix

# The runc suite again, against the hook as it ships (release, statically linked).
test-hook-static:
	bash scripts/build-release.sh --hook-only $(DIST)
	KCACHE_HOOK_BIN=$(abspath $(DIST))/kcache-hook $(CARGO) test --locked -p kcache-hook --test runc

# The version-sensitive containerd suites again on Debian's containerd 1.7 (trixie) and 2.1 (sid),
# fetched into the test cache by scripts/debian-peer.sh (the workspace run above covers 1.6 in full).
CONTAINERD_MATRIX ?= 1.7 2.1
CONTAINERD_SUITES ?= --test cri_e2e --test snapshotter_containerd --test install_containerd
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

demo: deps
	bash scripts/demo.sh

bench: deps
	bench/run
