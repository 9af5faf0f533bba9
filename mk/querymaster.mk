# Query master benchmarks: the query master alone (fake source manager,
# discarding store), the whole pipeline (test driver session → runtime →
# link → query master → store) with a discarding store and with the embedded
# SQLite store, and Act round trips (one server's queue, and four).
# -cpu 2: the targets (>= 300k events/s discarding, >= 30k stored) are
# for 2 cores.
.PHONY: bench-qm
bench-qm: ## query master benchmarks: ingest, end-to-end pipeline (discard, sqlite), Act round trips
	$(GO) test -tags '$(BUILD_TAGS)' -run '^$$' -bench 'Ingest' -benchtime 2s -cpu 2 ./querymaster/
	$(GO) test -tags '$(BUILD_TAGS)' -run '^$$' -bench 'Pipeline|ActRoundTrip' -benchtime 2s -cpu 2 -timeout 10m ./tests/integration/
