#!/usr/bin/env bash
# Builds the two programs of testbed/helmroute that answer, for an argv, what helm's own
# command tree does with it (tests/shimroute.rs holds the shim's routing against them):
#   helm 4.3.2: testbed/helmroute/v4, a module importing helm.sh/helm/v4/pkg/cmd;
#   helm 3.21.4: helm 3 builds its command tree in package main (helm.sh/helm/v3/cmd/helm),
#     which no other module can import, so a copy of that module (from the Go module cache,
#     checked against go.sum by the go command) gets testbed/helmroute/v3/helmroute.go added
#     to its cmd/helm, with helm's own main renamed, and is built with helm's own go.mod.
# into "$GU_HELMROUTE_CACHE" (default ${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/helmroute)
# as <cache>/<version>/helmroute. Idempotent: programs built from the same sources are kept.
set -euo pipefail
cd "$(dirname "$0")/../testbed/helmroute"
command -v go >/dev/null || { echo "install-helmroute.sh: go is not on PATH" >&2; exit 1; }
CACHE="${GU_HELMROUTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/helmroute}"
stamp="$( (go version; cat route/go.mod route/go.sum route/*.go v4/go.mod v4/go.sum v4/*.go v3/*.go) | sha256sum | cut -c1-16)"
if [ -x "$CACHE/v3.21.4/helmroute" ] && [ -x "$CACHE/v4.3.2/helmroute" ] && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "helmroute: already built in $CACHE"
    exit 0
fi
mkdir -p "$CACHE"
work="$(mktemp -d "$CACHE/.build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
route="$PWD/route"

(cd v4 && CGO_ENABLED=0 go build -mod=readonly -o "$work/v4/helmroute" .)

helm3="$(cd v4 && GOFLAGS=-mod=mod go mod download -json helm.sh/helm/v3@v3.21.4 | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$helm3" ] || { echo "install-helmroute.sh: helm.sh/helm/v3@v3.21.4 not in the module cache" >&2; exit 1; }
cp -r "$helm3" "$work/helm3"
chmod -R u+w "$work/helm3"
sed -i 's/^func main() {$/func helmMain() {/' "$work/helm3/cmd/helm/helm.go"
grep -q '^func helmMain() {$' "$work/helm3/cmd/helm/helm.go" \
    || { echo "install-helmroute.sh: helm 3's main not found in cmd/helm/helm.go" >&2; exit 1; }
cp v3/helmroute.go "$work/helm3/cmd/helm/zz_helmroute.go"
(cd "$work/helm3" \
    && go mod edit -require=guarded-upgrade.test/helmroute/route@v0.0.0 \
        -replace=guarded-upgrade.test/helmroute/route="$route" \
    && CGO_ENABLED=0 go build -mod=mod -buildvcs=false -tags helmroute -o "$work/v3/helmroute" ./cmd/helm)

for v in v3.21.4:v3 v4.3.2:v4; do
    mkdir -p "$CACHE/${v%%:*}"
    mv -f "$work/${v##*:}/helmroute" "$CACHE/${v%%:*}/helmroute"
done
echo "$stamp" > "$CACHE/stamp"
echo "helmroute: built into $CACHE"
