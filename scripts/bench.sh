#!/usr/bin/env bash
# Runs the benchmarks: guarded-upgrade against the helm command a user would otherwise run,
# side by side, on the real control plane (etcd with fsync + kube-apiserver) and on the API
# stand-in, with helm 3.21.4 and 4.3.2; then the record-decoding micro-benchmarks. Prints
# Markdown tables and writes SVG charts to docs/perf/. Installs what it needs (as
# scripts/test.sh does). Each row says met/missed and the measured floor (what the guard
# cannot avoid for it). GU_BENCH_QUICK=1 shrinks the sizes; GU_BENCH_SMOKE=1 runs every
# measurement once at the smallest sizes with one helm (checks the bench runs; its figures
# mean nothing and its charts go to a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-helm.sh >/dev/null
./scripts/install-kube.sh >/dev/null
cargo bench --locked --bench cost
cargo bench --locked --bench decision_cost
