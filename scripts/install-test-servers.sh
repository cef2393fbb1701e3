#!/usr/bin/env bash
# Installs the real servers the end-to-end tests start (tests/e2e/servers.rs): Debian's
# docker-registry (the distribution registry), PostgreSQL 15, apache2-utils (htpasswd) and
# openssl (the test CA for PostgreSQL's TLS); and small test tools: groff-base (renders
# the man page), zsh (parses the zsh completion script), gpg and gpg-agent (the release
# test generates a signing key and signs the plugin provenance files: gpg does both through
# the agent, which is only a recommendation of the gpg package, not installed with
# --no-install-recommends) and curl (the documented download-and-verify install).
# Idempotent and non-interactive; a no-op when everything is there.
set -euo pipefail
PACKAGES=(docker-registry postgresql-15 apache2-utils openssl groff-base zsh gpg gpg-agent curl)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# policy-rc.d exit 101: packages must not start their services (the tests start their
# own). Only a policy file this script created is removed again.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    $SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
