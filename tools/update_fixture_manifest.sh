#!/bin/sh
# Regenerate Tests/Fixtures/MANIFEST.sha256: the sha256 of every file under Tests/Fixtures
# (relative paths, byte-wise sorted, `sha256sum` format), MANIFEST.sha256 itself excluded.
#
#   tools/update_fixture_manifest.sh          # rewrite the manifest (run after changing any fixture)
#   tools/update_fixture_manifest.sh --check  # verify the tree against the manifest (exit 1 on mismatch)
#
# Works with GNU coreutils (sha256sum) or macOS (shasum -a 256); both print "<hex>  <path>".
set -eu
cd "$(dirname "$0")/../Tests/Fixtures"

if command -v sha256sum >/dev/null 2>&1; then
    hash() { sha256sum "$@"; }
else
    hash() { shasum -a 256 "$@"; }
fi

listing() {
    find . -type f ! -name MANIFEST.sha256 ! -name MANIFEST.sha256.tmp ! -name .DS_Store \
        ! -path '*/__pycache__/*' | sed 's|^\./||' | LC_ALL=C sort |
        while IFS= read -r f; do hash "$f"; done
}

if [ "${1:-}" = "--check" ]; then
    listing > MANIFEST.sha256.tmp
    if cmp -s MANIFEST.sha256.tmp MANIFEST.sha256; then
        rm -f MANIFEST.sha256.tmp
        echo "Tests/Fixtures matches MANIFEST.sha256"
    else
        diff MANIFEST.sha256 MANIFEST.sha256.tmp || true
        rm -f MANIFEST.sha256.tmp
        echo "Tests/Fixtures differs from MANIFEST.sha256" >&2
        exit 1
    fi
else
    listing > MANIFEST.sha256.tmp
    mv MANIFEST.sha256.tmp MANIFEST.sha256
    echo "wrote Tests/Fixtures/MANIFEST.sha256 ($(wc -l < MANIFEST.sha256 | tr -d ' ') files)"
fi
