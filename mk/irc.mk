# IRC driver benchmarks. Included by the top-level Makefile.
.PHONY: bench-irc
bench-irc: ## IRC benchmarks: inbound lines/s on one core; real ngircd -> store msgs/s
	$(GO) test -tags '$(BUILD_TAGS)' -run '^$$' -bench 'Inbound' -benchtime 3s -cpu 1 ./sourcemanagers/irc/
	$(GO) test -tags '$(BUILD_TAGS)' -run '^$$' -bench 'NGIRCdToStore' -benchtime 20000x ./sourcemanagers/irc/
