#!/usr/bin/env bash
# The demo: builds guarded-upgrade and the API stand-in, installs real helm if missing,
# starts the stand-in on loopback and shows the guard doing its job end to end.
# GU_DEMO_HELM=4 runs it with helm 4.1.4 instead of helm 3.17.3.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-helm.sh >/dev/null
echo "building (first run compiles dependencies, a few minutes)..."
cargo build --quiet --locked --workspace --bins
target_dir="$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target_dir/debug"

cache="${GU_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/helm}"
case "${GU_DEMO_HELM:-3}" in
  4) helm="${GU_HELM4:-$cache/v4.1.4/helm}" ;;
  *) helm="${GU_HELM3:-$cache/v3.17.3/helm}" ;;
esac

work="$(mktemp -d)"
"$bin/kube-standin" serve --kubeconfig "$work/kubeconfig" 2>"$work/standin.log" &
standin_pid=$!
cleanup() { kill "$standin_pid" 2>/dev/null || true; wait "$standin_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$work/kubeconfig" ] && break; sleep 0.1; done

# Everything below talks to the stand-in only, with private helm directories.
export KUBECONFIG="$work/kubeconfig" HELM_BIN="$helm"
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"
export PATH="$bin:$PATH"
charts=fixtures/charts

# Prints the command (shell-quoted, helm shown by name) and runs it.
step() {
  local shown=("$@")
  [ "${shown[0]}" = "$helm" ] && shown[0]=helm
  printf '\n\033[1m$'; printf ' %q' "${shown[@]}"; printf '\033[0m\n'
  "$@" || echo "(exit $?)"
}

echo "API stand-in: $(head -1 "$work/standin.log")"
echo "helm: $("$helm" version --short)"
step guarded-upgrade upgrade --install db $charts/demo-1.0.0 -n shared --create-namespace
step guarded-upgrade upgrade --install db $charts/demo-1.0.0 -n shared
step guarded-upgrade upgrade --install db $charts/demo-0.9.0 -n shared
step guarded-upgrade upgrade --install db $charts/demo-1.1.0 -n shared
step guarded-upgrade check db $charts/demo-1.2.0 -n shared -o json
step guarded-upgrade lock db -n shared --reason "incident 4711: schema migration" --expires 4h
step guarded-upgrade upgrade --install db $charts/demo-1.2.0 -n shared
step guarded-upgrade locks -A
step guarded-upgrade lock db -n shared --hard --reason "freeze for audit"
step "$helm" upgrade db $charts/demo-1.2.0 -n shared
step guarded-upgrade status db -n shared
step guarded-upgrade unlock db -n shared
step guarded-upgrade upgrade --install db $charts/demo-1.2.0 -n shared
step "$helm" history db -n shared
