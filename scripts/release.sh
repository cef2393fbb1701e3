#!/usr/bin/env bash
# Builds the release artifacts of the checked-out commit into dist/ (docs/release.md):
#   guarded-upgrade-VERSION-TARGET.tar.gz   the binary (and README.md), one per target
#   guard-VERSION-OS-ARCH.tgz               the helm plugin: plugin.yaml, completion.yaml,
#                                           the install hook and bin/guarded-upgrade
#   guard-VERSION-OS-ARCH.tgz.prov          helm provenance of each plugin tarball (GPG)
#   guarded-upgrade-VERSION.cdx.json        CycloneDX SBOM (cargo-cyclonedx)
#   guarded-upgrade-release-key.gpg         the public key the .prov files verify with
#   checksums.txt                           sha256 of every file above but the .prov files
#   INSTALL.md                              the install commands, GU_REPOSITORY filled in
#
# Settings (environment):
#   GU_SIGNING_KEY     the GPG key (id, fingerprint or email) that signs the .prov files;
#                      required. GNUPGHOME selects the keyring as usual.
#   GU_REPOSITORY      the project's repository URL (https://github.com/<owner>/guarded-upgrade):
#                      the one variable the docs' install commands use. The files of a
#                      release are published under $GU_REPOSITORY/releases/download/vVERSION/
#                      (cargo binstall's pkg-url in Cargo.toml says the same). Default:
#                      Cargo.toml's package.repository; without either, INSTALL.md keeps
#                      the variable for the reader to set.
#   GU_RELEASE_TARGETS space-separated Rust target triples; default: every installed
#                      target (rustup target list --installed) this script knows how to
#                      package (x86_64/aarch64 Linux, x86_64/aarch64 macOS).
#   GU_DIST_DIR        output directory; default dist/ of the checkout (emptied first).
#   SOURCE_DATE_EPOCH  timestamp of every archive entry and of the SBOM; default: the
#                      commit's time, so two runs on one commit give the same bytes.
#   CARGO_TARGET_DIR   the release build goes to $CARGO_TARGET_DIR/dist-build (default
#                      target/dist-build): cached between runs, apart from other builds.
# Needs cargo, git, gpg, GNU tar, gzip, sha256sum, and cargo-cyclonedx: GU_CARGO_CYCLONEDX
# names it, else scripts/install-release-tools.sh installs it (once, cached outside the
# clone).
#
# `release.sh --build-only` does the release builds alone (the same flags, the same target
# directory) and writes nothing else: scripts/test.sh runs it while the test binaries
# build, so the release test's own run finds the binary built.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

say() { printf 'release.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

build_only=false
case "${1:-}" in
    "") ;;
    --build-only) build_only=true ;;
    *) printf 'usage: scripts/release.sh [--build-only]\n' >&2; exit 2 ;;
esac

tools=(cargo git)
$build_only || tools+=(gpg tar gzip sha256sum)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
if ! $build_only; then
    tar --version | grep -q 'GNU tar' || die "GNU tar is needed (sorted, owner-free archives)"
    [ -n "${GU_SIGNING_KEY:-}" ] || die "GU_SIGNING_KEY is not set: name the GPG key that signs the plugin provenance (.prov) files"
    gpg --batch --list-secret-keys "$GU_SIGNING_KEY" >/dev/null 2>&1 \
        || die "no secret key \"$GU_SIGNING_KEY\" in the GPG keyring${GNUPGHOME:+ $GNUPGHOME}"

    cyclonedx="${GU_CARGO_CYCLONEDX:-}"
    if [ -z "$cyclonedx" ]; then
        # Installs it on first use (cached outside the clone); prints its path last.
        cyclonedx="$(./scripts/install-release-tools.sh | tail -n 1)"
    fi
    [ -x "$cyclonedx" ] || die "$cyclonedx is not an executable (GU_CARGO_CYCLONEDX)"
fi

