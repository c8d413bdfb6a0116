# kcache tasks. `make test` is what CI runs; `make demo` is the one-command demo.
CARGO ?= cargo

.PHONY: deps build test test-unit lint demo bench

deps:
	bash scripts/deps.sh

build:
	$(CARGO) build --workspace --locked

test: deps
	$(CARGO) test --workspace --locked

test-unit:
	$(CARGO) test --workspace --locked --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

demo: deps
	bash scripts/demo.sh

bench: deps
	bench/run
