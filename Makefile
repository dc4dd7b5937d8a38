# flintlog: the commands a newcomer needs (`make help` lists every target).

# A pipeline fails when any command in it fails (make crash filters test output).
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c

CARGO   ?= cargo
BIN     := target/release/flintlog
DEMO_DIR ?= target/demo-data

FUZZ_SECONDS ?= 60
# Lines the reliability tests print about what they covered.
COVERAGE := 'crash enumeration|failed syncs|short writes|crash during recovery|kill -9|syscall order|bad input|peak RSS|disk full|read-only directory|fuzz corpus|SKIPPED|test result'

# Flags for flintlog-load, e.g. make load LOAD_ARGS="--duration 60 --clients 8 --fsync batch=5"
LOAD_ARGS ?=

# Flags for flintlog-cluster, e.g. make cluster CLUSTER_ARGS="--nodes 5 --duration 120 --nemesis kill"
CLUSTER_ARGS ?=

# Flags for flintlog-bench, e.g. make bench BENCH_ARGS="--runs 5 --only ab"
BENCH_ARGS ?=
# Flags for flintlog-peers, e.g. make bench-peers PEERS_ARGS="--runs 5 --seconds 3"
PEERS_ARGS ?=

.PHONY: all help build test fmt lint demo load cluster cluster-tcp bench bench-cluster bench-peers crash soak fuzz mutants store store-stop clean

all: build

# Each target's line here is what `make help` prints.
help:
	@echo "make load           build, then load-test the node: 64 clients on a 1M-key state, snapshots and"
	@echo "                    compactions during the run; throughput, latency percentiles, target/load/"
	@echo "make test           fmt, clippy and rustdoc -D warnings, every unit, integration, doc test (CI)"
	@echo "make demo           a conversation with the node, a kill -9 in the middle of writes, the recovery"
	@echo "make store          start a local S3 store (SeaweedFS) with a bucket; prints the lines to use it"
	@echo "make store-stop     stop it"
	@echo "make cluster        a 3-node group for 60 s under partitions, kill -9, pauses and loss, checked"
	@echo "                    for linearizability, lost appends and replica agreement; target/cluster/"
	@echo "make crash          the reliability layers, each printing what it covered (RELIABILITY.md)"
	@echo "make soak           the same, longer: 2000 kill -9 iterations, 4 seeds per crash mode"
	@echo "make mutants        plant each bug of mutants/*.patch in a scratch copy; its tests must fail (~25 min)"
	@echo "make bench          the node against side-by-side baselines; writes BENCHMARKS.md"
	@echo "make bench-peers    the same appends against okaywal, raft-engine, SQLite; BENCHMARKS.md"
	@echo "make cluster-tcp    the same over TCP: three flintlog serve members, a proxy per link cut for"
	@echo "                    partitions, kill -9 and pauses; target/cluster-tcp/"
	@echo "make bench-cluster  a 3-node group against one node, commit latency, failover; BENCHMARKS.md"
	@echo "make fuzz           the fuzz targets (needs a nightly toolchain and cargo-fuzz)"
	@echo "make build          the release binaries in target/release/"
	@echo "make lint           rustfmt --check and clippy -D warnings"
	@echo "make fmt            format the code"
	@echo "make clean          remove target/"

build:
	$(CARGO) build --release

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --quiet

# The crash enumeration and the kill -9 test keep both cores busy for minutes: they run
# after the rest, so that the group tests, whose nodes keep timers, never share the
# machine with them.
test: lint
	$(CARGO) test -- --skip crash:: --skip kill::
	@echo "== the crash enumeration and kill -9 tests, on their own"
	$(CARGO) test --test it -- crash:: kill::

load: build
	target/release/flintlog-load $(LOAD_ARGS)

cluster: build
	target/release/flintlog-cluster --replace --store --snapshot-entries 100 --trailing-entries 20 $(CLUSTER_ARGS)

cluster-tcp: build
	target/release/flintlog-cluster --transport tcp --store --snapshot-entries 100 --trailing-entries 20 --out target/cluster-tcp $(CLUSTER_ARGS)

bench-cluster: build
	target/release/flintlog-cluster --bench --out target/bench-cluster --markdown BENCHMARKS.md $(CLUSTER_ARGS)

bench: build
	target/release/flintlog-bench --markdown BENCHMARKS.md $(BENCH_ARGS)

# The peers are a separate workspace member: only this target compiles them.
bench-peers:
	$(CARGO) build --release -p flintlog-peers
	target/release/flintlog-peers --markdown BENCHMARKS.md $(PEERS_ARGS)

demo: build
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@echo "== 1. a conversation (testdata/demo.jsonl) on --data-dir $(DEMO_DIR): each request (->) and its reply (<-)"
	@$(BIN) --data-dir $(DEMO_DIR) < testdata/demo.jsonl > $(DEMO_DIR)/out-1.jsonl 2>$(DEMO_DIR)/stderr-1.log
	@python3 scripts/pair.py testdata/demo.jsonl $(DEMO_DIR)/out-1.jsonl
	@echo "== 2. the node stopped (end of input) and started again on the same directory (testdata/demo_restart.jsonl)"
	@$(BIN) --data-dir $(DEMO_DIR) < testdata/demo_restart.jsonl > $(DEMO_DIR)/out-2.jsonl 2>$(DEMO_DIR)/stderr-2.log
	@python3 scripts/pair.py testdata/demo_restart.jsonl $(DEMO_DIR)/out-2.jsonl
	@echo "== 3. a crash: kill -9 in the middle of writes, then recovery ($(DEMO_DIR)/crash)"
	@mkdir -p $(DEMO_DIR)/crash
	@python3 scripts/demo_crash.py $(BIN) $(DEMO_DIR)/crash
	@echo
	@echo "Throughput and latency under load, measured properly: make load (see README.md)."

crash:
	$(CARGO) test --test it -- crash:: kill:: strace:: disk:: input:: fuzz_corpus:: --nocapture 2>&1 | grep -E $(COVERAGE)

soak:
	KILL9_ITERATIONS=2000 KILL9_SECONDS=3600 SEEDS=4 \
	  $(CARGO) test --test it -- crash:: kill:: --nocapture 2>&1 | grep -E $(COVERAGE)

fuzz:
	@if ! $(CARGO) +nightly --version >/dev/null 2>&1 || ! $(CARGO) +nightly fuzz --help >/dev/null 2>&1; then \
	  echo "make fuzz needs a nightly toolchain and cargo-fuzz: rustup toolchain install nightly && cargo install cargo-fuzz"; \
	  exit 1; fi
	cd fuzz && for t in wire_line record snapshot; do \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; done
	@echo "new corpus inputs are in fuzz/corpus/; the stable test replays them"

# MUTANT=name runs one. Regenerate the patches after moving code: python3 mutants/make_patches.py
mutants:
	bash mutants/run.sh

store:
	@bash scripts/store.sh

store-stop:
	@bash scripts/store.sh stop

clean:
	$(CARGO) clean