# One version, three places: Cargo.toml, plugin.yaml, and what --version says.
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
plugin_version="$(sed -n 's/^version: *//p' plugin.yaml)"
[ -n "$version" ] || die "no version in Cargo.toml"
[ "$version" = "$plugin_version" ] \
    || die "plugin.yaml says version $plugin_version, Cargo.toml $version: make them agree"

commit="$(git rev-parse --short HEAD)"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    # The commit alone does not describe what is built: say so in --version.
    commit="$commit-dirty"
    say "the work tree has uncommitted changes: --version will say commit $commit"
fi
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct HEAD)}"

if [ -n "${GU_RELEASE_TARGETS:-}" ]; then
    read -r -a targets <<<"$GU_RELEASE_TARGETS"
else
    targets=()
    while read -r t; do
        case "$t" in
            x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu | x86_64-apple-darwin | aarch64-apple-darwin)
                targets+=("$t") ;;
            *) say "skipping installed target $t (not a platform the plugin is packaged for)" ;;
        esac
    done < <(rustup target list --installed)
fi
[ "${#targets[@]}" -gt 0 ] || die "no target to build"

# helm's names for a platform (plugin tarballs are named like helm's own downloads).
helm_platform() {
    case "$1" in
        x86_64-unknown-linux-gnu) echo linux-amd64 ;;
        aarch64-unknown-linux-gnu) echo linux-arm64 ;;
        x86_64-apple-darwin) echo darwin-amd64 ;;
        aarch64-apple-darwin) echo darwin-arm64 ;;
        *) die "no helm platform name for target $1" ;;
    esac
}

build="${CARGO_TARGET_DIR:-$root/target}/dist-build"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
# CARGO_ENCODED_RUSTFLAGS would override the RUSTFLAGS below (the path remapping).
unset CARGO_ENCODED_RUSTFLAGS
for target in "${targets[@]}"; do
    say "building guarded-upgrade $version ($commit) for $target"
    # Paths of the machine must not end up in the binary (panic locations, debug info).
    RUSTFLAGS="--remap-path-prefix=$root=/guarded-upgrade --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$rustup_home=/rustup --remap-path-prefix=$build=/target" \
    GU_GIT_COMMIT="$commit" \
        cargo build --release --locked --bin guarded-upgrade --target "$target" --target-dir "$build" >&2
done
if $build_only; then
    say "built: $(for t in "${targets[@]}"; do printf '%s ' "$build/$t/release/guarded-upgrade"; done)"
    exit 0
fi

dist="${GU_DIST_DIR:-$root/dist}"
rm -rf "$dist"
mkdir -p "$dist"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# Reproducible archives: entries sorted, fixed owner and mtime, normalized modes, no
# timestamp or name in the gzip header.
archive() { # archive OUT DIR ENTRY...
    local out="$1" dir="$2"
    shift 2
    tar -C "$dir" --format=ustar --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" --mode='u+rwX,go+rX,go-w' -cf - "$@" \
        | gzip -9 -n >"$out"
}

for target in "${targets[@]}"; do
    binary="$build/$target/release/guarded-upgrade"
    name="guarded-upgrade-$version-$target"
    mkdir -p "$stage/$name"
    install -m 0755 "$binary" "$stage/$name/guarded-upgrade"
    install -m 0644 README.md "$stage/$name/README.md"
    archive "$dist/$name.tar.gz" "$stage" "$name"

    platform="$(helm_platform "$target")"
    plugin="$stage/plugin-$platform"
    mkdir -p "$plugin/bin" "$plugin/scripts"
    install -m 0644 plugin.yaml completion.yaml "$plugin/"
    install -m 0755 scripts/helm-plugin-install.sh "$plugin/scripts/"
    install -m 0755 "$binary" "$plugin/bin/guarded-upgrade"
    # plugin.yaml at the archive's root (helm 3 looks only there), no "./" entry.
    tgz="guard-$version-$platform.tgz"
    archive "$dist/$tgz" "$plugin" bin completion.yaml plugin.yaml scripts

    # helm's provenance format: the plugin's metadata, "...", the archive's sha256, all
    # clear-signed (what `helm plugin package --sign` writes and `helm plugin install`
    # verifies; helm checks the signature and the sum of the file of this name).
    {
        printf 'name: guard\nversion: %s\n\n...\n' "$version"
        printf 'files:\n  %s: sha256:%s\n' "$tgz" "$(sha256sum "$dist/$tgz" | cut -d' ' -f1)"
    } >"$stage/$tgz.msg"
    gpg --batch --yes --quiet --local-user "$GU_SIGNING_KEY" --digest-algo SHA256 \
        --clearsign --output "$dist/$tgz.prov" "$stage/$tgz.msg"
