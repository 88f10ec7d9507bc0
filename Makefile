# Flotilla: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test lint bench build certs

## Build, make dev certificates, start a local 3-node cluster, show its status and a few
## writes and reads; Ctrl-C stops it. `flotilla demo` is the in-process simulation instead.
run:
	$(CARGO) run --release --bin flotilla -- dev --nodes 3 --dir data/dev

## The whole test suite (unit, simulation scenarios, 200 randomized seeds), plus lints.
test: lint
	$(CARGO) test --all-targets
	$(CARGO) test --doc

## Formatting and clippy, warnings as errors.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

## Criterion micro-benchmarks (throughput and fsyncs per 1,000 writes).
bench:
	$(CARGO) bench --bench driver --bench restart

build:
	$(CARGO) build --release

## Development certificates in certs/ (a CA, node, admin and client certificates).
certs:
	$(CARGO) run --release --bin flotilla -- certs create --dir certs --hosts 127.0.0.1,localhost
