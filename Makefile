# flintlog: the commands a newcomer needs.
#   make load   build, then load-test the node binary (~30 s plus a 1M-key pre-fill)
#   make test   formatting, lints, every test (what CI runs)
#   make demo   build the release binary, run a conversation, restart, show recovery
#   make crash  the reliability layers, each printing what it covered (see RELIABILITY.md)
#   make soak   the same, longer: 2000 kill -9 iterations, 4 seeds per crash mode
#   make fuzz   the fuzz targets (needs a nightly toolchain and cargo-fuzz)
#   make bench  the benchmarks, as ratios measured side by side; writes BENCHMARKS.md
#   make bench-peers  the same appends against okaywal, raft-engine, SQLite; BENCHMARKS.md
#   make mutants  plant each bug in mutants/*.patch in a scratch copy; its tests must fail (~25 min)
#   make bench-cluster  a 3-node group against one node side by side, commit latency, failover
#                 over 20 leader kills; writes the group part of BENCHMARKS.md (~3 min)
#   make cluster  a 3-node Raft group for 60 s under partitions, kill -9, pauses and 10% loss,
#                 one node wiped and replaced by a new member that starts from the
#                 snapshot store (a directory every node copies its snapshots to),
#                 checked for linearizability, lost appends and replica agreement

# A pipeline fails when any command in it fails (make crash filters test output).
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c

CARGO   ?= cargo
BIN     := target/release/flintlog
DEMO_DIR ?= target/demo-data
APPENDS ?= 20000

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

.PHONY: all build test fmt lint demo load cluster bench bench-cluster bench-peers crash soak fuzz mutants clean

all: build

build:
	$(CARGO) build --release

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: lint
	$(CARGO) test

load: build
	target/release/flintlog-load $(LOAD_ARGS)

cluster: build
	target/release/flintlog-cluster --replace --store --snapshot-entries 100 --trailing-entries 20 $(CLUSTER_ARGS)

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
	@echo "== 2. the node restarted on the same directory (testdata/demo_restart.jsonl)"
	@$(BIN) --data-dir $(DEMO_DIR) < testdata/demo_restart.jsonl > $(DEMO_DIR)/out-2.jsonl 2>$(DEMO_DIR)/stderr-2.log
	@python3 scripts/pair.py testdata/demo_restart.jsonl $(DEMO_DIR)/out-2.jsonl
	@echo
	@echo "== recovery, as logged on stderr:"
	@grep -h "recovered\|loaded snapshot" $(DEMO_DIR)/stderr-2.log
	@echo
	@echo "== 3. $(APPENDS) appends pipelined by one client (fsync always, group commit)"
	@rm -rf $(DEMO_DIR)/burst
	@awk 'BEGIN { print "{\"src\": \"c0\", \"dest\": \"n1\", \"body\": {\"type\": \"init\", \"msg_id\": 1, \"node_id\": \"n1\", \"node_ids\": [\"n1\"]}}"; \
	      for (i = 0; i < $(APPENDS); i++) printf "{\"src\": \"c1\", \"dest\": \"n1\", \"body\": {\"type\": \"wal_append\", \"msg_id\": %d, \"payload\": \"set key%d=value%d\"}}\n", i + 2, i % 1000, i; \
	      print "{\"src\": \"c1\", \"dest\": \"n1\", \"body\": {\"type\": \"wal_status\", \"msg_id\": 0}}" }' > $(DEMO_DIR)/burst.jsonl
	@start=$$(date +%s%N); \
	 $(BIN) --data-dir $(DEMO_DIR)/burst < $(DEMO_DIR)/burst.jsonl > $(DEMO_DIR)/burst.out 2>/dev/null; \
	 end=$$(date +%s%N); ms=$$(( (end - start) / 1000000 )); \
	 acks=$$(grep -c wal_append_ok $(DEMO_DIR)/burst.out); \
	 commits=$$(tail -n 1 $(DEMO_DIR)/burst.out | grep -o '"group_commits": [0-9]*' | grep -o '[0-9]*$$'); \
	 echo "$$acks appends acknowledged in $$ms ms (process start to exit): $$(( acks * 1000 / (ms > 0 ? ms : 1) )) appends/s, $$commits group commits ($$(( acks / (commits > 0 ? commits : 1) )) entries per fdatasync)"

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

clean:
	$(CARGO) clean
