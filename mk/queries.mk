# Query benchmarks (issue 8). Included from the Makefile.
# bench-queries prints p50/p99 of queries through the Query RPC (gRPC on
# 127.0.0.1, query layer, SQLite store) over QUERY_BENCH_EVENTS stored events:
# events by channel+time and by user (pages of 100), lastseen, and live
# presence across 5 attached source managers. The store is built once and
# cached under $(CACHE)/bench-queries, so reruns start at once.
QUERY_BENCH_EVENTS ?= 1000000

.PHONY: bench-queries
bench-queries: ## query benchmarks: events/lastseen p50/p99 over 1M events, live presence across 5 sources
	@mkdir -p $(CACHE)/bench-queries
	QUILT_BENCH_QUERIES=1 QUILT_BENCH_EVENTS=$(QUERY_BENCH_EVENTS) QUILT_BENCH_DIR=$(abspath $(CACHE))/bench-queries \
	  $(GO) test -tags '$(BUILD_TAGS)' -count=1 -timeout 30m -run '^TestQueryLatency$$' -v ./querymaster/query \
	  | grep -E '^bench-queries:|stored|FAIL|ok'
