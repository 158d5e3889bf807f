#!/usr/bin/env bash
# The whole test suite: set up what is missing (OpenBLAS, Python test deps, the default model), build, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
tools/update_fixture_manifest.sh --check
python3 tools/validate_k8s.py --quiet   # deploy/k8s against Kubernetes 1.30 schemas (strict) + a self-test on broken manifests
swift build --build-tests
swift test --skip-build
# A real client: the official openai package against a running `dlora serve` on loopback.
python3 Tests/python/test_openai_client.py "$(swift build --show-bin-path)/dlora"
python3 Tests/python/test_openai_client.py "$(swift build --show-bin-path)/dlora" --cluster
