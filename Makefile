# Flotilla: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo

.PHONY: run test lint nemesis bench bench-compare build certs

## Build, make dev certificates, start a local 3-node cluster, show its status and a few
## writes and reads; Ctrl-C stops it. `flotilla demo` is the in-process simulation instead.
run:
	$(CARGO) run --release --bin flotilla -- dev --nodes 3 --dir data/dev

## The whole test suite (unit, simulation scenarios, 200 randomized seeds, a 30 s
## fault run against node processes: with partitions as root, else without), plus lints.
test: lint
	$(CARGO) test --all-targets
	$(CARGO) test --doc

## The fault test alone, long, with its table: `make nemesis SECONDS=300 SEED=N`
## (SEED empty: drawn and printed; a seed replays its schedule). Partitions need root.
SECONDS ?= 300
SEED ?=
nemesis:
	FLOTILLA_NEMESIS_SECONDS=$(SECONDS) FLOTILLA_NEMESIS_SEED=$(SEED) $(CARGO) test --test nemesis -- --nocapture

## Formatting and clippy, warnings as errors; the library alone, without the
## tooling (`--no-default-features`: what an application embedding the client builds).
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --lib --no-default-features -- -D warnings

## Criterion micro-benchmarks: frames, storage group commit, idle groups, the
## in-process driver cluster, restart replay.
bench:
	$(CARGO) bench --bench frame --bench storage --bench idle --bench driver --bench restart

## Flotilla and etcd side by side (installs etcd-server and protoc with apt if
## missing). Results in data/bench/*.json and *.svg.
bench-compare:
	command -v etcd >/dev/null || sudo -n apt-get install -y etcd-server || apt-get install -y etcd-server
	command -v protoc >/dev/null || sudo -n apt-get install -y protobuf-compiler || apt-get install -y protobuf-compiler
	$(CARGO) build --release --features etcd
	mkdir -p data/bench
	./target/release/flotilla bench write --spawn 3 --compare etcd --duration 20s --turns 4 --json data/bench/write.json --plot data/bench/write.svg
	./target/release/flotilla bench read --spawn 3 --compare etcd --duration 20s --turns 4 --json data/bench/read.json --plot data/bench/read.svg
	./target/release/flotilla bench write --spawn 3 --compare etcd --duration 20s --turns 4 --clients 1 --json data/bench/write-1.json
	./target/release/flotilla bench mixed --spawn 3 --compare etcd --duration 20s --turns 4 --json data/bench/mixed.json
	for w in a b c f; do ./target/release/flotilla bench ycsb-$$w --spawn 3 --compare etcd --duration 20s --turns 4 --json data/bench/ycsb-$$w.json || exit 1; done

build:
	$(CARGO) build --release

## Development certificates in certs/ (a CA, a key each for nodes 1 to 3, admin and client).
certs:
	$(CARGO) run --release --bin flotilla -- certs create --dir certs --hosts 127.0.0.1,localhost --nodes 3
