#!/usr/bin/env bash
# Installs what scripts/release.sh needs beyond cargo, git, gpg and GNU tar: cargo-cyclonedx
# (the CycloneDX project's SBOM generator for Cargo projects, from crates.io, with its own
# Cargo.lock), built once into
# "$GU_TOOLS_CACHE" (default ${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/tools)/cargo-cyclonedx-<version>/.
# Idempotent: an installed binary that reports the pinned version is kept. Built with the
# dev profile (`--debug`): it runs once per release, so compile time matters, not speed.
# The last line printed is the path of the binary.
set -euo pipefail

version=0.5.9
CACHE="${GU_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/guarded-upgrade/tools}"
root="$CACHE/cargo-cyclonedx-$version"
bin="$root/bin/cargo-cyclonedx"

up_to_date() {
    local out
    [ -x "$bin" ] && out="$("$bin" cyclonedx --version 2>/dev/null)" && [ "$out" = "cargo-cyclonedx-cyclonedx $version" ]
}

if up_to_date; then
    echo "cargo-cyclonedx $version: already installed at $bin" >&2
else
    command -v cargo >/dev/null || { echo "install-release-tools.sh: cargo is not on PATH" >&2; exit 1; }
    echo "cargo-cyclonedx $version: building from crates.io (about a minute on 2 cores)" >&2
    mkdir -p "$CACHE"
    work="$(mktemp -d "$CACHE/.build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    cargo install --quiet --locked --debug --version "$version" cargo-cyclonedx \
        --root "$work/root" --target-dir "$work/target" >&2
    rm -rf "$root"
    mv "$work/root" "$root"
    up_to_date || { echo "install-release-tools.sh: $bin does not report cargo-cyclonedx $version" >&2; exit 1; }
    echo "cargo-cyclonedx $version: installed at $bin" >&2
fi
echo "$bin"
