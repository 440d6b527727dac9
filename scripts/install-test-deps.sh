#!/usr/bin/env bash
# Installs the Debian packages the real-client tests need (skopeo, docker engine,
# CNCF distribution registry, notary, cmake, jq, curl; python3-venv for scripts/check-deploy;
# DejaVu fonts for the benchmark report's plot; wrk and ab for its lean-client rows;
# prometheus for `promtool check metrics`; haproxy for the trusted-proxy tests; postgresql-15
# for the PostgreSQL metadata store's tests, which start their own servers) when any is
# missing.
# Idempotent: runs `apt-get update` and `apt-get install` only if something is missing.
set -euo pipefail

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
