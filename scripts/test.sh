#!/usr/bin/env bash
# The whole test suite: set up what is missing (OpenBLAS, Python test deps, the default model), build, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
tools/update_fixture_manifest.sh --check
swift build --build-tests
swift test --skip-build
# A real client: the official openai package against a running `dlora serve` on loopback.
python3 Tests/python/test_openai_client.py "$(swift build --show-bin-path)/dlora"
