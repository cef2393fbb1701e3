#!/usr/bin/env bash
# Builds helmfile (the version pinned in testbed/helmfile/go.mod, v1.8.0) for the end-to-end
# tests, into "$GU_HELMFILE_CACHE" (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/helmfile)/<version>/helmfile.
# `go install github.com/helmfile/helmfile@v1.8.0` is refused (helmfile's go.mod has replace
# directives), so a wrapper module in testbed/helmfile requires helmfile and repeats its
# replace lines; `go build` of the package from there builds it. The version is stamped the
# way helmfile's Makefile does. Idempotent: a binary that is there and reports the pinned
# version is kept. The Go build and module caches live outside the clone.
# The last line printed is the path of the binary.
set -euo pipefail
cd "$(dirname "$0")/../testbed/helmfile"

command -v go >/dev/null || { echo "install-helmfile.sh: go is not on PATH (Go 1.26 is needed)" >&2; exit 1; }
version="$(go list -m -f '{{.Version}}' github.com/helmfile/helmfile)"
CACHE="${GU_HELMFILE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/helmfile}"
dest="$CACHE/$version/helmfile"

up_to_date() {
    [ -x "$dest" ] || return 1
    local out
    out="$("$dest" --version 2>/dev/null)" || return 1
    [ "$out" = "helmfile version $version" ]
}

if up_to_date; then
    echo "helmfile $version: already built at $dest" >&2
else
    echo "helmfile $version: building github.com/helmfile/helmfile from the Go module proxy" >&2
    mkdir -p "$CACHE"
    work="$(mktemp -d "$CACHE/.build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    CGO_ENABLED=0 go build -mod=readonly -buildvcs=false \
        -ldflags "-s -w -X go.szostok.io/version.version=$version -X go.szostok.io/version.dirtyBuild=false" \
        -o "$work/helmfile" github.com/helmfile/helmfile
    mkdir -p "$(dirname "$dest")"
    mv -f "$work/helmfile" "$dest"
    up_to_date || { echo "install-helmfile.sh: $dest does not report helmfile version $version: $("$dest" --version 2>&1 || true)" >&2; exit 1; }
    echo "helmfile $version: built at $dest" >&2
fi
echo "$dest"
