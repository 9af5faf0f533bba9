# Store benchmarks (issue 5). Included from the Makefile.
# bench-store prints stored events/s (batches of 100 and 1000), the raw
# batched-INSERT baseline and the ratio, the de-dup cost, and history page
# p50/p99 over 1M events for the embedded store; then the MongoDB store's
# insert figures (FerretDB unless QUILT_TEST_MONGODB_URI is set).
STORE_BENCHTIME ?= 2s
STORE_BENCH_OUT := $(CACHE)/bench-store.txt

.PHONY: bench-store
bench-store: ## store benchmarks: events/s, raw-insert ratio, de-dup cost, history p50/p99 (1M events)
	@mkdir -p $(CACHE)
	$(GO) test -tags '$(BUILD_TAGS)' -run '^$$' -bench 'Insert|RawInsert|Duplicates|HistoryPage' \
	  -benchtime $(STORE_BENCHTIME) -timeout 30m ./quiltcore/store/sqlitestore | tee $(STORE_BENCH_OUT)
	@awk '/^BenchmarkInsert\/batch=/ { split($$1,a,"-"); for (i=1;i<=NF;i++) if ($$(i+1)=="events/s") s[a[1]]=$$i } \
	     /^BenchmarkRawInsert\/batch=/ { split($$1,a,"-"); sub("RawInsert","Insert",a[1]); for (i=1;i<=NF;i++) if ($$(i+1)=="events/s") r[a[1]]=$$i } \
	     END { for (k in s) if (r[k] > 0) printf "%s: store %.0f events/s = %.0f%% of raw batched INSERT (%.0f events/s)\n", k, s[k], 100*s[k]/r[k], r[k] }' $(STORE_BENCH_OUT)
	$(GO) test -tags '$(BUILD_TAGS)' -run '^$$' -bench . -benchtime 20x -timeout 30m ./quiltcore/store/mongostore
