#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests start (etcd, kube-apiserver, kubectl)
# from the Go modules pinned in testbed/kube/go.mod, into
# "$GU_KUBE_CACHE" (default ${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/kube)/<k8s version>/.
# Idempotent: binaries that are there and report the pinned versions are kept. The Go build
# cache (GOCACHE) and module cache live outside the clone too, so a rebuild is incremental.
# The last line printed is the directory holding the three binaries.
set -euo pipefail
cd "$(dirname "$0")/../testbed/kube"

command -v go >/dev/null || { echo "install-kube.sh: go is not on PATH (Go 1.26 is needed)" >&2; exit 1; }
k8s_version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd_version="$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
CACHE="${GU_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/kube}"
dest="$CACHE/$k8s_version"

up_to_date() {
    [ -x "$dest/etcd" ] && [ -x "$dest/kube-apiserver" ] && [ -x "$dest/kubectl" ] || return 1
    # Outputs are captured first: `grep -q` closing the pipe early would fail under pipefail.
    local out
    out="$("$dest/kube-apiserver" --version 2>/dev/null)" && grep -qx "Kubernetes $k8s_version" <<<"$out" || return 1
    out="$("$dest/etcd" --version 2>/dev/null)" && grep -qx "etcd Version: ${etcd_version#v}" <<<"$out" || return 1
    out="$("$dest/kubectl" version --client 2>/dev/null)" && grep -qx "Client Version: $k8s_version" <<<"$out" || return 1
}

if up_to_date; then
    echo "kube $k8s_version, etcd $etcd_version: already built in $dest" >&2
else
    echo "kube $k8s_version, etcd $etcd_version: building from Go modules (minutes on a cold cache)" >&2
    work="$(mktemp -d "$CACHE.build.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE"; mktemp -d "$CACHE/.build.XXXXXX"; })"
    trap 'rm -rf "$work"' EXIT
    # Version stamps, as upstream's build sets them, so --version reports the pinned release.
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$(echo "$k8s_version" | sed -E 's/^v([0-9]+)\..*/\1/')"
        ldflags+=" -X $pkg.gitMinor=$(echo "$k8s_version" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/') -X $pkg.gitTreeState=clean"
    done
    CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -ldflags "$ldflags" -o "$work/" \
        go.etcd.io/etcd/server/v3 k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
    mv "$work/server" "$work/etcd"  # go names it after go.etcd.io/etcd/server/v3
    mkdir -p "$dest"
    for bin in etcd kube-apiserver kubectl; do mv -f "$work/$bin" "$dest/$bin"; done
    up_to_date || { echo "install-kube.sh: the built binaries do not report $k8s_version / $etcd_version" >&2; exit 1; }
    echo "kube $k8s_version, etcd $etcd_version: built into $dest" >&2
fi
echo "$dest"
