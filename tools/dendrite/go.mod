// Wrapper module that builds Dendrite, the Matrix homeserver quilt's Matrix
// tests and demo run (no Debian package exists). Not part of the quilt
// module. Build with `make dendrite` (see mk/tools.mk). Dendrite's own
// replace directives are not applied to a dependency; v0.13.8 builds without them.
module github.com/quilt/quilt/tools/dendrite

go 1.24

require github.com/matrix-org/dendrite v0.13.8

tool (
	github.com/matrix-org/dendrite/cmd/create-account
	github.com/matrix-org/dendrite/cmd/dendrite
	github.com/matrix-org/dendrite/cmd/generate-keys
)
