#!/usr/bin/env bash
# Decision fingerprints of a fixed matrix of simulations (bench/simulator-hashes.swift), for proving that a
# speed-up changed no decision: run before and after, the outputs must be identical. Builds the pure modules
# with swiftc -O as bench/simulator-scale.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dlora-simulator-hashes}
TRACE=${TRACE:-../shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv}
mkdir -p "$OUT"
build() { # module sources...
    local m=$1; shift
    swiftc -O -wmo -parse-as-library -module-name "$m" -I "$OUT" -emit-module -emit-module-path "$OUT/$m.swiftmodule" \
        -emit-library -static -o "$OUT/lib$m.a" "$@"
}
build Scheduling Sources/Scheduling/*.swift
build ClusterPolicy Sources/ClusterPolicy/*.swift
build Simulator Sources/Simulator/*.swift
swiftc -O -I "$OUT" -L "$OUT" -lSimulator -lClusterPolicy -lScheduling bench/simulator-hashes.swift -o "$OUT/simulator-hashes"
"$OUT/simulator-hashes" "$TRACE"
