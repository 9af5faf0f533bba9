# External tools that quilt's tests and demo run: built from pinned wrapper
# modules under tools/ (never part of quilt's go.mod) into .cache/bin, one file
# name per version so a version bump never runs a stale binary.
# Included by the top-level Makefile.
#
#   make tools      consul + ferretdb (what `go test ./...` needs besides apt packages)
#   make consul     Consul agent            ~7.5 min cold, ~2.2 GB peak memory
#   make ferretdb   FerretDB (SQLite) test server, ~2.5 min cold
#   make dendrite   Dendrite Matrix homeserver, ~6.5 min cold (not needed by CI yet)
#
# The Makefile exports QUILT_CONSUL_BIN and QUILT_FERRETDB_BIN, which is how
# quiltcore/testenv and scripts/testservers.sh find the binaries.

TOOLS_BIN_DIR ?= $(CURDIR)/.cache/bin

CONSUL_VERSION ?= 1.16.3
FERRETDB_VERSION ?= 1.24.0
DENDRITE_VERSION ?= v0.13.8

CONSUL_BIN ?= $(TOOLS_BIN_DIR)/consul-$(CONSUL_VERSION)
FERRETDB_BIN ?= $(TOOLS_BIN_DIR)/ferretdb-$(FERRETDB_VERSION)
DENDRITE_BIN_DIR ?= $(TOOLS_BIN_DIR)/dendrite-$(DENDRITE_VERSION)

export QUILT_CONSUL_BIN := $(CONSUL_BIN)
export QUILT_FERRETDB_BIN := $(FERRETDB_BIN)
export QUILT_DENDRITE_BIN_DIR := $(DENDRITE_BIN_DIR)

# Consul's checksum-database entries are missing for these modules (404); go.sum still pins them.
CONSUL_GONOSUMDB := github.com/hashicorp/consul,github.com/hashicorp/consul-awsauth,github.com/hashicorp/hcp-sdk-go

.PHONY: tools consul ferretdb dendrite

tools: consul ferretdb ## build the external tools tests need into .cache/bin

consul: $(CONSUL_BIN) ## build the Consul agent (only if the cached binary is missing)
ferretdb: $(FERRETDB_BIN) ## build the FerretDB test server
dendrite: $(DENDRITE_BIN_DIR)/dendrite ## build Dendrite (Matrix) into .cache/bin/dendrite-VERSION/

# A version variable that disagrees with the wrapper's go.mod would cache a
# binary under the wrong name: refuse instead.
define check_pin
	@grep -qE '^[[:space:]]*(require[[:space:]]+)?$(1) $(2)([[:space:]]|$$)' $(3) || \
	  { echo "$(3) does not require $(1) $(2): update the wrapper with the version variable" >&2; exit 1; }
endef

# No prerequisites: the build takes minutes, and a fresh checkout's mtimes
# must not trigger it when the binary is cached. Delete the file to rebuild.
$(CONSUL_BIN):
	$(call check_pin,github.com/hashicorp/consul,v$(CONSUL_VERSION),tools/consul/go.mod)
	GONOSUMDB=$(CONSUL_GONOSUMDB) scripts/build-tool.sh tools/consul $@ github.com/hashicorp/consul

$(FERRETDB_BIN): tools/ferretdb/main.go tools/ferretdb/go.mod
	$(call check_pin,github.com/FerretDB/FerretDB,v$(FERRETDB_VERSION),tools/ferretdb/go.mod)
	scripts/build-tool.sh tools/ferretdb $@ github.com/quilt/quilt/tools/ferretdb

$(DENDRITE_BIN_DIR)/dendrite:
	$(call check_pin,github.com/matrix-org/dendrite,$(DENDRITE_VERSION),tools/dendrite/go.mod)
	scripts/build-tool.sh tools/dendrite $(DENDRITE_BIN_DIR) \
	  github.com/matrix-org/dendrite/cmd/dendrite \
	  github.com/matrix-org/dendrite/cmd/generate-keys \
	  github.com/matrix-org/dendrite/cmd/create-account
