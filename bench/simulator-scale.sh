#!/usr/bin/env bash
# Simulator speed at scale (docs/design/simulator.md, "Speed"). Builds only the pure modules (Scheduling,
# ClusterPolicy, Simulator) with swiftc -O — no full release build of the server — and one small driver, then
# times one simulation per line of $RUNS. Run under `nice -n 19` on a shared machine: numbers are lower bounds.
# The issue's scale at 1.5 req/s per replica: RUNS="1000 10000 600 1500 a800-7b dlora off" (docs/design/simulator.md,
# "Speed"). bench/simulator-hashes.sh checks that a speed-up changed no decision. CHUNK=seconds also times each
# run chunk by chunk of simulated time (a table before its row): whether the cost per request grows as the run goes on.
# THREADS=n simulates the replicas on n threads between status polls (SimulationConfig.threads; the same results, a
# chunked run stays on one). The hour on two threads: THREADS=2 RUNS="1000 10000 3600 1500 a800-7b dlora off".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dlora-simulator-scale}
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
swiftc -O -I "$OUT" -L "$OUT" -lSimulator -lClusterPolicy -lScheduling bench/simulator-scale.swift -o "$OUT/simulator-scale"
header() {
    echo "| replicas | adapters | trace s | req/s | cost | dispatch | migration | requests | events | wall s | events/s | simulated/wall | tok/s | avg latency/token s | migrations | invariants |"
    echo "|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
}
[ -n "${CHUNK:-}" ] || header
RUNS=${RUNS:-"100 1000 60 150 a800-7b dlora off"}
while read -r line; do
    [ -n "$line" ] || continue
    if [ -n "${CHUNK:-}" ]; then
        "$OUT/simulator-scale" $line "$TRACE" "$CHUNK" > "$OUT/run.txt"
        head -n -1 "$OUT/run.txt"  # the run's chunks, then its row under the header
        header
        tail -n 1 "$OUT/run.txt"
        echo
    else
        "$OUT/simulator-scale" $line "$TRACE"
    fi
done <<< "$RUNS"
