#!/usr/bin/env bash
# dLoRA's Fig 9–12 at the paper's scale (32 A800 replicas, 128 adapters, Llama-2 7B/13B) on the simulator: our
# scheduler and cluster policies on the roofline GPU cost models. Writes bench/results/simulator-paper.md and
# simulator-fig*.svg (RESULTS=dir to write elsewhere). QUICK=1 runs a few points only (checks the script).
# JOBS simulations at a time (default: the cores). About 11 minutes one at a time on the 2-core reference machine.
# BURST_SIGMA=1.5 BURST_WINDOW=10 FIGURES=10,11: the same figures under per-adapter bursts (dlora simulate
# --adapter-burst-sigma), written to simulator-paper-bursty.md and simulator-fig*-bursty.svg.
# COST_PROFILE=bench/results/gpu-profile-h200-7b-bgmv.knobs.json: every run with those measured roofline knobs
# (dlora simulate --cost-profile), written to simulator-paper-measured.md and simulator-fig*-measured.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-bench/results}
TRACE=${TRACE:-../shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv}
JOBS=${JOBS:-$(nproc)}
if [ -z "${SKIP_BUILD:-}" ]; then
    scripts/setup.sh
    swift build -c release --product dlora >&2
fi
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dlora"
WORKLOAD=${WORKLOAD:-$CACHE/sharegpt-2000.jsonl}
[ -s "$WORKLOAD" ] || python3 tools/extract_sharegpt.py "$WORKLOAD" 2000
[ -f "$TRACE" ] || { echo "bench/simulator-paper.sh: trace $TRACE not found" >&2; exit 1; }
mkdir -p "$RESULTS"
python3 tools/sim_paper.py .build/release/dlora "$TRACE" "$WORKLOAD" "$RESULTS" --jobs "$JOBS" ${QUICK:+--quick} \
    --burst-sigma "${BURST_SIGMA:-0}" --burst-window "${BURST_WINDOW:-60}" --figures "${FIGURES:-9,10,11,12}" \
    ${COST_PROFILE:+--cost-profile "$COST_PROFILE"}
