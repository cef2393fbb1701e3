#!/usr/bin/env bash
# The whole test suite: installs real helm 3 and 4 if missing, then runs every test
# (unit, stand-in API tests, and end-to-end tests with real helm against the stand-in).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-helm.sh
cargo test --workspace --locked "$@"
