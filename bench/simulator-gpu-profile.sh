#!/usr/bin/env bash
# The Fig 9 systems at 32 × H200 / 128 adapters / Llama-2-7B on the simulator with the roofline's assumed knobs and
# with the knobs measured on an H200 (bench/results/gpu-profile-h200-7b.knobs.json). Writes
# bench/results/simulator-h200-knobs.md. RATES (default 150,300,450,600), JOBS (default: the cores), QUICK=1 (600
# requests per run: checks the script).
set -euo pipefail
cd "$(dirname "$0")/.."
TRACE=${TRACE:-../shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv}
JOBS=${JOBS:-$(nproc)}
OUT=${OUT:-bench/results/simulator-h200-knobs.md}
[ -n "${SKIP_BUILD:-}" ] || swift build -c release --product dlora >&2
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dlora"
WORKLOAD=${WORKLOAD:-$CACHE/sharegpt-2000.jsonl}
[ -s "$WORKLOAD" ] || python3 tools/extract_sharegpt.py "$WORKLOAD" 2000
[ -f "$TRACE" ] || { echo "bench/simulator-gpu-profile.sh: trace $TRACE not found" >&2; exit 1; }
python3 tools/sim_gpu_profile.py .build/release/dlora "$TRACE" "$WORKLOAD" bench/results/gpu-profile-h200-7b.knobs.json \
    --rates "${RATES:-150,300,450,600}" --jobs "$JOBS" ${QUICK:+--quick} > "$OUT"
cat "$OUT"
