# Query benchmarks (issue 8). Included from the Makefile.
# bench-queries prints p50/p99 of queries through the Query RPC (gRPC on
# 127.0.0.1, query layer, SQLite store) over QUERY_BENCH_EVENTS stored events:
# events by channel+time and by user (pages of 100), lastseen, and live
# presence across 5 attached source managers, idle and while they stream
# 5k events/s into a store of their own. The store is built once and
# cached under $(CACHE)/bench-queries, so reruns start at once.
# In the environment, QUILT_BENCH_CASES=REGEXP runs some cases only and
# QUILT_BENCH_ITERS=N sets the timed queries per case (default 300; more
# give a steadier p99).
QUERY_BENCH_EVENTS ?= 1000000

.PHONY: bench-queries
bench-queries: ## query benchmarks: events/lastseen p50/p99 over 1M events, live presence across 5 sources (idle, ingesting)
	@mkdir -p $(CACHE)/bench-queries
	QUILT_BENCH_QUERIES=1 QUILT_BENCH_EVENTS=$(QUERY_BENCH_EVENTS) QUILT_BENCH_DIR=$(abspath $(CACHE))/bench-queries \
	  $(GO) test -tags '$(BUILD_TAGS)' -count=1 -timeout 30m -run '^TestQueryLatency$$' -v ./querymaster/query \
	  | grep -E '^bench-queries:|stored|FAIL|ok'

# bench-relay runs the relay example on a real ngircd (MaxPenaltyTime 0, the
# relay's IRC throttle 0) through IRC driver, source manager, query master
# and client library, the relay pipelining its sends on one ActStream
# (window 256): a 5000-message blast (whole, in order, no duplicates;
# msgs/s) and p50/p99 latency from the sender's write to the receiver's read
# at 50 msgs/s. Needs ngircd (make ngircd or Debian's package). Other
# processes on the machine skew the figures: check the load average.
.PHONY: bench-relay
bench-relay: ## relay benchmark on a real ngircd: blast msgs/s, p50/p99 latency at 50 msgs/s
	QUILT_BENCH_RELAY=1 $(GO) test -tags '$(BUILD_TAGS)' -count=1 -timeout 10m -run '^TestRelayBench$$' -v ./clients/examples/relay \
	  | grep -E '^bench-relay:|FAIL|ok|SKIP'
