#!/bin/sh
# Install/update hook of the helm plugin: puts the guarded-upgrade binary at
# $HELM_PLUGIN_DIR/bin/guarded-upgrade, where plugin.yaml's command points.
#   GUARDED_UPGRADE_BINARY=/path/to/guarded-upgrade  copy that binary (no build)
#   a release plugin tarball (bin/ bundled, no Cargo.toml)  use the bundled binary
#   otherwise, with cargo on PATH                    build it from this checkout
set -eu
dir="${HELM_PLUGIN_DIR:?this hook is run by helm plugin install/update}"
bin="$dir/bin/guarded-upgrade"
say() { printf 'guarded-upgrade plugin: %s\n' "$*" >&2; }

mkdir -p "$dir/bin"
if [ -n "${GUARDED_UPGRADE_BINARY:-}" ]; then
  if [ ! -f "$GUARDED_UPGRADE_BINARY" ] || [ ! -x "$GUARDED_UPGRADE_BINARY" ]; then
    say "GUARDED_UPGRADE_BINARY=$GUARDED_UPGRADE_BINARY is not an executable file"
    exit 1
  fi
  cp -f "$GUARDED_UPGRADE_BINARY" "$bin.tmp"
  mv -f "$bin.tmp" "$bin"
elif [ ! -f "$dir/Cargo.toml" ] && [ -f "$bin" ]; then
  # A release plugin tarball carries the binary for its platform: nothing to build.
  if ! "$bin" --version >/dev/null 2>&1; then
    say "the bundled $bin does not run on this machine ($(uname -s) $(uname -m)); install the plugin tarball for this platform (helm plugin uninstall guard; helm plugin install <URL of guard-VERSION-OS-ARCH.tgz>)"
    exit 1
  fi
elif command -v cargo >/dev/null 2>&1; then
  target="${CARGO_TARGET_DIR:-$dir/target}"
  say "building with cargo (release) in $target; set GUARDED_UPGRADE_BINARY to skip"
  cargo build --release --locked --bin guarded-upgrade \
    --manifest-path "$dir/Cargo.toml" --target-dir "$target" >&2
  cp -f "$target/release/guarded-upgrade" "$bin.tmp"
  mv -f "$bin.tmp" "$bin"
else
  say "cargo is not on PATH and GUARDED_UPGRADE_BINARY is not set; install Rust (https://rustup.rs) or set GUARDED_UPGRADE_BINARY=/path/to/guarded-upgrade, then run: helm plugin uninstall guard; helm plugin install ..."
  exit 1
fi
say "installed $("$bin" --version)"
