#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need when it is
# missing (Debian's servers and tools, real helm 3.17.3/3.21.4/4.1.4/4.3.2, etcd,
# kube-apiserver, kubectl and helmfile built from Go modules, and cargo-cyclonedx for the
# release test's SBOM), then runs every test: unit tests,
# the stand-in's API tests, the test bed's own tests, and the end-to-end tests with real
# helm against the real API server (and the stand-in for fault injection).
# Every installer is idempotent and caches outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-servers.sh
# The Go builds (helm 3.21.4/4.3.2, the control plane, helm's command trees for the shim's
# differential test, helmfile v1.8.0 for the helmfile suite), the release tools
# (cargo-cyclonedx), the release build of the binary (what tests/e2e/release.rs packages
# with scripts/release.sh, for its target x86_64-unknown-linux-gnu) and the test build need
# nothing of each other: on a cold machine, building them at once saves minutes (link
# steps and downloads leave cores idle).
./scripts/install-helm.sh &
helm_pid=$!
./scripts/install-kube.sh >/dev/null &
kube_pid=$!
./scripts/install-helmroute.sh &
helmroute_pid=$!
./scripts/install-helmfile.sh >/dev/null &
helmfile_pid=$!
./scripts/install-release-tools.sh >/dev/null &
release_tools_pid=$!
GU_RELEASE_TARGETS=x86_64-unknown-linux-gnu ./scripts/release.sh --build-only &
release_build_pid=$!
build=0
cargo test --workspace --locked --no-run "$@" || build=$?
wait "$helm_pid"
wait "$kube_pid"
wait "$helmroute_pid"
wait "$helmfile_pid"
wait "$release_tools_pid"
wait "$release_build_pid"
[ "$build" -eq 0 ] || exit "$build"
# Three tests at a time, one per API server of the test control plane (GU_KUBE_SERVERS):
# much of an end-to-end test is waiting (on helm, a backoff, a restarted server).
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-3}"
cargo test --workspace --locked "$@"
