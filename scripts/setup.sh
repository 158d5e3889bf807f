#!/usr/bin/env bash
# Installs what dlora needs on a fresh Debian machine, only what is missing: OpenBLAS and pkg-config
# (apt-get), the Python test dependencies (pip), and the default model (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! pkg-config --exists openblas 2>/dev/null; then missing+=(libopenblas-dev); fi
command -v unzip >/dev/null 2>&1 || true
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--test" ] && [ -s tools/requirements-test.txt ]; then
    if ! python3 -m pip install -q --disable-pip-version-check -r tools/requirements-test.txt; then
        echo "setup: pip could not install tools/requirements-test.txt" >&2
        exit 1
    fi
fi

scripts/fetch-model.sh >/dev/null
