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
# OpenBLAS picks its kernels by CPU model at load and, on a model newer than the library (Debian 12's 0.3.21 on
# Emerald Rapids), falls back to its generic SSE3 ones. `dlora` then runs itself again with the CPU's core named
# (Kernels.adoptBLASCoreForThisCPU); the test processes get the same choice here, so they check the sgemm kernels
# users run (the same rule as dl_blas_core_for_cpu: Cooperlake for AVX-512 with BF16, SkylakeX for AVX-512, Haswell
# for AVX2 with FMA). The suites' time barely moves (tiny models: the training suites 25 s against 28 s alone).
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ "$(python3 -c 'import ctypes; f = ctypes.CDLL("libopenblas.so.0").openblas_get_corename; f.restype = ctypes.c_char_p; print(f().decode())' 2>/dev/null)" = Prescott ]; then
    flags=" $(grep -m1 '^flags' /proc/cpuinfo) "
    has() { for f in "$@"; do case "$flags" in *" $f "*) ;; *) return 1 ;; esac; done; }
    if has avx512f avx512bw avx512vl avx512dq avx512cd; then
        if has avx512_bf16; then export OPENBLAS_CORETYPE=Cooperlake; else export OPENBLAS_CORETYPE=SkylakeX; fi
    elif has avx2 fma f16c; then
        export OPENBLAS_CORETYPE=Haswell
    fi
fi
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
