# quilt build. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
export GOTOOLCHAIN ?= local
export GOFLAGS ?= -mod=mod

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/quilt/quilt/quiltcore/version.Version=$(VERSION)
BUILD_TAGS := sqlite_fts5
BIN := bin
CACHE := $(CURDIR)/.cache
TOOLBIN := $(CACHE)/bin

PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.1
PROTOC_GEN_GO := $(TOOLBIN)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)
PROTOC_GEN_GO_GRPC := $(TOOLBIN)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
PROTO_FILES := $(wildcard proto/quilt/v1/*.proto)

BINARIES := $(BIN)/quilt-qmd $(BIN)/quilt-smd $(BIN)/quiltctl

.PHONY: help build demo stop test test-go deps vet fmt-check proto proto-check bench clean

# Fragments per area (tools, benchmarks); each defines its own targets.
-include mk/*.mk
help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build quilt-qmd, quilt-smd and quiltctl into bin/
	@mkdir -p $(BIN)
	$(GO) build -tags '$(BUILD_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/ ./querymaster/cmd/quilt-qmd ./sourcemanagers/cmd/quilt-smd ./clients/cmd/quiltctl

deps: ## install the Debian packages tests and the demo need (apt-get, only when missing)
	@scripts/ensure-deps.sh

# The README's test command. Installs what it needs (Debian packages, Consul and
# FerretDB built from the Go module proxy, cached under .cache/), checks the
# generated code and formatting, vets, then runs every test with the race
# detector. Tests needing a real server skip when it is missing, except under
# CI=true, where they fail.
test: deps tools dendrite proto-check fmt-check vet test-go ## everything CI runs

# Under CI every real-server test must run: the Matrix tests fail instead of
# skipping when Dendrite is missing.
QUILT_REQUIRE_DENDRITE ?= $(if $(filter true,$(CI)),1,)
export QUILT_REQUIRE_DENDRITE

test-go: ## go test -race on every package (no installs)
	QUILT_CONSUL_BIN=$(CONSUL_BIN) QUILT_FERRETDB_BIN=$(FERRETDB_BIN) QUILT_DENDRITE_BIN_DIR=$(DENDRITE_BIN_DIR) \
	  $(GO) test -race -count=1 -timeout 30m -tags '$(BUILD_TAGS)' ./...

bench: ## run every benchmark group (bench-store, bench-runtime, bench-qm, ...)
	@$(MAKE) --no-print-directory $(filter bench-%,$(shell grep -ho '^bench-[a-z0-9-]*:' mk/*.mk 2>/dev/null | tr -d :))

demo: ## build and run quilt on embedded defaults with a local IRC server; show queries
	@scripts/demo.sh start

stop: ## stop the demo cluster (daemons and the IRC server)
	@scripts/demo.sh stop

vet: ## go vet every package
	$(GO) vet -tags '$(BUILD_TAGS)' ./...

fmt-check: ## fail if gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

$(PROTOC_GEN_GO):
	@mkdir -p $(TOOLBIN)
	GOBIN=$(TOOLBIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	mv $(TOOLBIN)/protoc-gen-go $@

$(PROTOC_GEN_GO_GRPC):
	@mkdir -p $(TOOLBIN)
	GOBIN=$(TOOLBIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	mv $(TOOLBIN)/protoc-gen-go-grpc $@

protoc-check:
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler" >&2; exit 1; }

proto: protoc-check $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) ## regenerate proto/quilt/v1/*.pb.go
	protoc -I proto \
	  --plugin=protoc-gen-go=$(PROTOC_GEN_GO) --plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) \
	  --go_out=proto --go_opt=paths=source_relative \
	  --go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	  $(PROTO_FILES)

proto-check: ## fail if the committed generated code is stale
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	protoc -I proto \
	  --plugin=protoc-gen-go=$(PROTOC_GEN_GO) --plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) \
	  --go_out=$$tmp --go_opt=paths=source_relative \
	  --go-grpc_out=$$tmp --go-grpc_opt=paths=source_relative \
	  $(PROTO_FILES) && \
	if diff -r $$tmp/quilt/v1 proto/quilt/v1 -x '*.proto' >/dev/null; then echo "proto: generated code is current"; \
	else diff -r $$tmp/quilt/v1 proto/quilt/v1 -x '*.proto' | head -20; echo "proto: generated code is stale; run make proto" >&2; exit 1; fi
proto-check: protoc-check $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)

clean: ## remove bin/
	rm -rf $(BIN)
