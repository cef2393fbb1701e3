#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests start from the Go modules pinned in
# testbed/kube/go.mod (etcd, kube-apiserver, kubectl, kube-controller-manager,
# kube-scheduler: one `go build`, so they share the module download and the build cache) and
# testbed/kwok/go.mod (kwok, which plays the kubelet of a fake node, plus the stage
# definitions it needs, copied from its module source), into
# "$GU_KUBE_CACHE" (default ${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/kube)/<k8s version>/.
# Idempotent: binaries that are there and report the pinned versions are kept. The Go build
# cache (GOCACHE) and module cache live outside the clone too, so a rebuild is incremental.
# The last line printed is the directory holding the binaries.
set -euo pipefail
cd "$(dirname "$0")/../testbed"
testbed="$PWD"

command -v go >/dev/null || { echo "install-kube.sh: go is not on PATH (Go 1.26 is needed)" >&2; exit 1; }
k8s_version="$(cd kube && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd_version="$(cd kube && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
kwok_version="$(cd kwok && go list -m -f '{{.Version}}' sigs.k8s.io/kwok)"
CACHE="${GU_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/kube}"
dest="$CACHE/$k8s_version"
# The kwok stages the test bed loads (kustomize/stage/ of kwok's module): fake nodes become
# Ready and keep their heartbeat, pods become Ready, Job pods complete, deleted pods go, and
# a pod labelled `pod-container-running-failed.stage.kwok.x-k8s.io: "true"` fails on purpose.
kwok_stages=(
    node/fast/node-initialize.yaml
    node/heartbeat/node-heartbeat.yaml
    pod/fast/pod-ready.yaml
    pod/fast/pod-complete.yaml
    pod/fast/pod-delete.yaml
    pod/chaos/pod-container-running-failed.yaml
)
kube_bins=(etcd kube-apiserver kubectl kube-controller-manager kube-scheduler)

# Outputs are captured first: `grep -q` closing the pipe early would fail under pipefail.
kube_up_to_date() {
    local bin out
    for bin in "${kube_bins[@]}"; do [ -x "$dest/$bin" ] || return 1; done
    for bin in kube-apiserver kube-controller-manager kube-scheduler; do
        out="$("$dest/$bin" --version 2>/dev/null)" && grep -qx "Kubernetes $k8s_version" <<<"$out" || return 1
    done
    out="$("$dest/etcd" --version 2>/dev/null)" && grep -qx "etcd Version: ${etcd_version#v}" <<<"$out" || return 1
    out="$("$dest/kubectl" version --client 2>/dev/null)" && grep -qx "Client Version: $k8s_version" <<<"$out" || return 1
}

kwok_up_to_date() {
    local out stage
    [ -x "$dest/kwok" ] || return 1
    out="$("$dest/kwok" --version 2>/dev/null)" && grep -q "^kwok version $kwok_version\b" <<<"$out" || return 1
    for stage in "${kwok_stages[@]}"; do [ -f "$dest/kwok-stages/$(basename "$stage")" ] || return 1; done
}

# A scratch directory next to the cache, removed on exit.
work="$(mktemp -d "$CACHE.build.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE"; mktemp -d "$CACHE/.build.XXXXXX"; })"
trap 'rm -rf "$work"' EXIT

build_kube() {
    # Version stamps, as upstream's build sets them, so --version reports the pinned release.
    local ldflags="-s -w" pkg bin
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$(echo "$k8s_version" | sed -E 's/^v([0-9]+)\..*/\1/')"
        ldflags+=" -X $pkg.gitMinor=$(echo "$k8s_version" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/') -X $pkg.gitTreeState=clean"
    done
    mkdir -p "$work/kube"
    (cd "$testbed/kube" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -ldflags "$ldflags" -o "$work/kube/" \
        go.etcd.io/etcd/server/v3 k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
        k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
    mv "$work/kube/server" "$work/kube/etcd"  # go names it after go.etcd.io/etcd/server/v3
    mkdir -p "$dest"
    for bin in "${kube_bins[@]}"; do mv -f "$work/kube/$bin" "$dest/$bin"; done
}

build_kwok() {
    local src stage
    mkdir -p "$work/kwok"
    (cd "$testbed/kwok" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false \
        -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version" -o "$work/kwok/kwok" sigs.k8s.io/kwok/cmd/kwok)
    src="$(cd "$testbed/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
    mkdir -p "$work/kwok/stages"
    for stage in "${kwok_stages[@]}"; do cp "$src/kustomize/stage/$stage" "$work/kwok/stages/"; done
    mkdir -p "$dest"
    rm -rf "$dest/kwok-stages"
    mv "$work/kwok/stages" "$dest/kwok-stages"
    mv -f "$work/kwok/kwok" "$dest/kwok"
}

pids=()
if kube_up_to_date; then
    echo "kube $k8s_version, etcd $etcd_version: already built in $dest" >&2
else
    echo "kube $k8s_version, etcd $etcd_version: building from Go modules (minutes on a cold cache)" >&2
    build_kube &
    pids+=($!)
fi
if kwok_up_to_date; then
    echo "kwok $kwok_version: already built in $dest" >&2
else
    echo "kwok $kwok_version: building from Go modules" >&2
    build_kwok &
    pids+=($!)
fi
for pid in "${pids[@]}"; do wait "$pid"; done
kube_up_to_date || { echo "install-kube.sh: the built binaries in $dest do not report $k8s_version / $etcd_version" >&2; exit 1; }
kwok_up_to_date || { echo "install-kube.sh: $dest/kwok does not report $kwok_version, or its stages are missing" >&2; exit 1; }
echo "kube $k8s_version, etcd $etcd_version, kwok $kwok_version: ready in $dest" >&2
echo "$dest"