done

say "writing the SBOM"
# cargo-cyclonedx writes one SBOM next to each workspace member's Cargo.toml; the
# binary's is the root package's. SOURCE_DATE_EPOCH makes it leave out the random serial
# number and use that time. The test-only members' SBOMs are removed again. The root
# package's bom-ref is cargo's package id, `path+file://<checkout>#guarded-upgrade@<version>`:
# the checkout's path is replaced by /guarded-upgrade (as in the binary), so the SBOM does
# not depend on where the checkout is.
"$cyclonedx" cyclonedx --manifest-path "$root/Cargo.toml" --format json --spec-version 1.5 \
    --no-build-deps --target "${targets[0]}" --override-filename "guarded-upgrade-sbom" -q >&2
rm -f "$root"/standin/guarded-upgrade-sbom.json "$root"/testbed/guarded-upgrade-sbom.json
sbom="$(cat "$root/guarded-upgrade-sbom.json")"
rm -f "$root/guarded-upgrade-sbom.json"
sbom="${sbom//"path+file://$root#"/path+file:///guarded-upgrade#}"
case "$sbom" in
    *"file://$root"*) die "the SBOM still names the checkout's path $root" ;;
esac
printf '%s\n' "$sbom" >"$dist/guarded-upgrade-$version.cdx.json"

gpg --batch --export "$GU_SIGNING_KEY" >"$dist/guarded-upgrade-release-key.gpg"

(
    cd "$dist"
    find . -maxdepth 1 -type f ! -name '*.prov' ! -name checksums.txt ! -name INSTALL.md \
        -printf '%f\n' | LC_ALL=C sort | xargs sha256sum >checksums.txt
)

# INSTALL.md: README.md's install recipes (the ones the tests run), with the repository
# filled in.
repository="${GU_REPOSITORY:-$(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}"
recipe() { # the fenced block after <!-- recipe: NAME --> in README.md, unindented
    awk -v m="<!-- recipe: $1 -->" '
        { line = $0; sub(/^[ \t]+/, "", line) }
        inside && line ~ /^```/ { exit }
        inside { print line }
        line == m { getline; inside = 1 }' README.md
}
fingerprint="$(gpg --batch --with-colons --fingerprint "$GU_SIGNING_KEY" | awk -F: '$1 == "fpr" { print $10; exit }')"
{
    printf '# guarded-upgrade %s (commit %s)\n\n' "$version" "$commit"
    printf 'The binary:\n\n```sh\n'
    if [ -n "$repository" ]; then
        printf 'GU_REPOSITORY=%s\n' "$repository"
    fi
    recipe install-binary
    printf '```\n\nThe helm plugin (helm 4 checks the signature: release key fingerprint %s):\n\n```sh\n' "$fingerprint"
    if [ -n "$repository" ]; then
        printf 'GU_REPOSITORY=%s\n' "$repository"
    fi
    recipe install-plugin
    printf '```\n'
} >"$dist/INSTALL.md"
grep -q 'sha256sum -c' "$dist/INSTALL.md" || die "README.md has no install recipes (<!-- recipe: install-binary -->)"

say "done: $dist"
(cd "$dist" && ls -1)
