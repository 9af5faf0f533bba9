# Source-manager runtime benchmarks (sourcemanagers/runtime/bench_test.go).
# BenchmarkPipeline: events/s session → runtime → link → a counting fake query
# master over bufconn (target ≥ 300k on 2 cores). BenchmarkMemoryPerUser: heap
# bytes per tracked user, 100k users in 10k channels (target ≤ 1 KiB).
.PHONY: bench-runtime
bench-runtime: ## runtime benchmarks: pipeline events/s and bytes per tracked user
	$(GO) test -run '^$$' -bench 'Pipeline' -benchtime 1000000x -count 3 -cpu 2 ./sourcemanagers/runtime
	$(GO) test -run '^$$' -bench 'MemoryPerUser' -benchtime 1x -cpu 2 ./sourcemanagers/runtime
