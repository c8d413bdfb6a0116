# kcache tasks. `make test` is what CI runs; `make demo` is the one-command demo.
CARGO ?= cargo

.PHONY: deps kube-apiserver build release test test-hook-static test-unit lint demo bench

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

test: deps kube-apiserver
	$(CARGO) test --workspace --locked
	$(MAKE) test-hook-static

# The runc suite again, against the hook as it ships (release, statically linked).
test-hook-static:
	bash scripts/build-release.sh --hook-only $(DIST)
	KCACHE_HOOK_BIN=$(abspath $(DIST))/kcache-hook $(CARGO) test --locked -p kcache-hook --test runc

test-unit:
	$(CARGO) test --workspace --locked --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

demo: deps
	bash scripts/demo.sh

bench: deps
	bench/run
