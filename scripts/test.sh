#!/usr/bin/env bash
# The whole test suite: set up what is missing (OpenBLAS, Python test deps, the default model), build, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
tools/update_fixture_manifest.sh --check
python3 tools/validate_k8s.py --quiet   # deploy/k8s against Kubernetes 1.30 schemas (strict) + a self-test on broken manifests
python3 tools/build_mole_tasks.py --self-test   # the MoLE task suite's splitting and archive reading, offline
python3 bench/step_log.py --self-test   # the step-log price formula and least-squares refit on exact synthetic iterations
swift build --build-tests
# Two runs: the suites with wall-clock bounds under test (the server's drain deadline and HTTP timeouts, the
# cluster's processes) apart from the long synchronous ones (property tests, f64 gradient checks, memory
# budgets). In one process they share Swift's cooperative pool (one thread per core, two in CI), and two
# synchronous tests holding both threads for tens of seconds failed those bounds for want of a thread.
# Same total time (~40 s each here).
swift test --skip-build --skip '^(ServerTests|ClusterTests)\.'
swift test --skip-build --filter '^(ServerTests|ClusterTests)\.'
# A real client: the official openai package against a running `dlora serve` on loopback.
python3 Tests/python/test_openai_client.py "$(swift build --show-bin-path)/dlora"
python3 Tests/python/test_openai_client.py "$(swift build --show-bin-path)/dlora" --cluster
