#!/usr/bin/env bash
# Fig 11-style dispatch and migration at 32 × A800 / 128 adapters / Llama-2-7B on the simulator, with and without
# adapter file loads and bounded host caches (tools/sim_file_loads.py). Writes bench/results/simulator-file-loads.md.
# RATES (default 150,250), LOAD_MS (10), GBPS (2), CACHES (none,inf,256,64: MB), JOBS (default: the cores),
# QUICK=1 (600 requests per run: checks the script).
set -euo pipefail
cd "$(dirname "$0")/.."
TRACE=${TRACE:-../shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv}
JOBS=${JOBS:-$(nproc)}
OUT=${OUT:-bench/results/simulator-file-loads.md}
[ -n "${SKIP_BUILD:-}" ] || swift build -c release --product dlora >&2
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dlora"
WORKLOAD=${WORKLOAD:-$CACHE/sharegpt-2000.jsonl}
[ -s "$WORKLOAD" ] || python3 tools/extract_sharegpt.py "$WORKLOAD" 2000
[ -f "$TRACE" ] || { echo "bench/simulator-file-loads.sh: trace $TRACE not found" >&2; exit 1; }
python3 tools/sim_file_loads.py .build/release/dlora "$TRACE" "$WORKLOAD" --rates "${RATES:-150,250}" --load-ms "${LOAD_MS:-10}" \
    --gbps "${GBPS:-2}" --caches "${CACHES:-none,inf,256,64}" --jobs "$JOBS" ${QUICK:+--quick} > "$OUT"
cat "$OUT"
